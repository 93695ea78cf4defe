"""Knowledge distillation: the loss terms against hand computations, layer surgery against the
teacher run with only the kept blocks, a tiny student that learns from its teacher, and
`lmforge distill` end to end on a tiny task."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from _util import make_char_dataset, run_cli
from lmforge.errors import ConfigError
from lmforge.models import TaskModel, TaskSpec, build_model, preset
from lmforge.models.layers import every_kth, keep_layers
from lmforge.objectives.distill import (CausalLMAdapter, Distillation, DistillOptions, kd_loss,
                                        relation_scores)
from lmforge.objectives.causal_lm import CausalLM

TINY_GPT = dict(vocab_size=50, context_length=32, n_layer=4, n_head=2, n_embd=32)
TINY_BERT = dict(vocab_size=50, context_length=32, n_layer=4, n_head=2, n_embd=32, type_vocab_size=2)
FAST = dict(threads=1, progress=False, tensorboard=False, precision="fp32", device="cpu")


def _gpt(seed=0, **over):
    torch.manual_seed(seed)
    return build_model(preset("gpt-mini", **{**TINY_GPT, **over})).eval()


# ---- the loss terms --------------------------------------------------------------------------
def test_kd_loss_equals_hand_computation():
    torch.manual_seed(0)
    s, t, T = torch.randn(3, 5, 7), torch.randn(3, 5, 7), 2.5
    expected = 0.0
    for row_s, row_t in zip(s.reshape(-1, 7), t.reshape(-1, 7)):
        p, q = torch.softmax(row_t / T, -1), torch.softmax(row_s / T, -1)
        expected += float((p * (p.log() - q.log())).sum())
    expected = expected / 15 * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_high_temperature_limit_is_centered_logit_mse():
    # Hinton et al.: as T grows, T^2 KL -> sum of squared centred logit differences / (2C).
    torch.manual_seed(1)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    d = (s - s.mean(-1, keepdim=True)) - (t - t.mean(-1, keepdim=True))
    limit = float((d.pow(2).sum(-1) / (2 * 6)).mean())
    assert kd_loss(s.double(), t.double(), 1000.0).item() == pytest.approx(limit, rel=1e-3)


class _NoTeacher(torch.nn.Module):
    def forward(self, *a, **k):
        raise AssertionError("alpha=1 without transfer must not run the teacher")


def test_alpha_one_is_the_hard_loss_and_alpha_zero_the_kd_term():
    student, teacher = _gpt(0), _gpt(1)
    windows = torch.randint(0, 50, (2, 17), generator=torch.Generator().manual_seed(0))
    inner = CausalLM()
    batch = inner.make_batch(windows)
    hard = inner.loss(student, batch)
    plain = Distillation(inner, _NoTeacher(), CausalLMAdapter(), {"alpha": 1.0})
    assert plain.loss(student, batch).item() == pytest.approx(hard.item(), rel=1e-6)
    for T in (1.0, 4.0):
        soft = Distillation(inner, teacher, CausalLMAdapter(), {"alpha": 0.0, "temperature": T})
        with torch.no_grad():
            expected = kd_loss(student(batch["input_ids"]), teacher(batch["input_ids"]), T)
        assert soft.loss(student, batch).item() == pytest.approx(expected.item(), rel=1e-5)
    mixed = Distillation(inner, teacher, CausalLMAdapter(), {"alpha": 0.3, "temperature": 2.0})
    with torch.no_grad():
        kd = kd_loss(student(batch["input_ids"]), teacher(batch["input_ids"]), 2.0)
    assert mixed.loss(student, batch).item() == pytest.approx(0.3 * hard.item() + 0.7 * kd.item(), rel=1e-5)
    assert set(mixed.log_metrics()) == {"hard_loss", "kd_loss"}


def test_transfer_terms_are_zero_for_identical_models_and_not_otherwise():
    llama = dict(n_kv_head=1, n_head=4, pos_embedding="rope", norm="rmsnorm", mlp="swiglu", init_std=0.3)
    student = _gpt(0, **llama)
    batch = CausalLM().make_batch(torch.randint(0, 50, (2, 17), generator=torch.Generator().manual_seed(2)))
    opts = {"alpha": 0.0, "hidden_weight": 1.0, "attention_weight": 1.0}
    same = Distillation(CausalLM(), copy.deepcopy(student), CausalLMAdapter(), opts)
    _, parts = same.loss_terms(student, batch)
    for name in ("kd", "hidden", "attention"):
        assert abs(parts[name].item()) < 1e-5, (name, parts[name])
    other = Distillation(CausalLM(), _gpt(5, **llama), CausalLMAdapter(), opts)
    loss, parts = other.loss_terms(student, batch)
    assert all(parts[name].item() > 1e-2 for name in ("kd", "hidden", "attention")), parts
    loss.backward()  # the transfer terms reach the student's weights
    assert student.blocks[-1].attn.qkv.weight.grad.abs().sum() > 0
    assert student.blocks[0].mlp.fc.weight.grad.abs().sum() > 0


def test_attention_transfer_across_widths_and_clear_refusals():
    teacher, student = _gpt(0, n_embd=64, n_head=4), _gpt(1, n_embd=32, n_head=4, n_layer=2)
    batch = CausalLM().make_batch(torch.randint(0, 50, (2, 9)))
    relations = Distillation(CausalLM(), teacher, CausalLMAdapter(), {"alpha": 1.0, "attention_weight": 1.0})
    relations.check_model(student)
    loss, parts = relations.loss_terms(student, batch)
    assert torch.isfinite(loss) and parts["attention"] > 0
    hidden = Distillation(CausalLM(), teacher, CausalLMAdapter(), {"hidden_weight": 1.0})
    with pytest.raises(ConfigError, match="equal widths"):
        hidden.check_model(student)
    odd = Distillation(CausalLM(), teacher, CausalLMAdapter(), {"attention_weight": 1.0, "relation_heads": 3})
    with pytest.raises(ConfigError, match="relation heads"):
        odd.check_model(student)
    with pytest.raises(ConfigError, match="alpha"):
        DistillOptions(alpha=1.5).validate()


def test_relations_are_the_attention_distributions():
    torch.manual_seed(0)
    q, k = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    rel = relation_scores(q, k, 2, mask).exp()
    qh, kh = q.view(2, 5, 2, 4).transpose(1, 2), k.view(2, 5, 2, 4).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) / 2.0
    expected = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf")).softmax(-1)
    torch.testing.assert_close(rel, expected)
    causal = relation_scores(q, k, 2, causal=True).exp()
    assert torch.all(causal.triu(1) == 0) and torch.allclose(causal.sum(-1), torch.ones(2, 2, 5))


# ---- layer surgery ---------------------------------------------------------------------------
def _skip_blocks(model, blocks, dropped):
    """Forward hooks that make the ``dropped`` blocks pass their input through unchanged."""
    return [blocks[i].register_forward_hook(lambda m, args, out: args[0]) for i in dropped]


@pytest.mark.parametrize("kind", ["decoder", "encoder", "task"])
def test_keep_layers_equals_the_teacher_run_through_those_blocks(kind, tmp_path):
    torch.manual_seed(0)
    if kind == "decoder":
        teacher = build_model(preset("llama-mini", **{**TINY_GPT, "n_head": 4, "n_kv_head": 2, "intermediate_size": 64}))
    else:
        teacher = build_model(preset("bert-mini", **TINY_BERT))
        if kind == "task":
            teacher = TaskModel(teacher, TaskSpec("classification", labels=["a", "b", "c"]))
    teacher.eval()
    ids = torch.randint(0, 50, (2, 11))
    student = keep_layers(teacher, [0, 2])
    assert student.config.n_layer == 2 and teacher.config.n_layer == 4
    body = getattr(teacher, "backbone", teacher)
    hooks = _skip_blocks(teacher, body.blocks, [1, 3])
    with torch.no_grad():
        expected, got = teacher(ids), student(ids)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(got, expected)
    with torch.no_grad():
        assert not torch.allclose(teacher(ids), got)  # the dropped blocks did matter
    from lmforge.hub import load_model
    from lmforge.interop.model_folder import save_pretrained
    save_pretrained(student, tmp_path / "student")
    reloaded = load_model(tmp_path / "student")[0].eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), got)
    if kind == "decoder":  # a KV cache (generation) sees the renumbered layers
        with torch.no_grad():
            cache = student.new_cache(1, 32)
            student(ids[:1, :6], cache=cache)
            torch.testing.assert_close(student(ids[:1, 6:9], cache=cache), got[:1, 6:9])


def test_keep_layers_refusals_and_every_kth():
    assert every_kth(6, 2) == [0, 2, 4] and every_kth(30, 2) == list(range(0, 30, 2))
    model = _gpt()
    for bad, words in (([], "at least one"), ([0, 4], "out of range"), ([1, 1], "repeat")):
        with pytest.raises(ConfigError, match=words):
            keep_layers(model, bad)


# ---- a student that learns -------------------------------------------------------------------
def test_distilled_student_learns_from_its_teacher(tmp_path):
    import lmforge
    data = make_char_dataset(tmp_path / "chars", chars=60_000)
    vocab = json.loads((data / "meta.json").read_text())["vocab_size"]
    teacher_run = tmp_path / "teacher"
    lmforge.pretrain(lmforge.TrainConfig(
        data=str(data), out_dir=str(teacher_run), model="gpt-mini", max_steps=80, batch_size=16,
        block_size=32, lr=3e-3, warmup_steps=5, eval_interval=0, eval_batches=4,
        model_args=dict(TINY_GPT, vocab_size=vocab, n_layer=2), **FAST))
    from lmforge.interop.model_folder import save_pretrained
    save_pretrained(_gpt(3, vocab_size=vocab, n_layer=1, n_embd=16), tmp_path / "fresh")
    common = dict(out_dir=tmp_path / "student", student=str(tmp_path / "fresh"), max_steps=60, batch_size=16,
                  block_size=32, lr=3e-3, eval_interval=60, eval_batches=4, **FAST)
    untrained = lmforge.distill(teacher_run, data=data, alpha=0.0, **{**common, "max_steps": 1, "lr": 1e-9,
                                                                   "out_dir": tmp_path / "untrained"})
    result = lmforge.distill(teacher_run, data=data, alpha=0.0, temperature=1.0, **common)
    assert result["val_teacher_kl"] < 0.6 * untrained["val_teacher_kl"], (result, untrained)
    assert result["val_loss"] < untrained["val_loss"] - 0.2
    report = json.loads((tmp_path / "student" / "distill.json").read_text())
    assert report["kept_layers"] is None and report["student_layers"] == 1 and report["teacher_layers"] == 2
    assert (tmp_path / "student" / "model").is_dir()


# ---- the command, end to end on a tiny task ------------------------------------------------------
def test_cli_distills_a_finetuned_classifier(tiny_models, tmp_path):
    import lmforge
    from lmforge.interop.model_folder import save_pretrained
    from lmforge.hub import load_model
    bert, tok, _ = load_model(tiny_models / "bert")
    torch.manual_seed(0)
    body = build_model(preset("bert-mini", vocab_size=bert.config.vocab_size, context_length=64,
                              n_layer=2, n_head=2, n_embd=32))
    save_pretrained(body, tmp_path / "body", tok)
    data = tiny_models / "cls.tsv"
    lmforge.finetune(tmp_path / "body", data, out_dir=tmp_path / "teacher", val_data=data, epochs=6,
                     batch_size=16, block_size=32, lr=3e-3, **FAST)
    proc = run_cli("distill", "--teacher", tmp_path / "teacher", "--student", "keep:2", "--data", data,
                   "--val-data", data, "--out", tmp_path / "student", "--epochs", "4", "--batch-size", "16",
                   "--lr", "3e-3", "--attention-weight", "1", "--hidden-weight", "1", "--threads", "1",
                   "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    assert "distill finished" in proc.stdout and "lmforge predict" in proc.stdout
    report = json.loads((tmp_path / "student" / "distill.json").read_text())
    assert report["kept_layers"] == [0] and report["student_layers"] == 1
    assert report["val_accuracy"] >= 0.9, report
    metrics = lmforge.evaluate(tmp_path / "student", data, precision="fp32")
    assert metrics["accuracy"] >= 0.9
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert any("kd_loss" in r and "attention_loss" in r and "hidden_loss" in r for r in rows)


def test_task_agnostic_encoder_distillation_on_unlabeled_text(tiny_models, tmp_path):
    """MiniLM-style: a student without an MLM head learns the teacher's last-layer relations
    and hidden states from raw text; with MLM heads on both, masked-token logits too."""
    import lmforge
    from lmforge.hub import load_model
    from lmforge.interop.model_folder import save_pretrained
    teacher, tok, _ = load_model(tiny_models / "bert")
    data = tmp_path / "data"
    lmforge.prepare_corpus([tiny_models / "corpus.txt"], tok, data, workers=1, val_fraction=0.1,
                           split_on_blank_lines=True)
    torch.manual_seed(7)
    shape = dict(vocab_size=teacher.config.vocab_size, context_length=64, n_layer=1, n_head=2, n_embd=32)
    # Peaky attention (large init) against the untrained teacher's nearly uniform one.
    save_pretrained(build_model(preset("bert-mini", mlm_head=False, init_std=0.5, **shape)),
                    tmp_path / "headless", tok)
    common = dict(data=data, alpha=1.0, attention_weight=1.0, hidden_weight=1.0, batch_size=8,
                  block_size=32, lr=3e-3, eval_batches=4, **FAST)
    before = lmforge.distill(tiny_models / "bert", str(tmp_path / "headless"), out_dir=tmp_path / "r0",
                             max_steps=1, **{**common, "lr": 1e-9})
    after = lmforge.distill(tiny_models / "bert", str(tmp_path / "headless"), out_dir=tmp_path / "r1",
                            max_steps=40, **common)
    assert after["val_attention_loss"] < 0.7 * before["val_attention_loss"], (before, after)
    assert after["val_hidden_loss"] < 0.7 * before["val_hidden_loss"]
    with pytest.raises(ConfigError, match="masked-LM heads"):
        lmforge.distill(tiny_models / "bert", str(tmp_path / "headless"), out_dir=tmp_path / "r2",
                        max_steps=1, **{**common, "alpha": 0.5})
    save_pretrained(build_model(preset("bert-mini", **shape)), tmp_path / "headed", tok)
    logits = lmforge.distill(tiny_models / "bert", str(tmp_path / "headed"), out_dir=tmp_path / "r3",
                             max_steps=2, **{**common, "alpha": 0.5})
    assert "val_mlm_acc" in logits and logits["val_teacher_kl"] > 0
