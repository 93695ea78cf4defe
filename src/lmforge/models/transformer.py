"""The config-driven Transformer: attention, MLP and block shared by every lmforge model, and the
decoder-only language model `GPT` (GPT-2 and Llama families by config)."""

from __future__ import annotations

import math
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import mup
from .config import ModelConfig
from .interface import ModelInterface
from .kv_cache import KVCache, SlotCache, causal_mask


def make_norm(cfg: ModelConfig, feeds_matmul: bool = False) -> nn.Module:
    """The config's norm. ``feeds_matmul``: the output only enters linear layers (a pre-norm
    block's norms), so under autocast an RMSNorm may return the autocast dtype directly."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, eps=cfg.norm_eps, autocast_output=feeds_matmul)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``x`` (an activation, a weight) is computed in: autocast's when it is on for
    its device, else ``x``'s. (RoPE in fp32 would promote q and k and cost a cast back before
    attention; caches and recurrent states must match what the layers produce.)"""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward, for eager CPU: ATen's CPU rms_norm is composite
    (pow, mean, rsqrt, two muls, each a pass over memory, and autograd of each): a tenth of a
    t5-tiny training step. Here the forward keeps the normalized input for the backward, which
    then works in place on one fp32 copy of the incoming gradient (2.7-3x faster per norm);
    math in fp32 whatever the input dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype):
        acc = torch.promote_types(x.dtype, torch.float32)
        rstd = (torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=acc)
                .square_().div_(x.shape[-1]).add_(eps).rsqrt_())
        x_hat = x * rstd
        y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        torch.mul(x_hat, weight, out=y)
        ctx.save_for_backward(x_hat, rstd, weight)
        ctx.x_dtype = x.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x_hat, rstd, weight = ctx.saved_tensors
        g = grad.to(x_hat.dtype, copy=True)  # worked on in place below
        grad_weight = None
        if ctx.needs_input_grad[1]:
            rows = x_hat.flatten(0, -2)
            grad_weight = torch.linalg.vecdot(g.flatten(0, -2), rows, dim=0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # d/dx of x_hat * weight: rstd * (gw - x_hat * mean(gw * x_hat)), gw = grad * weight
            g.mul_(weight)
            dot = torch.linalg.vecdot(g, x_hat, dim=-1).unsqueeze_(-1).mul_(-1.0 / x_hat.shape[-1])
            grad_x = g.addcmul_(x_hat, dot).mul_(rstd).to(ctx.x_dtype)
        return grad_x, grad_weight, None, None


def _rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 out_dtype: torch.dtype) -> torch.Tensor:
    """:class:`_RMSNormFunction`'s forward without autograd: the Function's bookkeeping is a
    tenth of a small decoder's batch-1 decoding step."""
    acc = torch.promote_types(x.dtype, torch.float32)
    rstd = (torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=acc)
            .square_().div_(x.shape[-1]).add_(eps).rsqrt_())
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    return torch.mul(x * rstd, weight, out=y)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (state dict as ``nn.RMSNorm``'s). Eager CPU
    runs :class:`_RMSNormFunction`; elsewhere ``F.rms_norm`` (fused CUDA kernel, or traced and
    fused under ``torch.compile``). ``autocast_output``: under autocast, return its dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, autocast_output: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.autocast_output = eps, autocast_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = torch.promote_types(x.dtype, self.weight.dtype)
        if self.autocast_output and torch.is_autocast_enabled(x.device.type):
            out_dtype = torch.get_autocast_dtype(x.device.type)
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            if not torch.is_grad_enabled():  # inference: no autograd node, nothing saved
                return _rms_norm_cpu(x, self.weight, self.eps, out_dtype)
            return _RMSNormFunction.apply(x, self.weight, self.eps, out_dtype)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps).to(out_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


ACTIVATIONS = {
    "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": nn.ReLU(),
    "silu": nn.SiLU(),
}


def rope_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """RoPE inverse frequencies, with ``cfg.rope_scaling`` applied as Hugging Face does."""
    inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64)
                                        .float() / cfg.head_dim))
    scaling = cfg.rope_scaling
    if not scaling:
        return inv_freq
    kind, factor = scaling.get("rope_type", scaling.get("type")), float(scaling["factor"])
    if kind == "linear":  # positions divided by factor = frequencies divided by it
        return inv_freq / factor
    # Llama 3: long wavelengths slowed by ``factor``, short ones kept, a smooth blend between.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """cos/sin of shape (B or 1, T, 1, head_dim) for integer ``positions`` of shape (B or 1, T):
    they broadcast over the heads of a (B, T, heads, head_dim) tensor."""
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, hd/2)
    emb = torch.cat((angles, angles), dim=-1)[:, :, None]  # half-split layout, as Hugging Face Llama
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# Up to this many positions, bf16 attention on CPU trains faster as explicit batched matmuls than
# through SDPA's flash kernel, whose CPU backward is slow (forward + backward measured on an
# AVX512-BF16 CPU: 2.3x faster at T=256, 5x at T=64; about even at T=512, slower beyond; with an
# additive bias, as T5's, 1.8x at T=128). The (B, H, T, S) probabilities kept for backward stay
# small at these lengths.
EXPLICIT_ATTENTION_MAX_LEN = 256


def use_explicit_attention(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether :func:`explicit_attention` beats SDPA here: CPU, bf16, short sequences."""
    return (q.dtype == torch.bfloat16 and q.device.type == "cpu"
            and max(q.shape[2], k.shape[2]) <= EXPLICIT_ATTENTION_MAX_LEN)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: torch.Tensor | None = None, causal: bool = False,
                       scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(scale * q k^T + mask) v for q (B, H, T, D) and k, v (B, H or fewer grouped-query
    heads, S, D): SDPA's math, with ``mask`` boolean (True = attend) or an additive float bias
    broadcastable to (B, H, T, S), and ``causal`` aligning the last query with the last key."""
    B, H, T, D = q.shape
    S = k.shape[2]
    if k.shape[1] != H:
        k, v = (t.repeat_interleave(H // t.shape[1], dim=1) for t in (k, v))
    bias = None
    if causal:
        bias = torch.full((T, S), float("-inf"), dtype=q.dtype, device=q.device).triu(S - T + 1)
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        bias = mask.to(q.dtype) if bias is None else bias + mask.to(q.dtype)
    scale = D ** -0.5 if scale is None else scale
    q = (q * scale if scale != 1.0 else q).flatten(0, 1)
    k_t = k.flatten(0, 1).transpose(1, 2)
    if bias is None:
        scores = torch.bmm(q, k_t)
    elif bias.shape[0] == 1:  # one bias for every row (T5 positions): broadcast, not B copies
        scores = (torch.bmm(q, k_t).view(B, H, T, S) + bias).view(B * H, T, S)
    else:
        scores = torch.baddbmm(bias.expand(B, H, T, S).reshape(B * H, T, S), q, k_t)
    probs = F.dropout(torch.softmax(scores, dim=-1), dropout_p) if dropout_p else scores.softmax(-1)
    return torch.bmm(probs, v.flatten(0, 1)).view(B, H, T, D)


class Attention(nn.Module):
    """Multi-head / grouped-query attention through ``scaled_dot_product_attention`` (fused
    flash or memory-efficient kernels on CPU and GPU instead of an explicit T x T softmax);
    short bf16 sequences on CPU use ``explicit_attention``, faster there."""

    def __init__(self, cfg: ModelConfig, layer: int, causal: bool = True):
        super().__init__()
        self.layer, self.causal = layer, causal
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        q_size, kv_size = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        qkv_bias = cfg.bias if cfg.qkv_bias is None else cfg.qkv_bias
        self.qkv = nn.Linear(cfg.n_embd, q_size + 2 * kv_size, bias=qkv_bias)  # one fused matmul
        self.proj = nn.Linear(q_size, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.scale = mup.attention_scale(cfg)  # None = 1/sqrt(head_dim); T5 uses 1.0

    def forward(self, x, rope=None, mask=None, cache: KVCache | None = None):
        B, T, _ = x.shape
        H, Hkv = self.n_head, self.n_kv_head
        qkv = self.qkv(x).view(B, T, H + 2 * Hkv, self.head_dim)
        q, k, v = qkv.split((H, Hkv, Hkv), dim=2)
        if rope is not None:  # q and k heads rotated in one call: half the small ops of two
            q, k = apply_rope(qkv[:, :, : H + Hkv], *rope).split((H, Hkv), dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        dropout_p = self.dropout if self.training else 0.0
        is_causal = self.causal and mask is None and cache is None
        if mask is not None and mask.is_floating_point():
            mask = mask.to(q.dtype)  # an additive bias (T5 positions) must match q under autocast
        if use_explicit_attention(q, k):
            y = explicit_attention(q, k, v, mask, is_causal, self.scale, dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                               is_causal=is_causal, scale=self.scale,
                                               enable_gqa=self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """GPT-2 MLP (up, activation, down) or a gated one, act(gate) * up then down: Llama's SwiGLU
    (silu) or T5 v1.1's gated GELU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.mlp in ("swiglu", "gated")
        width = cfg.intermediate_size * (2 if self.gated else 1)
        self.fc = nn.Linear(cfg.n_embd, width, bias=cfg.bias)  # gate and up fused when gated
        self.act = ACTIVATIONS[cfg.activation]
        self.relu = cfg.activation == "relu"
        self.proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        elif self.relu:
            h = torch.relu_(h)  # fc's output is not saved for its backward: overwrite it
        else:
            h = self.act(h)
        return self.dropout(self.proj(h))


