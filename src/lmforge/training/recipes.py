"""Named training recipes: bundles of TrainConfig defaults (and model_args) shipped as YAML in
``lmforge/assets/recipe-NAME.yaml``. Precedence: TrainConfig defaults < recipe < --config file
< flags; ``model_args`` merge key by key at each level."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from ..config import from_dict
from ..errors import ConfigError
from .config import TrainConfig


def recipe_names() -> list[str]:
    """The recipes shipped with lmforge."""
    files = resources.files("lmforge") / "assets"
    return sorted(f.name.removeprefix("recipe-").removesuffix(".yaml") for f in files.iterdir()
                  if f.name.startswith("recipe-") and f.name.endswith(".yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """A recipe's fields (a dict of TrainConfig fields)."""
    if name not in recipe_names():
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(recipe_names())}")
    text = (resources.files("lmforge") / "assets" / f"recipe-{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def merge_fields(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; ``model_args`` and ``objective_args`` merge key by key."""
    out = dict(base)
    for key, value in over.items():
        if key in ("model_args", "objective_args") and isinstance(value, dict):
            out[key] = {**(out.get(key) or {}), **value}
        else:
            out[key] = value
    return out


def recipe_config(name: str, **fields: Any) -> TrainConfig:
    """The TrainConfig of recipe ``name`` with ``fields`` (e.g. data=, time="30m") on top: what
    `lmforge pretrain --recipe NAME` runs."""
    return from_dict(TrainConfig, merge_fields(load_recipe(name), fields), where=f"recipe {name}")
