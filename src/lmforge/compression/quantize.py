"""Quantize a model in place: weight-only int8 (per output channel), weight-only int4 (grouped,
group size 32/64/128) or dynamic int8 (int8 activations too, fbgemm on CPU), for every
``nn.Linear`` of a decoder, encoder, encoder-decoder or fine-tuned task model. The report names
every layer quantized and every layer left in float with its reason (never silently).

    report = quantize_model(model, "int4", group_size=64)
    print(report.summary())
    save_pretrained(model, "out/smollm2-int4", tokenizer)   # loads back quantized

The layers are :mod:`lmforge.models.quantized`'s; which kernel runs per device and batch is
decided there (measured, see its docstring and benchmarks/bench_quantize.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.lora import LoRALinear
from ..models.quantized import (GROUP_SIZES, INT4_OUT_MULTIPLE, METHODS, Int4Linear, QuantizedLinear,
                                check_method, quantization_of, quantized_layer, replace_module)

__all__ = ["GROUP_SIZES", "METHODS", "QuantReport", "quantize_model"]


@dataclass
class QuantReport:
    """What :func:`quantize_model` did: ``quantized`` layer names, ``skipped`` {name: reason},
    ``padded`` {name: "576 -> 640"} (int4 layers whose input width was zero-padded to a whole
    number of groups), ``layer_methods`` {name: method} for layers quantized otherwise than
    ``method`` (the output head with ``head="int8"``), and the bytes of the linear weights before and after."""

    method: str
    group_size: int | None
    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    padded: dict[str, str] = field(default_factory=dict)
    layer_methods: dict[str, str] = field(default_factory=dict)  # layers quantized otherwise (head)
    float_bytes: int = 0
    quantized_bytes: int = 0

    def summary(self) -> str:
        """A few lines for a terminal: counts, the size change, each skipped layer's reason."""
        what = self.method + (f" (group size {self.group_size})" if self.group_size else "")
        lines = [f"{what}: {len(self.quantized)} linear layers quantized, {len(self.skipped)} kept in float; "
                 f"their weights {self.float_bytes / 2**20:.1f} MiB -> {self.quantized_bytes / 2**20:.1f} MiB"]
        lines += [f"  kept in float: {name} ({why})" for name, why in self.skipped.items()]
        if self.padded:
            lines.append(f"  {len(self.padded)} layers zero-padded to whole groups "
                         f"(e.g. {next(iter(self.padded))}: {next(iter(self.padded.values()))})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"method": self.method, "group_size": self.group_size, "quantized": self.quantized,
                "skipped": self.skipped, "padded": self.padded,
                "layer_methods": self.layer_methods, "float_bytes": self.float_bytes,
                "quantized_bytes": self.quantized_bytes}


HEADS = ("same", "int8", "float")


def _skip_reason(name: str, module: nn.Linear, model: nn.Module, method: str) -> str | None:
    if getattr(model, "spec", None) is not None and name == "head":
        return "task head: a few weights, kept in full precision"
    if method == "int4" and module.out_features % INT4_OUT_MULTIPLE:
        return f"{module.out_features} outputs, not a multiple of {INT4_OUT_MULTIPLE} (int4 kernel blocks)"
    return None


def _buffer_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.buffers(), *module.parameters()))


def quantize_model(model: nn.Module, method: str = "int8", group_size: int = 128,
                   head: str = "same") -> QuantReport:
    """Replace ``model``'s linear layers by quantized ones, in place; returns the
    :class:`QuantReport`. ``method``: "int8" (weight-only, per output channel), "int4"
    (weight-only, groups of ``group_size`` in 32/64/128 input features) or "dynamic-int8"
    (int8 weights and per-call int8 activations, for encoders; CPU, where it runs through
    fbgemm; elsewhere it runs weight-only). ``quantize_head``: also quantize a decoder's output head; a head tied to
    the input embedding gets a quantized copy and the embedding stays float (the head is the
    largest single matmul of a small LM's decode step: 49152 x 576 in SmolLM2-135M). Task heads
    and layers the int4 kernel cannot take stay float and are listed in ``report.skipped``.
    The model is put in eval mode: quantized layers are for inference."""
    check_method(method, group_size)
    if head not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if method == "dynamic-int8" and getattr(model, "kind", "encoder") != "encoder":
        # Per-tensor int8 activations meet the outlier channels of decoder LMs: SmolLM2-135M's
        # WikiText-2 perplexity goes 12.79 -> 32.7 (weight-only int8: 12.88).
        raise ConfigError(f"dynamic-int8 is for encoders (int8 activations wreck a {model.kind}: "
                          "SmolLM2-135M perplexity 12.8 -> 32.7); use int8 or int4")
    if quantization_of(model) is not None:
        raise ConfigError(f"the model is already quantized ({quantization_of(model)['method']}); "
                          "quantize the float model")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ConfigError("the model has LoRA adapters: merge them first (lmforge.models.lora.merge_lora)")
    report = QuantReport(method, group_size if method == "int4" else None)
    targets = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    if not targets:
        raise ConfigError("the model has no linear layers to quantize")
    with torch.no_grad():
        for name, linear in targets:
            layer_method = method
            if name.endswith("lm_head") and head != "same":
                if head == "float":
                    report.skipped[name] = "output head kept in float (head='float')"
                    continue
                layer_method = report.layer_methods[name] = head
            why = _skip_reason(name, linear, model, layer_method)
            if why is not None:
                report.skipped[name] = why
                continue
            layer = quantized_layer(linear, layer_method, group_size)
            report.float_bytes += linear.weight.numel() * linear.weight.element_size()
            report.quantized_bytes += _buffer_bytes(layer) - (
                layer.bias.numel() * layer.bias.element_size() if layer.bias is not None else 0)
            if isinstance(layer, Int4Linear) and layer.padded_in != layer.in_features:
                report.padded[name] = f"{layer.in_features} -> {layer.padded_in} inputs"
            replace_module(model, name, layer)
            report.quantized.append(name)
    if not report.quantized:
        raise ConfigError(f"no linear layer could be quantized with {method}: "
                          + "; ".join(f"{n}: {w}" for n, w in list(report.skipped.items())[:3]))
    model.quantization = {"method": method, "group_size": report.group_size, "layers": report.quantized,
                          "layer_methods": report.layer_methods}
    model.eval()
    return report


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds quantized layers."""
    return any(isinstance(m, QuantizedLinear) for m in model.modules())
