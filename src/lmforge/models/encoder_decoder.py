"""The encoder-decoder Transformer (T5 and BART families by config), built from the decoder's
blocks: a bidirectional encoder over the source, and a causal decoder whose blocks add
cross-attention to the encoder output. One token embedding is shared by the encoder, the
decoder and the (tied) output head.

Positions are learned tables (BART) or T5's relative position bias: a learned scalar per head
and bucket of key-minus-query distance, computed once per stack and shared by all its layers,
added to the attention scores (passed to SDPA as a float ``attn_mask``).

    model = EncoderDecoder(preset("t5-tiny", vocab_size=1000))
    logits = model(input_ids, decoder_input_ids, attention_mask=mask)   # (B, T_dec, vocab)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .interface import ModelInterface
from .transformer import (KVCache, Block, compute_dtype, explicit_attention, init_weights, make_norm,
                          use_explicit_attention)


def has_padding(attention_mask: torch.Tensor | None) -> bool:
    """Whether a source padding mask (1 = token) must be applied. Under torch.compile a given
    mask is applied as is: asking whether it is all ones would read a tensor value and break the
    graph (callers drop all-ones masks beforehand)."""
    if attention_mask is None:
        return False
    return torch.compiler.is_compiling() or not bool(attention_mask.all())


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucket of each key-minus-query distance: exact for small distances, logarithmic up
    to ``max_distance``, one bucket beyond. Bidirectional (encoder) spends half the buckets on
    keys after the query; unidirectional (decoder) only looks back."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    log_ratio = (torch.log(distance.float().clamp(min=1) / max_exact)
                 / math.log(max_distance / max_exact))
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """Additive attention bias (1, n_head, T_q, T_k) from bucketed relative positions."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        self.embedding = nn.Embedding(self.num_buckets, cfg.n_head)

    def forward(self, q_len: int, k_len: int, q_start: int = 0) -> torch.Tensor:
        device = self.embedding.weight.device
        q_pos = torch.arange(q_start, q_start + q_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        buckets = relative_position_bucket(k_pos - q_pos, self.bidirectional, self.num_buckets,
                                           self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)[None]


class CrossAttention(nn.Module):
    """Decoder queries attend to the encoder output. Keys and values depend only on the encoder
    output, so :meth:`memory` computes them once per source and generation caches them."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        q_size, kv_size = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        self.q = nn.Linear(cfg.n_embd, q_size, bias=cfg.bias)
        self.kv = nn.Linear(cfg.n_embd, 2 * kv_size, bias=cfg.bias)  # one fused matmul
        self.proj = nn.Linear(q_size, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.scale = cfg.attention_scale

    def memory(self, encoder_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, n_kv_head, S, head_dim) of the encoder output."""
        B, S, _ = encoder_hidden.shape
        kv = self.kv(encoder_hidden).view(B, S, 2 * self.n_kv_head, self.head_dim).transpose(1, 2)
        return kv.split(self.n_kv_head, dim=1)

    def forward(self, x: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k, v = memory
        dropout_p = self.dropout if self.training else 0.0
        if use_explicit_attention(q, k):
            y = explicit_attention(q, k, v, mask, scale=self.scale, dropout_p=dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                               scale=self.scale, enable_gqa=self.n_kv_head != self.n_head)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, -1)))


class DecoderBlock(Block):
    """A causal :class:`Block` with cross-attention between self-attention and the MLP."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__(cfg, layer, causal=True)
        self.ln_cross = make_norm(cfg, feeds_matmul=self.pre_norm)
        self.cross_attn = CrossAttention(cfg, layer)

    def forward(self, x, memory, self_mask=None, cross_mask=None, cache: KVCache | None = None):
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), None, self_mask, cache)
            x = x + self.cross_attn(self.ln_cross(x), memory, cross_mask)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, None, self_mask, cache))
        x = self.ln_cross(x + self.cross_attn(x, memory, cross_mask))
        return self.ln_2(x + self.mlp(x))


@dataclass
class Seq2SeqCache:
    """Decoder state during generation: the self-attention KV cache, and the cross-attention
    keys/values of the encoder output (per decoder layer, filled by the first decoding step)."""

    self_attn: KVCache
    cross: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.self_attn.length

    @property
    def capacity(self) -> int:
        return self.self_attn.capacity

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search: follow the surviving beams, or expand each
        source to several beams with repeated indices)."""
        self.self_attn.reorder(index)
        self.cross = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross]


