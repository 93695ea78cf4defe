"""`lmforge plan`: GPT-2 124M figures computed by hand, the DDP/FSDP verdict, the CLI."""

from __future__ import annotations

import json

import pytest

from lmforge.training.plan import PlanConfig, make_plan

from _util import assert_one_line_error, run_cli

# GPT-2 small by hand: d = 768, L = 12, V = 50257, T = 1024, tied head.
D, L, V, T = 768, 12, 50257, 1024
BLOCK = 12 * D * D + 13 * D  # qkv 3d^2+3d, proj d^2+d, fc 4d^2+4d, proj 4d^2+d, 2 norms 4d
PARAMS = V * D + T * D + L * BLOCK + 2 * D  # + final norm
GPT2 = dict(model="gpt2", seq_len=T, global_batch=64, micro_batch=8, gpus=8, gpu_memory=80,
            gpu="H100", precision="bf16", tokens=1e10, mfu=0.4)


def test_gpt2_124m_matches_hand_computation():
    p = make_plan(PlanConfig(**GPT2))
    assert PARAMS == 124_439_808 and p["parameters"] == PARAMS
    assert p["non_embedding_parameters"] == PARAMS - T * D == 123_653_376
    assert p["flops_per_token"] == 6 * 123_653_376 + 12 * L * D * T == 855_166_464
    assert p["steps"] == 152_588  # ceil(1e10 / (64 * 1024))
    assert p["tokens_per_sec"] == pytest.approx(8 * 989e12 * 0.4 / 855_166_464)
    assert p["seconds"] == pytest.approx(2702.1, abs=0.1)  # 45 minutes on 8 H100s at 40% MFU
    ddp, fsdp = p["memory"]["ddp"], p["memory"]["fsdp"]
    assert ddp["states"] == 16 * PARAMS == 1_991_036_928  # fp32 weights, grads, 2 AdamW moments
    assert fsdp["states"] == 16 * PARAMS // 8
    assert ddp["working"] == 2 * PARAMS  # autocast's bf16 weight copies
    root = PARAMS - L * BLOCK  # embeddings and final norm, unsharded through the step
    assert fsdp["working"] == 2 * (2 * BLOCK + root) + 4 * BLOCK
    assert ddp["activations"] == fsdp["activations"] == L * 34 * T * D * 8 == 2_566_914_048
    assert ddp["logits"] == T * 8 * V * (2 + 8)
    assert ddp["total"] == 8_923_884_032 and ddp["fits"] and fsdp["fits"]
    assert ddp["grad_accum"] == 1 and p["recommended"] == "ddp"


def test_activation_checkpointing_and_fp32():
    ac = make_plan(PlanConfig(**{**GPT2, "activation_checkpointing": True}))
    assert ac["memory"]["ddp"]["activations"] == L * 2 * T * D * 8 + 34 * T * D * 8
    fp32 = make_plan(PlanConfig(**{**GPT2, "precision": "fp32"}))
    assert fp32["memory"]["ddp"]["activations"] == 2 * 2_566_914_048
    assert fp32["peak_tflops_per_gpu"] == 989 / 2


def test_a_7b_model_needs_fsdp_on_80gb_gpus():
    llama7b = dict(n_layer=32, n_head=32, n_kv_head=32, n_embd=4096, intermediate_size=11008,
                   vocab_size=32000, context_length=4096, tie_embeddings=False)
    p = make_plan(PlanConfig(model="llama-mini", model_args=llama7b, seq_len=4096,
                             global_batch=512, gpus=8, tokens=1e12))
    assert p["parameters"] == pytest.approx(6.74e9, rel=0.01)
    assert not p["memory"]["ddp"]["fits"] and p["memory"]["fsdp"]["fits"]
    assert p["recommended"] == p["parallel"] == "fsdp" and p["fits"]
    assert p["memory"]["fsdp"]["micro_batch"] >= 1
    judged = make_plan(PlanConfig(model="llama-mini", model_args=llama7b, seq_len=4096,
                                  global_batch=512, gpus=8, tokens=1e12, parallel="ddp"))
    assert judged["parallel"] == "ddp" and not judged["fits"]
    assert p["memory"]["fsdp"]["grad_accum"] * p["memory"]["fsdp"]["micro_batch"] == 64


def test_cli_table_and_json():
    table = run_cli("plan", "--gpus", "8", "--global_batch", "64", "--micro_batch", "8")
    assert table.returncode == 0, table.stderr
    assert "855" in table.stdout and "DDP" in table.stdout and "FSDP" in table.stdout
    assert "124.4M parameters" in table.stdout and "use --parallel ddp" in table.stdout
    as_json = run_cli("plan", "--json", "--n_layer", "24", "--n_embd", "1024", "--n_head", "16")
    data = json.loads(as_json.stdout)
    assert data["parameters"] == pytest.approx(354.8e6, rel=0.01)  # GPT-2 medium's shape
    assert_one_line_error(run_cli("plan", "--gpus", "3", "--global_batch", "64"), "divide evenly")
    assert_one_line_error(run_cli("plan", "--gpu", "abacus"), "unknown GPU")
    big = run_cli("plan", "--n_layer", "48", "--n_embd", "6144", "--n_head", "48", "--parallel", "ddp")
    assert "--parallel ddp does NOT fit" in big.stdout and "use --parallel fsdp" in big.stdout
