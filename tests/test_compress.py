"""`lmforge compress`: method specs, the Pareto frontier, and the report end to end on tiny
models (quantized, pruned and external variants measured side by side)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmforge.compression.methods import parse_methods
from lmforge.compression.report import format_table, pareto
from lmforge.errors import ConfigError


def test_method_specs_parse_into_steps():
    methods = parse_methods("int8, int4-g64,wanda50+int8,2:4,heads25-ffn50,model:runs/s")
    assert [m.name for m in methods] == ["int8", "int4-g64", "wanda50+int8", "2:4",
                                         "heads25-ffn50", "model:runs/s"]
    assert methods[1].steps[0].options == {"method": "int4", "group_size": 64}
    assert [s.kind for s in methods[2].steps] == ["unstructured", "quantize"]
    assert methods[2].steps[0].options == {"method": "wanda", "sparsity": 0.5}
    assert methods[2].steps[0].needs_calibration and not methods[3].steps[0].needs_calibration
    assert methods[3].steps[0].options["pattern"] == "2:4"
    assert methods[4].steps[0].options == {"heads": 0.25, "ffn": 0.5, "importance": "taylor"}
    assert str(methods[5].external) == "runs/s" and methods[2].folder_name == "wanda50+int8"
    assert parse_methods("int4", group_size=32)[0].steps[0].options["group_size"] == 32


@pytest.mark.parametrize("spec, message", [
    ("int3", "unknown compress method 'int3'"),
    ("int4-g48", "group size must be one of 32, 64, 128"),
    ("heads25@guess", "importance must be one of"),
    ("wanda100", "between 1 and 99 percent"),
    ("int8+wanda50", "quantization must be the last step"),
    ("int8,int8", "given twice"),
    ("model:", "needs a model folder"),
    (" , ", "no compress methods"),
])
def test_bad_method_specs_are_refused_in_one_line(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_methods(spec)


def _row(name, size, speed, ppl):
    return {"name": name, "size_mb": size, "metrics": {"perplexity": ppl, "decode_tok_s": speed,
                                                       "prefill_tok_s": 1.0},
            "parameters": 10, "nonzero": 10}


def test_pareto_keeps_exactly_the_rows_nothing_beats():
    rows = [_row("original", 100, 10, 20.0), _row("int8", 50, 18, 20.1),
            _row("worse-int8", 50, 17, 20.5),        # int8 is smaller-or-equal, faster, better
            _row("int4", 30, 25, 21.0), _row("tiny-bad", 20, 5, 90.0)]
    assert pareto(rows) == ["original", "int8", "int4", "tiny-bad"]
    table = format_table({"rows": [{**r, "pareto": r["name"] in pareto(rows)} for r in rows],
                          "kind": "lm"})
    lines = table.splitlines()
    assert lines[0].startswith("| variant | size MB | x smaller")
    assert "| int8 | 50.0 | 2.00 |" in lines[3] and lines[3].endswith("| +0.50% | * |")
    assert lines[4].endswith("| +2.50% |  |")  # worse-int8: not on the frontier


def test_compress_report_with_an_external_variant(tiny_models, tmp_path):
    """The original and a model compressed elsewhere (model:PATH) are measured the same way:
    the same model twice gives the same perplexity, and the files are all written."""
    import lmforge
    gpt = tiny_models / "gpt"
    text = tiny_models / "corpus.txt"
    out = tmp_path / "report"
    result = lmforge.compress(gpt, [f"model:{gpt}"], out=out, eval_data=text, eval_tokens=256,
                              prompt_tokens=64, new_tokens=8, repeats=1)
    original, external = result["rows"]
    assert original["metrics"]["perplexity"] == pytest.approx(external["metrics"]["perplexity"])
    assert original["metrics"]["eval_tokens"] == 256
    assert original["parameters"] == external["parameters"] > 0
    assert original["size_mb"] == pytest.approx(external["size_mb"], rel=0.01)
    assert (out / "report.md").read_text().count("\n") == 4
    assert json.loads((out / "report.json").read_text())["rows"][1]["folder"] == str(gpt)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "variants" / "original" / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="already exists"):
        lmforge.compress(gpt, [f"model:{gpt}"], out=out, eval_data=text)


def test_compress_cli_refuses_bad_input_in_one_line(tiny_models, tmp_path):
    run = subprocess.run([sys.executable, "-m", "lmforge", "compress", str(tiny_models / "gpt"),
                          "--methods", "int3", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "unknown compress method 'int3'" in run.stderr and not (tmp_path / "x").exists()


def test_compress_a_decoder_with_every_kind_of_method(tiny_models, tmp_path):
    """Quantized, pruned and chained variants of a tiny decoder: each is saved, loads back as
    what the table measured, and its numbers are what its method must give."""
    import lmforge
    from lmforge.evaluation.scoring import token_logprobs
    from lmforge.hub import load_model

    gpt, text = tiny_models / "gpt", tiny_models / "corpus.txt"
    result = lmforge.compress(gpt, "int8,int4-g32,prune50,wanda50+int8,heads50", out=tmp_path / "c",
                              eval_data=text, eval_tokens=256, prompt_tokens=64, new_tokens=8,
                              repeats=1, calibration_samples=8, calibration_length=32)
    rows = {r["name"]: r for r in result["rows"]}
    base = rows["original"]
    ppl = {n: r["metrics"]["perplexity"] for n, r in rows.items()}
    assert abs(ppl["int8"] / ppl["original"] - 1) < 0.01  # int8 barely moves a model's scores
    assert abs(ppl["int4-g32"] / ppl["original"] - 1) < 0.10
    assert rows["int4-g32"]["steps"][0]["layer_methods"] == {"lm_head": "int8"}  # --head int8
    for name, dense in (("prune50", "original"), ("wanda50+int8", "int8")):
        block = rows[name]["steps"][0]  # half the block weights are zeros now
        assert block["sparsity"] == pytest.approx(0.5, abs=0.01)
        assert rows[name]["nonzero"] < rows[dense]["nonzero"]
    assert rows["wanda50+int8"]["steps"][1]["method"] == "int8"
    assert rows["heads50"]["parameters"] < base["parameters"]  # heads removed physically
    assert rows["heads50"]["size_mb"] < base["size_mb"] and rows["int8"]["size_mb"] < base["size_mb"]
    # What was measured is what was saved: the saved int8 variant scores the same.
    model, tok, _ = load_model(rows["int8"]["folder"])
    from lmforge.tokenization.info import encode, eos_token_id
    ids = [eos_token_id(tok)] + encode(tok, text.read_text())[:256]
    saved_ppl = torch_exp_mean(token_logprobs(model, ids, max_length=64))  # the context
    assert saved_ppl == pytest.approx(ppl["int8"], rel=1e-4)
    assert sum(r["pareto"] for r in result["rows"]) >= 1


def torch_exp_mean(logprobs) -> float:
    import math
    return math.exp(-logprobs.mean().item())


def test_compress_a_fine_tuned_classifier(tiny_runs, tiny_models, tmp_path):
    """A task model is measured by its task's metric and examples/s; structured pruning takes
    calibration examples from the task's training file."""
    import lmforge
    run = tiny_runs["classification"]
    data = tiny_models / "cls.tsv"
    result = lmforge.compress(run, "dynamic-int8,heads50", out=tmp_path / "c", eval_data=data,
                              calibration=data, calibration_samples=16, repeats=1)
    rows = {r["name"]: r for r in result["rows"]}
    assert result["quality"] == "accuracy" and result["speed"] == "examples_s"
    assert rows["original"]["metrics"]["accuracy"] == pytest.approx(
        lmforge.evaluate(run, data)["accuracy"])
    assert abs(rows["dynamic-int8"]["metrics"]["accuracy"] - rows["original"]["metrics"]["accuracy"]) <= 0.05
    assert rows["heads50"]["parameters"] < rows["original"]["parameters"]
    with pytest.raises(ConfigError, match="--calibration"):
        lmforge.compress(run, "heads50", out=tmp_path / "d", eval_data=data)


