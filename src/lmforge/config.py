"""Typed dataclass configs: load from YAML/TOML, override from CLI flags, validate, save.

Every config is a plain dataclass. ``add_dataclass_flags`` turns its fields into argparse flags of
the same name (``--batch-size``; the CLI's parser also takes ``--batch_size``), so a saved YAML
file and a command line are interchangeable, litgpt-style.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError
from .files import atomic_write_text

T = TypeVar("T")


def _base_type(tp: Any) -> Any:
    """Strip Optional[...] / ``X | None`` to X."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def coerce(cls: type, name: str, value: Any, what: str = "config field") -> Any:
    """Convert ``value`` to the annotated type of field ``name``, or raise ConfigError (naming
    it as ``what 'name'``)."""
    hints = typing.get_type_hints(cls)
    tp = hints[name]
    if value is None:
        return None
    base = _base_type(tp)
    try:
        if base is bool:
            return value if isinstance(value, bool) else _parse_bool(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"expected an integer, got {value}")
            if isinstance(value, str):
                value = float(value) if any(c in value for c in ".eE") else int(value)
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(f"expected an integer, got {value}")
            return int(value)
        if base is float:
            return float(value)
        if base is str:
            return str(value)
        if typing.get_origin(base) is dict or base is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise ValueError("expected a mapping")
            return dict(value)
        if typing.get_origin(base) is list or base is list:
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            if typing.get_args(base) == (int,):
                return [int(v) for v in value]
            return list(value)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} '{name}': {exc}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys are an error naming the key."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    obj = cls(**{k: coerce(cls, k, v) for k, v in data.items()})
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def options_from_dict(cls: type[T], data: dict[str, Any], *, where: str) -> T:
    """Build the options dataclass ``cls`` of an objective or task from a mapping (JSON
    ``--objective_args`` / ``--task_args`` or ``--NAME.option`` flags, values coerced to the
    field types); an unknown key is one ConfigError that lists the valid ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; valid options: "
                          f"{', '.join(names) if names else 'none'}")
    return cls(**{k: coerce(cls, k, v, what=f"{where} option") for k, v in data.items()})


def with_defaults(cls: type[T], name: str, doc: str, **changes: Any) -> type[T]:
    """A dataclass subclass of ``cls`` whose fields in ``changes`` take another default, given
    as ``default`` or ``(default, help)``: a kind of run with its own defaults and no field
    declared twice."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    redeclared = []
    for field_name, change in changes.items():
        default, help_text = change if isinstance(change, tuple) else (change, None)
        f = fields[field_name]
        metadata = {**f.metadata, "help": help_text or f.metadata.get("help", "")}
        redeclared.append((field_name, f.type, dataclasses.field(default=default, metadata=metadata)))
    sub = dataclasses.make_dataclass(name, redeclared, bases=(cls,))
    sub.__module__ = cls.__module__  # where its annotations resolve
    sub.__doc__ = doc
    return sub


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (bad byte at offset "
                          f"{exc.start}): give a YAML or TOML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse config file {path}: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value")
    return data


def save_yaml(obj: Any, path: str | Path) -> None:
    """Write a dataclass (or dict) as YAML."""
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


class BoolFlag(argparse.Action):
    """A boolean flag that works bare (``--compile``) and with a value (``--compile false``,
    ``--compile=yes``); ``invert`` makes a ``--no-x`` flag that stores the opposite.

    The CLI's parser turns ``--flag WORD`` into ``--flag=WORD`` before parsing, so a bare flag
    never takes the positional argument after it as its value."""

    def __init__(self, option_strings, dest, default=False, required=False, help=None,
                 invert: bool = False, metavar="BOOL", **kwargs):
        for fixed in ("nargs", "const", "type"):  # what store_true callers may pass along
            kwargs.pop(fixed, None)
        super().__init__(option_strings, dest, nargs="?", const="true", default=default,
                         required=required, help=help, metavar=metavar, **kwargs)
        self.invert = invert

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            value = _parse_bool(values)
        except ValueError:
            parser.error(f"argument {'/'.join(self.option_strings)}: expected true or false, "
                         f"got {values!r}")
        setattr(namespace, self.dest, not value if self.invert else value)


class InvertedBoolFlag(BoolFlag):
    """``action="store_false"`` as a :class:`BoolFlag`: ``--no-dedup`` stores False."""

    def __init__(self, option_strings, dest, default=True, **kwargs):
        super().__init__(option_strings, dest, default=default, invert=True, **kwargs)


