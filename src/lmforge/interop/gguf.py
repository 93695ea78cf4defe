"""llama.cpp's GGUF files: read them into lmforge (config, float32 weights, tokenizer) and write
lmforge decoders out for llama.cpp, Ollama and LM Studio.

    gg = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")   # config, state, tokenizer, ...
    model, tok, tok_config = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    write_gguf(model, tok, "model-q8.gguf", dtype="q8_0")

Three GGUF architectures map onto ``ModelConfig``: "llama" (Llama, SmolLM2, Mistral), "qwen2"
(Llama with q/k/v biases) and "gpt2". Quantized tensors are dequantized to float32 by the
``gguf`` package; tokenizers are byte-level BPE ("gpt2" in llama.cpp's terms) only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import (AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers,
                        processors)

from ..errors import CheckpointError, ConfigError
from ..files import atomic_file
from ..models.config import ModelConfig
from ..models.io import build_model
from ..models.mup import refuse_export
from ..models.state import load_model_state, model_state
from ..models.quantized import dequantized_state, quantization_of
from ..models.transformer import GPT, rope_frequencies
from ..tokenization.info import eos_token_id
from ..tokenization.pipelines import set_byte_level_pipeline

ARCHITECTURES = ("gpt2", "llama", "qwen2")
DTYPES = ("f32", "f16", "q8_0", "q4_0")
# llama.cpp's token types (gguf.TokenType), needed before gguf is imported.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
Q8_0_BLOCK = 32  # values per q8_0 block: a row must be a whole number of blocks

# Pre-tokenizer regexes of the Llama 3 and Qwen2 tokenizer.json files.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gpt2_bytes():
    return pre_tokenizers.ByteLevel(add_prefix_space=False)


def _split_then_bytes(regex: str):
    bytes_only = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                    bytes_only])


# llama.cpp's ``tokenizer.ggml.pre`` -> (normalizer, pre-tokenizer, BPE ignore_merges) as the
# model's own tokenizer.json has them. The first name of an equal pipeline is the one written.
PRE_TOKENIZERS = {
    "gpt-2": lambda: (None, _gpt2_bytes(), False),
    "default": lambda: (None, _gpt2_bytes(), False),
    "smollm": lambda: (None, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                      _gpt2_bytes()]), False),
    "llama-bpe": lambda: (None, _split_then_bytes(_LLAMA3_SPLIT), True),
    "llama3": lambda: (None, _split_then_bytes(_LLAMA3_SPLIT), True),
    "llama-v3": lambda: (None, _split_then_bytes(_LLAMA3_SPLIT), True),
    "qwen2": lambda: (normalizers.NFC(), _split_then_bytes(_QWEN2_SPLIT), False),
}

# Config values each GGUF architecture fixes; the rest are read from metadata.
_GPT2_STYLE = dict(pos_embedding="learned", norm="layernorm", mlp="mlp", activation="gelu_tanh",
                   bias=True)
_LLAMA_STYLE = dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", activation="silu",
                    bias=False)
_PLAIN_DECODER = dict(arch="decoder", norm_placement="pre", output_scale=None, attention_scale=None)


@dataclass
class GGUFModel:
    """What a GGUF file holds, in lmforge's terms: ``state`` fits ``load_model_state`` for a
    model built from ``config``; ``tokenizer_config`` uses Hugging Face tokenizer_config keys."""

    config: ModelConfig
    state: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError("reading/writing GGUF needs the gguf package: "
                          "pip install gguf") from None
    return gguf


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _listing(names: list[str], limit: int = 5) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _f32(value: float) -> float:
    """A float32 metadata value as its shortest decimal (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


# ---------------------------------------------------------------------------------------------
# Tensor layout: one table drives both reading and writing.


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face's half-split q/k rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf.py's
    ``permute``): llama.cpp's "llama" rotates consecutive pairs, not the two halves."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, 2, half, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of :func:`_permute`."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _layout(cfg: ModelConfig, arch: str) -> dict[str, list[tuple[str, int | None, int | None]]]:
    """Each lmforge parameter and the GGUF tensors its rows are made of, in order, as
    (name, rows, heads): rows None = the whole tensor; heads = undo llama.cpp's q/k permutation."""
    layout: dict[str, list] = {"wte.weight": [("token_embd.weight", None, None)],
                               "ln_f.weight": [("output_norm.weight", None, None)]}
    if not cfg.tie_embeddings:
        layout["lm_head.weight"] = [("output.weight", None, None)]
    if arch == "gpt2":
        layout["wpe.weight"] = [("position_embd.weight", None, None)]
        layout["ln_f.bias"] = [("output_norm.bias", None, None)]
    q_rows, kv_rows = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    # Only llama.cpp's "llama" rotates interleaved pairs; "qwen2" rotates halves, as lmforge does.
    q_heads, k_heads = (cfg.n_head, cfg.n_kv_head) if arch == "llama" else (None, None)
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"blk.{i}."
        if arch == "gpt2":
            pairs = {"ln_1": "attn_norm", "attn.qkv": "attn_qkv", "attn.proj": "attn_output",
                     "ln_2": "ffn_norm", "mlp.fc": "ffn_up", "mlp.proj": "ffn_down"}
            for a, b in pairs.items():
                for kind in ("weight", "bias"):
                    layout[f"{ours}{a}.{kind}"] = [(f"{theirs}{b}.{kind}", None, None)]
            continue
        kinds = ("weight", "bias") if cfg.qkv_bias else ("weight",)
        for kind in kinds:
            layout[f"{ours}attn.qkv.{kind}"] = [(f"{theirs}attn_q.{kind}", q_rows, q_heads),
                                                (f"{theirs}attn_k.{kind}", kv_rows, k_heads),
                                                (f"{theirs}attn_v.{kind}", kv_rows, None)]
        layout[f"{ours}ln_1.weight"] = [(f"{theirs}attn_norm.weight", None, None)]
        layout[f"{ours}attn.proj.weight"] = [(f"{theirs}attn_output.weight", None, None)]
        layout[f"{ours}ln_2.weight"] = [(f"{theirs}ffn_norm.weight", None, None)]
        layout[f"{ours}mlp.fc.weight"] = [(f"{theirs}ffn_gate.weight", cfg.intermediate_size, None),
                                          (f"{theirs}ffn_up.weight", cfg.intermediate_size, None)]
        layout[f"{ours}mlp.proj.weight"] = [(f"{theirs}ffn_down.weight", None, None)]
    return layout


