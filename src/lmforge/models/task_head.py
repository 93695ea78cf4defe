"""Task models: a pretrained backbone (encoder, decoder or encoder-decoder) plus a small head
for sequence classification / regression, token classification or extractive QA.

The backbone keeps its own parameter names and the head's are ``head.*``, so a task model
folder is the backbone's folder plus a ``task`` section in ``config.json`` and the head's
tensors; seq2seq and instruction tuning need no head and train the backbone itself.

    model = TaskModel(backbone, TaskSpec("classification", labels=["neg", "pos"]))
    logits = model(input_ids, attention_mask)          # (B, 2)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from ..config import from_dict
from ..errors import ConfigError
from ..models.interface import ModelInterface

HEAD_TASKS = ("classification", "regression", "token-classification", "qa")
POOLINGS = ("auto", "pooler", "cls", "mean", "last")


@dataclass
class TaskSpec:
    """What a task head predicts. ``labels`` are the class names in id order (classification,
    token classification); ``pooling`` turns hidden states into one vector per sequence:
    ``pooler`` (BERT's [CLS] dense + tanh), ``cls``, ``mean`` or ``last`` (the last real token,
    for decoders); ``auto`` picks pooler/cls for encoders, last for decoders, mean for an
    encoder-decoder's encoder."""

    task: str
    labels: list[str] = field(default_factory=list)
    pooling: str = "auto"
    dropout: float = 0.1
    label_scheme: str | None = None  # token classification: IOB1, IOB2 or BIOES
    extra: dict = field(default_factory=dict)  # task options recorded for predict (e.g. QA limits)

    def validate(self) -> "TaskSpec":
        if self.task not in HEAD_TASKS:
            raise ConfigError(f"task must be one of {', '.join(HEAD_TASKS)}, got {self.task!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.task in ("classification", "token-classification") and len(self.labels) < 2:
            raise ConfigError(f"a {self.task} head needs at least 2 labels, got {self.labels}")
        return self

    @property
    def num_outputs(self) -> int:
        return {"regression": 1, "qa": 2}.get(self.task, len(self.labels))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TaskSpec":
        return from_dict(cls, data, where="task config").validate()


class TaskModel(ModelInterface, nn.Module):
    """Backbone + dropout + linear head. ``forward`` returns (B, labels) for sequence tasks,
    (B,) for regression, (B, T, labels) for token classification and (B, T, 2) start/end
    logits for QA."""

    def __init__(self, backbone: nn.Module, spec: TaskSpec):
        super().__init__()
        spec.validate()
        arch = backbone.kind
        if backbone.recurrent:
            raise ConfigError("task heads need a Transformer backbone (encoder, decoder or "
                              "encoder-decoder), not an LSTM")
        if spec.task == "qa" and arch == "encoder-decoder":
            raise ConfigError("extractive QA needs an encoder or decoder model: an encoder-decoder "
                              "answers by generating (use --task seq2seq)")
        if spec.task in ("token-classification", "qa") and arch == "decoder":
            # Allowed (causal states), but each token only sees its left context.
            pass
        self.backbone, self.spec, self.config = backbone, spec, backbone.config
        if spec.pooling == "auto":
            spec.pooling = {"encoder": "pooler" if getattr(backbone, "pooler", None) is not None else "cls",
                            "decoder": "last", "encoder-decoder": "mean"}[arch]
        if spec.pooling == "pooler" and getattr(backbone, "pooler", None) is None:
            raise ConfigError("pooling 'pooler' needs an encoder with a pooler; use cls or mean")
        if spec.pooling in ("pooler", "cls") and arch != "encoder":
            raise ConfigError(f"pooling '{spec.pooling}' needs an encoder; use last or mean for a {arch}")
        self.dropout = nn.Dropout(spec.dropout)
        # Decoder heads carry no bias (GPT2/LlamaForSequenceClassification's "score").
        self.head = nn.Linear(self.config.n_embd, spec.num_outputs, bias=arch != "decoder")
        nn.init.normal_(self.head.weight, std=self.config.init_std)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    # ---- hidden states ------------------------------------------------------------------
    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone hidden states (B, T, n_embd) of right-padded ``input_ids``."""
        if self.is_encoder:
            return self.backbone(input_ids, attention_mask, token_type_ids)
        if self.is_seq2seq:
            return self.backbone.encode(input_ids, attention_mask)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: the fused causal kernel
        return self.backbone.hidden_states(input_ids, attention_mask=attention_mask)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        how = self.spec.pooling
        if how == "pooler":
            return self.backbone.pooled(hidden)
        if how == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        if how == "mean":
            m = attention_mask[..., None].to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        last = attention_mask.long().sum(1) - 1  # right padding: the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.hidden(input_ids, attention_mask, token_type_ids)
        if self.spec.task in ("token-classification", "qa"):
            return self.head(self.dropout(hidden))
        logits = self.head(self.dropout(self.pool(hidden, attention_mask)))
        return logits[:, 0] if self.spec.task == "regression" else logits

    # ---- the model interface: a classifier, trained and sharded as its backbone -------------
    def can_generate(self) -> bool:
        return False

    def block_lists(self) -> list[nn.ModuleList]:
        return self.backbone.block_lists()

    @property
    def supported_parallel_modes(self) -> tuple[str, ...]:
        return self.backbone.supported_parallel_modes

    # ---- training helpers -----------------------------------------------------------------
    def num_parameters(self, non_embedding: bool = False) -> int:
        return self.backbone.num_parameters(non_embedding) + sum(p.numel() for p in self.head.parameters())

    def lr_scale(self, name: str, cfg) -> float:
        """Head at ``head_lr / lr``; with ``layer_decay`` d < 1 block i of L at d^(L - i) and the
        embeddings at d^(L + 1) (ELECTRA / BEiT layer-wise decay); times the backbone's own
        scale (muP's 1/width-multiplier on hidden matrices)."""
        return self._task_lr_scale(name, cfg) * super().lr_scale(name, cfg)

    def _task_lr_scale(self, name: str, cfg) -> float:
        if name.startswith("head."):
            return (cfg.head_lr / cfg.lr) if cfg.head_lr else 1.0
        if cfg.layer_decay >= 1.0:
            return 1.0
        depth = self.config.n_layer
        block = re.search(r"(?:^|\.)(?:enc_)?blocks\.(\d+)\.", name)
        if block:
            return cfg.layer_decay ** (depth - int(block.group(1)))
        if re.search(r"(wte|wpe|wtt|emb_norm|pos_bias)", name):
            return cfg.layer_decay ** (depth + 1)
        return 1.0  # final norm, pooler, pretraining heads

    def state_for_save(self) -> dict[str, torch.Tensor]:
        from .state import model_state
        state = model_state(self.backbone)
        state.update({f"head.{k}": v.detach().contiguous() for k, v in self.head.state_dict().items()})
        return state

    def load_saved_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        from .state import load_model_state
        head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        load_model_state(self.backbone, {k: v for k, v in state.items() if not k.startswith("head.")}, source)
        try:
            self.head.load_state_dict(head)
        except RuntimeError as exc:
            from ..errors import CheckpointError
            raise CheckpointError(f"task head in {source} does not fit: {str(exc).splitlines()[0]}") from None


def refuse_task_model(model: nn.Module, lead: str) -> None:
    """A fine-tuned task model (backbone + head) where a plain model is needed: one error that
    starts with ``lead`` ("scoring needs a language model") and names the way out."""
    spec = getattr(model, "spec", None)
    if spec is not None:
        raise ConfigError(f"{lead}, not a fine-tuned {spec.task} model; pass its backbone "
                          f"(model.backbone) or the model it was fine-tuned from")
