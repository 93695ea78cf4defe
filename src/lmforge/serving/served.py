"""The model a server serves: loaded once, cast once for inference, with what it can do.

    served = ServedModel.load("runs/gpt", precision="auto", max_batch=16)
    served.capabilities     # ["completions", "chat", "embeddings"]
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..errors import ConfigError, LMForgeError
from ..evaluation.masked_inputs import mask_token_id
from ..generation.precision import cast_for_inference
from ..hub import load_model
from ..pipelines import pipeline
from ..runtime import GENERATION_PRECISION, resolve_device
from ..tokenization import encode, load_tokenizer
from ..tokenization.chat_template import chat_template_for, stop_token_ids
from .engine import Engine, SerialEngine

# Which pipeline serves each task endpoint, by the fine-tuned task's kind.
TASK_ENDPOINTS = {"classification": ("classify", "text-classification"),
                  "regression": ("classify", "text-classification"),
                  "token-classification": ("token-classify", "token-classification"),
                  "qa": ("qa", "question-answering")}


def served_name(path: str | Path) -> str:
    """A model's id in the API: its folder or file name (without .gguf)."""
    path = Path(path)
    return path.stem if path.suffix == ".gguf" else (path.name or str(path))


class ServedModel:
    """A loaded model, its tokenizer and chat template, the decoding engine of a decoder, and
    the pipelines of the task endpoints it supports."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, tokenizer_config: dict,
                 name: str, precision: str = GENERATION_PRECISION, max_batch: int = 16, max_queue: int = 64):
        self.name, self.tokenizer, self.tokenizer_config = name, tokenizer, tokenizer_config
        spec = getattr(model, "spec", None)
        self.task = spec.task if spec is not None else None
        self.pipelines: dict[str, object] = {}
        self.engine: Engine | None = None
        self.template = None
        self.stop_ids: frozenset[int] = frozenset()
        # Work off the engine thread (embeddings, task endpoints) runs one call at a time.
        self.aux_lock = threading.Lock()
        if self.task is None and model.can_generate():
            batching = hasattr(model, "new_slot_cache")
            model = cast_for_inference(model, precision, batch_size=max_batch if batching else 1)
            self.engine = (Engine(model, max_batch=max_batch, max_queue=max_queue) if batching
                           else SerialEngine(model, max_queue=max_queue))
            self.template = chat_template_for(tokenizer, tokenizer_config)
            self.stop_ids = frozenset(stop_token_ids(tokenizer, tokenizer_config))
        self.model = model
        self.context_length = model.config.context_length if self.task is None else None
        if self.task in TASK_ENDPOINTS:
            endpoint, task = TASK_ENDPOINTS[self.task]
            self.pipelines[endpoint] = pipeline(task, model, tokenizer=tokenizer)
        elif self.task is None and model.is_encoder and model.has_mlm_head():
            self.pipelines["fill-mask"] = pipeline("fill-mask", model, tokenizer=tokenizer)
        if self.task is None:
            self.pipelines["embeddings"] = pipeline("feature-extraction", model, tokenizer=tokenizer)

    @classmethod
    def load(cls, path: str | Path, tokenizer: str | Path | None = None, device: str = "auto",
             precision: str = GENERATION_PRECISION, max_batch: int = 16, max_queue: int = 64,
             name: str | None = None) -> "ServedModel":
        model, tok, tok_cfg = load_model(path, device=resolve_device(device))
        if tokenizer is not None:
            tok = load_tokenizer(tokenizer)
        if tok is None:
            raise LMForgeError(f"no tokenizer found with the model in {path}; pass --tokenizer PATH")
        served = cls(model.eval(), tok, tok_cfg, name or served_name(path), precision,
                     max_batch, max_queue)
        if not served.capabilities:
            raise ConfigError(f"{path} cannot be served: it is neither a decoder language model, "
                              "an encoder nor a fine-tuned classification, NER or QA model")
        return served

    @property
    def capabilities(self) -> list[str]:
        caps = []
        if self.engine is not None:
            caps.append("completions")
            if self.template is not None:
                caps.append("chat")
        return caps + [name for name in ("embeddings", "classify", "token-classify", "qa",
                                         "fill-mask") if name in self.pipelines]

    def encode(self, text: str) -> list[int]:
        return encode(self.tokenizer, text)

    def render_chat(self, messages: list[dict]) -> str:
        return self.template.render(messages, add_generation_prompt=True)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def describe(self, max_tokens: int | None = None) -> dict:
        """What /v1/models says of the model beyond OpenAI's fields (the playground reads it)."""
        mask = None
        if "fill-mask" in self.pipelines:
            mask = self.tokenizer.id_to_token(mask_token_id(self.tokenizer))
        return {"kind": self.model.kind, "task": self.task, "context_length": self.context_length,
                "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
                "max_batch": self.engine.max_batch if self.engine else None,
                "max_tokens": max_tokens if self.engine else None,
                "logprobs": bool(self.engine and self.engine.logprobs), "mask_token": mask}