class Block(nn.Module):
    """Attention + MLP with residuals; pre-norm (GPT-2, Llama) or post-norm (original BERT)."""

    def __init__(self, cfg: ModelConfig, layer: int, causal: bool = True):
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        self.ln_1 = make_norm(cfg, feeds_matmul=self.pre_norm)
        self.attn = Attention(cfg, layer, causal)
        self.ln_2 = make_norm(cfg, feeds_matmul=self.pre_norm)
        self.mlp = MLP(cfg)

    def forward(self, x, rope=None, mask=None, cache=None):
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), rope, mask, cache)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, rope, mask, cache))
        return self.ln_2(x + self.mlp(x))


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Normal(0, init_std) weights, zero biases; residual output projections scaled by
    1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth (GPT-2).
    Under muP hidden matrices are further scaled by 1/sqrt(width multiplier) (models/mup.py)."""
    resid_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = resid_std if name.endswith(("attn.proj", "mlp.proj")) else cfg.init_std
            nn.init.normal_(module.weight, mean=0.0, std=mup.init_std(cfg, name, std))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=cfg.init_std)


class GPT(ModelInterface, nn.Module):
    """Decoder-only causal language model: GPT-2 or Llama style, chosen by ``ModelConfig``."""

    supported_parallel_modes = ("ddp", "fsdp", "tp")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.context_length, cfg.n_embd) if cfg.pos_embedding == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i, causal=True) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg) if cfg.norm_placement == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.pos_embedding == "rope":
            self.register_buffer("inv_freq", rope_frequencies(cfg), persistent=False)
        init_weights(self, cfg)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Unique parameters; ``non_embedding`` drops token/position embeddings (kept when the
        output head is tied to them, since the head does real work)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.wte.weight.numel()
        return n

    def uses_every_weight(self) -> bool:
        return True  # a decoder LM's loss reaches every weight

    def hidden_states(self, idx: torch.Tensor, position_ids: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None,
                      cache: KVCache | None = None) -> torch.Tensor:
        """Final (normalized) hidden states, shape (B, T, n_embd).

        ``attention_mask`` (B, T_total) marks real tokens with 1 and padding with 0 over the
        whole sequence seen so far (cache included), or, without a cache, (B, T, T) says which
        keys each query may see (packed sequences: a block per example); ``position_ids``
        default to consecutive positions after what the cache holds.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.context_length:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model context "
                             f"(context_length={self.config.context_length})")
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=idx.device)[None]
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        x = self.drop(x)
        rope = (rope_cos_sin(self.inv_freq, position_ids, compute_dtype(x))
                if self.config.pos_embedding == "rope" else None)
        mask = (cache.attention_mask(T, attention_mask) if cache is not None
                else causal_mask(T, 0, attention_mask, False, idx.device))
        for block in self.blocks:
            x = block(x, rope, mask, cache)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, position_ids=None, attention_mask=None,
                cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab); with ``last_only`` only the final position's (B, 1, vocab)."""
        h = self.hidden_states(idx, position_ids, attention_mask, cache)
        if last_only:
            h = h[:, -1:]
        return self.logits(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of final hidden states ``h`` (..., n_embd): the LM head after
        ``output_scale`` and muP's 1/width-multiplier readout."""
        scale = mup.output_multiplier(self.config)
        return self.lm_head(h * scale if scale is not None else h)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = self.wte.weight
        return KVCache.empty(self.config, batch, max_len or self.config.context_length,
                             compute_dtype(p), p.device)

    def new_slot_cache(self, slots: int, max_len: int | None = None) -> SlotCache:
        """A cache of ``slots`` independent sequences, each at its own length, for serving
        with continuous batching (see :class:`SlotCache`)."""
        p = self.wte.weight
        return SlotCache.empty(self.config, slots, max_len or self.config.context_length,
                               compute_dtype(p), p.device)