# ---------------------------------------------------------------------------------------------
# Reading


def _open(path: Path):
    gguf = _gguf()
    if not path.is_file():
        raise CheckpointError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(path)
        meta = {key: f.contents() for key, f in reader.fields.items()}
    except Exception as exc:  # the reader raises whatever numpy or struct parsing hit first
        raise CheckpointError(f"{path} is not a readable GGUF file: {_first_line(exc)}") from None
    return gguf, reader, meta


def _dequantized(gguf, reader, path: Path) -> dict[str, torch.Tensor]:
    """Every tensor as float32 in PyTorch's (out, in) order: GGUF lists dims innermost first,
    and the reader's numpy shape is already that list reversed."""
    tensors, unsupported = {}, []
    for t in reader.tensors:
        try:
            array = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            unsupported.append(f"{t.name} ({t.tensor_type.name})")
            continue
        # F32 comes back as a view of the read-only memory map: copy it out.
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            array = array.copy()
        tensors[t.name] = torch.from_numpy(array)
    if unsupported:
        raise CheckpointError(f"{path}: tensor types gguf cannot dequantize: "
                              f"{_listing(unsupported)}")
    return tensors


def _config(meta: dict, tensors: dict[str, torch.Tensor], arch: str, path: Path) -> ModelConfig:
    missing: list[str] = []

    def get(key: str, default: Any = ...):
        value = meta.get(f"{arch}.{key}", default)
        if value is ...:
            missing.append(f"{arch}.{key}")
        elif isinstance(value, list):
            raise CheckpointError(f"{path}: per-layer {arch}.{key} is not supported")
        return value

    n_embd, n_head = get("embedding_length"), get("attention.head_count")
    values = dict(n_layer=get("block_count"), context_length=get("context_length"), n_embd=n_embd,
                  n_head=n_head, intermediate_size=get("feed_forward_length"))
    if missing:
        raise CheckpointError(f"{path}: metadata lacks {_listing(missing)}")
    if get("expert_count", 0):
        raise CheckpointError(f"{path}: mixture-of-experts models are not supported")
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{path}: no token_embd.weight tensor")
    values.update(_PLAIN_DECODER, vocab_size=tensors["token_embd.weight"].shape[0],
                  n_kv_head=get("attention.head_count_kv", n_head),
                  head_dim=get("attention.key_length", n_embd // n_head))
    if get("attention.value_length", values["head_dim"]) != values["head_dim"]:
        raise CheckpointError(f"{path}: attention value_length differs from key_length")
    output = tensors.get("output.weight")
    if arch == "gpt2":
        # llama.cpp's converter writes GPT-2's tied head out as a copy of the embedding.
        tied = output is None or torch.equal(output, tensors["token_embd.weight"])
        values.update(_GPT2_STYLE, norm_eps=_f32(get("attention.layer_norm_epsilon", 1e-5)),
                      tie_embeddings=tied)
    else:
        if get("rope.dimension_count", values["head_dim"]) != values["head_dim"]:
            raise CheckpointError(f"{path}: partial rotary embeddings (rope.dimension_count "
                                  f"{get('rope.dimension_count')} < head_dim {values['head_dim']}) "
                                  "are not supported")
        has_qkv_bias = "blk.0.attn_q.bias" in tensors or arch == "qwen2"
        values.update(_LLAMA_STYLE, norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
                      rope_base=_f32(get("rope.freq_base", 10000.0)), tie_embeddings=output is None,
                      qkv_bias=True if has_qkv_bias else None)
        values["rope_scaling"] = _read_rope_scaling(meta, tensors, arch, values, path)
    try:
        return ModelConfig.from_dict(values, where=str(path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def _read_rope_scaling(meta: dict, tensors: dict, arch: str, values: dict,
                       path: Path) -> dict | None:
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    factors = tensors.get("rope_freqs.weight")
    if factors is not None and arch == "llama" and kind == "none":
        old_len = meta.get(f"{arch}.rope.scaling.original_context_length", 8192)
        return _llama3_scaling(factors, values, old_len, path)
    if factors is None and kind == "none":
        factor = meta.get(f"{arch}.rope.scale_linear", 1.0)  # older files' linear scaling
        return None if factor == 1.0 else {"rope_type": "linear", "factor": _f32(factor)}
    if factors is None and kind == "linear":
        factor = meta.get(f"{arch}.rope.scaling.factor", 1.0)
        return {"rope_type": "linear", "factor": _f32(factor)}
    what = "rope_freqs" if factors is not None else repr(kind)
    raise CheckpointError(f"{path}: RoPE scaling {what} on {arch!r} is not supported "
                          "(supported: linear, Llama 3 rope_freqs on llama)")


def _llama3_scaling(factors: torch.Tensor, values: dict, old_len: int, path: Path) -> dict | None:
    """ModelConfig's Llama 3 ``rope_scaling`` whose frequencies equal llama.cpp's per-frequency
    divisors ``rope_freqs``; refused when no such parameters exist."""
    plain = ModelConfig(head_dim=values["head_dim"], rope_base=values["rope_base"])
    inv_freq, f = rope_frequencies(plain).double(), factors.double()
    factor = float(f.max())
    if factor == 1.0:
        return None
    wavelen = 2 * math.pi / inv_freq
    low, high = 1.0, 4.0  # Llama 3.1 / 3.2's values: used when too few frequencies are blended
    blended = (f > 1 + 1e-6) & (f < factor - 1e-6)
    if int(blended.sum()) >= 2:
        # In the blended band s = (factor / f - 1) / (factor - 1) is a line in 1 / wavelen:
        # s = old_len / (high - low) / wavelen - low / (high - low). Fit it for low and high.
        s = (factor / f[blended] - 1) / (factor - 1)
        slope, intercept = np.polyfit((1 / wavelen[blended]).numpy(), s.numpy(), 1)
        width = old_len / slope
        low, high = float(-intercept * width), float(-intercept * width + width)
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
               "high_freq_factor": high, "original_max_position_embeddings": int(old_len)}
    scaled = rope_frequencies(ModelConfig(head_dim=values["head_dim"],
                                          rope_base=values["rope_base"], rope_scaling=scaling))
    if not torch.allclose(scaled.double(), inv_freq / f, rtol=1e-4, atol=0.0):
        raise CheckpointError(f"{path}: rope_freqs does not follow Llama 3 RoPE scaling; "
                              "lmforge cannot represent it")
    return scaling


def _state(tensors: dict[str, torch.Tensor], cfg: ModelConfig, arch: str, path: Path) -> dict:
    layout = _layout(cfg, arch)
    wanted = [name for pieces in layout.values() for name, _, _ in pieces]
    missing = [name for name in wanted if name not in tensors]
    # Read into the config instead: RoPE divisors, and a tied head's copy of the embedding.
    derived = {"rope_freqs.weight"} | ({"output.weight"} if cfg.tie_embeddings else set())
    unexpected = sorted(set(tensors) - set(wanted) - derived)
    if missing or unexpected:
        parts = ([f"missing tensors {_listing(missing)}"] if missing else []) + (
            [f"tensors lmforge has no place for: {_listing(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{path} ({arch}): {'; '.join(parts)}")
    state, wrong = {}, []
    with torch.device("meta"):  # the shapes cfg implies, without allocating a model
        expected = model_state(build_model(cfg))
    for ours, pieces in layout.items():
        full = expected[ours].shape
        bad = [f"{name} {tuple(tensors[name].shape)} (needs {(rows or full[0], *full[1:])})"
               for name, rows, _ in pieces if tensors[name].shape != (rows or full[0], *full[1:])]
        wrong += bad
        if not bad:
            parts = [_unpermute(tensors[name], heads) if heads else tensors[name]
                     for name, _, heads in pieces]
            state[ours] = parts[0] if len(parts) == 1 else torch.cat(parts)  # whole: no copy
    if wrong:
        raise CheckpointError(f"{path}: tensor shapes do not fit the metadata: "
                              f"{_listing(wrong, 3)}")
    return state


def _pre_tokenizer_type(meta: dict, path: Path) -> str:
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(f"{path}: tokenizer model {kind!r} is not supported "
                              "(lmforge reads byte-level BPE, tokenizer.ggml.model 'gpt2')")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{path}: pre-tokenizer {pre!r} is not supported "
                              f"(supported: {', '.join(PRE_TOKENIZERS)})")
    return pre


def _read_tokenizer(meta: dict, path: Path, cfg: ModelConfig) -> tuple[Tokenizer, dict]:
    """The byte-level BPE the file describes: same ids, same pre-tokenizer, control tokens as
    special added tokens, user-defined ones as plain added tokens."""
    pre = _pre_tokenizer_type(meta, path)
    tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise CheckpointError(f"{path}: {len(tokens)} tokens but {len(types)} token types")
    n = len(tokens)
    while n and types[n - 1] == UNUSED:  # padding up to the embedding size, not real tokens
        n -= 1
    if n > cfg.vocab_size:
        raise CheckpointError(f"{path}: {n} tokens but only {cfg.vocab_size} embedding rows")
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens[:n]):
        vocab.setdefault(token, i)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    normalizer, pre_tokenizer, ignore_merges = PRE_TOKENIZERS[pre]()
    try:
        tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    except Exception as exc:  # the Rust side raises a bare Exception (a merge of unknown tokens)
        raise CheckpointError(f"{path}: invalid BPE vocabulary: {_first_line(exc)}") from None
    set_byte_level_pipeline(tok)
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in range(n) if types[i] == CONTROL])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                    for i in range(n) if types[i] == USER_DEFINED])

    config: dict[str, Any] = {}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                      ("pad_token", "padding")):
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and 0 <= token_id < n:
            config[name] = tokens[token_id]
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = meta["tokenizer.chat_template"]
    config["model_max_length"] = cfg.context_length
    config["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    config["add_eos_token"] = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    _set_post_processor(tok, config)
    return tok, config


def _set_post_processor(tok: Tokenizer, config: dict) -> None:
    """BOS/EOS added by ``encode(..., add_special_tokens=True)``, as add_bos/add_eos say."""
    bos = config.get("bos_token") if config["add_bos_token"] else None
    eos = config.get("eos_token") if config["add_eos_token"] else None
    if bos is None and eos is None:
        return

    def around(seq: int) -> list[str]:
        return [*([f"{bos}:{seq}"] if bos else []), f"${'AB'[seq]}:{seq}",
                *([f"{eos}:{seq}"] if eos else [])]

    template = processors.TemplateProcessing(
        single=around(0), pair=around(0) + around(1),
        special_tokens=[(t, tok.token_to_id(t)) for t in {bos, eos} if t])
    tok.post_processor = processors.Sequence([tok.post_processor, template])


def _metadata(meta: dict, reader, arch: str, gguf) -> dict[str, Any]:
    """Scalar and short-list metadata (not the vocab), plus a few convenience keys."""
    out = {k: v for k, v in meta.items()
           if not k.startswith("GGUF.") and not (isinstance(v, list) and len(v) > 64)}
    file_type = meta.get("general.file_type")
    try:
        out["file_type"] = gguf.LlamaFileType(file_type).name if file_type is not None else None
    except ValueError:
        out["file_type"] = str(file_type)
    counts: dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    out.update(architecture=arch, tensor_types=counts)
    return out


def read_gguf(path: str | Path) -> GGUFModel:
    """Read a GGUF file ("llama", "qwen2" or "gpt2" architecture, byte-level BPE vocab) into an
    lmforge config, float32 state dict, tokenizer and tokenizer config.

    Raises CheckpointError (one line) for a missing, corrupt or unsupported file."""
    path = Path(path)
    gguf, reader, meta = _open(path)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported "
                              f"(supported: {', '.join(ARCHITECTURES)})")
    _pre_tokenizer_type(meta, path)  # refuse an unsupported vocab before the slow part
    tensors = _dequantized(gguf, reader, path)
    cfg = _config(meta, tensors, arch, path)
    state = _state(tensors, cfg, arch, path)
    tokenizer, tokenizer_config = _read_tokenizer(meta, path, cfg)
    return GGUFModel(cfg, state, tokenizer, tokenizer_config, _metadata(meta, reader, arch, gguf))


