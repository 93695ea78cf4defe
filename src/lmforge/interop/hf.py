"""Hugging Face model folders in and out: ``config.json`` + safetensors weights (one file or
shards with an index) + tokenizer files, for GPT-2, Llama / Mistral / Qwen2, BERT, T5 and BART.

Each family is one table of (lmforge name, Hugging Face names, how they combine) that drives
both directions, so import and export are exact inverses (fused q/k/v and gate/up matrices are
concatenations of HF's separate ones; GPT-2's Conv1D weights are transposed; BART's position
table carries two unused leading rows). Weights are read from safetensors only: a
``pytorch_model.bin`` is a pickle and is refused.

    model, tok, tok_cfg = load_hf("path/to/hf-folder")
    export_hf(model, tok, "out/hf-folder")        # AutoModel*.from_pretrained loads it
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer

from ..errors import CheckpointError, ConfigError
from ..files import atomic_dir
from ..models.config import ModelConfig
from ..models.io import build_model
from ..models.mup import refuse_export
from ..models.state import load_model_state, model_state
from ..models.quantized import refuse_quantized
from ..models.task_head import TaskModel, TaskSpec

log = logging.getLogger(__name__)

ACTIVATIONS_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                       "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
# Buffers some checkpoints carry that are not weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "position_ids", "rotary_emb.inv_freq")


# ---- the mapping tables -------------------------------------------------------------------------
@dataclass
class Entry:
    """One lmforge tensor and the HF tensor(s) it is made of: ``hf`` names concatenated along
    rows (dim 0), optionally transposed (GPT-2 Conv1D) or with ``skip_rows`` leading rows that
    lmforge does not keep (BART positions)."""

    ours: str
    hf: tuple[str, ...]
    transpose: bool = False
    skip_rows: int = 0
    sizes: tuple[int, ...] | None = None  # rows of each HF part of a fused tensor


def _entry(ours: str, *hf: str, transpose: bool = False, skip_rows: int = 0,
           sizes: tuple[int, ...] | None = None) -> Entry:
    return Entry(ours, hf, transpose, skip_rows, sizes)


def _linear(ours: str, hf: str, bias: bool) -> list[Entry]:
    return [_entry(f"{ours}.weight", f"{hf}.weight")] + ([_entry(f"{ours}.bias", f"{hf}.bias")] if bias else [])


def _fused(ours: str, hfs: list[str], bias: bool, sizes: tuple[int, ...]) -> list[Entry]:
    out = [_entry(f"{ours}.weight", *(f"{h}.weight" for h in hfs), sizes=sizes)]
    return out + ([_entry(f"{ours}.bias", *(f"{h}.bias" for h in hfs), sizes=sizes)] if bias else [])


def _qkv_sizes(cfg: ModelConfig) -> tuple[int, int, int]:
    kv = cfg.n_kv_head * cfg.head_dim
    return cfg.n_head * cfg.head_dim, kv, kv


def _kv_sizes(cfg: ModelConfig) -> tuple[int, int]:
    return (cfg.n_kv_head * cfg.head_dim,) * 2


def _gate_up_sizes(cfg: ModelConfig) -> tuple[int, int]:
    return cfg.intermediate_size, cfg.intermediate_size


def _norm(ours: str, hf: str, cfg: ModelConfig, weight: str = "weight", bias: str = "bias") -> list[Entry]:
    out = [_entry(f"{ours}.weight", f"{hf}.{weight}")]
    if cfg.norm == "layernorm" and cfg.bias:
        out.append(_entry(f"{ours}.bias", f"{hf}.{bias}"))
    return out


def _qkv_bias(cfg: ModelConfig) -> bool:
    return cfg.bias if cfg.qkv_bias is None else cfg.qkv_bias


def gpt2_table(cfg: ModelConfig, prefix: str = "transformer.") -> list[Entry]:
    p = prefix
    t = [_entry("wte.weight", f"{p}wte.weight"), _entry("wpe.weight", f"{p}wpe.weight")]
    for i in range(cfg.n_layer):
        h, o = f"{p}h.{i}", f"blocks.{i}"
        t += _norm(f"{o}.ln_1", f"{h}.ln_1", cfg) + _norm(f"{o}.ln_2", f"{h}.ln_2", cfg)
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                             ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            t += [_entry(f"{o}.{ours}.weight", f"{h}.{theirs}.weight", transpose=True),
                  _entry(f"{o}.{ours}.bias", f"{h}.{theirs}.bias")]
    t += _norm("ln_f", f"{p}ln_f", cfg)
    if not cfg.tie_embeddings:
        t.append(_entry("lm_head.weight", "lm_head.weight"))
    return t


def llama_table(cfg: ModelConfig, prefix: str = "model.") -> list[Entry]:
    p = prefix
    t = [_entry("wte.weight", f"{p}embed_tokens.weight"), _entry("ln_f.weight", f"{p}norm.weight")]
    for i in range(cfg.n_layer):
        h, o = f"{p}layers.{i}", f"blocks.{i}"
        a = f"{h}.self_attn"
        t += [_entry(f"{o}.ln_1.weight", f"{h}.input_layernorm.weight"),
              _entry(f"{o}.ln_2.weight", f"{h}.post_attention_layernorm.weight")]
        t += _fused(f"{o}.attn.qkv", [f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"], _qkv_bias(cfg),
                    _qkv_sizes(cfg))
        t += _linear(f"{o}.attn.proj", f"{a}.o_proj", cfg.bias)
        t += _fused(f"{o}.mlp.fc", [f"{h}.mlp.gate_proj", f"{h}.mlp.up_proj"], cfg.bias,
                    _gate_up_sizes(cfg))
        t += _linear(f"{o}.mlp.proj", f"{h}.mlp.down_proj", cfg.bias)
    if not cfg.tie_embeddings:
        t.append(_entry("lm_head.weight", "lm_head.weight"))
    return t


def bert_table(cfg: ModelConfig, prefix: str = "bert.") -> list[Entry]:
    p, e = prefix, f"{prefix}embeddings"
    t = [_entry("wte.weight", f"{e}.word_embeddings.weight"),
         _entry("wpe.weight", f"{e}.position_embeddings.weight")]
    if cfg.type_vocab_size:
        t.append(_entry("wtt.weight", f"{e}.token_type_embeddings.weight"))
    if cfg.embedding_norm:
        t += _norm("emb_norm", f"{e}.LayerNorm", cfg)
    for i in range(cfg.n_layer):
        h, o = f"{p}encoder.layer.{i}", f"blocks.{i}"
        s = f"{h}.attention.self"
        t += _fused(f"{o}.attn.qkv", [f"{s}.query", f"{s}.key", f"{s}.value"], True, _qkv_sizes(cfg))
        t += _linear(f"{o}.attn.proj", f"{h}.attention.output.dense", True)
        t += _norm(f"{o}.ln_1", f"{h}.attention.output.LayerNorm", cfg)
        t += _linear(f"{o}.mlp.fc", f"{h}.intermediate.dense", True)
        t += _linear(f"{o}.mlp.proj", f"{h}.output.dense", True)
        t += _norm(f"{o}.ln_2", f"{h}.output.LayerNorm", cfg)
    if cfg.pooler:
        t += _linear("pooler", f"{p}pooler.dense", True)
    if cfg.mlm_head:
        c = "cls.predictions"
        t += _linear("mlm_head.dense", f"{c}.transform.dense", True)
        t += _norm("mlm_head.norm", f"{c}.transform.LayerNorm", cfg)
        t.append(_entry("mlm_head.bias", f"{c}.bias"))
    if cfg.pooler and cfg.sentence_head:
        t += _linear("sentence_head", "cls.seq_relationship", True)
    return t


def t5_table(cfg: ModelConfig) -> list[Entry]:
    t = [_entry("wte.weight", "shared.weight"),
         _entry("enc_pos_bias.embedding.weight",
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
         _entry("dec_pos_bias.embedding.weight",
                "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
         _entry("enc_ln_f.weight", "encoder.final_layer_norm.weight"),
         _entry("dec_ln_f.weight", "decoder.final_layer_norm.weight")]

    def mlp(o: str, h: str) -> list[Entry]:
        d = f"{h}.DenseReluDense"
        if cfg.mlp == "gated":
            fc = _entry(f"{o}.mlp.fc.weight", f"{d}.wi_0.weight", f"{d}.wi_1.weight",
                        sizes=_gate_up_sizes(cfg))
        else:
            fc = _entry(f"{o}.mlp.fc.weight", f"{d}.wi.weight")
        return [fc, _entry(f"{o}.mlp.proj.weight", f"{d}.wo.weight")]

    for i in range(cfg.n_layer):
        h, o = f"encoder.block.{i}.layer", f"enc_blocks.{i}"
        a = f"{h}.0.SelfAttention"
        t += [_entry(f"{o}.attn.qkv.weight", f"{a}.q.weight", f"{a}.k.weight", f"{a}.v.weight",
                     sizes=_qkv_sizes(cfg)),
              _entry(f"{o}.attn.proj.weight", f"{a}.o.weight"),
              _entry(f"{o}.ln_1.weight", f"{h}.0.layer_norm.weight"),
              _entry(f"{o}.ln_2.weight", f"{h}.1.layer_norm.weight")] + mlp(o, f"{h}.1")
    for i in range(cfg.decoder_layers):
        h, o = f"decoder.block.{i}.layer", f"dec_blocks.{i}"
        a, x = f"{h}.0.SelfAttention", f"{h}.1.EncDecAttention"
        t += [_entry(f"{o}.attn.qkv.weight", f"{a}.q.weight", f"{a}.k.weight", f"{a}.v.weight",
                     sizes=_qkv_sizes(cfg)),
              _entry(f"{o}.attn.proj.weight", f"{a}.o.weight"),
              _entry(f"{o}.cross_attn.q.weight", f"{x}.q.weight"),
              _entry(f"{o}.cross_attn.kv.weight", f"{x}.k.weight", f"{x}.v.weight",
                     sizes=_kv_sizes(cfg)),
              _entry(f"{o}.cross_attn.proj.weight", f"{x}.o.weight"),
              _entry(f"{o}.ln_1.weight", f"{h}.0.layer_norm.weight"),
              _entry(f"{o}.ln_cross.weight", f"{h}.1.layer_norm.weight"),
              _entry(f"{o}.ln_2.weight", f"{h}.2.layer_norm.weight")] + mlp(o, f"{h}.2")
    if not cfg.tie_embeddings:
        t.append(_entry("lm_head.weight", "lm_head.weight"))
    return t


def bart_table(cfg: ModelConfig) -> list[Entry]:
    t = [_entry("wte.weight", "model.shared.weight")]
    for side, blocks, n in (("encoder", "enc_blocks", cfg.n_layer), ("decoder", "dec_blocks", cfg.decoder_layers)):
        s, short = f"model.{side}", side[:3]
        t.append(_entry(f"{short}_wpe.weight", f"{s}.embed_positions.weight", skip_rows=2))
        t += _norm(f"{short}_emb_norm", f"{s}.layernorm_embedding", cfg)
        for i in range(n):
            h, o = f"{s}.layers.{i}", f"{blocks}.{i}"
            a = f"{h}.self_attn"
            t += _fused(f"{o}.attn.qkv", [f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"], True,
                        _qkv_sizes(cfg))
            t += _linear(f"{o}.attn.proj", f"{a}.out_proj", True)
            t += _norm(f"{o}.ln_1", f"{h}.self_attn_layer_norm", cfg)
            if side == "decoder":
                x = f"{h}.encoder_attn"
                t += _linear(f"{o}.cross_attn.q", f"{x}.q_proj", True)
                t += _fused(f"{o}.cross_attn.kv", [f"{x}.k_proj", f"{x}.v_proj"], True, _kv_sizes(cfg))
                t += _linear(f"{o}.cross_attn.proj", f"{x}.out_proj", True)
                t += _norm(f"{o}.ln_cross", f"{h}.encoder_attn_layer_norm", cfg)
            t += _linear(f"{o}.mlp.fc", f"{h}.fc1", True) + _linear(f"{o}.mlp.proj", f"{h}.fc2", True)
            t += _norm(f"{o}.ln_2", f"{h}.final_layer_norm", cfg)
    if not cfg.tie_embeddings:
        t.append(_entry("lm_head.weight", "lm_head.weight"))
    return t


# ---- configs ------------------------------------------------------------------------------------
def _activation(name: str, where: str) -> str:
    if name not in ACTIVATIONS_FROM_HF:
        raise CheckpointError(f"{where}: activation '{name}' is not supported "
                              f"(supported: {', '.join(ACTIVATIONS_FROM_HF)})")
    return ACTIVATIONS_FROM_HF[name]


def _rope(hf: dict) -> tuple[float, dict | None]:
    """rope base and scaling from either transformers 4 (rope_theta, rope_scaling) or 5
    (rope_parameters) config fields."""
    params = hf.get("rope_parameters") or {}
    theta = float(hf.get("rope_theta", params.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) in ("default", None):
        scaling = None
    return theta, (dict(scaling) if scaling else None)


def _first_set(*values):
    return next(v for v in values if v is not None)


def config_from_hf(hf: dict, tensors: set[str], where: str) -> tuple[str, ModelConfig]:
    """(family, ModelConfig) for a Hugging Face ``config.json`` dict; ``tensors`` (the names in
    the checkpoint) tell which optional heads are present."""
    kind = hf.get("model_type")
    dropout = 0.0  # inference / fine-tuning sets its own
    if kind == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
            raise CheckpointError(f"{where}: GPT-2 attention scaling variants are not supported")
        n_embd = hf["n_embd"]
        return "gpt2", ModelConfig(
            vocab_size=hf["vocab_size"], context_length=hf.get("n_positions", 1024), n_embd=n_embd,
            n_layer=hf["n_layer"], n_head=hf["n_head"], intermediate_size=hf.get("n_inner") or 4 * n_embd,
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            activation=_activation(hf.get("activation_function", "gelu_new"), where),
            tie_embeddings=hf.get("tie_word_embeddings", True), dropout=dropout)
    if kind in ("llama", "mistral", "qwen2"):
        if hf.get("mlp_bias"):
            raise CheckpointError(f"{where}: mlp_bias=true is not supported")
        theta, scaling = _rope(hf)
        heads = hf["num_attention_heads"]
        context = hf.get("max_position_embeddings", 2048)
        window = hf.get("sliding_window")
        if window and (kind == "mistral" or hf.get("use_sliding_window")) and window < context:
            log.warning(f"{where}: sliding-window attention ({window}) is not implemented; "
                          f"context_length is capped at {window}, where attention is exact")
            context = window
        attention_bias = bool(hf.get("attention_bias", False))
        return kind, ModelConfig(
            vocab_size=hf["vocab_size"], context_length=context, n_embd=hf["hidden_size"],
            n_layer=hf["num_hidden_layers"], n_head=heads,
            n_kv_head=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            intermediate_size=hf["intermediate_size"], pos_embedding="rope", rope_base=theta,
            rope_scaling=scaling, norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu",
            activation=_activation(hf.get("hidden_act", "silu"), where), bias=attention_bias,
            qkv_bias=True if kind == "qwen2" else None,
            tie_embeddings=hf.get("tie_word_embeddings", False), dropout=dropout)
    if kind == "bert":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(f"{where}: BERT position_embedding_type "
                                  f"'{hf['position_embedding_type']}' is not supported (absolute only)")
        pooler = any(n.endswith("pooler.dense.weight") for n in tensors)
        return "bert", ModelConfig(
            arch="encoder", vocab_size=hf["vocab_size"], context_length=hf.get("max_position_embeddings", 512),
            n_embd=hf["hidden_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"], norm_placement="post",
            norm_eps=hf.get("layer_norm_eps", 1e-12), activation=_activation(hf.get("hidden_act", "gelu"), where),
            type_vocab_size=hf.get("type_vocab_size", 2), embedding_norm=True, pooler=pooler,
            mlm_head="cls.predictions.transform.dense.weight" in tensors,
            sentence_head="cls.seq_relationship.weight" in tensors, dropout=dropout)
    if kind == "t5":
        proj = hf.get("feed_forward_proj", "relu")
        gated = proj.startswith("gated-")
        # transformers maps "gated-gelu" to the tanh approximation ("gelu_new").
        act = "gelu_new" if proj == "gated-gelu" else proj.removeprefix("gated-")
        tied = hf.get("tie_word_embeddings", True)
        scaled = hf.get("scale_decoder_outputs", tied)
        d_model = hf["d_model"]
        return "t5", ModelConfig(
            arch="encoder-decoder", vocab_size=hf["vocab_size"], context_length=hf.get("n_positions", 512),
            n_embd=d_model, n_layer=hf["num_layers"], n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"],
            n_head=hf["num_heads"], head_dim=hf["d_kv"], intermediate_size=hf["d_ff"],
            pos_embedding="relative", attention_scale=1.0, norm="rmsnorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-6), bias=False, mlp="gated" if gated else "mlp",
            activation=_activation(act, where), tie_embeddings=tied,
            output_scale=d_model ** -0.5 if scaled else None,
            decoder_start_token_id=_first_set(hf.get("decoder_start_token_id"), hf.get("pad_token_id"), 0),
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=hf.get("relative_attention_max_distance", 128), dropout=dropout)
    if kind == "bart":
        if hf.get("scale_embedding"):
            raise CheckpointError(f"{where}: BART scale_embedding=true is not supported")
        for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
            if hf.get(a) != hf.get(b):
                raise CheckpointError(f"{where}: {a} != {b} is not supported")
        return "bart", ModelConfig(
            arch="encoder-decoder", vocab_size=hf["vocab_size"],
            context_length=hf.get("max_position_embeddings", 1024), n_embd=hf["d_model"],
            n_layer=hf["encoder_layers"], n_decoder_layer=hf["decoder_layers"],
            n_head=hf["encoder_attention_heads"], intermediate_size=hf["encoder_ffn_dim"],
            norm_placement="post", embedding_norm=True,
            activation=_activation(hf.get("activation_function", "gelu"), where),
            tie_embeddings=hf.get("tie_word_embeddings", True),
            decoder_start_token_id=_first_set(hf.get("decoder_start_token_id"), hf.get("eos_token_id"), 2),
            dropout=dropout)
    raise CheckpointError(f"{where}: model_type '{kind}' is not supported (supported: gpt2, llama, "
                          "mistral, qwen2, bert, t5, bart)")


def family_of(cfg: ModelConfig) -> str:
    """The Hugging Face family an lmforge config maps onto exactly, or a ConfigError naming
    what has no equivalent."""
    def need(family: str, **want: Any) -> str:
        bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]
        if bad:
            raise ConfigError(f"this {cfg.arch} has no Hugging Face {family} equivalent: {', '.join(bad)}")
        return family

    refuse_export(cfg, "Hugging Face")

    if cfg.arch == "decoder":
        if cfg.pos_embedding == "learned":
            return need("gpt2", norm="layernorm", norm_placement="pre", mlp="mlp", bias=True,
                        qkv_bias=None, n_kv_head=cfg.n_head, head_dim=cfg.n_embd // cfg.n_head,
                        attention_scale=None, output_scale=None)
        # Llama: one bias switch for every projection; Qwen2: biases on q/k/v only.
        qwen2 = cfg.qkv_bias is True and not cfg.bias
        if not qwen2 and cfg.qkv_bias is not None and cfg.qkv_bias != cfg.bias:
            raise ConfigError(f"this decoder has no Hugging Face equivalent: qkv_bias={cfg.qkv_bias} "
                              f"with bias={cfg.bias}")
        return need("qwen2" if qwen2 else "llama", pos_embedding="rope", norm="rmsnorm",
                    norm_placement="pre", mlp="swiglu", attention_scale=None, output_scale=None)
    if cfg.arch == "encoder":
        return need("bert", pos_embedding="learned", norm="layernorm", norm_placement="post",
                    mlp="mlp", bias=True, embedding_norm=True, n_kv_head=cfg.n_head,
                    head_dim=cfg.n_embd // cfg.n_head, attention_scale=None)
    if cfg.arch == "encoder-decoder":
        if cfg.pos_embedding == "relative":
            return need("t5", norm="rmsnorm", norm_placement="pre", bias=False, attention_scale=1.0,
                        n_kv_head=cfg.n_head,
                        output_scale=cfg.n_embd ** -0.5 if cfg.tie_embeddings and cfg.output_scale else None)
        return need("bart", pos_embedding="learned", norm="layernorm", norm_placement="post", bias=True,
                    embedding_norm=True, n_kv_head=cfg.n_head, head_dim=cfg.n_embd // cfg.n_head,
                    attention_scale=None, output_scale=None)
    raise ConfigError(f"an {cfg.arch} model has no Hugging Face equivalent")


def config_to_hf(cfg: ModelConfig, family: str, architecture: str, special_ids: dict[str, int | None]) -> dict:
    """The Hugging Face ``config.json`` dict for ``cfg`` (see :func:`family_of`)."""
    ids = {k: v for k, v in special_ids.items() if v is not None}
    common = {"architectures": [architecture], "vocab_size": cfg.vocab_size,
              "tie_word_embeddings": cfg.tie_embeddings, **ids}
    act = ACTIVATIONS_TO_HF[cfg.activation]
    if family == "gpt2":
        return {**common, "model_type": "gpt2", "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
                "n_head": cfg.n_head, "n_positions": cfg.context_length, "n_ctx": cfg.context_length,
                "n_inner": cfg.intermediate_size, "activation_function": act,
                "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout,
                "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout}
    if family in ("llama", "qwen2"):
        rope = {"rope_type": "default", "rope_theta": cfg.rope_base}
        if cfg.rope_scaling:
            rope = {**cfg.rope_scaling, "rope_theta": cfg.rope_base}
        out = {**common, "model_type": family, "hidden_size": cfg.n_embd, "intermediate_size": cfg.intermediate_size,
               "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
               "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
               "max_position_embeddings": cfg.context_length, "rms_norm_eps": cfg.norm_eps,
               "hidden_act": act, "rope_theta": cfg.rope_base, "rope_parameters": rope,
               "attention_dropout": cfg.dropout}
        if cfg.rope_scaling:
            out["rope_scaling"] = dict(cfg.rope_scaling)
        if family == "llama":
            out |= {"attention_bias": cfg.bias, "mlp_bias": cfg.bias}
        else:
            out |= {"use_sliding_window": False, "sliding_window": None}
        return out
    if family == "bert":
        return {**common, "model_type": "bert", "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
                "num_attention_heads": cfg.n_head, "intermediate_size": cfg.intermediate_size,
                "hidden_act": act, "max_position_embeddings": cfg.context_length,
                "type_vocab_size": cfg.type_vocab_size or 1, "layer_norm_eps": cfg.norm_eps,
                "position_embedding_type": "absolute", "hidden_dropout_prob": cfg.dropout,
                "attention_probs_dropout_prob": cfg.dropout}
    if family == "t5":
        ff = act
        if cfg.mlp == "gated":
            if cfg.activation not in ("gelu_tanh", "relu", "silu"):
                raise ConfigError(f"a gated T5 MLP with activation '{cfg.activation}' has no Hugging "
                                  "Face equivalent (gated-gelu means the tanh approximation)")
            ff = "gated-" + {"gelu_tanh": "gelu"}.get(cfg.activation, act)
        return {**common, "model_type": "t5", "d_model": cfg.n_embd, "d_kv": cfg.head_dim, "d_ff": cfg.intermediate_size,
                "num_layers": cfg.n_layer, "num_decoder_layers": cfg.decoder_layers, "num_heads": cfg.n_head,
                "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
                "relative_attention_max_distance": cfg.relative_attention_max_distance,
                "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": ff, "n_positions": cfg.context_length,
                "is_encoder_decoder": True, "dropout_rate": cfg.dropout,
                "scale_decoder_outputs": cfg.output_scale is not None,
                "decoder_start_token_id": cfg.decoder_start_token_id}
    return {**common, "model_type": "bart", "d_model": cfg.n_embd, "encoder_layers": cfg.n_layer,
            "decoder_layers": cfg.decoder_layers, "encoder_attention_heads": cfg.n_head,
            "decoder_attention_heads": cfg.n_head, "encoder_ffn_dim": cfg.intermediate_size,
            "decoder_ffn_dim": cfg.intermediate_size, "activation_function": act,
            "max_position_embeddings": cfg.context_length, "scale_embedding": False,
            "is_encoder_decoder": True, "dropout": cfg.dropout, "attention_dropout": cfg.dropout,
            "activation_dropout": 0.0, "decoder_start_token_id": cfg.decoder_start_token_id,
            "forced_eos_token_id": ids.get("eos_token_id")}


def table_for(family: str, cfg: ModelConfig, tensors: set[str] | None = None) -> list[Entry]:
    """The mapping table; ``tensors`` (an import's names) picks the optional prefix."""
    def prefix(default: str) -> str:
        if tensors is None:
            return default
        return default if any(n.startswith(default) for n in tensors) else ""

    if family == "gpt2":
        return gpt2_table(cfg, prefix("transformer."))
    if family in ("llama", "mistral", "qwen2"):
        return llama_table(cfg, prefix("model."))
    if family == "bert":
        return bert_table(cfg, prefix("bert."))
    if family == "t5":
        return t5_table(cfg)
    return bart_table(cfg)


# ---- weights ------------------------------------------------------------------------------------
def state_from_hf(table: list[Entry], get: Callable[[str], torch.Tensor | None], where: str) -> dict[str, torch.Tensor]:
    """lmforge tensors from HF ones; every missing HF tensor is named in one error."""
    state, missing = {}, []
    for e in table:
        parts = [get(name) for name in e.hf]
        absent = [n for n, t in zip(e.hf, parts) if t is None]
        if absent:
            missing += absent
            continue
        value = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if e.transpose:
            value = value.t()
        state[e.ours] = value[e.skip_rows:].contiguous()
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise CheckpointError(f"{where}: missing tensors {', '.join(missing[:8])}{more}")
    return state


def state_to_hf(table: list[Entry], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF tensors from lmforge ones (the inverse of :func:`state_from_hf`)."""
    out = {}
    for e in table:
        value = state[e.ours]
        if e.skip_rows:
            value = torch.cat([value.new_zeros((e.skip_rows, *value.shape[1:])), value])
        if e.transpose:
            value = value.t()
        if len(e.hf) == 1:
            out[e.hf[0]] = value.contiguous()
            continue
        for name, part in zip(e.hf, value.split(list(e.sizes), dim=0)):
            out[name] = part.contiguous()
    return out


# ---- folders ------------------------------------------------------------------------------------
def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards listed in its index."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"cannot read {index}: {exc}") from None
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
    elif (folder / "pytorch_model.bin").is_file():
        raise CheckpointError(f"{folder} has only pytorch_model.bin, a pickle, which lmforge never "
                              "loads; convert it to safetensors first")
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                for name in handle.keys():
                    tensors[name] = handle.get_tensor(name)
        except Exception as exc:  # safetensors raises several types for truncated/corrupt files
            raise CheckpointError(f"corrupt or unreadable weights file {f}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return tensors


def is_hf_folder(path: str | Path) -> bool:
    """A folder whose config.json is Hugging Face's (has model_type, no lmforge section)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "lmforge" not in data and "model_type" in data


def load_hf(path: str | Path, device: str | torch.device = "cpu",
            dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, Tokenizer | None, dict]:
    """(model, tokenizer or None, tokenizer_config dict) from a Hugging Face model folder."""
    folder = Path(path)
    where = str(folder)
    try:
        hf = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {folder / 'config.json'}: {exc}") from None
    tensors = read_safetensors(folder)
    family, cfg = config_from_hf(hf, set(tensors), where)
    used: set[str] = set()

    def get(name: str) -> torch.Tensor | None:
        if name in tensors:
            used.add(name)
            return tensors[name]
        return None

    task = task_spec_from_hf(hf, family)
    table = table_for(family, cfg, set(tensors))
    if task is not None:  # the head's weights come in as the task model's ``head``
        spec, head = task
        table = [e for e in table if e.ours != "lm_head.weight"]
        table.append(_entry("head.weight", f"{head}.weight"))
        if f"{head}.bias" in tensors:
            table.append(_entry("head.bias", f"{head}.bias"))
    state = state_from_hf(table, get, where)
    if family == "bart":
        bias = tensors.get("final_logits_bias")
        if bias is not None and bool(bias.any()):
            raise CheckpointError(f"{where}: a non-zero BART final_logits_bias is not supported")
        used.add("final_logits_bias")
    # HF tied-weight copies (T5/BART per-stack embeddings, a stored tied lm_head) are not extra.
    tied_copies = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                   "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
                   "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    if cfg.tie_embeddings:
        tied_copies.add("lm_head.weight")
    unused = sorted(n for n in tensors if n not in used and n not in tied_copies
                    and not n.endswith(IGNORED_SUFFIXES))
    if unused:
        log.warning(f"{where}: {len(unused)} tensor(s) not used (heads lmforge does not "
                      f"import): {', '.join(unused[:6])}{' ...' if len(unused) > 6 else ''}")
    model = build_model(cfg)
    if task is not None:
        if family != "bert":
            cfg.tie_embeddings = True  # no LM head in a sequence-classification checkpoint
            model = build_model(cfg)
        model = TaskModel(model, task[0])
        if model.head.bias is None and "head.bias" in state or model.head.bias is not None and "head.bias" not in state:
            raise CheckpointError(f"{where}: the {task[1]} head's bias does not fit lmforge's head")
    load_model_state(model, state, where)
    model.to(device=device, dtype=dtype) if dtype else model.to(device)
    tokenizer, tok_cfg = read_hf_tokenizer(folder)
    return model.eval(), tokenizer, tok_cfg


def read_hf_tokenizer(folder: Path) -> tuple[Tokenizer | None, dict]:
    """The folder's tokenizer (tokenizer.json, vocab.json + merges.txt or vocab.txt) and its
    tokenizer_config.json (chat template, special token names), if present."""
    from ..errors import DataError
    from ..tokenization import load_tokenizer
    tok_cfg: dict = {}
    if (folder / "tokenizer_config.json").is_file():
        try:
            tok_cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            tok_cfg = {}
    try:
        tokenizer = load_tokenizer(folder)
    except DataError:
        tokenizer = None
    return tokenizer, tok_cfg


# Special tokens, by role, in the spellings lmforge's tokenizers and common HF ones use.
SPECIAL_ROLES = {
    "bos_token": ("<s>", "<|endoftext|>", "<|im_start|>", "[CLS]", "<bos>"),
    "eos_token": ("</s>", "<|endoftext|>", "<|im_end|>", "[SEP]", "<eos>"),
    "unk_token": ("<unk>", "[UNK]", "<|endoftext|>"),
    "pad_token": ("<pad>", "[PAD]"),
    "mask_token": ("<mask>", "[MASK]"),
    "cls_token": ("[CLS]",),
    "sep_token": ("[SEP]",),
}


def special_token_names(tokenizer: Tokenizer, tok_cfg: dict | None = None) -> dict[str, str]:
    """Role -> token text, from ``tok_cfg`` where it names them, else found in the vocabulary."""
    out: dict[str, str] = {}
    for role, candidates in SPECIAL_ROLES.items():
        given = (tok_cfg or {}).get(role)
        if isinstance(given, dict):
            given = given.get("content")
        if given and tokenizer.token_to_id(given) is not None:
            out[role] = given
            continue
        for c in candidates:
            if tokenizer.token_to_id(c) is not None:
                out[role] = c
                break
    return out


def export_hf(model: torch.nn.Module, tokenizer: Tokenizer | None, out: str | Path,
              tokenizer_config: dict | None = None, architecture: str | None = None,
              dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` (and its tokenizer) as a Hugging Face folder, atomically.

    ``architecture`` overrides the class recorded in config.json (e.g. "BertForMaskedLM" to
    drop a pooler and NSP head); the default is the class holding every weight the model has.
    """
    layout = hf_layout(model, tokenizer, tokenizer_config, architecture)
    hf_state = layout.state
    if dtype is not None:
        hf_state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in hf_state.items()}
    out = Path(out)
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(layout.config, indent=2) + "\n")
        save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp, model.config, layout.names, tokenizer_config,
                               layout.family)
    return out


@dataclass
class HFLayout:
    """How a model is laid out as a Hugging Face folder: family, config.json dict, the mapping
    table, the HF-named weights and the special token names for the tokenizer files."""

    family: str
    config: dict
    table: list[Entry]
    state: dict[str, torch.Tensor]
    names: dict[str, str]


def hf_table(model: torch.nn.Module, family: str, architecture: str,
             tokenizer: Tokenizer | None = None) -> tuple[str, ModelConfig, list[Entry]]:
    """(HF class, config as that class holds it, mapping table) of ``model`` exported as
    ``architecture`` (None: the class holding every weight the model has)."""
    if getattr(model, "spec", None) is not None:  # a task model: backbone + head in one HF class
        arch, cfg_for_table, head = task_class(family, model, tokenizer, architecture)
        table = [e for e in table_for(family, cfg_for_table) if e.ours != "lm_head.weight"] + head
        return arch, cfg_for_table, table
    arch = architecture or default_architecture(model, family)
    cfg_for_table = model.config
    if family == "bert":  # a chosen head-less class drops the weights it has no place for
        cfg_for_table = _bert_cfg_for(model.config, arch)
    return arch, cfg_for_table, table_for(family, cfg_for_table)


def hf_layout(model: torch.nn.Module, tokenizer: Tokenizer | None,
              tokenizer_config: dict | None = None, architecture: str | None = None) -> HFLayout:
    """The :class:`HFLayout` of ``model``; a ConfigError when it has no Hugging Face form
    (also for a quantized model: transformers has no place for lmforge's int8/int4 tensors)."""
    refuse_quantized(model, "a Hugging Face folder")
    cfg = model.config
    family = family_of(cfg)
    spec = getattr(model, "spec", None)
    arch, cfg_for_table, table = hf_table(model, family, architecture, tokenizer)
    hf_state = state_to_hf(table, model_state(model))
    if family == "bart":
        hf_state["final_logits_bias"] = torch.zeros(1, cfg.vocab_size)
    names = special_token_names(tokenizer, tokenizer_config) if tokenizer is not None else {}
    ids = {f"{role}_id": tokenizer.token_to_id(tok) for role, tok in names.items()
           if role in ("bos_token", "eos_token", "pad_token")} if tokenizer is not None else {}
    if family == "bart" and tokenizer is not None:
        ids.setdefault("pad_token_id", None)
    if spec is not None and cfg.arch == "decoder" and ids.get("pad_token_id") in (None, ids.get("eos_token_id")):
        # lmforge ends a classified text with end-of-text, so HF's "last token that is not
        # padding" must not treat that token as padding: leave pad_token_id unset.
        ids.pop("pad_token_id", None)
        log.warning(f"the tokenizer has no pad token distinct from its end-of-text token, so "
                    f"config.json sets no pad_token_id and transformers' {arch} classifies one "
                    f"text per call (a batch of several raises); to batch there, set "
                    f"model.config.pad_token_id to an id your texts never contain, e.g. "
                    f"{pad_id_hint(tokenizer)}")
    hf_config = config_to_hf(cfg_for_table, family, arch, ids)
    if family == "bert" and tokenizer is not None:
        hf_config["pad_token_id"] = ids.get("pad_token_id", 0)
    if spec is not None:
        hf_config |= task_config(spec)
    return HFLayout(family, hf_config, table, hf_state, names)


# Fine-tuned heads: (family, task) -> (HF class, name of the head's Linear in it).
TASK_CLASSES = {
    ("bert", "classification"): ("BertForSequenceClassification", "classifier"),
    ("bert", "regression"): ("BertForSequenceClassification", "classifier"),
    ("bert", "token-classification"): ("BertForTokenClassification", "classifier"),
    ("bert", "qa"): ("BertForQuestionAnswering", "qa_outputs"),
    **{(f, t): (f"{c}ForSequenceClassification", "score")
       for f, c in (("gpt2", "GPT2"), ("llama", "Llama"), ("qwen2", "Qwen2"))
       for t in ("classification", "regression")},
}


def task_class(family: str, model: torch.nn.Module, tokenizer: Tokenizer | None,
               architecture: str | None) -> tuple[str, ModelConfig, list[Entry]]:
    """(HF class, backbone config as that class holds it, head table entries) of a task model."""
    from dataclasses import replace
    spec, cfg = model.spec, model.config
    if (family, spec.task) not in TASK_CLASSES:
        raise ConfigError(f"a {spec.task} head on a {family} model has no Hugging Face class "
                          f"(supported: {', '.join(c for c, _ in dict.fromkeys(TASK_CLASSES.values()))})")
    arch, head = TASK_CLASSES[(family, spec.task)]
    if architecture and architecture != arch:
        raise ConfigError(f"a {spec.task} model exports as {arch}, not {architecture}")
    if family == "bert":
        sequence = spec.task in ("classification", "regression")
        if sequence and spec.pooling != "pooler":
            raise ConfigError(f"BertForSequenceClassification pools with BERT's pooler; this head "
                              f"uses pooling '{spec.pooling}' (fine-tune with --pooling pooler to export)")
        cfg = replace(cfg, mlm_head=False, sentence_head=False, pooler=sequence)
    elif spec.pooling != "last":
        raise ConfigError(f"{arch} reads the last token; this head uses pooling '{spec.pooling}'")
    entries = [_entry("head.weight", f"{head}.weight")]
    if model.head.bias is not None:
        entries.append(_entry("head.bias", f"{head}.bias"))
    return arch, cfg, entries


def pad_id_hint(tokenizer: Tokenizer | None) -> str:
    """A token id a padded batch can use as pad_token_id: a special token that texts do not contain
    and lmforge's classification input does not end with."""
    if tokenizer is None:
        return "an unused special token's id"
    names = special_token_names(tokenizer)
    for role in ("unk_token", "bos_token", "mask_token"):
        tok = names.get(role)
        if tok is not None and tok != names.get("eos_token"):
            return f"{tokenizer.token_to_id(tok)} ({tok})"
    return "an unused special token's id"


def task_config(spec) -> dict:
    """config.json fields of a task head: label maps and problem type."""
    if spec.task == "regression":
        return {"num_labels": 1, "problem_type": "regression"}
    if spec.task == "qa":
        return {}
    out = {"id2label": dict(enumerate(spec.labels)), "label2id": {k: i for i, k in enumerate(spec.labels)},
           "num_labels": len(spec.labels)}
    if spec.task == "classification":
        out["problem_type"] = "single_label_classification"
    return out


def task_spec_from_hf(hf: dict, family: str):
    """The TaskSpec of a Hugging Face task class, or None for base / LM / MLM classes."""
    arch = (hf.get("architectures") or [""])[0]
    for (fam, task), (cls, head) in TASK_CLASSES.items():
        if cls == arch and fam == family:
            if task == "regression" and hf.get("problem_type") != "regression" and hf.get("num_labels", 2) != 1:
                continue
            if task == "classification" and (hf.get("problem_type") == "regression" or hf.get("num_labels") == 1):
                continue
            labels = []
            if task in ("classification", "token-classification"):
                id2label = hf.get("id2label") or {}
                labels = [id2label.get(str(i), id2label.get(i, f"LABEL_{i}")) for i in range(len(id2label))]
            pooling = ("pooler" if family == "bert" else "last") if task in ("classification", "regression") else "auto"
            return TaskSpec(task, labels=labels, pooling=pooling), head
    return None


HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
              "t5": "T5ForConditionalGeneration", "bart": "BartForConditionalGeneration"}


def default_architecture(model: torch.nn.Module, family: str) -> str:
    if family != "bert":
        return HF_CLASSES[family]
    cfg = model.config
    if cfg.mlm_head and cfg.pooler and cfg.sentence_head:
        return "BertForPreTraining"
    if cfg.mlm_head:
        return "BertForMaskedLM"
    return "BertModel"


def _bert_cfg_for(cfg: ModelConfig, arch: str) -> ModelConfig:
    """The encoder parts an HF BERT class holds: BertForMaskedLM has no pooler or NSP head,
    BertModel no heads."""
    from dataclasses import replace
    keep = {"BertForPreTraining": dict(), "BertForMaskedLM": dict(pooler=False, sentence_head=False),
            "BertModel": dict(mlm_head=False, sentence_head=False)}
    if arch not in keep:
        raise ConfigError(f"architecture '{arch}' is not one lmforge writes for an encoder "
                          f"(choose {', '.join(keep)})")
    new = replace(cfg, **keep[arch])
    if arch == "BertForPreTraining" and not (cfg.mlm_head and cfg.pooler and cfg.sentence_head):
        raise ConfigError("BertForPreTraining needs the MLM head, pooler and NSP head; this model "
                          "lacks some (choose BertForMaskedLM or BertModel)")
    if arch == "BertForMaskedLM" and not cfg.mlm_head:
        raise ConfigError("BertForMaskedLM needs an MLM head; this model has none")
    return new


def write_hf_tokenizer(tokenizer: Tokenizer, folder: Path, cfg: ModelConfig, names: dict[str, str],
                       tokenizer_config: dict | None, family: str) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json, which
    ``AutoTokenizer.from_pretrained`` reads as a fast tokenizer."""
    tokenizer.save(str(folder / "tokenizer.json"))
    src = dict(tokenizer_config or {})
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.context_length,
               "clean_up_tokenization_spaces": False, **names}
    if family == "bert":
        tok_cfg["do_lower_case"] = _lowercases(tokenizer)
    if src.get("chat_template"):
        tok_cfg["chat_template"] = src["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(names, indent=2, ensure_ascii=False) + "\n")


def _lowercases(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer's normalizer lowercases (a BertNormalizer flag or a Lowercase step)."""
    def walk(node) -> bool:
        if isinstance(node, dict):
            return (node.get("type") == "Lowercase" or node.get("lowercase") is True
                    or any(walk(v) for v in node.values()))
        return isinstance(node, list) and any(walk(v) for v in node)
    return walk(json.loads(tokenizer.to_str()).get("normalizer"))