def test_recovery_fine_tune_keeps_pruned_weights_at_zero(tiny_runs, tiny_models, tmp_path):
    """--recover-steps trains a pruned task model through finetune's trainer; the zeros of
    unstructured pruning survive it, and the recovery run is kept beside the variants."""
    import lmforge
    from lmforge.hub import load_model
    run, data = tiny_runs["classification"], tiny_models / "cls.tsv"
    result = lmforge.compress(run, "prune50", out=tmp_path / "c", eval_data=data, repeats=1,
                              recover_steps=4, recover_data=str(data), recover_lr=1e-3)
    row = result["rows"][1]
    assert [s["step"] for s in row["steps"]] == ["prune50", "recovery"]
    assert (tmp_path / "c" / "recovery" / "prune50" / "model").is_dir()
    pruned = {layer["name"] + ".weight": layer["zeros"] for layer in row["steps"][0]["layers"]}
    model = dict(load_model(row["folder"])[0].named_parameters())
    original = dict(load_model(run)[0].named_parameters())
    for name, zeros in pruned.items():
        assert int((model[name] == 0).sum()) == zeros
        kept = model[name] != 0  # the recovery run trained the weights that were left
        assert not torch_equal(model[name][kept], original[name][kept])
    with pytest.raises(ConfigError, match="--recover-data"):
        lmforge.compress(run, "prune50", out=tmp_path / "d", eval_data=data, recover_steps=4)


def torch_equal(a, b) -> bool:
    import torch
    return a.shape == b.shape and torch.equal(a, b)