class EncoderDecoder(ModelInterface, nn.Module):
    """Encoder-decoder language model (T5 or BART style, chosen by ``ModelConfig``).

    ``encode`` runs the bidirectional encoder over a right-padded source; ``decode`` runs the
    causal decoder over target tokens attending to it; ``forward`` does both and returns
    logits.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.relative = cfg.pos_embedding == "relative"
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if self.relative:
            self.enc_pos_bias = RelativePositionBias(cfg, bidirectional=True)
            self.dec_pos_bias = RelativePositionBias(cfg, bidirectional=False)
        else:
            self.enc_wpe = nn.Embedding(cfg.context_length, cfg.n_embd)
            self.dec_wpe = nn.Embedding(cfg.context_length, cfg.n_embd)
        self.enc_emb_norm = make_norm(cfg) if cfg.embedding_norm else nn.Identity()
        self.dec_emb_norm = make_norm(cfg) if cfg.embedding_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.enc_blocks = nn.ModuleList(Block(cfg, i, causal=False) for i in range(cfg.n_layer))
        self.dec_blocks = nn.ModuleList(DecoderBlock(cfg, i) for i in range(cfg.decoder_layers))
        # Pre-norm stacks end with a norm; post-norm blocks already end normalized.
        self.enc_ln_f = make_norm(cfg) if cfg.norm_placement == "pre" else nn.Identity()
        self.dec_ln_f = make_norm(cfg) if cfg.norm_placement == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        init_weights(self, cfg)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._matmul_weights: tuple[int, int, int] | None = None  # batch_flops' counts, once

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Unique parameters; ``non_embedding`` drops the position tables (and the token
        embedding when the head is not tied to it)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if not self.relative:
                n -= self.enc_wpe.weight.numel() + self.dec_wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.wte.weight.numel()
        return n

    supported_parallel_modes = ("ddp",)

    def batch_flops(self, batch: dict, tokens: int, per_token: float) -> float:
        """Not 6N per token: encoder weights (and the decoder's cross-attention key/value
        projections) see the source tokens, the other decoder weights and the output head the
        target tokens; attention spans the source (encoder, cross) or the target (decoder
        self-attention)."""
        if "labels" not in batch:
            return tokens * per_token
        cfg = self.config
        src, tgt = tokens, int((batch["labels"] != -100).sum())
        S, T = batch["input_ids"].shape[1], batch["labels"].shape[1]
        if self._matmul_weights is None:
            self._matmul_weights = (
                *(sum(m.weight.numel() for m in blocks.modules() if isinstance(m, nn.Linear))
                  for blocks in (self.enc_blocks, self.dec_blocks)),
                sum(block.cross_attn.kv.weight.numel() for block in self.dec_blocks))
        enc, dec, cross_kv = self._matmul_weights
        head = cfg.n_embd * cfg.vocab_size
        d_attn = cfg.n_head * cfg.head_dim
        matmuls = src * (enc + cross_kv) + tgt * (dec - cross_kv + head)
        attention = d_attn * (cfg.n_layer * src * S + cfg.decoder_layers * tgt * (T + S))
        return 6 * matmuls + 12 * attention

    def _check_length(self, length: int, what: str) -> None:
        if length > self.config.context_length:
            raise ValueError(f"{what} of {length} tokens exceeds the model context "
                             f"(context_length={self.config.context_length})")

    # ---- encoder ------------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder hidden states (B, S, n_embd). ``attention_mask`` is 1 for tokens, 0 for
        padding; padding is never attended to."""
        B, S = input_ids.shape
        self._check_length(S, "source")
        x = self.wte(input_ids)
        if not self.relative:
            x = x + self.enc_wpe(torch.arange(S, device=input_ids.device))
        x = self.drop(self.enc_emb_norm(x))
        keys = attention_mask[:, None, None, :].bool() if has_padding(attention_mask) else None
        mask = keys
        if self.relative:
            mask = self.enc_pos_bias(S, S)
            if keys is not None:
                mask = mask.masked_fill(~keys, float("-inf"))
        for block in self.enc_blocks:
            x = block(x, None, mask)
        return self.enc_ln_f(x)

    # ---- decoder ------------------------------------------------------------------------
    def _self_mask(self, T: int, start: int, cached: bool, device) -> torch.Tensor | None:
        """Decoder self-attention mask over ``start + T`` keys: None where the fused causal
        kernel (no cache) or no mask at all (one cached step sees every earlier key) applies."""
        causal = None
        if T > 1 and (cached or self.relative):
            q_pos = torch.arange(start, start + T, device=device)[:, None]
            causal = torch.arange(start + T, device=device)[None, :] <= q_pos
        if not self.relative:
            return causal
        bias = self.dec_pos_bias(T, start + T, q_start=start)
        return bias if causal is None else bias.masked_fill(~causal, float("-inf"))

    def decode(self, decoder_input_ids: torch.Tensor, encoder_hidden: torch.Tensor,
               attention_mask: torch.Tensor | None = None,
               cache: Seq2SeqCache | None = None) -> torch.Tensor:
        """Decoder hidden states (B, T, n_embd) for ``decoder_input_ids`` (targets shifted right,
        starting with ``decoder_start_token_id``). ``attention_mask`` is the source's padding
        mask. With a ``cache``, the ids are the tokens after those it holds; the encoder's
        cross-attention keys/values are computed on the first call and reused after."""
        B, T = decoder_input_ids.shape
        start = cache.length if cache is not None else 0
        self._check_length(start + T, "decoder sequence")
        device = decoder_input_ids.device
        x = self.wte(decoder_input_ids)
        if not self.relative:
            x = x + self.dec_wpe(torch.arange(start, start + T, device=device))
        x = self.drop(self.dec_emb_norm(x))
        self_mask = self._self_mask(T, start, cache is not None, device)
        cross_mask = attention_mask[:, None, None, :].bool() if has_padding(attention_mask) else None
        if cache is not None and cache.cross:
            memories = cache.cross
        else:
            # Cast once for every layer's key/value projection rather than once in each.
            encoder_hidden = encoder_hidden.to(compute_dtype(encoder_hidden))
            memories = [block.cross_attn.memory(encoder_hidden) for block in self.dec_blocks]
            if cache is not None:
                cache.cross = memories
        kv = cache.self_attn if cache is not None else None
        for block, memory in zip(self.dec_blocks, memories):
            x = block(x, memory, self_mask, cross_mask, kv)
        if kv is not None:
            kv.length += T
        return self.dec_ln_f(x)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T_dec, vocab) of the next target token at each decoder position."""
        hidden = self.encode(input_ids, attention_mask)
        return self.logits(self.decode(decoder_input_ids, hidden, attention_mask))

    def logits(self, decoder_hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of decoder hidden states (T5 with tied embeddings scales them)."""
        if self.config.output_scale is not None:
            decoder_hidden = decoder_hidden * self.config.output_scale
        return self.lm_head(decoder_hidden)

    def new_cache(self, batch: int, max_len: int | None = None) -> Seq2SeqCache:
        """An empty decoder cache for ``batch`` rows and up to ``max_len`` decoder tokens."""
        p = self.wte.weight
        decoder_cfg = replace(self.config, n_layer=self.config.decoder_layers)
        return Seq2SeqCache(KVCache.empty(decoder_cfg, batch, max_len or self.config.context_length,
                                          compute_dtype(p), p.device))