def load_gguf(path: str | Path, device: str | torch.device = "cpu",
              dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, Tokenizer, dict]:
    """The GGUF file's model (eval mode, on ``device``, in ``dtype`` if given), tokenizer and
    tokenizer config."""
    gg = read_gguf(path)
    model = build_model(gg.config)
    load_model_state(model, gg.state, str(path))
    model.to(device=device, dtype=dtype) if dtype else model.to(device)
    return model.eval(), gg.tokenizer, gg.tokenizer_config


# ---------------------------------------------------------------------------------------------
# Writing


def gguf_architecture(cfg: ModelConfig) -> str:
    """The GGUF architecture that runs ``cfg`` in llama.cpp: "gpt2", "llama" or "qwen2" (Llama
    style with q/k/v biases). ConfigError naming what differs for any other model."""
    if cfg.arch != "decoder":
        raise ConfigError(f"GGUF export takes decoder models; this is an {cfg.arch!r} model")
    refuse_export(cfg, "GGUF")
    styles = {"gpt2": {**_PLAIN_DECODER, **_GPT2_STYLE},
              "llama": {**_PLAIN_DECODER, **_LLAMA_STYLE}}
    off = {arch: [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in style.items()
                  if getattr(cfg, k) != v] for arch, style in styles.items()}
    if cfg.head_dim * cfg.n_head != cfg.n_embd:
        off["gpt2"].append(f"head_dim * n_head = {cfg.head_dim * cfg.n_head} (needs n_embd "
                           f"{cfg.n_embd})")
    if cfg.qkv_bias is False:
        off["gpt2"].append("qkv_bias=False (needs True)")
    arch = min(off, key=lambda a: len(off[a]))
    if off[arch]:
        style = "GPT-2" if arch == "gpt2" else "Llama"
        raise ConfigError(f"GGUF export needs a GPT-2 or Llama style decoder; closest is {style} "
                          f"style, but {', '.join(off[arch])}")
    if arch == "llama" and cfg.qkv_bias:
        arch = "qwen2"
    kind = (cfg.rope_scaling or {}).get("rope_type", (cfg.rope_scaling or {}).get("type"))
    if arch == "qwen2" and kind == "llama3":
        raise ConfigError("GGUF 'qwen2' has no Llama 3 RoPE scaling; rope_scaling must be "
                          "linear or None with qkv_bias")
    return arch


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"GGUF dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def _pipeline_key(spec: dict) -> str:
    """Normalizer and pre-tokenizer as comparable JSON (offset trimming does not change ids)."""
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "trim_offsets"}
        return [strip(v) for v in node] if isinstance(node, list) else node
    return json.dumps([strip(spec.get("normalizer")), strip(spec.get("pre_tokenizer"))],
                      sort_keys=True)


