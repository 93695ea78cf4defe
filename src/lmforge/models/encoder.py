"""The bidirectional encoder (BERT family), built from the decoder's blocks with causal masking
off: token + position + segment embeddings, padding mask, pooler and a masked-LM head tied to
the input embeddings."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import mup
from .config import ModelConfig
from .interface import ModelInterface
from .transformer import ACTIVATIONS, Block, init_weights, make_norm


class MLMHead(nn.Module):
    """BERT's prediction head: dense + activation + LayerNorm, then the tied vocab projection."""

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.act = ACTIVATIONS[cfg.activation]
        self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.embedding = embedding  # the decoder matrix is the input embedding (tied)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.readout_multiplier = mup.readout_multiplier(cfg)  # muP: 1/m, else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.act(self.dense(h)))
        if self.readout_multiplier is not None:
            h = h * self.readout_multiplier
        return F.linear(h, self.embedding.weight, self.bias)


class Encoder(ModelInterface, nn.Module):
    """BERT-style encoder. ``forward`` gives hidden states; ``mlm_logits`` projects only the
    positions asked for (the 15% that masked LM predicts, not all of them)."""

    extra_forward_methods = ("mlm_logits", "sentence_logits")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.context_length, cfg.n_embd)
        self.wtt = nn.Embedding(cfg.type_vocab_size, cfg.n_embd) if cfg.type_vocab_size else None
        self.emb_norm = make_norm(cfg) if cfg.embedding_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i, causal=False) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg) if cfg.norm_placement == "pre" else nn.Identity()
        self.pooler = nn.Linear(cfg.n_embd, cfg.n_embd) if cfg.pooler else None
        self.mlm_head = MLMHead(cfg, self.wte) if cfg.mlm_head else None
        # NSP / SOP
        self.sentence_head = nn.Linear(cfg.n_embd, 2) if cfg.pooler and cfg.sentence_head else None
        init_weights(self, cfg)

    def num_parameters(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wpe.weight.numel() + (self.wtt.weight.numel() if self.wtt is not None else 0)
        return n

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, n_embd). ``attention_mask`` is 1 for tokens, 0 for padding."""
        x = self.embed(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask[:, None, None, :].bool()  # keys only: padding is never attended
        for block in self.blocks:
            x = block(x, None, mask)
        return self.ln_f(x)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding layer's output (token + position + segment, norm, dropout): what the
        blocks read (and what ELECTRA's generator shares)."""
        B, T = input_ids.shape
        if T > self.config.context_length:
            raise ValueError(f"sequence of {T} tokens exceeds the model context "
                             f"(context_length={self.config.context_length})")
        x = self.wte(input_ids) + self.wpe(torch.arange(T, device=input_ids.device))
        if self.wtt is not None:
            x = x + self.wtt(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
        return self.drop(self.emb_norm(x))

    def has_mlm_head(self) -> bool:
        return self.mlm_head is not None

    def add_mlm_head(self, dense_init: str = "identity", bias: torch.Tensor | None = None) -> MLMHead:
        """Give an encoder imported without one (sentence-transformers' BertModel) a masked-LM
        head for continued pretraining. The decoder is the token embedding matrix (tied, as in
        BERT), so the head is informative from step 0; ``dense_init`` "identity" starts the
        transform dense at the identity (the hidden states pass through, up to GELU + LayerNorm),
        "standard" at the model's usual Normal(0, init_std). ``bias``: initial vocab bias
        (default zeros; e.g. log unigram frequencies of the in-domain data)."""
        if self.mlm_head is not None:
            raise ValueError("this encoder already has a masked-LM head")
        if dense_init not in ("identity", "standard"):
            raise ValueError(f"dense_init must be 'identity' or 'standard', got {dense_init!r}")
        cfg = self.config
        head = MLMHead(cfg, self.wte).to(self.wte.weight.device)
        with torch.no_grad():
            if dense_init == "identity":
                head.dense.weight.copy_(torch.eye(cfg.n_embd))
            else:
                nn.init.normal_(head.dense.weight, mean=0.0, std=cfg.init_std)
            head.dense.bias.zero_()
            if bias is not None:
                head.bias.copy_(bias.to(head.bias))
        self.mlm_head = head
        cfg.mlm_head = True  # the exported folder (config and weights) has the head
        return head

    def mlm_logits(self, hidden: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary logits at ``positions`` (a boolean mask over (B, T)), or everywhere."""
        if self.mlm_head is None:
            raise ValueError("this encoder has no masked-LM head (mlm_head=false)")
        if positions is not None:
            hidden = hidden[positions]
        return self.mlm_head(hidden)

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """The [CLS] vector through the pooler (dense + tanh), as BERT's sentence representation."""
        if self.pooler is None:
            return hidden[:, 0]
        return torch.tanh(self.pooler(hidden[:, 0]))

    def sentence_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Two-way logits of the next-sentence / sentence-order head."""
        if self.sentence_head is None:
            raise ValueError("this encoder has no sentence head (pooler or sentence_head false)")
        pooled = self.pooled(hidden)
        scale = mup.readout_multiplier(self.config)  # muP readout: 1/m
        return self.sentence_head(pooled * scale if scale is not None else pooled)
