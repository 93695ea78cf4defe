"""The one flag convention of every command, applied by the parser rather than by each command.

- Every long option takes both spellings, ``--batch-size`` and ``--batch_size``; help lists
  the kebab-case one (as git and pip do).
- Boolean flags work bare (``--compile``) and with a value (``--compile false``,
  ``--compile=yes``); a bare flag never swallows the positional argument after it.
- Where results go is ``--out`` / ``-o`` in every command.
- ``--help`` ends with example command lines.
"""

from __future__ import annotations

import argparse
import textwrap

from ..config import BOOL_WORDS, BoolFlag, add_alias


def kebab(option: str) -> str:
    return "--" + option[2:].replace("_", "-") if option.startswith("--") else option


def snake(option: str) -> str:
    return "--" + option[2:].replace("-", "_") if option.startswith("--") else option


def add_spellings(parser: argparse.ArgumentParser) -> None:
    """Register the other spelling of every long option of ``parser`` (aliases included) and
    show the kebab-case one in help. Idempotent."""
    table = parser._option_string_actions
    for option, action in list(table.items()):
        for other in (kebab(option), snake(option)):
            table.setdefault(other, action)
    for action in parser._actions:
        shown = []
        for option in map(kebab, action.option_strings):
            if option not in shown:
                shown.append(option)
        action.option_strings = shown


def expand_bool_flags(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """``--flag WORD`` -> ``--flag=WORD`` for a boolean flag followed by a true/false word, and a
    bare ``--flag`` -> ``--flag=true``, so no bool flag takes a positional as its value. Stops at
    ``--`` and, in a parser with subcommands, at the subcommand (its own parser does the rest).
    Where the command takes positionals, ``1``/``0`` after a flag stay positionals (`tokenizer
    decode --skip-special-tokens 1 2` decodes ids 1 and 2); the words, or ``--flag=1``, still work."""
    commands = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands.update(action.choices)
    has_positionals = any(not a.option_strings for a in parser._actions)
    words = [w for w in BOOL_WORDS if not (has_positionals and w.isdigit())]
    out, i = [], 0
    while i < len(args):
        word = args[i]
        if word == "--" or word in commands:
            return out + args[i:]
        action = parser._option_string_actions.get(word)
        if action is None and word.startswith("--") and "=" not in word and parser.allow_abbrev:
            matches = parser._get_option_tuples(word)  # an abbreviation such as --near
            action = matches[0][0] if len(matches) == 1 else None
        if isinstance(action, BoolFlag):
            following = args[i + 1] if i + 1 < len(args) else None
            if following is not None and following.lower() in words:
                out.append(f"{word}={following}")
                i += 2
                continue
            out.append(f"{word}=true")
        else:
            out.append(word)
        i += 1
    return out


def add_out_flag(parser, *, aliases: tuple[str, ...] = (), **kwargs) -> argparse.Action:
    """``--out`` / ``-o``: where a command writes its results. ``aliases`` (former names such as
    ``--output``) keep working without being listed."""
    kwargs.setdefault("dest", "out")
    action = parser.add_argument("--out", "-o", **kwargs)
    add_alias(parser, action, *aliases)
    return action


def examples(*lines: str) -> str:
    """An epilog of example command lines for a command's --help."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions, keeps indented lines (the examples) as written, and adds the default
    to a flag's help when it has one worth showing and the help does not state it already."""

    def _fill_text(self, text, width, indent):
        out, words = [], []

        def flush():
            if words:
                out.append(textwrap.fill(" ".join(words), width, initial_indent=indent,
                                         subsequent_indent=indent))
                words.clear()

        for line in text.splitlines():
            if line.startswith("  ") or line == "examples:" or not line.strip():
                flush()
                out.append(indent + line if line.strip() else "")
            else:
                words.append(line.strip())
        flush()
        return "\n".join(out)

    def _get_help_string(self, action):
        help_text = action.help or ""
        default = action.default
        if ("default" in help_text or default in (None, False, "", argparse.SUPPRESS)
                or not action.option_strings or isinstance(default, list) and not default
                or getattr(action, "invert", False)):
            return help_text
        if isinstance(action, BoolFlag) or isinstance(default, bool):
            default = str(default).lower()
        shown = str(default).replace("%", "%%")  # argparse %-formats the help string
        return f"{help_text} (default: {shown})".strip()


def task_names() -> list[str]:
    """The fine-tuning tasks, for ``--task`` choices."""
    from ..tasks.base import TASKS, get_task
    get_task("classification")  # importing the task modules fills the registry
    return sorted(TASKS)


def objective_names() -> list[str]:
    """The pretraining objectives, for ``--objective`` choices."""
    from ..objectives import OBJECTIVES
    return sorted(OBJECTIVES)
