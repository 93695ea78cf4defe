"""The LSTM language model and truncated BPTT: it learns, ties, round-trips, carries its state
from batch to batch, resumes bit-exactly, and refuses a model it cannot train."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lmforge.data.dataset import StreamBatches, TokenShards
from lmforge.evaluation.scoring import token_logprobs
from lmforge.hub import from_pretrained
from lmforge.models import LSTMLM, build_model, preset, save_pretrained
from lmforge.training import TrainConfig, Trainer

from _util import assert_one_line_error, make_char_dataset, popen_cli, run_cli

TINY = dict(model="lstm-small", objective="bptt_lm", block_size=32, batch_size=16, lr=2e-2,
            warmup_steps=5, eval_interval=0, eval_batches=8, log_interval=20, progress=False,
            precision="fp32", tensorboard=False, threads=1, dropout=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_char_dataset(tmp_path_factory.mktemp("data") / "chars", chars=100_000)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict:
    """An LSTM trained for 80 steps with carried state, and its loss before training."""
    cfg = TrainConfig(data=str(data), out_dir=str(tmp_path_factory.mktemp("run") / "run"),
                      max_steps=80, model_args={"n_embd": 128}, **TINY)
    trainer = Trainer(cfg)
    first_val = trainer.evaluate()["val_loss"]
    return {"trainer": trainer, "first_val": first_val, "result": trainer.fit()}


def cli_flags(args: dict, **extra) -> list[str]:
    flat = []
    for k, v in {**args, **extra}.items():
        flat += [f"--{k}", str(v).lower() if isinstance(v, bool) else str(v)]
    return flat


def tiny_model(**overrides) -> LSTMLM:
    return build_model(preset("lstm-small", **{"vocab_size": 50, "n_embd": 32, **overrides}))


def test_loss_falls_with_truncated_bptt(trained):
    assert trained["first_val"] > 3.5  # ~ln(65) at init
    assert trained["result"]["val_loss"] < trained["first_val"] - 1.0, trained["result"]


def test_carried_state_is_used_and_kept_apart_from_evaluation(trained, data):
    trainer = trained["trainer"]
    model, objective = trainer.model.eval(), trainer.objective
    h, c = objective.state_dict()["h"], objective.state_dict()["c"]
    assert h.shape == c.shape == (2, 16, 128) and not h.requires_grad  # detached: truncated
    trainer_state = (h.clone(), c.clone())
    trainer.evaluate()  # walks val with its own state
    assert all(torch.equal(a, b) for a, b in zip(objective.states["train"], trainer_state))

    walk = StreamBatches(TokenShards(data, "val"), block_size=32, batch_size=16)
    first, second = (objective.make_batch(walk.next_batch(), evaluation=True) for _ in range(2))
    assert first["starts"] and not second["starts"]
    assert torch.equal(second["input_ids"][:, 0], first["labels"][:, -1])  # rows continue
    with torch.no_grad():
        objective.loss(model, first)
        state = objective.states["eval"]
        assert torch.equal(state[0], model(first["input_ids"])[1][0])  # the state after batch 1
        carried = objective.loss(model, second).item()
        fresh = objective.loss(model, {**second, "starts": torch.tensor(True)}).item()
        # The carried context matters most for the first characters of batch 2.
        inputs, labels = second["input_ids"][:, :3], second["labels"][:, :3].flatten()
        with_context = F.cross_entropy(model(inputs, state)[0].flatten(0, 1), labels).item()
        without = F.cross_entropy(model(inputs)[0].flatten(0, 1), labels).item()
    assert carried != pytest.approx(fresh, abs=1e-4)
    assert with_context < without - 0.1, (with_context, without)


def test_stream_batches_walk_contiguous_streams_across_shards(tmp_path):
    """Tokens 0..99 in two shards, 3 streams of 33: row i continues itself batch after batch."""
    (tmp_path / "a.bin").write_bytes(np.arange(40, dtype=np.uint16).tobytes())
    (tmp_path / "b.bin").write_bytes(np.arange(40, 100, dtype=np.uint16).tobytes())
    (tmp_path / "meta.json").write_text(json.dumps({
        "format": "lmforge-tokens/1", "dtype": "uint16", "vocab_size": 100, "eos_id": 0,
        "splits": {"train": {"shards": ["a.bin", "b.bin"], "shard_tokens": [40, 60],
                             "tokens": 100}}}))
    walk = StreamBatches(TokenShards(tmp_path, "train"), block_size=10, batch_size=3)
    assert walk.stream_length == 33 and walk.steps_per_epoch == 3
    batches = [walk.next_batch() for _ in range(4)]
    assert [b.starts for b in batches] == [True, False, False, True]  # 3 steps, then epoch 2
    assert batches[0].windows[:, 0].tolist() == [0, 33, 66]
    assert batches[1].windows.tolist()[1] == list(range(43, 54))  # crosses the shard boundary
    assert torch.equal(batches[3].windows, batches[0].windows)
    resumed = StreamBatches(TokenShards(tmp_path, "train"), block_size=10, batch_size=3)
    resumed.load_state_dict(json.loads(json.dumps(walk.state_dict())))
    assert walk.state_dict() == {"kind": "streams", "epoch": 1, "position": 10}
    assert torch.equal(resumed.next_batch().windows, walk.next_batch().windows)


def test_causal_lm_trains_an_lstm_from_fresh_state(data, tmp_path):
    cfg = TrainConfig(data=str(data), out_dir=str(tmp_path / "run"), max_steps=30,
                      model_args={"n_embd": 64}, **{**TINY, "objective": "causal_lm"})
    trainer = Trainer(cfg)
    first_val = trainer.evaluate()["val_loss"]
    assert trainer.fit()["val_loss"] < first_val - 0.5


def test_tied_embeddings_share_storage():
    tied, untied = tiny_model(), tiny_model(tie_embeddings=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert tied.lm_head.weight.data_ptr() == tied.wte.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    assert untied.num_parameters() - tied.num_parameters() == 50 * 32
    assert tied.num_parameters(non_embedding=True) == tied.num_parameters()  # the head works
    assert untied.num_parameters(non_embedding=True) == untied.num_parameters() - 50 * 32


@pytest.mark.parametrize("tie", [True, False])
def test_save_and_load_round_trip_is_bit_exact(tmp_path, tie):
    torch.manual_seed(0)
    model = tiny_model(tie_embeddings=tie, embedding_dropout=0.1).eval()
    save_pretrained(model, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert type(loaded) is LSTMLM and loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.lm_head.weight.data_ptr() == loaded.wte.weight.data_ptr() or not tie
    idx = torch.randint(0, 50, (2, 9))
    (la, (ha, ca)), (lb, (hb, cb)) = model(idx), loaded(idx)
    assert torch.equal(la, lb) and torch.equal(ha, hb) and torch.equal(ca, cb)


def test_embedding_dropout_drops_whole_words():
    torch.manual_seed(0)
    model = tiny_model(embedding_dropout=0.5, dropout=0.0).train()
    idx = torch.tensor([[1, 2, 3, 1, 2, 3, 4, 4]] * 4)
    x = model.embed(idx)
    vectors = model.wte.weight[idx]
    for word in (1, 2, 3, 4):
        scale = (x[idx == word] / vectors[idx == word]).flatten()
        assert torch.allclose(scale, scale[0]) and scale[0].item() in (0.0, 2.0)  # all or none
    assert torch.equal(model.eval().embed(idx), vectors)  # off in evaluation


def test_chunked_scoring_and_generation_carry_the_state():
    torch.manual_seed(0)
    model = tiny_model().eval()
    ids = torch.randint(0, 50, (100,)).tolist()
    one_pass = token_logprobs(model, ids, max_length=1024)
    chunked = token_logprobs(model, ids, max_length=7)
    assert one_pass.shape == (99,) and torch.allclose(one_pass, chunked, atol=1e-5)
    out = model.generate(torch.tensor([ids[:5]]), max_new_tokens=6, temperature=0)
    assert out.shape == (1, 11) and out[0, :5].tolist() == ids[:5]
    logits, _ = model(out[:, :-1])
    assert out[0, 5:].tolist() == logits[0, 4:].argmax(-1).tolist()  # greedy = argmax


def test_bptt_resume_is_bit_exact(data, tmp_path):
    """Kill a run mid-way, resume it, and get the uninterrupted run's weights: the stream
    position and the carried state come back exactly."""
    args = {**TINY, "data": data, "max_steps": 30, "save_interval": 5, "n_embd": 32,
            "dropout": 0.1, "embedding_dropout": 0.1}
    reference = run_cli("pretrain", *cli_flags(args, out_dir=tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "run"
    proc = popen_cli("pretrain", *cli_flags(args, out_dir=run))
    ckpt = run / "checkpoints" / "step-00000015"
    start = time.time()
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < 120, f"{ckpt} never appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert "objective.h" in torch.load(ckpt / "tensors.pt", weights_only=True)
    resumed = run_cli("pretrain", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    ref = load_file(str(tmp_path / "ref" / "model" / "model.safetensors"))
    got = load_file(str(run / "model" / "model.safetensors"))
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name


def test_bptt_on_a_transformer_is_refused_with_one_line(data, tmp_path):
    proc = run_cli("pretrain", "--data", data, "--out_dir", tmp_path / "run", "--model", "baby",
                   "--objective", "bptt_lm", "--max_steps", "2", "--progress", "false")
    assert_one_line_error(proc, "objective 'bptt_lm' needs an LSTM model (--model lstm-small)")
