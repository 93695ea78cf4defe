"""The compression methods `lmforge compress --methods` names, parsed into steps that change a
model in place. A method is a chain of steps joined by ``+`` (``wanda50+int8``: prune, then
quantize what is left); ``model:PATH`` (or ``distill:PATH``) adds a model compressed elsewhere,
e.g. a student from `lmforge distill`, to the same table.

    int8                weight-only int8, per output channel
    int4, int4-g64      weight-only int4 in groups of 128 (or 32/64) input weights
    dynamic-int8        int8 weights and int8 activations quantized per batch (encoders, CPU)
    prune50, wanda50    unstructured: 50% of each layer's weights zeroed, by magnitude or Wanda
    2:4, wanda2:4       semi-structured: 2 of every 4 consecutive weights kept
    heads25, ffn25      structured: 25% of attention heads / FFN channels removed physically
    heads25-ffn25       both (Taylor importance; @activation or @magnitude to choose another)

The pruning names are :mod:`.prune_methods`'s.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError
from .prune_methods import prune_spec
from .quantize import quantize_model
from .structured import prune_structured
from .unstructured import prune_unstructured

QUANT_METHODS = ("int8", "int4", "dynamic-int8")
GROUP_SIZES = (32, 64, 128)
_INT4 = re.compile(r"^int4(?:-g(\d+))?$")
EXTERNAL_PREFIXES = ("model:", "distill:")


@dataclasses.dataclass
class Step:
    """One change to a model: ``kind`` is quantize, unstructured, structured or external."""

    kind: str
    name: str
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def needs_calibration(self) -> bool:
        """Whether the step reads calibration data (Wanda's activation norms, importance
        scores for structured pruning)."""
        if self.kind == "unstructured":
            return self.options["method"] == "wanda"
        return self.kind == "structured" and self.options["importance"] != "magnitude"


@dataclasses.dataclass
class Method:
    """A variant of the table: its name as the user wrote it and its steps, in order."""

    name: str
    steps: list[Step]

    @property
    def external(self) -> Path | None:
        """The folder of a model compressed elsewhere (``model:PATH``), else None."""
        return Path(self.steps[0].options["path"]) if self.steps[0].kind == "external" else None

    @property
    def folder_name(self) -> str:
        """A file-system-safe name for the variant's saved model."""
        return re.sub(r"[^A-Za-z0-9._+-]+", "-", self.name).strip("-") or "variant"


def parse_step(text: str, group_size: int = 128) -> Step:
    """One step of a method spec (see the module docstring)."""
    if text in ("int8", "dynamic-int8"):
        return Step("quantize", text, {"method": text})
    if m := _INT4.match(text):
        size = int(m.group(1) or group_size)
        if size not in GROUP_SIZES:
            raise ConfigError(f"compress method '{text}': int4 group size must be one of "
                              f"{', '.join(map(str, GROUP_SIZES))}, got {size}")
        return Step("quantize", text, {"method": "int4", "group_size": size})
    try:
        kind, options = prune_spec(text)
    except ConfigError as exc:
        if "unknown pruning variant" not in str(exc):
            raise  # a pruning name with a bad detail: its own message says which
    else:
        shares = [options.get("sparsity"), options.get("heads"), options.get("ffn")]
        if any(v is not None and not 0 <= v < 1 for v in shares) or options.get("sparsity") == 0:
            raise ConfigError(f"compress method '{text}': the share must be between 1 and 99 percent")
        return Step(kind, text, options)
    raise ConfigError(f"unknown compress method '{text}' (int8, int4, int4-g32/g64/g128, "
                      "dynamic-int8, pruneNN, wandaNN, 2:4, wanda2:4, headsNN, ffnNN, "
                      "headsNN-ffnNN, model:PATH; join steps with +)")


def parse_methods(spec: str | list[str], group_size: int = 128) -> list[Method]:
    """Methods from a comma-separated spec (or a list of specs)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [s for s in items if s]
    if not items:
        raise ConfigError("no compress methods given (e.g. --methods int8,int4,wanda50)")
    methods, seen = [], set()
    for item in items:
        if item.startswith(EXTERNAL_PREFIXES):
            path = item.split(":", 1)[1]
            if not path:
                raise ConfigError(f"compress method '{item}' needs a model folder after the colon")
            steps = [Step("external", item, {"path": path})]
        else:
            steps = [parse_step(part.strip(), group_size) for part in item.split("+")]
            kinds = [s.kind for s in steps]
            if "quantize" in kinds and kinds.index("quantize") != len(kinds) - 1:
                raise ConfigError(f"compress method '{item}': quantization must be the last step "
                                  "(pruning works on float weights)")
        if item in seen:
            raise ConfigError(f"compress method '{item}' is given twice")
        seen.add(item)
        methods.append(Method(item, steps))
    return methods


def apply_step(model: torch.nn.Module, step: Step, calibration: Callable[[], list] | None,
               log: Callable[[str], None] = print, head: str = "same") -> dict:
    """Change ``model`` in place by ``step``; returns the step's report as a dict (layers
    quantized or pruned, layers left as they were and why, sparsity reached). ``head``: how
    quantization treats a decoder's output head (see ``quantize_model``)."""
    if step.kind == "quantize":
        report = quantize_model(model, step.options["method"],
                                group_size=step.options.get("group_size", 128),
                                head="same" if step.options["method"] == "dynamic-int8" else head)
    elif step.kind in ("unstructured", "structured"):
        prune = prune_unstructured if step.kind == "unstructured" else prune_structured
        report = prune(model, calibration=calibration() if step.needs_calibration else None,
                       **step.options)
    else:
        raise ConfigError(f"step '{step.name}' cannot be applied to a model")
    out = report.to_dict() if hasattr(report, "to_dict") else dict(report or {})
    for name, reason in dict(out.get("skipped") or {}).items():
        log(f"  {step.name}: {name} left as it was ({reason})")
    return out
