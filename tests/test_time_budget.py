"""`--time`: a wall-clock budget for any run. The run measures its speed after warm-up, fixes
max_steps so the LR schedule ends with the budget (the linear schedule reaches min_lr at the last
step), records the plan in its config, and a hard stop at the budget + 5% ends (and exports) a
run that slows down."""

from __future__ import annotations

import json
import time

import pytest

import lmforge
from lmforge.config import load_file
from lmforge.errors import ConfigError
from lmforge.hub import from_pretrained
from lmforge.training import engine
from lmforge.training.time_budget import HARD_STOP_TOLERANCE, parse_duration

from _util import make_char_dataset

FAST = dict(threads=1, progress=False, tensorboard=False, precision="fp32", device="cpu")
TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "context_length": 64}
BUDGET = 6.0  # seconds: long enough to measure, short enough for the fast suite


def test_parse_duration():
    assert parse_duration("90") == 90 and parse_duration("20s") == 20
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400 and parse_duration(12) == 12
    for bad in ("", "soon", "10x", "0s", "-5m"):
        with pytest.raises(ConfigError, match="time"):
            parse_duration(bad)


@pytest.fixture(scope="module")
def chars(tmp_path_factory):
    return make_char_dataset(tmp_path_factory.mktemp("tb") / "data", chars=50_000)


def _run(chars, out, **over):
    cfg = dict(data=str(chars), out_dir=str(out), model="gpt-mini", model_args=TINY, block_size=32,
               batch_size=4, time=f"{BUDGET}s", schedule="linear", min_lr=0.0, warmup_steps=5,
               eval_interval=0, eval_batches=2, log_interval=1, **FAST)
    cfg.update(over)
    start = time.perf_counter()
    result = lmforge.pretrain(lmforge.TrainConfig(**cfg))
    return result, time.perf_counter() - start


def test_time_budget_ends_the_schedule_on_time(chars, tmp_path):
    result, wall = _run(chars, tmp_path / "run")
    plan = result["time_budget"]
    # The loop never overruns the budget (105% + 1 s); it may end early when the machine speeds
    # up after the measured steps (a tiny model on a shared CI core: 67% seen once), so the
    # lower end is loose; the whole call adds set-up and export.
    assert 0.4 * BUDGET <= plan["elapsed_s"] <= BUDGET * (1 + HARD_STOP_TOLERANCE) + 1.0, plan
    assert plan["planned_max_steps"] > 50 and plan["tokens_per_sec"] > 0
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    if result["step"] == plan["planned_max_steps"]:  # ended by the plan: LR at the floor
        assert lrs[-1] == 0.0
        assert lrs[-2] > 0.0
    saved = load_file(tmp_path / "run" / "config.yaml")
    assert saved["max_steps"] == plan["planned_max_steps"] == saved["resolved"]["max_steps"]
    assert saved["resolved"]["time_budget"]["tokens_per_sec"] == plan["tokens_per_sec"]
    assert from_pretrained(tmp_path / "run" / "model") is not None


def test_time_budget_caps_at_max_steps(chars, tmp_path):
    result, wall = _run(chars, tmp_path / "run", max_steps=20)  # max_steps bounds the run
    assert result["step"] == 20 and result["time_budget"]["elapsed_s"] < BUDGET / 2


def test_hard_stop_when_the_machine_slows_down(chars, tmp_path, monkeypatch):
    real_step = engine.Trainer._train_step

    def slowing(self):  # after the plan is fixed (step 40 at the latest), every step takes 0.2 s
        out = real_step(self)
        if self.step > 40:
            time.sleep(0.2)
        return out

    monkeypatch.setattr(engine.Trainer, "_train_step", slowing)
    result, wall = _run(chars, tmp_path / "run")
    plan = result["time_budget"]
    assert result["step"] < plan["planned_max_steps"]  # stopped early ...
    assert plan["elapsed_s"] <= BUDGET * (1 + HARD_STOP_TOLERANCE) + 0.5  # ... on time
    assert "val_loss" in result and (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_bad_time_is_a_config_error(chars, tmp_path):
    with pytest.raises(ConfigError, match="duration"):
        _run(chars, tmp_path / "run", time="soon")
