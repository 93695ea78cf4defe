"""One convention for every command (issue 14, section 2): both flag spellings, boolean flags
bare or with a value, `--out` for where results go, one inference precision, help with choices,
defaults and examples, `--version`, and the human summary that ends a training run."""

from __future__ import annotations

import argparse
import inspect
import json
import re
import shutil

import pytest

from lmforge.cli.main import COMMANDS, build_parser, main
from lmforge.config import BoolFlag

from _util import make_char_dataset, run_cli


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def parsers(parser: argparse.ArgumentParser, name: str = "lmforge"):
    """(command line, parser) for the top-level parser and every (nested) subcommand."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, sub_parser in action.choices.items():
                yield from parsers(sub_parser, f"{name} {sub}")


def parse(parser, *argv: str) -> argparse.Namespace:
    return parser.parse_args([str(a) for a in argv])


def test_every_command_is_walked(parser):
    names = {name.split()[1] for name, _ in parsers(parser) if " " in name}
    assert names == set(COMMANDS)


def test_every_long_option_takes_both_spellings_and_help_shows_kebab_case(parser):
    checked = 0
    for name, p in parsers(parser):
        epilog, p.epilog = p.epilog, None  # the top-level epilog states the convention itself
        help_text = p.format_help()  # also applies the spellings to the parser
        p.epilog = epilog
        for action in p._actions:
            for option in action.option_strings:
                if not option.startswith("--"):
                    continue
                assert "_" not in option, f"{name}: {option} is listed in snake_case"
                snake = option.replace("-", "_").replace("__", "--", 1)
                assert p._option_string_actions[option] is action, (name, option)
                assert p._option_string_actions[snake] is action, (name, snake)
                checked += 1
        listed = re.findall(r"--[a-z0-9]+_[a-z0-9_]+", help_text)
        assert not listed, f"`{name} --help` shows snake_case flags: {listed}"
    assert checked > 300


def test_formerly_rejected_snake_case_flags_parse(parser):
    args = parse(parser, "tokenizer", "train", "a.txt", "--vocab_size", 100, "--min_frequency", 3,
                 "--out", "tok")
    assert (args.vocab_size, args.min_frequency, args.out) == (100, 3, "tok")
    args = parse(parser, "predict", "--model", "m", "--batch_size", 7, "--max_new_tokens", 5)
    assert (args.batch_size, args.max_new_tokens) == (7, 5)
    args = parse(parser, "pretrain", "--data", "d", "--max-steps", 5, "--max_steps", 6, "--n-layer", 2)
    assert (args.max_steps, args.n_layer) == ("6", "2")  # the last one wins, either spelling


def test_every_flag_has_help(parser):
    for name, p in parsers(parser):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help and choice.help.strip(), f"{name} {choice.dest}: no help"
                continue
            label = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{name} {label}: no help"


@pytest.mark.parametrize("command, flag, choices", [
    ("pretrain", "--objective", {"causal_lm", "mlm", "t5_span", "bptt_lm"}),
    ("pretrain", "--schedule", {"cosine", "linear", "constant", "wsd"}),
    ("pretrain", "--precision", {"auto", "fp32", "bf16", "fp16"}),
    ("pretrain", "--norm", {"layernorm", "rmsnorm"}),
    ("finetune", "--task", {"classification", "regression", "token-classification", "qa",
                            "seq2seq", "sft"}),
    ("finetune", "--schedule", {"cosine", "linear", "constant", "wsd"}),
    ("generate", "--precision", {"auto", "fp32", "bf16", "fp16"}),
    ("predict", "--task", {"classification", "qa", "seq2seq", "sft"}),
    ("plan", "--parallel", {"ddp", "fsdp"}),
])
def test_choice_fields_list_their_choices(parser, command, flag, choices):
    p = dict(parsers(parser))[f"lmforge {command}"]
    action = p._option_string_actions[flag]
    assert choices <= set(action.choices)
    assert "{" + ",".join(action.choices) + "}" in p.format_help()
    with pytest.raises(SystemExit):
        parse(parser, command, flag, "no-such-choice")


def test_help_shows_real_defaults_and_ends_with_examples(parser):
    by_name = dict(parsers(parser))
    pretrain = " ".join(by_name["lmforge pretrain"].format_help().split())
    assert "--batch-size INT sequences per micro-batch (default: 16)" in pretrain
    # Architecture fields come from the preset: the dataclass default (12 layers) would mislead.
    assert "--n-layer INT" in pretrain and "(default: from the preset)" in pretrain
    assert "(default: 12)" not in pretrain
    assert "(default: ==SUPPRESS==)" not in pretrain
    finetune = " ".join(by_name["lmforge finetune"].format_help().split())
    assert "examples per micro-batch (default: 32)" in finetune
    assert "(default: runs/finetune)" in finetune
    for name, p in by_name.items():
        if name.count(" ") == 1 or name.startswith("lmforge tokenizer "):
            text = p.format_help()
            assert "\nexamples:\n  lmforge " in text, f"`{name} --help` has no examples"
            first = text.split("\nexamples:\n")[1].splitlines()[0]
            command = name.removeprefix("lmforge ").split()[0]
            assert first.strip().startswith(f"lmforge {command}"), first


def test_bool_flags_bare_with_a_value_and_equals(parser):
    for argv, expected in [((), None), (("--compile",), True), (("--compile", "true"), True),
                           (("--compile", "false"), False), (("--compile=no",), False),
                           (("--compile=ON",), True), (("--compile", "0"), False)]:
        args = parse(parser, "pretrain", "--data", "d", *argv)
        assert getattr(args, "compile", None) is expected, argv
    # Plain store_true flags take a value too; store_false ones (--no-dedup) invert it.
    args = parse(parser, "generate", "--model", "m", "--greedy", "false", "--no-stream", "--json=yes")
    assert (args.greedy, args.no_stream, args.json) == (False, True, True)
    args = parse(parser, "prepare", "c.txt", "-t", "tok", "-o", "out", "--no-dedup",
                 "--keep-control-chars")
    assert (args.dedup, args.remove_control_chars) == (False, False)
    args = parse(parser, "prepare", "c.txt", "-t", "tok", "-o", "out", "--no-dedup=false")
    assert args.dedup is True
    with pytest.raises(SystemExit):
        parse(parser, "pretrain", "--data", "d", "--compile=maybe")
    assert all(isinstance(parser._option_string_actions[f], BoolFlag) for f in ("--debug",))


def test_a_bare_bool_flag_does_not_eat_the_positional_after_it(parser):
    args = parse(parser, "prepare", "--near-dedup", "corpus.txt", "-t", "tok", "-o", "out")
    assert args.near_dedup is True and args.inputs == ["corpus.txt"]
    args = parse(parser, "prepare", "--near_dedup", "false", "corpus.txt", "more.txt", "-q",
                 "-t", "tok", "-o", "out")
    assert args.near_dedup is False and args.quiet is True and args.inputs == ["corpus.txt", "more.txt"]
    args = parse(parser, "tokenizer", "encode", "-t", "tok", "--add-special-tokens", "file.txt")
    assert args.add_special_tokens is True and args.file == "file.txt"
    args = parse(parser, "prepare", "--collapse", "corpus.txt", "-t", "tok", "-o", "out")  # abbreviated
    assert args.collapse_whitespace is True and args.inputs == ["corpus.txt"]
    # 1/0 after a bool flag stay positionals where the command takes them (token ids here).
    args = parse(parser, "tokenizer", "decode", "-t", "tok", "--skip-special-tokens", "1", "0")
    assert args.skip_special_tokens is True and args.ids == ["1", "0"]
    args = parse(parser, "tokenizer", "decode", "-t", "tok", "--skip-special-tokens=0", "1")
    assert args.skip_special_tokens is False and args.ids == ["1"]
    args = parse(parser, "--debug", "models")
    assert args.debug is True and args.command == "models"


def test_out_is_where_results_go_in_every_command(parser):
    by_name = dict(parsers(parser))
    for command in ("tokenizer train", "prepare", "prepare-merge", "pretrain", "finetune",
                    "experiment", "compare", "convert", "embed", "predict", "evaluate", "plot",
                    "quickstart", "scale plan", "scale fit", "scale predict", "scale search"):
        p = by_name[f"lmforge {command}"]
        action = p._option_string_actions["--out"]
        assert p._option_string_actions["-o"] is action, command
        assert action.option_strings == ["--out", "-o"], command
    # Former names stay as aliases, not flags of their own in the usage.
    for old in ("--output", "-o", "--out"):
        for command, data in (("embed", "--input"), ("predict", "--data"), ("evaluate", "--data")):
            assert parse(parser, command, "--model", "m", data, "x", old, "r.jsonl").out == "r.jsonl"
    for old in ("--out_dir", "--out-dir", "--out", "-o"):
        assert parse(parser, "pretrain", "--data", "d", old, "runs/x").out_dir == "runs/x"
        assert parse(parser, "finetune", "--data", "d", old, "runs/x").out_dir == "runs/x"
    assert "--output" not in by_name["lmforge predict"].format_usage()
    assert "--out-dir" not in by_name["lmforge pretrain"].format_help()
    # convert: OUT as a positional (as before) or as --out.
    assert parse(parser, "convert", "src", "dst").out_positional == "dst"
    assert parse(parser, "convert", "src", "--out", "dst").out == "dst"


def test_convert_needs_its_output_once(tmp_path, capsys):
    assert main(["convert", str(tmp_path)]) == 2
    assert "no output given" in capsys.readouterr().err
    assert main(["convert", str(tmp_path), "a", "--out", "b"]) == 2
    assert "not both" in capsys.readouterr().err


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == "lmforge 0.1.0"


def test_models_shows_each_presets_kind(capsys):
    from lmforge.models import PRESETS, preset
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["preset", "kind"]
    rows = [line.split() for line in lines[1:]]
    kinds = {row[0]: row[1] for row in rows if row and row[0] in PRESETS}
    assert kinds == {name: preset(name).arch for name in PRESETS}
    assert {"decoder", "encoder", "encoder-decoder", "lstm"} <= set(kinds.values())


def test_one_precision_default_for_scoring_and_one_for_generation(parser):
    """Scoring and analysis default to fp32 (transformers' fp32 results); generation to "auto"
    (weights cast once to the dtype measured faster), in the CLI, the API and the pipelines."""
    from lmforge.evaluation import score_text
    from lmforge.evaluation.embeddings import embed
    from lmforge.evaluation.fill_mask import fill_mask
    from lmforge.generation import beam_search_decoder, generate, generate_seq2seq, generate_text
    from lmforge.generation.chat import ChatSession
    from lmforge.pipelines import PIPELINES
    by_name = dict(parsers(parser))
    for command in ("score", "embed", "fill-mask", "predict", "evaluate"):
        assert by_name[f"lmforge {command}"]._option_string_actions["--precision"].default == "fp32"
    for command in ("generate", "chat"):
        assert by_name[f"lmforge {command}"]._option_string_actions["--precision"].default == "auto"
    for fn in (score_text, embed, fill_mask):
        assert inspect.signature(fn).parameters["precision"].default == "fp32", fn.__name__
    for fn in (generate, generate_seq2seq, beam_search_decoder, generate_text, ChatSession):
        assert inspect.signature(fn).parameters["precision"].default == "auto", fn.__name__
    assert {task for task, cls in PIPELINES.items() if cls.precision == "auto"} == {
        "text-generation", "text2text-generation", "summarization", "translation"}
    # Sampling defaults: the API's are the CLI's.
    gen = by_name["lmforge generate"]._option_string_actions
    for fn in (generate, generate_seq2seq, generate_text):
        params = inspect.signature(fn).parameters
        assert params["temperature"].default == gen["--temperature"].default == 0.8
        assert params["top_k"].default == gen["--top-k"].default == 200


# ---- training runs: progress lines in a pipe, the summary at the end ---------------------------
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conv")
    data = make_char_dataset(tmp / "data", chars=20_000)
    run = tmp / "run"
    proc = run_cli("pretrain", "--data", data, "--model", "baby", "--max_steps", 4, "--log-interval", 2,
                   "--batch-size", 4, "--block_size", 32, "--eval-interval", 0, "--eval-batches", 2,
                   "--tensorboard", "false", "--threads", 2, "--out", run)
    assert proc.returncode == 0, proc.stderr
    return run, proc


def test_pretrain_ends_with_a_human_summary(pretrained):
    run, proc = pretrained
    out = proc.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.strip().splitlines()[-1])  # the figures stay in files, not JSON on stdout
    assert "pretrain finished at step 4" in out
    val = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["val_loss"]
    assert re.search(rf"val loss\s+{val:.4f}\n", out), out
    assert re.search(r"train loss\s+\d+\.\d{4}\n", out)
    assert f"model    {run / 'model'}" in out and str(run / "loss.png") in out
    assert out.strip().splitlines()[-1] == f'next: lmforge generate --model {run} --prompt "Once upon a time"'


def test_progress_is_plain_step_lines_in_a_pipe(pretrained):
    _, proc = pretrained
    err = proc.stderr
    assert "\r" not in err and "it/s" not in err and "step/s" not in err  # no tqdm bar
    steps = re.findall(r"^step (\d+)/4 \| loss \d+\.\d{4} \|", err, flags=re.M)
    assert steps == ["1", "2", "4"], err


def test_plan_reads_the_architecture_of_a_run_folder(pretrained, tmp_path, capsys):
    from lmforge.hub import from_pretrained
    run, _ = pretrained
    n = from_pretrained(run).num_parameters()
    assert main(["plan", "--model", str(run), "--gpus", "1", "--global-batch", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == n
    # A run still training (no model/ yet) plans from the config it recorded at its start.
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(run / "config.yaml", started / "config.yaml")
    assert main(["plan", "--model", str(started), "--gpus", "1", "--global_batch", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == n
    assert main(["plan", "--model", str(run / "model"), "--n-layer", "2", "--gpus", "1",
                 "--global-batch", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] < n


def test_finetune_ends_with_a_human_summary(tmp_path):
    from lmforge.tokenization import save_tokenizer, train_tokenizer
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    rows = [f"{w} {v}\t{int(i < 3)}" for i, w in enumerate(words) for v in ("film", "day", "book", "song")]
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(rows))
    save_tokenizer(train_tokenizer([str(corpus)], kind="char"), tmp_path / "tok")
    run = tmp_path / "run"
    proc = run_cli("finetune", "--model", "baby", "--tokenizer", tmp_path / "tok", "--data",
                   tmp_path / "train.tsv", "--val_data", tmp_path / "train.tsv", "--epochs", 1,
                   "--batch-size", 8, "--progress", "--threads", 2, "--tensorboard=false", "-o", run)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    report = json.loads((run / "eval.json").read_text())
    assert "finetune finished at step 3" in out
    assert re.search(rf"val accuracy\s+{report['val_accuracy']:.4f}\n", out), out
    assert f"eval     {run / 'eval.json'}" in out and str(run / "confusion.png") in out
    assert out.strip().splitlines()[-1].startswith(f"next: lmforge predict --model {run} --data FILE")
    assert "\r" not in proc.stderr  # --progress asks for a bar, but stderr is not a terminal


def test_pretrain_takes_model_args_like_finetune(parser, tmp_path, capsys):
    from lmforge.cli.pretrain_cmd import config_from_args
    config = tmp_path / "run.yaml"
    config.write_text("data: d\nmodel_args: {n_layer: 6, n_head: 2}\n")
    args = parse(parser, "pretrain", "--config", config, "--model-args", '{"n_layer": 2, "n_embd": 64}',
                 "--n_embd", 96)
    # file < --model-args < architecture flags
    model_args = config_from_args(args).model_args
    assert {k: int(v) for k, v in model_args.items()} == {"n_layer": 2, "n_head": 2, "n_embd": 96}
    # --model-args is architecture: it cannot change when resuming.
    assert main(["pretrain", "--resume", str(tmp_path), "--model_args", '{"n_layer": 2}']) == 2
    assert "architecture flags cannot change" in capsys.readouterr().err
