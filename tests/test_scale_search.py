"""`lmforge scale search`: successive halving under a parameter / FLOP / latency limit.

The halving itself is checked with a stand-in trainer whose losses are known (which configs
survive each rung, on how many tokens); the rest trains real tiny models on a char-level
Tiny Shakespeare made with `lmforge tokenizer train` + `lmforge prepare`: a search that is cut
short and run again trains only what is missing, and its best.yaml is a config `lmforge
pretrain` trains from.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
import yaml

from lmforge.cli import scale_search_cmd
from lmforge.cli.main import Parser, main
from lmforge.errors import ConfigError, DataError, LMForgeError
from lmforge.models.config import ModelConfig
from lmforge.models.io import build_model
from lmforge.scaling import search as S
from lmforge.scaling.family import Family

from _util import SHAKESPEARE

# Tiny trials: ~10-30k-parameter models, a few steps each.
TINY = dict(depths="1,2", widths="32,64", mlp_ratios="2,4", lrs="3e-3,1e-2", batch_size=8,
            block_size=32, eval_batches=2, warmup_steps=2, threads=1, precision="fp32")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Char-level Tiny Shakespeare (first 60k characters), prepared the way a user would."""
    root = tmp_path_factory.mktemp("search-data")
    corpus = root / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    assert main(["tokenizer", "train", str(corpus), "--kind", "char", "--out", str(root / "tok")]) == 0
    assert main(["prepare", str(corpus), "-t", str(root / "tok"), "-o", str(root / "data"),
                 "--split-on-blank-lines", "--val-fraction", "0.05", "--workers", "1", "-q"]) == 0
    return root / "data"


def options(data, **changes) -> S.SearchOptions:
    return S.SearchOptions(**{"data": str(data), **TINY, **changes}).validate()


# ---- the halving arithmetic ---------------------------------------------------------------
def test_rung_tokens_and_survivors():
    opts = S.SearchOptions(data="d", min_tokens=1000, eta=3)
    assert opts.n_rungs == 3 and S.rung_tokens(opts) == [1000, 3000, 9000]
    opts = S.SearchOptions(data="d", min_tokens=1000, eta=2, max_tokens=10_000)
    assert S.rung_tokens(opts) == [1000, 2000, 4000, 8000]  # 16000 would pass --max-tokens
    assert S.rung_tokens(S.SearchOptions(data="d", min_tokens=100, eta=4, max_tokens=1600)) == [100, 400, 1600]
    assert [S.survivors(n, 3) for n in (27, 9, 3, 2, 1)] == [9, 3, 1, 1, 1]
    assert S.survivors(10, 2) == 5
    assert S.promote({"a": 2.0, "b": 1.0, "c": 3.0, "d": 1.0, "e": 0.5, "f": 9.0}, 3) == ["e", "b"]


class FakeTrainer:
    """Stands in for sweep.train_run: loss = a fixed score per config minus a little per token,
    so the survivors of each rung are known in advance."""

    def __init__(self, score):
        self.score, self.calls = score, []

    def __call__(self, plan, spec, run_dir, *, device="auto", progress=True):
        self.calls.append(spec)
        loss = self.score(spec) - 1e-7 * spec["tokens"]
        return {"loss": loss, "train_loss": loss, "seconds": 0.01, "device": "fake", "threads": 1}


