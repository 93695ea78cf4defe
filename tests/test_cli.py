"""The command line as a user meets it: help everywhere, the quickstart end to end, plots."""

from __future__ import annotations

import json

import pytest

from lmforge.cli.main import COMMANDS, build_parser

from _util import assert_one_line_error, run_cli

SUBCOMMANDS = list(COMMANDS)


def test_every_command_module_is_registered():
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert sorted(choices) == sorted(SUBCOMMANDS)


@pytest.mark.parametrize("command", [[c] for c in SUBCOMMANDS] + [
    ["tokenizer", "train"], ["tokenizer", "encode"], ["tokenizer", "decode"], ["tokenizer", "info"]])
def test_help_on_every_subcommand(command):
    proc = run_cli(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: lmforge " + " ".join(command))


def test_light_commands_do_not_import_torch():
    """`lmforge prepare` (and its worker processes) must stay light: torch is not loaded."""
    import subprocess
    import sys
    code = ("import sys\nfrom lmforge.cli.main import build_parser\n"
            "build_parser(only='prepare')\nprint('torch' in sys.modules)")
    check = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert check.stdout.strip() == "False", check.stderr


def test_unknown_flag_is_one_line():
    assert_one_line_error(run_cli("pretrain", "--no-such-flag", "1"), "unrecognized arguments")


def test_quickstart_runs_end_to_end(tmp_path):
    """The `make demo` path with a short budget: every stage runs and the outputs exist."""
    out = tmp_path / "qs"
    proc = run_cli("quickstart", "--out", out, "--max-steps", "30", "--prompt", "KING:")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "validation loss" in proc.stdout and "KING:" in proc.stdout
    assert (out / "run" / "loss.png").stat().st_size > 1000
    assert (out / "run" / "model" / "tokenizer.json").is_file()
    records = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = records[0]["train_loss"], [r for r in records if "val_loss" in r][-1]["val_loss"]
    assert last < first - 1.0  # it learned something in 30 steps


def test_plot_command(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "train_loss": 5.0 / s} for s in range(1, 20)] + [{"step": 19, "val_loss": 0.4}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    proc = run_cli("plot", run)
    assert proc.returncode == 0, proc.stderr
    png = (run / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert_one_line_error(run_cli("plot", tmp_path / "nope"), "run folder not found")
    (run / "metrics.jsonl").write_text("")
    assert_one_line_error(run_cli("plot", run), "no loss values")
