"""Model configuration: one dataclass whose fields select GPT-2 or Llama-style parts, plus presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import from_dict
from ..errors import ConfigError
from ..files import atomic_write_text

def _help(text: str, default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": text})


CHOICES = {
    "arch": ("decoder", "encoder", "encoder-decoder", "lstm"),
    "pos_embedding": ("learned", "rope", "relative"),  # relative = T5 bias (encoder-decoder)
    "norm": ("layernorm", "rmsnorm"),
    "norm_placement": ("pre", "post"),
    "mlp": ("mlp", "swiglu", "gated"),  # gated: act(gate) * up with any activation (T5 v1.1)
    "activation": ("gelu", "gelu_tanh", "relu", "silu"),
}

@dataclass
class ModelConfig:
    """Architecture of a model. GPT-2, Llama and BERT Transformers differ only in these values;
    ``arch="lstm"`` builds an LSTM LM, which reads only some of them (see ``models/lstm.py``)."""

    arch: str = _help("decoder (GPT), encoder (BERT), encoder-decoder (T5/BART) or lstm", "decoder")
    vocab_size: int = _help("token embeddings (follows the dataset's tokenizer)", 50257)
    context_length: int = _help("maximum sequence length (positions); an LSTM's BPTT length", 1024)
    n_layer: int = _help("Transformer blocks (an encoder-decoder's encoder blocks; LSTM layers)", 12)
    n_head: int = _help("attention heads", 12)
    n_kv_head: int | None = _help("key/value heads for grouped-query attention (default: n_head)", None)
    n_embd: int = _help("hidden size", 768)
    head_dim: int | None = _help("size of one attention head (default: n_embd // n_head)", None)
    intermediate_size: int | None = _help("MLP hidden size (default: 4 * n_embd)", None)
    pos_embedding: str = _help("learned, rope or relative (T5 bias, encoder-decoders)", "learned")
    rope_base: float = _help("RoPE base frequency", 10000.0)
    # As Hugging Face's ``rope_scaling``: {"rope_type": "linear", "factor": f} or Llama 3's
    # {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}.
    rope_scaling: dict | None = _help("RoPE context extension as JSON, e.g. {\"rope_type\": "
                                      "\"linear\", \"factor\": 2} (default: plain RoPE)", None)
    norm: str = _help("layernorm or rmsnorm", "layernorm")
    norm_eps: float = _help("epsilon of the norms", 1e-5)
    norm_placement: str = _help("pre (GPT-2, Llama) or post (BERT, BART) norm blocks", "pre")
    mlp: str = _help("mlp, swiglu or gated (act(gate) * up with any activation, T5 v1.1)", "mlp")
    activation: str = _help("gelu, gelu_tanh, relu or silu", "gelu_tanh")
    bias: bool = _help("biases on linear layers and norms", True)
    qkv_bias: bool | None = _help("bias on the q/k/v projections only (default: bias; Qwen2: true)", None)
    tie_embeddings: bool = _help("output head shares the token embedding matrix", True)
    # T5 with tied embeddings uses n_embd ** -0.5.
    output_scale: float | None = _help("multiplies the final hidden state before the output head "
                                       "(default: none)", None)
    dropout: float = _help("dropout rate", 0.0)
    init_std: float = _help("standard deviation of the initial weights", 0.02)
    embedding_dropout: float = _help("LSTM only: share of word types whose embedding is zeroed "
                                     "per batch (AWD-LSTM)", 0.0)
    # Encoder (BERT) parts.
    type_vocab_size: int = _help("encoder: segment (token type) embeddings (0 = none)", 0)
    embedding_norm: bool = _help("LayerNorm on the embeddings (BERT, BART)", False)
    pooler: bool = _help("encoder: [CLS] pooler (dense + tanh)", False)
    mlm_head: bool = _help("encoder: masked-LM head (imported encoders may come without one)", True)
    sentence_head: bool = _help("encoder with a pooler: the two-way NSP/SOP head", True)
    # Encoder-decoder (T5 / BART) parts.
    n_decoder_layer: int | None = _help("encoder-decoder: decoder blocks (default: n_layer)", None)
    decoder_start_token_id: int | None = _help("encoder-decoder: first decoder input (default: "
                                               "chosen from the tokenizer, T5 pad, BART eos)", None)
    relative_attention_num_buckets: int = _help("T5 relative position buckets", 32)
    relative_attention_max_distance: int = _help("T5 relative position: largest distinguished "
                                                 "distance", 128)
    attention_scale: float | None = _help("attention score scale (default: 1/sqrt(head_dim); T5: 1.0)", None)
    # muP (models/mup.py): hidden-matrix init and Adam LR, readout and attention scaled by the
    # width multiplier n_embd / mup_base_width, so hyperparameters tuned at the base width transfer.
    mup_base_width: int | None = _help("muP: the width (n_embd) hyperparameters were tuned at; "
                                       "hidden init, Adam LR, logits and attention are scaled by "
                                       "n_embd / this (default: none, standard parametrization)", None)
    mup_base_head_dim: int | None = _help("muP: head_dim of the base-width model (default: "
                                          "head_dim * mup_base_width / n_embd, the same number "
                                          "of heads; set it to head_dim when widening by adding "
                                          "heads)", None)

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None and self.n_head > 0:
            self.head_dim = self.n_embd // self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd

    @property
    def decoder_layers(self) -> int:
        """Decoder depth of an encoder-decoder model."""
        return self.n_decoder_layer or self.n_layer

    def validate(self) -> "ModelConfig":
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"model field '{name}' must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_kv_head", "n_embd",
                     "head_dim", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model field '{name}' must be positive, got {getattr(self, name)}")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"model field 'n_head' ({self.n_head}) must be a multiple of "
                              f"'n_kv_head' ({self.n_kv_head})")
        if self.pos_embedding == "rope" and self.head_dim % 2:
            raise ConfigError(f"model field 'head_dim' must be even for RoPE, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model field 'dropout' must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.embedding_dropout < 1.0:
            raise ConfigError("model field 'embedding_dropout' must be in [0, 1), "
                              f"got {self.embedding_dropout}")
        if self.pos_embedding == "relative" and self.arch != "encoder-decoder":
            raise ConfigError("model field 'pos_embedding' = 'relative' (T5 position bias) needs "
                              f"arch 'encoder-decoder', got {self.arch!r}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            needed = {"linear": ("factor",),
                      "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                 "original_max_position_embeddings")}
            if kind not in needed:
                raise ConfigError(f"model field 'rope_scaling' type {kind!r} is not supported "
                                  "(supported: linear, llama3)")
            missing = [k for k in needed[kind] if k not in self.rope_scaling]
            if missing:
                raise ConfigError(f"model field 'rope_scaling' ({kind}) lacks {', '.join(missing)}")
        if self.n_decoder_layer is not None and self.n_decoder_layer <= 0:
            raise ConfigError("model field 'n_decoder_layer' must be positive, "
                              f"got {self.n_decoder_layer}")
        if self.attention_scale is not None and self.attention_scale <= 0:
            raise ConfigError("model field 'attention_scale' must be positive, "
                              f"got {self.attention_scale}")
        self._validate_mup()
        if self.pos_embedding == "relative" and (
                self.relative_attention_num_buckets < 4
                or self.relative_attention_max_distance <= self.relative_attention_num_buckets // 4):
            raise ConfigError("model fields 'relative_attention_num_buckets' (>= 4) and "
                              "'relative_attention_max_distance' (> num_buckets / 4) are out of range")
        return self

    def _validate_mup(self) -> None:
        if self.mup_base_width is None:
            if self.mup_base_head_dim is not None:
                raise ConfigError("model field 'mup_base_head_dim' needs 'mup_base_width' (muP)")
            return
        for name in ("mup_base_width", "mup_base_head_dim"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"model field '{name}' must be positive, got {value}")
        if self.arch not in ("decoder", "encoder"):
            raise ConfigError(f"muP (mup_base_width) supports decoder and encoder models, "
                              f"not {self.arch!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model config") -> "ModelConfig":
        return from_dict(cls, data, where=where)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"lmforge": self.to_dict()}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read model config {path}: {exc}") from None
        if "lmforge" not in data:
            raise ConfigError(f"{path} is not an lmforge model config (no 'lmforge' section)")
        return cls.from_dict(data["lmforge"], where=str(path))


# BERT parts: post-norm blocks, exact GELU, segment embeddings, embedding LayerNorm, pooler.
_BERT = dict(arch="encoder", norm_placement="post", activation="gelu", norm_eps=1e-12,
             type_vocab_size=2, embedding_norm=True, pooler=True, context_length=512,
             vocab_size=30522)

# T5 parts: relative position bias, no 1/sqrt(d) attention scaling, RMSNorm and no biases
# anywhere, ReLU MLP (T5 v1.1: mlp="gated", activation="gelu_tanh").
_T5 = dict(arch="encoder-decoder", pos_embedding="relative", attention_scale=1.0, norm="rmsnorm",
           norm_eps=1e-6, bias=False, mlp="mlp", activation="relu", context_length=512)

# BART parts: learned positions, post-norm blocks, LayerNorm on the embeddings, exact GELU.
_BART = dict(arch="encoder-decoder", norm_placement="post", embedding_norm=True,
             activation="gelu", context_length=1024)

# Llama-style parts, in one place so presets stay rows of values.
_LLAMA = dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", activation="silu", bias=False)

PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT's CPU "baby" shakespeare-char model.
    "baby": dict(n_layer=4, n_head=4, n_embd=128, context_length=64, vocab_size=65),
    # A few-million-parameter GPT that trains in minutes on a laptop CPU.
    "gpt-mini": dict(n_layer=4, n_head=4, n_embd=256, context_length=256, vocab_size=2048),
    # nanoGPT's shakespeare-char GPU model (10.7M parameters with a 65-char vocab).
    "gpt-10m": dict(n_layer=6, n_head=6, n_embd=384, context_length=256, vocab_size=65, dropout=0.2),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, context_length=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, context_length=1024, vocab_size=50257),
    "llama-mini": dict(n_layer=4, n_head=8, n_kv_head=2, n_embd=256, intermediate_size=704,
                       context_length=512, vocab_size=2048, norm_eps=1e-5, **_LLAMA),
    "smollm2-135m": dict(n_layer=30, n_head=9, n_kv_head=3, n_embd=576, intermediate_size=1536,
                         context_length=2048, vocab_size=49152, rope_base=100000.0, norm_eps=1e-5,
                         **_LLAMA),
    "bert-mini": dict(n_layer=4, n_head=4, n_embd=256, **_BERT),
    "bert-small": dict(n_layer=4, n_head=8, n_embd=512, **_BERT),
    "bert-base": dict(n_layer=12, n_head=12, n_embd=768, **_BERT),
    "minilm-l6-h384": dict(n_layer=6, n_head=12, n_embd=384, **_BERT),
    # Encoder-decoders (arch="encoder-decoder"); n_layer encoder + n_decoder_layer decoder blocks.
    "t5-tiny": dict(n_layer=4, n_decoder_layer=4, n_head=4, n_embd=256, intermediate_size=1024,
                    vocab_size=2048, relative_attention_num_buckets=32,
                    relative_attention_max_distance=128, **_T5),
    "bart-tiny": dict(n_layer=3, n_decoder_layer=3, n_head=4, n_embd=256, intermediate_size=1024,
                      vocab_size=2048, **_BART),
    # LSTM LMs (arch="lstm"); context_length is the truncated-BPTT length (Zaremba et al. 2014).
    "lstm-small": dict(arch="lstm", n_layer=2, n_embd=256, dropout=0.2, context_length=35,
                       vocab_size=10000),
    # Zaremba's "medium" PTB model (2 x 650, dropout 0.5), with tied embeddings.
    "lstm-medium": dict(arch="lstm", n_layer=2, n_embd=650, dropout=0.5, context_length=35,
                        vocab_size=10000),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset's config with ``overrides`` applied and validated."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides}, where=f"preset '{name}'")
