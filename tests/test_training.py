"""The training engine: it learns, it resumes bit-exactly, it logs, and it refuses bad input."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.training import TrainConfig, Trainer, load_run_config, pretrain
from lmforge.training.optim import lr_at, param_groups
from lmforge.models import GPT, preset

from _util import assert_one_line_error, make_char_dataset, popen_cli, run_cli

TINY = dict(model="baby", block_size=32, batch_size=8, lr=3e-3, warmup_steps=5, eval_interval=10,
            eval_batches=4, log_interval=5, progress=False, precision="fp32", tensorboard=False,
            threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_char_dataset(tmp_path_factory.mktemp("data") / "chars")


def tiny_args(data: Path, out: Path, **extra) -> list[str]:
    args = {**TINY, "data": data, "out_dir": out, "n_layer": 2, "n_embd": 64, "n_head": 4, **extra}
    flat = []
    for k, v in args.items():
        flat += [f"--{k}", str(v).lower() if isinstance(v, bool) else str(v)]
    return flat


def test_loss_falls_and_outputs_written(data, tmp_path):
    cfg = TrainConfig(data=str(data), out_dir=str(tmp_path / "run"), max_steps=60, **TINY)
    trainer = Trainer(cfg)
    first_val = trainer.evaluate()["val_loss"]
    result = trainer.fit()
    assert first_val > 3.5  # ~ln(65) at init
    assert result["val_loss"] < first_val - 1.0, result
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in records) and any("tokens_per_sec" in r for r in records)
    assert (run / "loss.png").stat().st_size > 1000
    assert (run / "model" / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    saved = load_run_config(run)
    assert saved.max_steps == 60 and saved.lr == TINY["lr"]


def test_tensorboard_and_bf16(data, tmp_path):
    cfg = TrainConfig(data=str(data), out_dir=str(tmp_path / "run"), max_steps=30,
                      **{**TINY, "precision": "bf16", "tensorboard": True})
    result = pretrain(cfg)
    assert result["val_loss"] < 3.4
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_sgd_trains(data, tmp_path):
    cfg = TrainConfig(data=str(data), out_dir=str(tmp_path / "run"), max_steps=40,
                      **{**TINY, "lr": 0.3, "optimizer": "sgd", "weight_decay": 0.0})
    assert pretrain(cfg)["val_loss"] < 3.3


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _wait_for(path: Path, proc, timeout: float = 120) -> None:
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig,extra", [
    (signal.SIGKILL, {"sampling": "random", "dropout": 0.1}),
    (signal.SIGINT, {"sampling": "sequential", "grad_accum": 2, "dropout": 0.1}),
])
def test_resume_is_bit_exact(data, tmp_path, sig, extra):
    """Kill (or Ctrl-C) a run mid-way, resume it, and get the uninterrupted run's weights."""
    common = dict(max_steps=40, save_interval=5, **extra)
    reference = run_cli("pretrain", *tiny_args(data, tmp_path / "ref", **common))
    assert reference.returncode == 0, reference.stderr

    run = tmp_path / "run"
    proc = popen_cli("pretrain", *tiny_args(data, run, **common))
    _wait_for(run / "checkpoints" / "step-00000015", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted at step" in err, err
        assert "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (run / "model").exists() or sig == signal.SIGINT
    resumed = run_cli("pretrain", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    ref, got = _final_weights(tmp_path / "ref"), _final_weights(run)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name


def test_checkpoint_retention_keeps_last_and_best(data, tmp_path):
    cfg = TrainConfig(data=str(data), out_dir=str(tmp_path / "run"), max_steps=40, save_interval=5,
                      keep_last=2, **TINY)
    trainer = Trainer(cfg)
    trainer.fit()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    best = f"step-{trainer.best_step:08d}"
    assert set(names) == {"step-00000035", "step-00000040", best}


def test_corrupt_checkpoint_is_refused_and_left_intact(data, tmp_path):
    run = tmp_path / "run"
    assert run_cli("pretrain", *tiny_args(data, run, max_steps=10, save_interval=5)).returncode == 0
    weights = run / "checkpoints" / "step-00000010" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated, as by a full disk
    before = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    proc = run_cli("pretrain", "--resume", run, "--max_steps", "20")
    assert_one_line_error(proc, "corrupt checkpoint")
    after = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    assert before == after


def test_checkpoint_of_another_architecture_is_refused(data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("pretrain", *tiny_args(data, a, max_steps=5)).returncode == 0
    assert run_cli("pretrain", *tiny_args(data, b, max_steps=5, n_embd=32)).returncode == 0
    # Put run b's checkpoint where run a looks for its latest one.
    (a / "checkpoints" / "latest").write_text("step-00000099")
    (b / "checkpoints" / "step-00000005").rename(a / "checkpoints" / "step-00000099")
    proc = run_cli("pretrain", "--resume", a, "--max_steps", "10")
    assert_one_line_error(proc, "do not fit this architecture")


@pytest.mark.parametrize("flags,needle", [
    (["--batch_size", "0"], "batch_size"),
    (["--batch_size", "-4"], "batch_size"),
    (["--lr", "0"], "'lr'"),
    (["--lr", "-1e-3"], "'lr'"),
    (["--batch_size", "abc"], "batch_size"),
    (["--model", "gpt-17"], "unknown model preset"),
    (["--block_size", "128"], "larger than the model context"),
    (["--schedule", "triangle"], "schedule"),
    (["--vocab_size", "10"], "vocab mismatch"),
])
def test_bad_config_values_give_one_line(data, tmp_path, flags, needle):
    proc = run_cli("pretrain", *tiny_args(data, tmp_path / "run", max_steps=5), *flags)
    assert_one_line_error(proc, needle)


def test_missing_dataset_and_existing_output(data, tmp_path):
    assert_one_line_error(run_cli("pretrain", *tiny_args(tmp_path / "nope", tmp_path / "r1")),
                          "dataset not found")
    out = tmp_path / "r2"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_one_line_error(run_cli("pretrain", *tiny_args(data, out, max_steps=2)), "already exists")
    assert (out / "keep.txt").read_text() == "precious"
    ok = run_cli("pretrain", *tiny_args(data, out, max_steps=2), "--overwrite")
    assert ok.returncode == 0, ok.stderr


def test_config_file_and_flag_override(data, tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"data: {data}\nmodel: baby\nmodel_args: {{n_layer: 1, n_embd: 32}}\n"
                         "block_size: 16\nbatch_size: 4\nmax_steps: 3\nprogress: false\n"
                         "tensorboard: false\nprecision: fp32\n")
    proc = run_cli("pretrain", "--config", yaml_file, "--out_dir", tmp_path / "run", "--max_steps", "4")
    assert proc.returncode == 0, proc.stderr
    saved = load_run_config(tmp_path / "run")
    assert saved.max_steps == 4 and saved.model_args == {"n_layer": 1, "n_embd": 32}
    toml_file = tmp_path / "run.toml"
    toml_file.write_text(f'data = "{data}"\nmodel = "baby"\nbatch_size = 0\n')
    assert_one_line_error(run_cli("pretrain", "--config", toml_file, "--out_dir", tmp_path / "r2"),
                          "batch_size")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nbatchsize: 3\n")
    assert_one_line_error(run_cli("pretrain", "--config", bad), "unknown field(s) batchsize")


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "wsd"])
def test_lr_schedules(schedule):
    cfg = TrainConfig(data="x", lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, schedule=schedule)
    lrs = [lr_at(s, cfg) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:10], lrs[1:10]))
    if schedule == "constant":
        assert lrs[-1] == 1.0
    else:
        assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))  # never increases after warmup
        assert lrs[-1] == pytest.approx(0.1)
    if schedule == "wsd":
        assert lrs[80] == 1.0 and lrs[95] < 1.0  # stable until the last 20%
    if schedule == "cosine":
        assert lrs[60] == pytest.approx(0.55, abs=0.01)  # halfway between peak and floor


def test_no_weight_decay_on_norms_biases_embeddings():
    model = GPT(preset("baby", n_layer=2))
    decay, no_decay = param_groups(model, TrainConfig(weight_decay=0.1))
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith("weight") and ("qkv" in n or "proj" in n or "fc" in n) for n in decayed)
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"} <= {names[id(p)] for p in no_decay["params"]}


def test_compiled_model_trains_like_eager(data, tmp_path):
    """`--compile true` runs the same training (torch.compile with inductor on CPU)."""
    common = dict(data=str(data), max_steps=8, **{**TINY, "eval_interval": 0})
    eager = pretrain(TrainConfig(out_dir=str(tmp_path / "eager"), **common))
    compiled = pretrain(TrainConfig(out_dir=str(tmp_path / "compiled"), compile=True, **common))
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], abs=1e-3)
    assert compiled["val_loss"] < 4.0
