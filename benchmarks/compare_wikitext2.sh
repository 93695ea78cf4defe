#!/usr/bin/env bash
# n-gram vs LSTM vs Transformer perplexity on WikiText-2 (word level): 5 to 11 minutes on
# 2 CPU cores, depending on load. Results: benchmarks/RESULTS.md,
# "compare on WikiText-2 (word level)".
#
# Data: shared/data/corpora/wikitext2_tokenized_valid.txt (the WikiText-2 *validation* file,
# 3,760 lines, ~214k words; the only WikiText we have). Split by whole articles: lines 1-3347
# (the first 54 articles) train, lines 3348-3760 (the last 6 articles, from
# " = Where the Streets Have No Name = " on, ~11% of the words) validation.
# Every line is a document (empty lines are dropped) and ends in <|endoftext|>, WikiText's <eos>.
# The word vocab is learned from the train lines only (words seen twice or more); val words
# outside it become <unk>, for every model alike.
#
#     bash benchmarks/compare_wikitext2.sh [OUT_DIR]      (default runs/compare-wikitext2)
set -euo pipefail

OUT=${1:-runs/compare-wikitext2}
SRC=${WIKITEXT2:-$(dirname "$0")/../../shared/data/corpora/wikitext2_tokenized_valid.txt}
mkdir -p "$OUT"

head -n 3347 "$SRC" > "$OUT/train.txt"
tail -n +3348 "$SRC" > "$OUT/val.txt"

lmforge tokenizer train "$OUT/train.txt" --kind word --min-frequency 2 --out "$OUT/tokenizer" \
    --overwrite --quiet
lmforge prepare "$OUT/train.txt" --val-input "$OUT/val.txt" --tokenizer "$OUT/tokenizer" \
    --out "$OUT/data" --split-on-lines --no-dedup --normalize none --workers 1 --overwrite

lmforge compare "$OUT/data" --out "$OUT/compare" --overwrite \
    --ngram_orders 2,3,4,5 \
    --lstm_model lstm-small --lstm_steps 1000 --lstm_batch_size 20 --lstm_block_size 35 \
    --lstm_lr 5e-3 \
    --gpt_model gpt-mini --gpt_steps 400 --gpt_batch_size 16 --gpt_block_size 128 \
    --gpt_lr 2e-3
