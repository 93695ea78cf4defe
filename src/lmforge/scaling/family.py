"""A model family for scaling studies: one base preset whose depth and/or width vary along a
ladder, every member's parameter counts (total and non-embedding) and training FLOPs per token.

Counting, stated so the figures can be checked by hand:

- N (total): every unique parameter, a tied output head once (what Chinchilla counts).
- N non-embedding: N less the token and position embedding tables (what Kaplan 2020 counts,
  also when the output head is tied to the token embedding). At small scale the two differ
  enough to change fitted exponents (Pearce & Song 2024), so both are recorded.
- FLOPs per token: 6 x the weights that multiply activations + 12·L·d·T for attention
  (PaLM appendix B), the model's own ``flops_per_token`` (also what training logs as MFU).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..errors import ConfigError
from ..models.config import ModelConfig, preset

VARY = ("both", "width", "depth")
# Widths from a ~30k- to a ~100M-parameter decoder, about 1.25x apart at the small end where
# CPU sweeps live.
DEFAULT_WIDTHS = (32, 48, 64, 80, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 1024)
DEFAULT_DEPTHS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24)


@dataclass(frozen=True)
class Shape:
    """One member of a family: its architecture and sizes."""

    n_layer: int
    n_embd: int
    n_head: int
    params: int            # N, total unique parameters
    non_embedding: int     # N without token and position embeddings
    flops_per_token: float # training FLOPs per token at the family's block size

    @property
    def name(self) -> str:
        return f"L{self.n_layer}-d{self.n_embd}"

    def model_args(self) -> dict:
        return {"n_layer": self.n_layer, "n_embd": self.n_embd, "n_head": self.n_head}


@dataclass(frozen=True)
class Family:
    """Members of ``preset`` (with ``overrides``) at block size ``block_size`` and vocab
    ``vocab_size``: ``vary`` = "both" grows depth with width (n_layer = n_embd / aspect, at
    least 2), "width" keeps the preset's depth, "depth" its width. Heads keep ``head_dim``."""

    preset: str = "gpt-mini"
    vary: str = "both"
    vocab_size: int = 256
    block_size: int = 128
    aspect: float = 40.0
    head_dim: int = 32
    overrides: tuple = ()          # ((field, value), ...) applied to every member
    widths: tuple = DEFAULT_WIDTHS
    depths: tuple = DEFAULT_DEPTHS

    def __post_init__(self) -> None:
        if self.vary not in VARY:
            raise ConfigError(f"vary must be one of {', '.join(VARY)}, got {self.vary!r}")
        if self.aspect <= 0 or self.head_dim <= 0:
            raise ConfigError("aspect and head_dim must be positive")
        base = self.base_config()
        if base.arch != "decoder":
            raise ConfigError(f"scaling sweeps train decoders (causal LM); preset {self.preset!r} "
                              f"is an {base.arch}")

    def base_config(self, **changes) -> ModelConfig:
        args = {**dict(self.overrides), "vocab_size": self.vocab_size,
                "context_length": max(self.block_size, dict(self.overrides).get("context_length", 0)),
                **changes}
        return preset(self.preset, **args)

    def config(self, n_layer: int, n_embd: int) -> ModelConfig:
        """The member's model config: heads of ``head_dim`` and the preset's MLP ratio."""
        base = self.base_config()
        n_head = max(1, n_embd // self.head_dim)
        while n_embd % n_head:  # widths between multiples of head_dim: slightly wider heads
            n_head -= 1
        ratio = base.intermediate_size / base.n_embd
        changes = {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "head_dim": None,
                   "n_kv_head": None, "intermediate_size": int(round(ratio * n_embd))}
        if base.n_kv_head != base.n_head:  # grouped-query attention keeps its group size
            group = base.n_head // base.n_kv_head
            changes["n_kv_head"] = max(1, n_head // group) if n_head % group == 0 else n_head
        if base.mlp == "swiglu" and "intermediate_size" in dict(self.overrides):
            changes.pop("intermediate_size")
        return self.base_config(**changes)

    def shape(self, n_layer: int, n_embd: int) -> Shape:
        return _measure(self, n_layer, n_embd)

    def members(self) -> list[Shape]:
        """The ladder, smallest first."""
        base = self.base_config()
        if self.vary == "width":
            pairs = [(base.n_layer, w) for w in self.widths]
        elif self.vary == "depth":
            pairs = [(depth, base.n_embd) for depth in self.depths]
        else:
            pairs = [(max(2, round(w / self.aspect)), w) for w in self.widths]
        shapes = {self.shape(*p) for p in pairs}
        return sorted(shapes, key=lambda s: s.params)

    def describe(self) -> dict:
        return {"preset": self.preset, "vary": self.vary, "vocab_size": self.vocab_size,
                "block_size": self.block_size, "aspect": self.aspect, "head_dim": self.head_dim,
                "overrides": dict(self.overrides), "widths": list(self.widths),
                "depths": list(self.depths)}

    @classmethod
    def from_dict(cls, data: dict) -> "Family":
        data = dict(data)
        data["overrides"] = tuple(sorted((data.get("overrides") or {}).items()))
        for key in ("widths", "depths"):
            if key in data:
                data[key] = tuple(int(v) for v in data[key])
        return cls(**data)


@functools.lru_cache(maxsize=4096)
def _measure(family: Family, n_layer: int, n_embd: int) -> Shape:
    import torch

    from ..models.io import build_model
    cfg = family.config(n_layer, n_embd)
    with torch.device("meta"):  # shapes only
        model = build_model(cfg)
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embeddings = {id(m.weight): m.weight.numel() for m in model.modules()
                  if isinstance(m, torch.nn.Embedding)}
    return Shape(n_layer=n_layer, n_embd=n_embd, n_head=cfg.n_head, params=total,
                 non_embedding=total - sum(embeddings.values()),
                 flops_per_token=float(model.flops_per_token(family.block_size)))