def _writable_pre_type(tok: Tokenizer) -> str:
    """The ``tokenizer.ggml.pre`` name of a byte-level BPE pipeline; ConfigError for others."""
    spec = json.loads(tok.to_str())
    model, decoder = spec["model"], spec.get("decoder") or {}
    plain_bpe = (model["type"] == "BPE" and not model.get("byte_fallback")
                 and model.get("dropout") is None and not model.get("continuing_subword_prefix")
                 and not model.get("end_of_word_suffix"))
    if not plain_bpe or decoder.get("type") != "ByteLevel":
        raise ConfigError(f"GGUF export supports byte-level BPE tokenizers only; this one is a "
                          f"{model['type']} with a {decoder.get('type', 'no')} decoder")
    key = _pipeline_key(spec)
    for name, make in PRE_TOKENIZERS.items():
        normalizer, pre_tokenizer, ignore_merges = make()
        probe = Tokenizer(models.BPE(ignore_merges=ignore_merges))
        probe.normalizer, probe.pre_tokenizer = normalizer, pre_tokenizer
        same_merging = bool(model.get("ignore_merges")) == ignore_merges
        if same_merging and _pipeline_key(json.loads(probe.to_str())) == key:
            return name
    raise ConfigError("the tokenizer's normalizer/pre-tokenizer has no llama.cpp equivalent "
                      f"(GGUF knows: {', '.join(PRE_TOKENIZERS)}); a lowercasing or NFKC "
                      "byte-level BPE cannot be exported")


