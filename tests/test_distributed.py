"""Scale-out on CPU with gloo: 2 ranks train as 1 process with the doubled batch (DDP, FSDP2) or
the same batch (TP), checkpoints written by 2 ranks resume on 1 and on 2, a lost rank stops the
job with a clear message and leaves the last checkpoint intact.

The ranks are forked from the test process with torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT), which is what the engine reads; one slow test runs real torchrun.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.training import TrainConfig, Trainer, load_run_config
from lmforge.training import checkpoint as ckpt
from lmforge.training.distributed import Ranks

from _util import REPO, assert_one_line_error, cli_env, make_char_dataset

TINY = dict(model="baby", model_args={"n_layer": 2, "n_embd": 32, "n_head": 4}, block_size=16,
            batch_size=4, grad_accum=2, max_steps=6, lr=5e-4, warmup_steps=2, dropout=0.0,
            eval_interval=3, eval_batches=2, log_interval=1, save_interval=3, progress=False,
            precision="fp32", tensorboard=False, threads=1, dist_timeout=60)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_char_dataset(tmp_path_factory.mktemp("data") / "chars", chars=50_000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, fn, kwargs: dict, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        results.put((rank, "ok", fn(**kwargs)))
    except BaseException:  # noqa: BLE001 - the parent reports it
        results.put((rank, "error", traceback.format_exc()))


def run_ranks(fn, world: int = 2, timeout: float = 120, **kwargs) -> list:
    """``fn(**kwargs)`` on ``world`` forked ranks; [(status, value)] by rank."""
    ctx = multiprocessing.get_context("fork")
    results, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, fn, kwargs, results))
             for r in range(world)]
    for p in procs:
        p.start()
    out: dict[int, tuple] = {}
    deadline = time.time() + timeout
    try:
        # Until every rank has reported or died (a killed rank never reports).
        while len(out) < world and time.time() < deadline:
            try:
                rank, status, value = results.get(timeout=0.5)
                out[rank] = (status, value)
            except queue.Empty:
                if not any(p.is_alive() for r, p in enumerate(procs) if r not in out):
                    break
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [out.get(r, ("missing", None)) for r in range(world)]


def train(out_dir: str, stop_after: int | None = None, resume: bool = False, **cfg) -> dict:
    """One rank's (or one process's) run; ``stop_after``: the last rank gets SIGTERM (as from a
    scheduler) during that step, and every rank stops after it."""
    config = load_run_config(out_dir, cfg) if resume else TrainConfig(out_dir=out_dir, **cfg)
    trainer = Trainer(config, resume=resume)
    if stop_after is not None:
        step = trainer._train_step

        def step_then_stop():
            if trainer.step == stop_after - 1 and trainer.ranks.rank == trainer.ranks.world_size - 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return step()
        trainer._train_step = step_then_stop
    return trainer.fit()


def ok(results: list) -> list:
    for status, value in results:
        assert status == "ok", value
    return [value for _, value in results]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], rtol=0, atol=atol), \
            (name, float((wa[name] - wb[name]).abs().max()))


def train_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> Path:
    """The reference: one process with the doubled batch."""
    out = tmp_path_factory.mktemp("single") / "run"
    train(str(out), data=str(data), **{**TINY, "batch_size": 2 * TINY["batch_size"]})
    return out


@pytest.fixture(scope="module")
def ddp(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    ok(run_ranks(train, out_dir=str(out), data=str(data), **TINY))
    return out


def test_ranks_share_out_global_batch_rows():
    batch = {"input_ids": torch.arange(10).view(5, 2), "starts": torch.tensor(True)}
    rows = [Ranks(r, 2).own_rows(batch)["input_ids"][:, 0].tolist() for r in range(2)]
    assert rows == [[0, 2], [4, 6, 8]]
    assert Ranks(1, 2).own_rows(batch)["starts"].item() is True
    assert Ranks(1, 2, parallel="tp").own_rows(batch) is batch  # TP ranks share the batch
    short = {"x": torch.arange(1)}  # last batch of an epoch with fewer rows than ranks
    assert [Ranks(r, 2).own_rows(short)["x"].tolist() for r in range(2)] == [[0], [0]]


class CountingShards:
    """A dataset view that counts the windows read from it."""

    def __init__(self, data):
        self.data, self.reads = data, 0

    def __getattr__(self, name):
        return getattr(self.data, name)

    def __len__(self):
        return len(self.data)

    def window(self, shard, start, length):
        self.reads += 1
        return self.data.window(shard, start, length)

    def read(self, start, length):
        self.reads += 1
        return self.data.read(start, length)


@pytest.mark.parametrize("kind", ["random", "sequential", "streams"])
def test_rank_samplers_read_only_their_rows_of_the_global_stream(data, kind):
    """A rank's sampler reads just its rows, which equal those rows of the one-process batches,
    across epochs and through a checkpoint of the sampler state."""
    from lmforge.data.dataset import RandomWindows, SequentialWindows, StreamBatches, TokenShards
    shards = TokenShards(data, "train")

    def sampler(rows=None):
        view = CountingShards(shards)
        if kind == "random":
            return view, RandomWindows(view, 17, 6, seed=3, rows=rows)
        if kind == "sequential":
            return view, SequentialWindows(view, 17, 6, seed=3, rows=rows)
        return view, StreamBatches(view, 16, 6, rows=rows)

    def windows(batch):
        return batch.windows if kind == "streams" else batch

    _, whole = sampler()
    steps = whole.steps_per_epoch + 2 if kind == "streams" else whole.batches_per_epoch + 2 \
        if kind == "sequential" else 5
    expected = [windows(whole.next_batch()) for _ in range(steps)]
    for rank in range(2):
        lo, hi = Ranks(rank, 2).row_range(6)
        view, part = sampler((lo, hi))
        got = [windows(part.next_batch()) for _ in range(steps - 1)]
        state = part.state_dict()
        view2, resumed = sampler((lo, hi))
        resumed.load_state_dict(state)
        got.append(windows(resumed.next_batch()))
        assert all(torch.equal(g, e[lo:hi]) for g, e in zip(got, expected))
        assert view.reads == (steps - 1) * (hi - lo) and view2.reads == hi - lo


def test_ddp_two_ranks_equal_one_process_with_doubled_batch(single, ddp):
    assert_same_weights(single, ddp)
    ref, got = train_losses(single), train_losses(ddp)
    assert ref.keys() == got.keys() == set(range(1, 7))  # rank 0 alone logs: one record a step
    assert all(abs(ref[s] - got[s]) < 1e-5 for s in ref)
    state = ckpt.read_state(ddp / "checkpoints" / "step-00000006")
    assert state["world_size"] == 2 and state["global_batch"] == 8
    assert ckpt.is_sharded(ddp / "checkpoints" / "step-00000006")
    assert sorted(p.name for p in (ddp / "checkpoints" / "step-00000006" / "dcp").iterdir()) == \
        [".metadata", "__0_0.distcp", "__1_0.distcp"]


def test_fsdp_two_ranks_equal_one_process_with_doubled_batch(single, data, tmp_path):
    """FSDP2 (with activation checkpointing, which recomputes the same values)."""
    out = tmp_path / "fsdp"
    ok(run_ranks(train, out_dir=str(out), data=str(data),
                 **{**TINY, "parallel": "fsdp", "activation_checkpointing": True}))
    assert_same_weights(single, out)  # gathered from the shards into one safetensors file
    bf16 = tmp_path / "bf16"  # mixed precision: bf16 weights gathered, fp32 gradient reduction
    losses = ok(run_ranks(train, out_dir=str(bf16), data=str(data),
                          **{**TINY, "parallel": "fsdp", "precision": "bf16", "lr": 3e-3}))
    assert losses[0]["train_loss"] == losses[1]["train_loss"] < train_losses(bf16)[1] - 0.1
    assert weights(bf16)["transformer.wte.weight"].dtype == torch.float32  # fp32 master weights (HF names)


def test_encoder_mlm_under_ddp_and_fsdp(tmp_path):
    """An MLM encoder calls its head besides forward and leaves the NSP head unused."""
    from lmforge.data.prepare import prepare_corpus
    from lmforge.tokenization import train_tokenizer
    from _util import SHAKESPEARE
    text = tmp_path / "text.txt"
    text.write_text(SHAKESPEARE.read_text()[:60_000])
    prepare_corpus([text], train_tokenizer([text], kind="wordpiece", vocab_size=500),
                   tmp_path / "data", split_on_blank_lines=True, val_fraction=0.05, workers=1)
    cfg = {**TINY, "model": "bert-mini", "objective": "mlm", "block_size": 32, "max_steps": 3,
           "eval_interval": 3, "save_interval": 0}
    for mode in ("ddp", "fsdp"):
        ok(run_ranks(train, out_dir=str(tmp_path / mode), data=str(tmp_path / "data"),
                     parallel=mode, **cfg))
    assert train_losses(tmp_path / "ddp") == pytest.approx(train_losses(tmp_path / "fsdp"), abs=1e-6)
    assert_same_weights(tmp_path / "ddp", tmp_path / "fsdp")


def test_resume_two_rank_checkpoint_on_one_and_two(ddp, data, tmp_path):
    """SIGTERM one rank of a 2-rank run at step 3: both save and stop. Resume it on 2 ranks and (a
    copy) on 1: the losses continue as the uninterrupted run's; on 1 process the per-rank batch
    doubles to keep the global one."""
    run = tmp_path / "run"
    results = ok(run_ranks(train, out_dir=str(run), stop_after=3, data=str(data), **TINY))
    assert all(r["interrupted"] and r["step"] == 3 for r in results)
    one = tmp_path / "one"
    shutil.copytree(run, one)
    ok(run_ranks(train, out_dir=str(run), resume=True))
    train(str(one), resume=True)
    reference = train_losses(ddp)
    for resumed, exact in ((run, True), (one, False)):
        losses = train_losses(resumed)
        assert sorted(losses) == list(range(1, 7))
        for step in range(4, 7):
            if exact:
                assert losses[step] == reference[step], (resumed.name, step)
            else:
                assert losses[step] == pytest.approx(reference[step], abs=1e-5), step
    assert_same_weights(ddp, run, atol=0)
    assert_same_weights(ddp, one)
    assert load_run_config(one).batch_size == TINY["batch_size"]  # the saved config is unchanged


def _finetune(out_dir: str, root: str, batch_size: int) -> dict:
    from lmforge.tasks.finetune import FinetuneConfig, FinetuneTrainer
    from lmforge.training.engine import set_dropout
    cfg = FinetuneConfig(model="bert-mini", tokenizer=f"{root}/tok", out_dir=out_dir,
                         data=f"plain={root}/a.txt,loud={root}/b.txt", epochs=1, lr=1e-3,
                         batch_size=batch_size, block_size=32, dropout=0.0, progress=False,
                         tensorboard=False, threads=1, precision="fp32", dist_timeout=60,
                         model_args={"n_layer": 2, "n_embd": 32, "n_head": 4,
                                     "intermediate_size": 64})
    trainer = FinetuneTrainer(cfg)
    set_dropout(trainer.model, 0.0)  # the classifier head's own dropout too
    return trainer.fit()


def test_finetune_under_ddp_equals_one_process(tmp_path):
    """`lmforge finetune` under torchrun: padded, length-grouped batches of a task split by rows."""
    from lmforge.tokenization import save_tokenizer, train_tokenizer
    from _util import SHAKESPEARE
    lines = [ln for ln in SHAKESPEARE.read_text().splitlines() if len(ln) > 20][:240]
    (tmp_path / "a.txt").write_text("\n".join(lines[:120]) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(ln.upper() for ln in lines[120:]) + "\n")
    save_tokenizer(train_tokenizer([tmp_path / "a.txt", tmp_path / "b.txt"], kind="wordpiece",
                                   vocab_size=300), tmp_path / "tok")
    one = _finetune(str(tmp_path / "one"), str(tmp_path), batch_size=16)
    two = ok(run_ranks(_finetune, out_dir=str(tmp_path / "two"), root=str(tmp_path), batch_size=8))
    assert two[0]["step"] == one["step"] > 10
    assert two[0]["val_loss"] == pytest.approx(one["val_loss"], abs=1e-5)
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "eval.json").read_text())["step"] == one["step"]


def test_one_process_checkpoint_resumes_on_two_ranks(single, tmp_path):
    """Start small, scale out: a one-process run continues under DDP and under FSDP with half
    the batch per rank; TP refuses its layout with one line."""
    run = tmp_path / "run"
    shutil.copytree(single, run)
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    (run / "checkpoints" / "latest").write_text("step-00000003")
    shutil.copytree(run, tmp_path / "fsdp")
    tp = ok_or_errors(run_ranks(train, out_dir=str(run), resume=True, parallel="tp"))
    assert all("1-way tensor parallelism" in e for e in tp), tp
    for resumed, mode in ((run, "ddp"), (tmp_path / "fsdp", "fsdp")):
        ok(run_ranks(train, out_dir=str(resumed), resume=True, parallel=mode))
        assert_same_weights(single, resumed)
        state = ckpt.read_state(resumed / "checkpoints" / "step-00000006")
        assert state["world_size"] == 2 and state["global_batch"] == 2 * TINY["batch_size"]


def ok_or_errors(results: list) -> list[str]:
    """The error text of every rank (each must have failed)."""
    assert all(status == "error" for status, _ in results), results
    return [value.strip().splitlines()[-1] for _, value in results]


def test_tensor_parallel_equals_one_process(data, tmp_path):
    """TP splits heads and MLP width across ranks; both ranks see the whole batch. SGD: AdamW
    divides each gradient by its own magnitude, which turns the summation-order rounding of
    near-zero gradients (the key biases') into differences of about 1e-6."""
    cfg = {**TINY, "max_steps": 4, "save_interval": 2, "eval_interval": 2, "optimizer": "sgd",
           "lr": 0.3}
    one, tp = tmp_path / "one", tmp_path / "tp"
    train(str(one), data=str(data), **cfg)
    ok(run_ranks(train, out_dir=str(tp), data=str(data), parallel="tp", **cfg))
    assert_same_weights(one, tp)
    assert train_losses(one)[4] < train_losses(one)[1] - 0.1  # it did train
    # Its checkpoints keep the sharded layout: they resume under TP on 2 ranks only.
    with pytest.raises(Exception, match="tensor parallelism"):
        train(str(tp), resume=True, max_steps=5)


def _die_at(step: int, rank: int, **kwargs) -> dict:
    trainer = Trainer(TrainConfig(**kwargs))
    original = trainer._train_step

    def step_or_die():
        if trainer.step == step and trainer.ranks.rank == rank:
            os.kill(os.getpid(), signal.SIGKILL)
        return original()
    trainer._train_step = step_or_die
    return trainer.fit()


def test_lost_rank_stops_the_job_and_keeps_the_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    start = time.time()
    results = run_ranks(_die_at, step=4, rank=1, out_dir=str(run), data=str(data),
                        **{**TINY, "dist_timeout": 20})
    assert time.time() - start < 60
    status, message = results[0]
    assert status == "error" and "DistributedError" in message, message
    assert "another rank died" in message and "step-00000003" in message, message
    assert results[1][0] == "missing"  # killed
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    assert latest.name == "step-00000003"
    ckpt.verify(latest)
    assert not list((run / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_torchrun_cli_and_killed_rank(data, tmp_path):
    """The real launcher: `torchrun ... -m lmforge pretrain`; SIGKILL one worker; torchrun stops
    the job with a non-zero exit; the run resumes in one process from the last checkpoint."""
    import psutil
    run = tmp_path / "run"
    flags = []
    for key, value in {**TINY, "max_steps": 40, "save_interval": 2, "eval_interval": 0,
                       "dist_timeout": 30}.items():
        if key == "model_args":
            flags += [str(word) for k, v in value.items() for word in (f"--{k}", v)]
        else:
            flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lmforge", "pretrain", "--data", str(data), "--out_dir", str(run), *flags]
    env = {**cli_env(), "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "step-00000004").is_dir():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if c.environ().get("RANK") == "1"]
        assert workers
        workers[0].kill()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "failed" in err.lower() or "error" in err.lower(), err
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    ckpt.verify(latest)
    resumed = subprocess.run([sys.executable, "-m", "lmforge", "pretrain", "--resume", str(run),
                              "--max_steps", str(ckpt.read_state(latest)["step"] + 2)],
                             capture_output=True, text=True, env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr


def test_bad_launch_environment_is_one_line(data, tmp_path):
    env = {**cli_env(), "PYTHONPATH": str(REPO / "src"), "WORLD_SIZE": "2", "RANK": "5"}
    proc = subprocess.run([sys.executable, "-m", "lmforge", "pretrain", "--data", str(data),
                           "--out_dir", str(tmp_path / "r"), "--model", "baby"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(proc, "outside WORLD_SIZE")
