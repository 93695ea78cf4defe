"""Knowledge distillation: a student learns from a frozen teacher's outputs as well as from the
data's labels.

The loss of one batch is

    alpha * hard + (1 - alpha) * T^2 * KL(teacher_T || student_T)
          + hidden_weight * MSE(mapped block outputs) + attention_weight * relation KL

with ``softmax(logits / T)`` on both sides of the KL (Hinton et al. 2015: the T^2 keeps the soft
term's gradients at the hard term's scale as T changes). The relation term is MiniLM's (Wang et
al. 2020, 2021): in the last layer, the self-attention distributions softmax(q k^T / sqrt(d))
and the value relations softmax(v v^T / sqrt(d)) of the student match the teacher's by KL. The
heads' q, k and v are concatenated and re-split into ``relation_heads`` relation heads
(MiniLMv2), so the two models may differ in width and head count; with relation heads = heads
the q-k relation is the attention distribution itself (before RoPE, for rotary models).

:class:`Distillation` wraps an ordinary objective (causal LM, masked LM, a fine-tuning task):
that objective keeps making the batches and evaluating; an :class:`Adapter` says how to get the
outputs to distil (next-token logits, masked-token logits, class logits) and their hard loss.
q/k/v and block outputs are read by forward hooks that exist only while the loss runs, so
ordinary training and inference pay nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from ..config import options_from_dict
from ..errors import ConfigError
from ..models.layers import block_list
from .base import option


@dataclasses.dataclass
class DistillOptions:
    """How the student learns from the teacher (the `lmforge distill` flags of the same names)."""

    temperature: float = option(2.0, "softmax temperature of the logit KL (scaled by T^2)")
    alpha: float = option(0.5, "weight of the hard-label loss; 1 - alpha weighs the logit KL "
                               "(1 = no logit distillation)")
    hidden_weight: float = option(0.0, "weight of the MSE between mapped block outputs "
                                       "(needs equal widths)")
    attention_weight: float = option(0.0, "weight of the MiniLM last-layer attention and value "
                                          "relation KL")
    relation_heads: int = option(0, "relation heads of the attention transfer (0 = the "
                                    "teacher's attention heads)")
    layer_map: list | None = option(None, "teacher block matched to each student block by the "
                                          "hidden-state loss (default: evenly spaced; a layer-kept "
                                          "student: the kept blocks)")

    def validate(self) -> "DistillOptions":
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        for name in ("hidden_weight", "attention_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.relation_heads < 0:
            raise ConfigError(f"relation-heads must be >= 0, got {self.relation_heads}")
        return self

    @property
    def uses_teacher(self) -> bool:
        """Whether the loss reads the teacher at all (alpha = 1 and no transfer: plain training)."""
        return self.alpha < 1 or self.hidden_weight > 0 or self.attention_weight > 0


# ---- the loss terms ------------------------------------------------------------------------
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), summed over the classes and
    averaged over the rows (every dimension but the last)."""
    t = temperature
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # bf16 logits: fp32 math
    s = F.log_softmax(student_logits.to(dtype).flatten(0, -2) / t, dim=-1)
    p = F.log_softmax(teacher_logits.to(dtype).flatten(0, -2) / t, dim=-1)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * t * t