def add_alias(container, action: argparse.Action, *names: str) -> None:
    """Accept ``names`` as further spellings of ``action`` without listing them in --help."""
    for name in names:
        container._option_string_actions.setdefault(name, action)


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, *, group: str | None = None,
                        skip: tuple[str, ...] = (), choices: dict[str, tuple] | None = None,
                        default_note: str | None = None,
                        names: dict[str, tuple[str, ...]] | None = None, prefix: str = "") -> None:
    """Add one flag per field of ``cls`` (``--PREFIXfield``); defaults are SUPPRESS so only
    given flags appear.

    A field's help is its ``help`` metadata; its choices its ``choices``
    metadata (or ``choices[name]``). ``default_note`` replaces the shown default (e.g. "from the
    preset" for architecture fields a preset fills). ``names`` gives a field other option
    strings: the first ones are listed, the field's own name stays a hidden alias."""
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        base = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        field_choices = f.metadata.get("choices") or (choices or {}).get(f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if default_note:
            help_text = f"{help_text} (default: {default_note})".strip()
        elif default is not None and default != "" and "default" not in help_text:
            help_text = f"{help_text} (default: {str(default).lower() if base is bool else default})".strip()
        own = f"--{prefix}{f.name.replace('_', '-')}"
        flags = list((names or {}).get(f.name, ())) or [own]
        dest = prefix + f.name
        if base is bool:
            action = target.add_argument(*flags, dest=dest, default=argparse.SUPPRESS,
                                         help=help_text, action=BoolFlag)
        else:
            metavar = getattr(base, "__name__", "VALUE").upper()
            action = target.add_argument(*flags, dest=dest, default=argparse.SUPPRESS,
                                         help=help_text, metavar=None if field_choices else metavar,
                                         type=str, choices=field_choices)
        if own not in flags:
            add_alias(target, action, own)


def flags_to_dict(ns: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The subset of ``ns`` that names fields of ``cls`` (only flags the user gave)."""
    names = {prefix + f.name for f in dataclasses.fields(cls)}
    return {k.removeprefix(prefix): v for k, v in vars(ns).items() if k in names}


# ---- typed options of objectives and tasks as --NAME.option flags ---------------------------
def add_option_flags(parser: argparse.ArgumentParser, owners: dict[str, type], noun: str,
                     json_flag: str, skip: tuple[str, ...] = ()) -> None:
    """One group of ``--NAME.option`` flags per options dataclass in ``owners`` (NAME -> class),
    e.g. ``--mlm.whole_word true``; they override the same keys of the JSON ``--JSON_FLAG``."""
    for name, options in owners.items():
        fields = [f.name for f in dataclasses.fields(options) if f.name not in skip]
        if fields:
            add_dataclass_flags(parser, options, group=f"{noun} '{name}' options (or as JSON: "
                                f"--{json_flag.replace('_', '-')} '{{\"{fields[0]}\": ...}}')",
                                skip=skip, prefix=f"{name}.")


def given_option_flags(ns: argparse.Namespace, owners: dict[str, type]) -> list[str]:
    """The ``--NAME.option`` flags the user gave, as ``NAME.option``."""
    return [f"{name}.{key}" for name, options in owners.items()
            for key in flags_to_dict(ns, options, prefix=f"{name}.")]


def merge_option_flags(ns: argparse.Namespace, owners: dict[str, type], chosen: str, noun: str,
                       base: Any) -> Any:
    """``base`` (a JSON string or mapping of ``chosen``'s options, or None) with the
    ``--CHOSEN.option`` flags the user gave laid over it. ``--OTHER.option`` flags for another
    NAME than ``chosen`` are a ConfigError."""
    given = {name: flags_to_dict(ns, options, prefix=f"{name}.") for name, options in owners.items()}
    wrong = sorted(name for name, values in given.items() if values and name != chosen)
    if wrong:
        flag = f"--{wrong[0]}.{next(iter(given[wrong[0]]))}"
        raise ConfigError(f"{flag} is an option of {noun} '{wrong[0]}', but this run's {noun} is "
                          f"'{chosen}'")
    if not given.get(chosen):
        return base
    if isinstance(base, str):
        try:
            base = json.loads(base)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{noun} options are not valid JSON: {exc}") from None
    if base is not None and not isinstance(base, dict):
        raise ConfigError(f"{noun} options must be a JSON mapping, got {base!r}")
    options, where = owners[chosen], f"{noun} '{chosen}' option"
    return {**(base or {}), **{k: coerce(options, k, v, what=where) for k, v in given[chosen].items()}}
