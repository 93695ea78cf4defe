"""Pruning variants by short name, as ``lmforge compress --methods`` lists them:

    prune50 / magnitude50   50% unstructured, magnitude       wanda50      50% Wanda
    2:4 / magnitude2:4      2:4 semi-structured, magnitude    wanda2:4     2:4 Wanda
    heads25                 25% of the attention heads        ffn50        50% of the FFN channels
    heads25-ffn50           both (structured, Taylor importance unless the name ends in
                            @activation or @magnitude, e.g. heads25@activation)
"""

from __future__ import annotations

import re

import torch

from ..errors import ConfigError
from .calibration import Calibration
from .prune_report import PruneReport
from .structured import IMPORTANCE, prune_structured
from .unstructured import prune_unstructured

_UNSTRUCTURED = re.compile(r"^(prune|magnitude|wanda)(\d+(?:\.\d+)?)$|^(magnitude|wanda)?(\d+:\d+)$")
_STRUCTURED = re.compile(r"^(?:heads(\d+(?:\.\d+)?))?-?(?:ffn(\d+(?:\.\d+)?))?(?:@(\w+))?$")


def prune_spec(name: str) -> tuple[str, dict]:
    """(``"unstructured"`` or ``"structured"``, keyword arguments of the pruning function) for
    a variant name; a name it does not know is a ConfigError listing the forms."""
    text = name.strip().lower()
    m = _UNSTRUCTURED.match(text)
    if m:
        if m.group(2) is not None:
            method = "magnitude" if m.group(1) in ("prune", "magnitude") else "wanda"
            return "unstructured", {"method": method, "sparsity": float(m.group(2)) / 100}
        return "unstructured", {"method": m.group(3) or "magnitude", "pattern": m.group(4)}
    m = _STRUCTURED.match(text)
    if m and (m.group(1) or m.group(2)):
        importance = m.group(3) or "taylor"
        if importance not in IMPORTANCE:
            raise ConfigError(f"pruning variant {name!r}: importance must be one of {', '.join(IMPORTANCE)}")
        return "structured", {"heads": float(m.group(1) or 0) / 100, "ffn": float(m.group(2) or 0) / 100,
                              "importance": importance}
    raise ConfigError(f"unknown pruning variant {name!r}; use prune50, wanda50, 2:4, wanda2:4, "
                      "heads25, ffn25 or heads25-ffn25 (optionally @activation / @magnitude)")


def needs_calibration(name: str) -> bool:
    """Whether the variant reads calibration data (Wanda, Taylor or activation importance)."""
    kind, kwargs = prune_spec(name)
    if kind == "unstructured":
        return kwargs["method"] == "wanda"
    return kwargs["importance"] != "magnitude"


def prune_by_name(model: torch.nn.Module, name: str, calibration: Calibration | None = None) -> PruneReport:
    """Apply the pruning variant ``name`` (see the module docstring) to ``model`` in place."""
    kind, kwargs = prune_spec(name)
    if kind == "unstructured":
        return prune_unstructured(model, calibration=calibration, **kwargs)
    return prune_structured(model, calibration=calibration, **kwargs)