def relation_scores(x: torch.Tensor, y: torch.Tensor, heads: int,
                    key_mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """Log relation distributions log softmax(x_h y_h^T / sqrt(d_h)) of ``heads`` relation
    heads for x, y (B, T, width), shape (B, heads, T, T); keys masked by ``key_mask`` (B, T,
    1 = real token) and, if ``causal``, to the left of each query."""
    B, T, width = x.shape
    if width % heads:
        raise ConfigError(f"relation heads ({heads}) must divide the width ({width})")
    d = width // heads
    xh = x.float().view(B, T, heads, d).transpose(1, 2)
    yh = y.float().view(B, T, heads, d).transpose(1, 2)
    scores = xh @ yh.transpose(-1, -2) / math.sqrt(d)
    allowed = torch.ones(T, T, dtype=torch.bool, device=x.device)
    if causal:
        allowed = allowed.tril()
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask.bool()[:, None, None, :]
    return scores.masked_fill(~allowed, float("-inf")).log_softmax(-1)


def relation_kl(teacher: torch.Tensor, student: torch.Tensor,
                query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) of log relation distributions (B, H, T, T), summed over keys and
    averaged over relation heads and real query positions."""
    p = teacher.exp()
    terms = torch.where(p > 0, p * (teacher - student), torch.zeros_like(p)).sum(-1)  # (B, H, T)
    if query_mask is None:
        return terms.mean()
    m = query_mask.to(terms.dtype)[:, None, :]
    return (terms * m).sum() / (m.sum() * terms.shape[1]).clamp(min=1)


def qkv_states(attn: torch.nn.Module, qkv: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, T, n_head * head_dim) from an attention layer's fused projection output; a
    grouped-query model's key/value heads repeated to one per query head."""
    B, T, _ = qkv.shape
    H, Hkv, d = attn.n_head, attn.n_kv_head, attn.head_dim
    q, k, v = qkv.view(B, T, H + 2 * Hkv, d).split((H, Hkv, Hkv), dim=2)
    if Hkv != H:
        k, v = (t.repeat_interleave(H // Hkv, dim=2) for t in (k, v))
    return tuple(t.reshape(B, T, H * d) for t in (q, k, v))


@contextlib.contextmanager
def capture(model: torch.nn.Module, blocks: list[int], qkv: bool):
    """Record the outputs of ``model``'s blocks at ``blocks`` and (``qkv``) the last block's q,
    k, v while the context is open: yields a dict filled by the forward pass (``"blocks"``: a
    list in ``blocks`` order; ``"qkv"``: (q, k, v)). The hooks are removed on exit."""
    layers = block_list(model)
    found: dict[str, Any] = {"blocks": [None] * len(blocks)}
    handles = []
    for slot, index in enumerate(blocks):
        def keep(module, args, output, slot=slot):
            found["blocks"][slot] = output
        handles.append(layers[index].register_forward_hook(keep))
    if qkv:
        attn = layers[len(layers) - 1].attn

        def keep_qkv(module, args, output):
            found["qkv"] = qkv_states(attn, output)
        handles.append(attn.qkv.register_forward_hook(keep_qkv))
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def even_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher block for each student block, evenly spaced and ending at the last (student
    block j of m <- teacher block (j + 1) * n / m - 1: TinyBERT's uniform mapping)."""
    return [(j + 1) * teacher_layers // student_layers - 1 for j in range(student_layers)]


# ---- what each kind of objective distils ---------------------------------------------------
class Adapter:
    """How a wrapped objective's model outputs are read for distillation: ``outputs`` runs a
    model on a batch and returns what the logit KL compares (logits with classes last),
    ``hard_loss`` the objective's own loss of those outputs, ``mask`` the real-token mask of
    the inputs (None: every position), ``causal`` whether attention looks only left."""

    causal = False
    distributions = True  # outputs are logits of distributions (validation reports their KL)
    has_hard_loss = True  # the wrapped objective's validation works on the student

    def check_model(self, inner, model) -> None:
        inner.check_model(model)

    def outputs(self, model, batch) -> torch.Tensor:
        raise NotImplementedError

    def hard_loss(self, outputs, batch) -> torch.Tensor:
        raise NotImplementedError

    def mask(self, batch) -> torch.Tensor | None:
        return batch.get("attention_mask")

    def soft_loss(self, student, teacher, temperature: float) -> torch.Tensor:
        """The logit term (KL of tempered softmaxes; regression overrides it with an MSE)."""
        return kd_loss(student, teacher, temperature)


class CausalLMAdapter(Adapter):
    """Next-token logits at every position (a prepared corpus's windows)."""

    causal = True

    def outputs(self, model, batch):
        logits = model(batch["input_ids"])
        return logits[0] if isinstance(logits, tuple) else logits

    def hard_loss(self, outputs, batch):
        return F.cross_entropy(outputs.flatten(0, 1).float(), batch["labels"].flatten(),
                               ignore_index=-100)


class MaskedLMAdapter(Adapter):
    """Masked-LM logits at the masked positions (both models need MLM heads for the logit
    term; with alpha = 1 and relation or hidden transfer only, neither does)."""

    def __init__(self, logits: bool):
        self.logits = self.distributions = self.has_hard_loss = logits

    def check_model(self, inner, model) -> None:
        if self.logits:
            inner.check_model(model)
        elif not model.is_encoder:
            raise ConfigError(f"masked-LM distillation needs an encoder student, got a {model.kind}")

    def outputs(self, model, batch):
        hidden = model(batch["input_ids"])
        if not self.logits:
            return hidden[:, :1]  # no logits to compare: the transfer terms carry the loss
        return model.mlm_logits(hidden, batch["labels"] != -100)

    def hard_loss(self, outputs, batch):
        if not self.logits:
            return outputs.new_zeros(())
        return F.cross_entropy(outputs.float(), batch["labels"][batch["labels"] != -100])


class Distillation:
    """An objective that trains a student on ``inner``'s batches with ``teacher``'s help (see
    the module docstring). Everything but the loss (batching, validation metrics, state) is
    ``inner``'s, so it wraps pretraining objectives and fine-tuning tasks alike."""

    def __init__(self, inner, teacher: torch.nn.Module, adapter: Adapter,
                 options: DistillOptions | dict | None = None):
        if not isinstance(options, DistillOptions):
            options = options_from_dict(DistillOptions, options or {}, where="distillation")
        self.inner, self.teacher, self.adapter = inner, teacher, adapter
        self.options = options.validate()
        self.name = f"distill({inner.name})"
        self._sums: dict[str, float] = {}
        self._count = 0

    def __getattr__(self, name: str):
        # Only called for attributes this class lacks: the wrapped objective's (read,
        # featurize, labels, default_metric, train_sampler, eval_batches, ...).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # The engine's per-objective switches: the wrapped objective's, except that the loss
    # (two models, hooks) is never compiled as one graph.
    compile_loss = False

    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        return {"teacher": self.teacher, **self.inner.frozen_modules()}

    def check_model(self, model: torch.nn.Module) -> None:
        self.adapter.check_model(self.inner, model)
        o = self.options
        if o.hidden_weight > 0:
            s, t = model.config.n_embd, self.teacher.config.n_embd
            if s != t:
                raise ConfigError(f"hidden-state transfer needs equal widths (teacher {t}, "
                                  f"student {s}); set --hidden-weight 0 or use --attention-weight")
            n_s, n_t = len(block_list(model)), len(block_list(self.teacher))
            mapping = o.layer_map or even_layer_map(n_s, n_t)
            if len(mapping) != n_s or not all(0 <= int(i) < n_t for i in mapping):
                raise ConfigError(f"layer_map {mapping} must name one of the teacher's {n_t} "
                                  f"blocks for each of the student's {n_s}")
        if o.attention_weight > 0:
            heads = self.relation_heads()
            for who, m in (("teacher", self.teacher), ("student", model)):
                attn = block_list(m)[-1].attn
                width = attn.n_head * attn.head_dim
                if width % heads:
                    raise ConfigError(f"{heads} relation heads do not divide the {who}'s attention "
                                      f"width {width}; set --relation-heads to a common divisor")

    def relation_heads(self) -> int:
        return self.options.relation_heads or block_list(self.teacher)[-1].attn.n_head

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss, parts = self.loss_terms(model, batch)
        for k, v in parts.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._count += 1
        return loss

    def loss_terms(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss and its detached terms (hard, kd, hidden, attention)."""
        o, a = self.options, self.adapter
        if not o.uses_teacher:  # plain training on the labels: no teacher pass
            hard = a.hard_loss(a.outputs(model, batch), batch)
            return hard, {"hard": hard.detach()}
        n_student = len(block_list(model))
        s_blocks = list(range(n_student)) if o.hidden_weight > 0 else []
        t_blocks = ([int(i) for i in (o.layer_map or even_layer_map(n_student, len(block_list(self.teacher))))]
                    if o.hidden_weight > 0 else [])
        relations = o.attention_weight > 0
        with torch.no_grad(), capture(self.teacher, t_blocks, relations) as t_found:
            t_out = a.outputs(self.teacher, batch)
        with capture(model, s_blocks, relations) as s_found:
            s_out = a.outputs(model, batch)
        parts: dict[str, torch.Tensor] = {}
        total = s_out.new_zeros((), dtype=torch.float32)
        if o.alpha > 0:
            parts["hard"] = a.hard_loss(s_out, batch)
            total = total + o.alpha * parts["hard"]
        if o.alpha < 1:
            parts["kd"] = a.soft_loss(s_out, t_out, o.temperature)
            total = total + (1 - o.alpha) * parts["kd"]
        mask = a.mask(batch)
        if o.hidden_weight > 0:
            parts["hidden"] = hidden_mse(s_found["blocks"], t_found["blocks"], mask)
            total = total + o.hidden_weight * parts["hidden"]
        if relations:
            parts["attention"] = attention_transfer(s_found["qkv"], t_found["qkv"],
                                                    self.relation_heads(), mask, a.causal)
            total = total + o.attention_weight * parts["attention"]
        return total, {k: v.detach() for k, v in parts.items()}

    @torch.no_grad()
    def evaluate(self, model, batches: list, device, autocast_ctx) -> dict[str, float]:
        """The wrapped objective's validation metrics (the student's own loss, perplexity,
        accuracy...) and, when the teacher is used, ``val_teacher_kl``: KL(teacher || student)
        at temperature 1 over the same batches."""
        if not self.adapter.has_hard_loss:  # relations/hidden states only: their loss
            return self._transfer_evaluate(model, batches, device, autocast_ctx)
        out = self.inner.evaluate(model, batches, device, autocast_ctx)
        if not (self.options.uses_teacher and self.adapter.distributions):
            return out
        total, rows = 0.0, 0
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_ctx():
                s, t = self.adapter.outputs(model, batch), self.adapter.outputs(self.teacher, batch)
            n = s.flatten(0, -2).shape[0]
            total, rows = total + float(kd_loss(s, t, 1.0)) * n, rows + n
        return {**out, "val_teacher_kl": total / max(rows, 1)}

    def _transfer_evaluate(self, model, batches, device, autocast_ctx) -> dict[str, float]:
        sums: dict[str, float] = {}
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_ctx():
                total, parts = self.loss_terms(model, batch)
            for k, v in {"loss": total, **{f"{k}_loss": v for k, v in parts.items() if k != "hard"}}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return {f"val_{k}": v / max(len(batches), 1) for k, v in sums.items()}

    def log_metrics(self) -> dict[str, float]:
        """The mean of each loss term since the last log, beside the inner objective's."""
        out = dict(self.inner.log_metrics())
        if self._count:
            out |= {f"{k}_loss": v / self._count for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def hidden_mse(student: list[torch.Tensor], teacher: list[torch.Tensor],
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the mapped block pairs of the MSE between their outputs (real tokens only)."""
    losses = []
    for s, t in zip(student, teacher):
        err = (s.float() - t.float()).pow(2).mean(-1)  # (B, T)
        if mask is None:
            losses.append(err.mean())
        else:
            m = mask.to(err.dtype)
            losses.append((err * m).sum() / m.sum().clamp(min=1))
    return torch.stack(losses).mean()


def attention_transfer(student_qkv, teacher_qkv, heads: int, mask: torch.Tensor | None = None,
                       causal: bool = False) -> torch.Tensor:
    """MiniLM's last-layer transfer: KL of the q-k (attention) and v-v (value) relations,
    averaged."""
    (sq, sk, sv), (tq, tk, tv) = student_qkv, teacher_qkv
    attention = relation_kl(relation_scores(tq, tk, heads, mask, causal),
                            relation_scores(sq, sk, heads, mask, causal), mask)
    values = relation_kl(relation_scores(tv, tv, heads, mask, causal),
                         relation_scores(sv, sv, heads, mask, causal), mask)
    return (attention + values) / 2