def test_successive_halving_keeps_the_best_third_on_three_times_the_tokens(data, tmp_path):
    opts = options(data, depths="1,2,3", widths="32,64,96", mlp_ratios="2,4", lrs="1e-3,2e-3,4e-3",
                   trials=27, eta=3, min_tokens=1024, rungs=3)
    # Lower loss for deeper, wider configs at an LR of 2e-3, so the ranking is known.
    score = lambda s: 10 - s["n_layer"] - s["n_embd"] / 32 - s["intermediate_size"] / 1000 \
        + abs(s["lr"] - 2e-3) * 100
    fake = FakeTrainer(score)
    result = S.run_search(opts, tmp_path / "s", train=fake)
    assert result["complete"] and result["trials"] == 27
    by_rung = [[c for c in fake.calls if c["level"] == r] for r in range(3)]
    assert [len(calls) for calls in by_rung] == [27, 9, 3]
    assert [{c["tokens"] for c in calls} for calls in by_rung] == [{1024}, {3072}, {9216}]
    assert all(c["steps"] * 8 * 32 == c["tokens"] for c in fake.calls)
    # Each rung trains exactly the best third of the one before.
    for r in (1, 2):
        before = sorted(by_rung[r - 1], key=score)[:len(by_rung[r - 1]) // 3]
        assert {c["name"][3:] for c in by_rung[r]} == {c["name"][3:] for c in before}
    best = min(by_rung[2], key=score)
    assert result["best"]["trial"] == best["name"][3:]
    rows = list(csv.DictReader(open(tmp_path / "s" / "search.csv")))
    assert len(rows) == 39 and sum(r["promoted"] == "True" for r in rows) == 12
    assert set(S.CSV_COLUMNS) <= set(rows[0])
    assert "best: " + result["best"]["trial"] in scale_search_cmd.summary(result)


def test_an_interrupted_search_goes_on_where_it_stopped(data, tmp_path):
    opts = options(data, trials=6, eta=2, rungs=2, min_tokens=512)
    score = lambda s: s["n_embd"] / 100 + s["lr"] * 10 + s["intermediate_size"] / 1000
    fake = FakeTrainer(score)
    cut = []

    def dies_on_the_fifth(plan, spec, run_dir, **kw):  # Ctrl-C: train_run returns None
        if len(fake.calls) == 4:
            cut.append(spec["name"])
            return None
        return fake(plan, spec, run_dir, **kw)

    first = S.run_search(opts, tmp_path, train=dies_on_the_fifth)
    assert first["interrupted"] and not first["complete"] and len(first["trained"]) == 4
    assert first["remaining"] == 5 and "continue with the same command" in scale_search_cmd.summary(first)
    second = S.run_search(opts, tmp_path, train=fake)
    assert second["complete"] and second["skipped"] == 4 and len(second["trained"]) == 5
    assert fake.calls[4]["name"] == cut[0]  # it starts with the trial that was cut
    assert len(fake.calls) == 9 and len(set(c["name"] for c in fake.calls)) == 9  # none twice


# ---- the constraint -----------------------------------------------------------------------
def test_sizes_are_the_models_own_counts_and_the_limit_filters(data, tmp_path):
    opts = options(data, heads="1,2,4")
    family = Family(preset=opts.model, vocab_size=json.loads((data / "meta.json").read_text())["vocab_size"],
                    block_size=opts.block_size)
    archs = S.architectures(opts, family)
    assert len(archs) == 2 * 2 * 3 * 2
    for arch in archs[::5]:
        size = S.measure_size(arch["model_args"], opts.block_size)
        model = build_model(ModelConfig(**arch["model_args"]))
        assert size["params"] == model.num_parameters() == sum(p.numel() for p in model.parameters())
        assert size["flops_per_token"] == model.flops_per_token(opts.block_size)
        args = arch["model_args"]
        assert args["n_head"] * args["head_dim"] == args["n_embd"]
        assert args["intermediate_size"] == round(arch["mlp_ratio"] * args["n_embd"])
    sizes = sorted(S.measure_size(a["model_args"], 32)["params"] for a in archs)
    limit = sizes[len(sizes) // 2]
    kept = S.constrained(options(data, heads="1,2,4", max_params=limit), archs, tmp_path)
    assert len(kept) == sum(s <= limit for s in sizes) and all(a["params"] <= limit for a in kept)
    flops = sorted(S.measure_size(a["model_args"], 32)["flops_per_token"] for a in archs)
    kept = S.constrained(options(data, heads="1,2,4", max_flops_per_token=flops[3]), archs, tmp_path)
    assert len(kept) == sum(f <= flops[3] for f in flops)


def test_latency_is_measured_once_per_config_and_cached(data, tmp_path):
    opts = options(data, widths="32", mlp_ratios="2", max_latency_ms=1e6)
    family = Family(preset=opts.model, vocab_size=70, block_size=32)
    archs = S.architectures(opts, family)
    calls = []

    def measure(args, block, **kw):
        calls.append(args["n_layer"])
        return S.measure_latency_ms(args, block, **kw)

    kept = S.constrained(opts, archs, tmp_path, measure=measure)
    assert sorted(calls) == [1, 2] and all(a["latency_ms"] > 0 for a in kept)
    cache = json.loads((tmp_path / S.LATENCY_FILE).read_text())
    assert len(cache) == 2 and all("1 threads" in key for key in cache)
    again = S.constrained(opts, archs, tmp_path, measure=measure)
    assert sorted(calls) == [1, 2]  # not measured again
    assert [a["latency_ms"] for a in again] == [a["latency_ms"] for a in kept]
    # The same shapes from another preset (RMSNorm, SwiGLU, RoPE) are other models: measured.
    llama = options(data, widths="32", mlp_ratios="2", max_latency_ms=1e6, model="llama-mini")
    S.constrained(llama, S.architectures(llama, Family(preset="llama-mini", vocab_size=70,
                                                       block_size=32)), tmp_path, measure=measure)
    assert len(calls) == 4 and len(json.loads((tmp_path / S.LATENCY_FILE).read_text())) == 4
    # A limit below the measured latencies leaves the deeper config out.
    slow = max(kept, key=lambda a: a["latency_ms"])
    fast = min(kept, key=lambda a: a["latency_ms"])
    if slow["latency_ms"] > fast["latency_ms"]:
        opts.max_latency_ms = (slow["latency_ms"] + fast["latency_ms"]) / 2
        assert [a["latency_ms"] for a in S.constrained(opts, archs, tmp_path, measure=measure)] \
            == [fast["latency_ms"]]


# ---- real tiny searches -------------------------------------------------------------------
@pytest.fixture(scope="module")
def searched(data, tmp_path_factory):
    """A real search cut after 3 trials, then run again to the end."""
    out = tmp_path_factory.mktemp("search") / "s"
    kw = dict(trials=4, eta=2, rungs=2, min_tokens=1024, max_params=40_000)
    first = S.scale_search(data, out, max_runs=3, **TINY, **kw)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("model.safetensors")}
    first["best_yaml_written"] = (out / "best.yaml").exists()
    second = S.scale_search(data, out, **TINY, **kw)
    return out, first, second, stamps


def test_a_search_cut_short_continues_without_retraining(searched):
    out, first, second, stamps = searched
    assert not first["complete"] and len(first["trained"]) == 3 and first["remaining"] == 3
    assert first["best_yaml"] is None and not first["best_yaml_written"]
    assert len(stamps) == 3
    assert second["complete"] and second["skipped"] == 3 and len(second["trained"]) == 3
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished trials untouched
    rows = S.read_rows(out)
    assert len(rows) == 6 and len({(r["trial"], r["rung"]) for r in rows}) == 6
    assert all(r["params"] <= 40_000 and r["loss"] < 4.5 for r in rows)
    assert [r["tokens"] for r in rows].count(2048) == 2  # 4 -> 2 configs on 2x the tokens
    # A third call has nothing to do.
    third = S.scale_search(out=out, data=first["rows"][0]["spec"]["data"], **TINY, trials=4,
                           eta=2, rungs=2, min_tokens=1024, max_params=40_000)
    assert third["trained"] == [] and third["skipped"] == 6
    assert third["best"]["trial"] == second["best"]["trial"]


def test_best_yaml_is_a_pretrain_config(searched, data, tmp_path):
    out, _, second, _ = searched
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["model_args"]["n_layer"] == second["best"]["n_layer"]
    assert best["lr"] == second["best"]["lr"] and best["max_steps"] == second["best"]["steps"]
    run = tmp_path / "best"
    assert main(["pretrain", "--config", str(out / "best.yaml"), "--data", str(data), "--max-steps",
                 "3", "--out", str(run), "--threads", "1", "--tensorboard", "false",
                 "--progress", "false"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["max_steps"] == 3 and saved["lr"] == best["lr"]
    # The same architecture as the winning trial's model, to the last field.
    config = json.loads((run / "model" / "config.json").read_text())["lmforge"]
    assert config == second["best"]["spec"]["model_args"]
    trial = json.loads((Path(second["best"]["run_dir"]) / "model" / "config.json").read_text())
    assert config == trial["lmforge"]


# ---- bad input ----------------------------------------------------------------------------
def scale_parser() -> argparse.ArgumentParser:
    """``lmforge scale`` with only the search action, as scale_cmd will register it."""
    parser = Parser(prog="lmforge")
    scale = parser.add_subparsers(dest="command").add_parser("scale", help="scaling laws")
    scale_search_cmd.register(scale.add_subparsers(dest="action"))
    return parser


@pytest.mark.parametrize("argv, error, needle", [
    ("--max-params 1e5", ConfigError, "--data is required"),
    ("--data {data} --eta 1", ConfigError, "--eta must be at least 2"),
    ("--data {data} --trials 0", ConfigError, "--trials must be a positive"),
    ("--data {data} --widths ,", ConfigError, "--widths must be positive numbers"),
    ("--data {data} --depths 2.5", ConfigError, "--depths must be whole numbers"),
    ("--data {data} --lrs fast", ConfigError, "--lrs must be comma-separated numbers"),
    ("--data {data} --widths 48 --head-dims 32", ConfigError, "search space is empty"),
    ("--data {data} --max-params 100", ConfigError, "no config of the space satisfies --max-params 100"),
    ("--data {data} --max-latency-ms -1", ConfigError, "--max-latency-ms must be positive"),
    ("--data {data} --rungs 2 --max-tokens 1e6", ConfigError, "not both"),
    ("--data {data} --max-tokens 10", ConfigError, "below --min-tokens"),
    ("--data {data} --heads 2 --head-dims 32", ConfigError, "--heads or --head-dims"),
    ("--data {data} --model bert-mini", ConfigError, "decoders"),
    ("--data {data} --max-runs 0", ConfigError, "--max-runs must be a positive"),
    ("--data {root}/nope", DataError, "not a prepared dataset"),
    ("--data {data} --out {file}", ConfigError, "is a file"),
    ("--data {data} --out {root}", ConfigError, "holds other files and no search.json"),
])
def test_bad_input_is_one_clear_error(data, tmp_path, argv, error, needle):
    (tmp_path / "f.txt").write_text("x")
    files = {"data": data, "root": tmp_path, "file": tmp_path / "f.txt"}
    words = ["scale", "search", *argv.format(**files).split()]
    if "--out" not in words:
        words += ["--out", str(tmp_path / "out")]
    args = scale_parser().parse_args(words)
    with pytest.raises(LMForgeError) as caught:
        args.func(args)
    assert isinstance(caught.value, error)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_follows_the_conventions(capsys):
    parser = scale_parser()
    p = parser._subparsers._group_actions[0].choices["scale"]._subparsers._group_actions[0].choices["search"]
    text = p.format_help()
    assert "\nexamples:\n  lmforge scale search --data" in text
    for action in p._actions:
        assert action.help and action.help.strip(), action.option_strings
    args = parser.parse_args(["scale", "search", "--data", "d", "-o", "x", "--max_params", "1e5",
                              "--mlp-ratios", "2"])
    assert (args.out, args.max_params, args.mlp_ratios) == ("x", "1e5", "2")
    assert "--max-params" in text and "--max_params" not in text
