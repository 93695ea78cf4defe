#!/usr/bin/env bash
# Pretrain bert-mini (4 x 256, 5.5M parameters) with MLM + NSP on the four shared corpora:
# ~30 minutes on 2 CPU cores (bf16 autocast, ~10k tokens/s). Results: benchmarks/RESULTS.md,
# "bert-mini pretrained with MLM + NSP". The model folder OUT/run/model is the starting point
# of the fine-tuning runs (lmforge finetune --model OUT/run/model).
#
#     bash benchmarks/pretrain_bert_mini.sh [OUT_DIR]      (default runs/bert-mini)
#
# DOCUMENTS=uniform draws NSP's first segments from uniformly chosen documents instead of in
# proportion to their length (BERT): the run whose checkpoint the fine-tuning figures start from
# (DOCUMENTS=uniform bash benchmarks/pretrain_bert_mini.sh runs/bert-mini-uniform), see RESULTS.md.
set -euo pipefail
DOCUMENTS=${DOCUMENTS:-by_length}

OUT=${1:-runs/bert-mini}
HERE=$(dirname "$0")
mkdir -p "$OUT"

# One JSONL of documents (plays in 40-speech chunks, addresses, fortunes, Wikipedia articles).
python "$HERE/bert_corpus.py" "$OUT/corpus.jsonl"
# Uncased WordPiece, as BERT-base-uncased (GLUE's SST-2 text is lowercased).
lmforge tokenizer train "$OUT/corpus.jsonl" --kind wordpiece --vocab-size 8192 --lowercase \
    --out "$OUT/tokenizer" --overwrite --quiet
# 2% of documents held out; sentence boundaries recorded for NSP.
lmforge prepare "$OUT/corpus.jsonl" --tokenizer "$OUT/tokenizer" --out "$OUT/data" \
    --split-sentences --val-fraction 0.02 --overwrite --quiet

# 4,000 steps x 32 x 128 = 16.4M tokens (about 10 passes over 1.6M training tokens).
lmforge pretrain --data "$OUT/data" --out_dir "$OUT/run" --model bert-mini --objective nsp \
    --block_size 128 --batch_size 32 --max_steps 4000 --lr 1e-3 --warmup_steps 200 \
    --schedule linear --min_lr 0 --weight_decay 0.01 --beta2 0.98 \
    --eval_interval 500 --eval_batches 10 --save_interval 500 --progress false --overwrite \
    --objective_args "{\"documents\": \"$DOCUMENTS\"}"

# Held-out masked-token accuracy is the val mlm_acc above; a few fill-mask examples:
lmforge fill-mask --model "$OUT/run" --top-k 5 \
    --text "the president said that the [MASK] of the union is strong." \
           "to be, or not to [MASK], that is the question." \
           "the [MASK] was founded in the early years of the century." \
           "we must [MASK] our children for the future." \
           "my lord, i [MASK] you to hear me."
