"""`lmforge compare`: n-gram, LSTM and Transformer rows scored on the same validation tokens,
printed as a table and written as JSON and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.baselines import evaluate_on_dataset, fit_on_dataset
from lmforge.data.dataset import TokenShards

from _util import assert_one_line_error, make_char_dataset, run_cli

TINY = ["--ngram_orders", "2,3", "--lstm_steps", "20", "--lstm_args", '{"n_embd": 32}',
        "--lstm_batch_size", "8", "--lstm_block_size", "16", "--gpt_model", "baby",
        "--gpt_args", '{"n_layer": 1, "n_embd": 32, "n_head": 2}', "--gpt_steps", "20",
        "--gpt_batch_size", "8", "--gpt_block_size", "32", "--threads", "1", "--precision", "fp32"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_char_dataset(tmp_path_factory.mktemp("data") / "chars", chars=30_000)


def test_compare_prints_table_and_writes_json_and_png(data, tmp_path):
    out = tmp_path / "cmp"
    proc = run_cli("compare", data, "--out", out, *TINY)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout[proc.stdout.index("Validation perplexity"):]
    for name in ("2-gram (modified KN)", "3-gram (modified KN)", "lstm-small (LSTM)",
                 "baby (Transformer)", "| model | context used | parameters | training time"):
        assert name in table, table

    result = json.loads((out / "compare.json").read_text())
    assert [r["kind"] for r in result["rows"]] == ["ngram", "ngram", "lstm", "gpt"]
    val_tokens = len(TokenShards(data, "val"))
    assert result["val_tokens"] == val_tokens and f"all {val_tokens:,} tokens" in table
    # Same definition for all rows: every val token (EOS included) predicted exactly once.
    for row in result["rows"]:
        assert row["val_tokens"] == val_tokens, row
        assert row["val_ppl"] == pytest.approx(2.718281828 ** (-row["val_logprob"] / val_tokens))
        assert row["params"] > 0 and row["train_seconds"] > 0
        assert f"{row['val_ppl']:.2f} |" in table
    assert result["rows"][0]["val_ppl"] == pytest.approx(
        evaluate_on_dataset(fit_on_dataset(data, 2), data)[2])
    assert 1 < result["rows"][2]["val_ppl"] < 65 and 1 < result["rows"][3]["val_ppl"] < 65
    png = (out / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert (out / "lstm" / "model" / "config.json").is_file()


def test_compare_refuses_bad_input_with_one_line(data, tmp_path):
    assert_one_line_error(run_cli("compare", data, "--out", tmp_path / "a",
                                  "--ngram_orders", "2,x"), "ngram_orders")
    assert_one_line_error(run_cli("compare", data, "--out", tmp_path / "b", "--ngram_orders", "",
                                  "--lstm_steps", "0", "--gpt_steps", "0"), "nothing to compare")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("precious")
    assert_one_line_error(run_cli("compare", data, "--out", taken, *TINY), "already exists")
    assert (taken / "keep.txt").read_text() == "precious"
    assert_one_line_error(run_cli("compare", tmp_path / "nope", "--out", tmp_path / "c"),
                          "dataset not found")
