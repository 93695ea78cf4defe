#!/usr/bin/env bash
# One GPU session's checks, run from the repository root on a CUDA machine whose python3 has
# torch and transformers (lmforge runs from src/, no install). Writes logs and tables to $OUT
# (default ./gpu-out). Needs a GPT-2-tokenized dataset at $DATA, made beforehand with
#   lmforge prepare -t ../shared/data/tokenizers/gpt2 --out .gpu/corpus-gpt2 \
#       ../shared/data/corpora/tinyshakespeare.txt ../shared/data/corpora/wikitext2_tokenized_valid.txt
# About 6 minutes on an H100/H200, most of it torch.compile.
OUT=${OUT:-gpu-out}
DATA=${DATA:-.gpu/corpus-gpt2}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"

echo "== 1. GPT-2 124M training step: lmforge vs transformers (bf16, fused AdamW, eager and compiled)"
$PY benchmarks/bench_gpu.py --batch 32 --vocab 50304 --out "$OUT/bench_gpu.md" 2>&1 | tee "$OUT/bench_gpu.log"

echo "== 2. lmforge pretrain on the GPU: GPT-2 preset (vocab 50257), bf16, compile, real text"
$PY -m lmforge pretrain --data "$DATA" --model gpt2 --block_size 1024 --batch_size 32 --compile true \
    --max_steps 60 --warmup_steps 10 --eval_interval 0 --log_interval 10 --progress false \
    --tensorboard false --out_dir /tmp/run-gpt2 --overwrite 2>&1 | tee "$OUT/pretrain_gpt2.log"
cp /tmp/run-gpt2/metrics.jsonl "$OUT/pretrain_gpt2_metrics.jsonl" 2>/dev/null

echo "== 3. fp16 with GradScaler (CUDA only) and generation on the GPU"
$PY -m lmforge pretrain --data "$DATA" --model gpt-mini --precision fp16 --max_steps 40 \
    --warmup_steps 5 --lr 3e-3 --eval_interval 0 --log_interval 10 --progress false \
    --tensorboard false --out_dir /tmp/run-fp16 --overwrite 2>&1 | tee "$OUT/pretrain_fp16.log"
$PY -m lmforge generate --model /tmp/run-fp16 --device cuda --prompt "ROMEO:" "The" \
    --max-new-tokens 16 --greedy 2>&1 | tee "$OUT/generate.log"
# 4. SmolLM2-135M (issue 5): generation vs transformers, eager and compiled, and whole-file
# perplexity. Needs SMOLLM2_GGUF (the 94 MB file: over one device call's 64 MiB, send it in two
# parts, `split -n 2`, and join them there), LMFORGE_CORPORA, and the gguf package (a wheel
# installed with pip --target). Not yet run on a GPU.
if [ -n "${SMOLLM2_GGUF:-}" ] && [ -f "$SMOLLM2_GGUF" ]; then
    echo "== 4. SmolLM2-135M generation and perplexity"
    $PY benchmarks/bench_generate.py --device cuda --compile --new-tokens 128 2>&1 | tee "$OUT/generate_smollm2.log"
    $PY benchmarks/smollm2_perplexity.py --window 2048 --stride 2048 --device cuda 2>&1 | tee "$OUT/ppl_smollm2.log"
fi
echo "== 5. MLM and seq2seq steps (issue 4's targets: >= 3x / >= 2x transformers fp32 with lmforge defaults)"
$PY benchmarks/bench_pretrain_objectives.py --device cuda --steps 20 --warmup 5 --compile --no-save 2>&1 \
    | tee "$OUT/pretrain_objectives.log"
echo "== done"