def _token_id(tok: Tokenizer, value: Any, name: str) -> int | None:
    if isinstance(value, dict):  # Hugging Face's AddedToken form {"content": ...}
        value = value.get("content")
    if value is None:
        return None
    token_id = tok.token_to_id(value)
    if token_id is None:
        raise ConfigError(f"tokenizer_config {name} {value!r} is not in the tokenizer's vocab")
    return token_id


def _add_tokenizer(writer, tok: Tokenizer, tokenizer_config: dict, vocab_size: int) -> None:
    """The vocab as llama.cpp's converter writes a byte-level BPE ("gpt2"); ConfigError first
    for a tokenizer llama.cpp cannot reproduce."""
    pre = _writable_pre_type(tok)
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > vocab_size:
        raise ConfigError(f"the tokenizer has {n} tokens but the model only {vocab_size} "
                          "embeddings")
    tokens = [tok.id_to_token(i) for i in range(n)]
    if None in tokens:
        raise ConfigError(f"the tokenizer's ids are not contiguous (no token {tokens.index(None)})")
    added = tok.get_added_tokens_decoder()
    types = [(CONTROL if added[i].special else USER_DEFINED) if i in added else NORMAL
             for i in range(n)]
    # llama.cpp wants one token per embedding row: pad as its converter does.
    tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]
    types += [UNUSED] * (vocab_size - n)
    merges = [m if isinstance(m, str) else " ".join(m)  # tokenizers >= 0.20 stores pairs
              for m in json.loads(tok.to_str())["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    ids = {name: _token_id(tok, tokenizer_config.get(f"{name}_token"), f"{name}_token")
           for name in ("bos", "eos", "unk", "pad")}
    ids["eos"] = ids["eos"] if ids["eos"] is not None else eos_token_id(tok)
    # GPT-2 begins documents with its end-of-text token; without a BOS id llama.cpp would
    # assume id 11 for a BPE vocab.
    ids["bos"] = ids["bos"] if ids["bos"] is not None else ids["eos"]
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if ids[name] is not None:
            add(ids[name])
    # What encode(add_special_tokens=True) adds is what llama.cpp should add.
    with_specials = tok.encode("a", add_special_tokens=True).ids
    plain = tok.encode("a", add_special_tokens=False).ids
    writer.add_add_bos_token(len(with_specials) > len(plain) and with_specials[0] == ids["bos"])
    writer.add_add_eos_token(len(with_specials) > len(plain) and with_specials[-1] == ids["eos"])
    if tokenizer_config.get("chat_template"):
        writer.add_chat_template(tokenizer_config["chat_template"])


def _add_hparams(writer, gguf, cfg: ModelConfig, arch: str, dtype: str) -> None:
    writer.add_type("model")
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                          "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[dtype])
    if dtype in ("q8_0", "q4_0"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.context_length)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_kv_head)
    if cfg.head_dim != cfg.n_embd // cfg.n_head:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    if arch == "gpt2":
        writer.add_layer_norm_eps(cfg.norm_eps)
        return
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_freq_base(cfg.rope_base)
    writer.add_rope_dimension_count(cfg.head_dim)
    scaling = cfg.rope_scaling or {}
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif scaling:  # Llama 3: llama.cpp takes per-frequency divisors (rope_freqs) instead
        writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))


