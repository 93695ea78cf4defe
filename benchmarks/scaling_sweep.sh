#!/usr/bin/env bash
# The CPU scaling sweep of benchmarks/RESULTS.md: a char-level dataset of the four shared corpora,
# an isoFLOP plan for a 45-minute budget on one core, the sweep, the fit, a prediction at 4x the
# largest swept compute (written down before that run trains), then the held-out run itself.
#   bash benchmarks/scaling_sweep.sh [WORK_DIR]    (default /tmp/lmforge-scaling; ~65 min)
# Pinned to core 0 with one torch thread so that the timings do not depend on what else runs.
set -euo pipefail
W=${1:-/tmp/lmforge-scaling}
D=${SHARED_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}/corpora
L="taskset -c 0 lmforge"
mkdir -p "$W/text/su"
for f in "$D"/state_union/*.txt; do iconv -f latin1 -t utf-8 "$f" > "$W/text/su/$(basename "$f")"; done
cp "$D/tinyshakespeare.txt" "$D/wikitext2_tokenized_valid.txt" "$W/text/"
$L tokenizer train "$W/text" "$D/fortunes.txt" --kind char --vocab-size 256 --out "$W/tok" -q --overwrite
$L prepare "$D/fortunes.txt" --separator % -t "$W/tok" -o "$W/d_fort" --val-fraction 0.02 -q --overwrite
$L prepare "$W/text" --split-on-blank-lines -t "$W/tok" -o "$W/d_rest" --val-fraction 0.02 -q --overwrite
$L prepare-merge "$W/d_fort" "$W/d_rest" -o "$W/data" -q --overwrite
$L scale plan --data "$W/data" --time 45m --levels 4 --level-ratio 2.5 --sizes 5 --threads 1 \
    --out "$W/sweep" --overwrite
$L scale run "$W/sweep"
$L scale fit "$W/sweep"
$L scale predict "$W/sweep" --compute 4x --out "$W/heldout" --overwrite
$L scale run "$W/heldout"
