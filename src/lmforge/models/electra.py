"""ELECTRA's pretraining composite (Clark et al. 2020): a small masked-LM generator and the
discriminator (the encoder being pretrained, exported as the run's model) trained jointly.

Embedding sharing (the official implementation's choice): generator and discriminator share the
whole embedding layer of the discriminator (token, position and segment embeddings and their
LayerNorm, of size E = the discriminator's hidden size). The generator is narrower (hidden
H_g = ``generator_size`` * E): its input is the shared embedding projected E -> H_g (ELECTRA's
``embeddings_project``) and its masked-LM head maps H_g -> E (dense + activation + LayerNorm)
before the vocabulary projection tied to the shared token embeddings (HF's
``ElectraGeneratorPredictions`` + ``generator_lm_head``). The discriminator's replaced-token head
is dense + activation + dense(1) (HF's ``ElectraDiscriminatorPredictions``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .encoder import Encoder
from .interface import ModelInterface
from .transformer import ACTIVATIONS, Block, init_weights, make_norm


def generator_config(cfg: ModelConfig, size: float, layers: int | None) -> ModelConfig:
    """The generator's config: ``size`` times the discriminator's hidden and MLP widths, rounded
    to whole heads of the discriminator's head size, and ``layers`` blocks (default: as many)."""
    head_dim = cfg.head_dim
    n_head = max(1, round(cfg.n_embd * size / head_dim))
    hidden = n_head * head_dim
    ffn = cfg.intermediate_size or 4 * cfg.n_embd
    return dataclasses.replace(cfg, n_embd=hidden, n_head=n_head, n_kv_head=None, head_dim=head_dim,
                               intermediate_size=max(1, round(ffn * hidden / cfg.n_embd)),
                               n_layer=layers or cfg.n_layer, mlm_head=False, pooler=False,
                               mup_base_width=None, mup_base_head_dim=None).validate()


class Generator(nn.Module):
    """The masked-LM generator over the discriminator's (shared) embedding output."""

    def __init__(self, cfg: ModelConfig, embedding_size: int):
        super().__init__()
        self.config = cfg
        h = cfg.n_embd
        self.project = nn.Linear(embedding_size, h) if embedding_size != h else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg, i, causal=False) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg) if cfg.norm_placement == "pre" else nn.Identity()
        self.dense = nn.Linear(h, embedding_size)
        self.act = ACTIVATIONS[cfg.activation]
        self.norm = nn.LayerNorm(embedding_size, eps=cfg.norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        init_weights(self, cfg)

    def forward(self, embedded: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.project(embedded)
        for block in self.blocks:
            x = block(x, None, mask)
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of hidden states (already selected), tied to the token embeddings."""
        return F.linear(self.norm(self.act(self.dense(hidden))), token_embedding, self.bias)


class ELECTRA(ModelInterface, nn.Module):
    """Generator + discriminator + replaced-token-detection head, trained as one module.
    ``config`` is the discriminator's; :meth:`exported_model` is the discriminator."""

    supported_parallel_modes = ("ddp",)

    def __init__(self, discriminator: Encoder, generator_size: float = 0.25,
                 generator_layers: int | None = None):
        super().__init__()
        self.discriminator = discriminator
        self.config = discriminator.config
        cfg = discriminator.config
        self.generator = Generator(generator_config(cfg, generator_size, generator_layers), cfg.n_embd)
        self.rtd_dense = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.rtd_act = ACTIVATIONS[cfg.activation]
        self.rtd_out = nn.Linear(cfg.n_embd, 1)
        for layer in (self.rtd_dense, self.rtd_out):
            nn.init.normal_(layer.weight, std=cfg.init_std)
            nn.init.zeros_(layer.bias)

    def num_parameters(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            d = self.discriminator
            n -= d.wpe.weight.numel() + (d.wtt.weight.numel() if d.wtt is not None else 0)
        return n

    def generator_logits(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The generator's vocabulary logits at ``positions`` (a boolean (B, T) mask)."""
        d = self.discriminator
        hidden = self.generator(d.embed(input_ids))[positions]
        return self.generator.logits(hidden, d.wte.weight)

    def rtd_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) logits that each token was replaced."""
        h = self.discriminator(input_ids)
        return self.rtd_out(self.rtd_act(self.rtd_dense(h))).squeeze(-1)

    forward = rtd_logits

    def exported_model(self) -> nn.Module:
        return self.discriminator

    def companion_models(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def state_for_save(self) -> dict[str, torch.Tensor]:
        state = {f"discriminator.{k}": v for k, v in self.discriminator.state_for_save().items()}
        for k, v in self.state_dict().items():
            if not k.startswith("discriminator."):
                state[k] = v.detach().contiguous()
        return state
