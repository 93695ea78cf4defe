"""Maximal update parametrization (muP; Yang et al. 2021, "Tensor Programs V", Table 3 for
Adam): with ``ModelConfig.mup_base_width`` set, a model of width ``n_embd`` trains like the
base-width model it was tuned at, so a learning rate (and init) found on a narrow model
transfers to wide ones. With width multiplier ``m = n_embd / mup_base_width``:

- hidden matrices (attention q/k/v and output, MLP in and out; an encoder's pooler and MLM
  dense): init std ``init_std / sqrt(m)`` (the standard init at the base width, fan-in scaling
  beyond), Adam learning rate ``lr / m``;
- embeddings, biases and norms: init and learning rate unchanged;
- the readout (output logits) multiplied by ``1 / m`` (the ``mup`` package's MuReadout; with
  tied embeddings its MuSharedReadout), composed with a user-set ``output_scale``;
- attention scores scaled by ``1 / head_dim`` instead of ``1 / sqrt(head_dim)``, normalised to
  the standard scale at the base model's head size (a no-op when head_dim is the same at every
  width, i.e. the model widens by adding heads).

The residual output projections keep GPT-2's extra ``1 / sqrt(2 n_layer)`` depth factor. At
the base width (m = 1) every rule gives the standard parametrization.

One multiplier ``m`` serves every hidden matrix, so ``intermediate_size`` and the attention
width are assumed to scale with ``n_embd`` (the default ``4 * n_embd`` and ``n_head * head_dim``).
"""

from __future__ import annotations

import math
import re

from ..errors import ConfigError
from .config import ModelConfig

# Parameters whose two dimensions both grow with width ("matrix-like" in the mup package):
# the q/k/v, attention output and MLP matrices of every block (by module name, which stays the
# same under task heads "backbone.", compile "_orig_mod." and activation checkpointing
# wrappers), an encoder's pooler and MLM-head dense layer.
_HIDDEN = re.compile(r"(?:^|\.)(?:(?:enc_|dec_)?blocks\.\d+\.(?:.*\.)?"
                     r"(?:attn\.qkv|attn\.proj|mlp\.fc|mlp\.proj)|pooler|mlm_head\.dense)$")


def enabled(cfg: ModelConfig) -> bool:
    """Whether ``cfg`` asks for muP."""
    return getattr(cfg, "mup_base_width", None) is not None


def width_mult(cfg: ModelConfig) -> float:
    """``n_embd / mup_base_width`` (1.0 under the standard parametrization)."""
    return cfg.n_embd / cfg.mup_base_width if enabled(cfg) else 1.0


def is_hidden_module(name: str) -> bool:
    """Whether the module called ``name`` is a hidden (width x width) linear layer."""
    return bool(_HIDDEN.search(name))


def is_hidden_matrix(param_name: str) -> bool:
    """Whether parameter ``param_name`` is a hidden layer's weight matrix (not its bias)."""
    return param_name.endswith(".weight") and is_hidden_module(param_name[: -len(".weight")])


def init_std(cfg: ModelConfig, module_name: str, std: float) -> float:
    """The init std of linear layer ``module_name`` whose standard-parametrization std is
    ``std``: divided by sqrt(m) for hidden layers under muP (variance ~ 1/fan_in)."""
    if enabled(cfg) and is_hidden_module(module_name):
        return std / math.sqrt(width_mult(cfg))
    return std


def lr_scale(param_name: str, cfg: ModelConfig, train_cfg=None) -> float:
    """Adam-muP learning-rate multiplier of parameter ``param_name``: ``1 / m`` for hidden
    matrices, 1 for the rest. SGD-muP scales other parameters instead; it is refused."""
    if not enabled(cfg):
        return 1.0
    if getattr(train_cfg, "optimizer", "adamw") != "adamw":
        raise ConfigError(f"muP (mup_base_width) is implemented for Adam only; optimizer "
                          f"{train_cfg.optimizer!r} needs its own rules (use adamw)")
    return 1.0 / width_mult(cfg) if is_hidden_matrix(param_name) else 1.0


def readout_multiplier(cfg: ModelConfig) -> float | None:
    """What the final hidden state is multiplied by before a vocabulary/class readout: ``1/m``
    under muP, else None (nothing)."""
    return 1.0 / width_mult(cfg) if enabled(cfg) else None


def output_multiplier(cfg: ModelConfig) -> float | None:
    """A decoder's multiplier of the final hidden state before the LM head: the config's
    ``output_scale`` times muP's ``1 / m`` (None: nothing to multiply)."""
    if not enabled(cfg):
        return cfg.output_scale
    return (1.0 if cfg.output_scale is None else cfg.output_scale) / width_mult(cfg)


def base_head_dim(cfg: ModelConfig) -> float:
    """Head size of the base-width model: ``mup_base_head_dim``, by default the head size at
    the same number of heads (``head_dim * mup_base_width / n_embd``)."""
    if cfg.mup_base_head_dim is not None:
        return float(cfg.mup_base_head_dim)
    return cfg.head_dim * cfg.mup_base_width / cfg.n_embd


def attention_scale(cfg: ModelConfig) -> float | None:
    """Attention score scale: the config's (None = SDPA's 1/sqrt(head_dim)); under muP times
    sqrt(base_head_dim / head_dim), i.e. sqrt(base_head_dim) / head_dim: 1/head_dim scaling
    that equals the standard scale at the base head size. When head_dim does not change with
    width (base_head_dim == head_dim) this is a no-op and SDPA's default path is kept."""
    if not enabled(cfg):
        return cfg.attention_scale
    base = base_head_dim(cfg)
    if base == cfg.head_dim:
        return cfg.attention_scale
    standard = cfg.attention_scale if cfg.attention_scale is not None else cfg.head_dim ** -0.5
    return standard * math.sqrt(base / cfg.head_dim)


def refuse_export(cfg: ModelConfig, target: str) -> None:
    """A muP model's 1/m readout multiplier has no field in Hugging Face or GGUF configs (with
    tied embeddings it cannot be folded into the weights either): one clear ConfigError."""
    if enabled(cfg):
        raise ConfigError(f"a muP model (mup_base_width={cfg.mup_base_width}) cannot be exported to "
                          f"{target}: its 1/{width_mult(cfg):g} logit multiplier has no equivalent "
                          "there; use the lmforge model folder")