def _gguf_tensors(model: torch.nn.Module, cfg: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    """lmforge parameters as GGUF tensors: renamed, q/k/v and gate/up split, llama's q/k
    permuted, plus llama.cpp's form of Llama 3 RoPE scaling."""
    state = dequantized_state(model) if quantization_of(model) else model_state(model)
    out = {}
    for ours, pieces in _layout(cfg, arch).items():
        rows = [r if r is not None else state[ours].shape[0] for _, r, _ in pieces]
        for (name, _, heads), part in zip(pieces, state[ours].split(rows)):
            out[name] = _permute(part, heads) if heads else part
    if arch == "gpt2" and cfg.tie_embeddings:
        out["output.weight"] = out["token_embd.weight"]  # as llama.cpp's GPT-2 converter writes it
    if (cfg.rope_scaling or {}).get("rope_type") == "llama3":
        plain = ModelConfig(head_dim=cfg.head_dim, rope_base=cfg.rope_base)
        out["rope_freqs.weight"] = rope_frequencies(plain) / rope_frequencies(cfg)
    return out


def _encode_tensor(gguf, name: str, tensor: torch.Tensor, dtype: str):
    """(array, type) as llama.cpp stores it: vectors, positions and RoPE divisors in f32, weight
    matrices in ``dtype`` (q8_0 / q4_0 only for rows of whole 32-value blocks, else f16)."""
    array = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
    types = gguf.GGMLQuantizationType
    if array.ndim == 1 or dtype == "f32" or name in ("position_embd.weight", "rope_freqs.weight"):
        return array, types.F32
    if dtype in ("q8_0", "q4_0") and array.shape[-1] % Q8_0_BLOCK == 0:
        qtype = types.Q8_0 if dtype == "q8_0" else types.Q4_0
        return gguf.quants.quantize(array, qtype), qtype
    return array.astype(np.float16), types.F16


def write_gguf(model: torch.nn.Module, tokenizer: Tokenizer, path: str | Path, dtype: str = "f16",
               tokenizer_config: dict | None = None) -> Path:
    """Write a GPT-2 or Llama style lmforge decoder and its byte-level BPE tokenizer as a GGUF
    file that llama.cpp runs. ``dtype``: "f32", "f16", "q8_0" or "q4_0" (weight matrices; norms and biases
    stay f32). ``tokenizer_config`` (Hugging Face keys) supplies bos/eos/pad/unk tokens and the
    chat template. The file is written to a temporary name and renamed into place.
    ``dtype`` "q4_0": 4-bit blocks of 32 with one f16 scale (llama.cpp's Q4_0). A quantized
    lmforge model (:mod:`lmforge.models.quantized`) is written from its dequantized weights,
    so int4 -> q4_0 quantizes twice (a little more error than q4_0 from the float model)."""
    _check_dtype(dtype)
    cfg = model.config
    arch = gguf_architecture(cfg)
    if not isinstance(model, GPT):  # e.g. a fine-tuned task head on a decoder: no LM head
        raise ConfigError(f"GGUF export takes an lmforge language model (GPT), not a "
                          f"{type(model).__name__}")
    gguf = _gguf()
    path = Path(path)
    with atomic_file(path) as partial:  # readers never see a half-written file
        writer = gguf.GGUFWriter(partial, arch)  # opens no file before write_header_to_file
        try:
            writer.add_name(path.stem)
            _add_hparams(writer, gguf, cfg, arch, dtype)
            _add_tokenizer(writer, tokenizer, tokenizer_config or {}, cfg.vocab_size)
            for name, tensor in _gguf_tensors(model, cfg, arch).items():
                array, qtype = _encode_tensor(gguf, name, tensor, dtype)
                writer.add_tensor(name, array, raw_dtype=qtype)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return path
