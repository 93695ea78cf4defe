"""The model interface (what the engine, parallelism, evaluation and generation ask of a model),
typed objective/task options and their flags, the checkpoint state object, and the run-length
and run-folder rules of `pretrain` / `finetune`."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import pytest
import torch

from lmforge.cli.main import build_parser
from lmforge.config import options_from_dict
from lmforge.errors import ConfigError
from lmforge.models import preset
from lmforge.models.interface import ModelInterface
from lmforge.models.io import build_model, load_model_state, model_state
from lmforge.models.lora import apply_lora
from lmforge.objectives import OBJECTIVES, Objective, get_objective
from lmforge.tasks.base import all_tasks
from lmforge.tasks.finetune import FinetuneConfig
from lmforge.models.task_head import TaskModel, TaskSpec
from lmforge.tokenization import train_tokenizer
from lmforge.training import TrainConfig, Trainer
from lmforge.training import checkpoint as ckpt
from lmforge.training.config import TrainConfig as _TrainConfig

from _util import assert_one_line_error, make_char_dataset, run_cli

SRC = Path(__file__).resolve().parents[1] / "src" / "lmforge"
SMALL = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=64, context_length=32)


def models() -> dict[str, torch.nn.Module]:
    gpt = build_model(preset("gpt-mini", **SMALL))
    lora = build_model(preset("gpt-mini", **SMALL))
    apply_lora(lora, ["attn.qkv"], r=2)
    return {
        "decoder": gpt,
        "encoder": build_model(preset("bert-mini", **SMALL)),
        "encoder-decoder": build_model(preset("t5-tiny", **SMALL, n_decoder_layer=3)),
        "lstm": build_model(preset("lstm-small", **{**SMALL, "n_head": 1})),
        "classifier": TaskModel(build_model(preset("bert-mini", **SMALL)),
                                TaskSpec("classification", labels=["a", "b"])),
        "decoder+lora": lora,
    }


# name: (kind, is_encoder, is_decoder, is_seq2seq, recurrent, can_generate, has_mlm_head,
#        blocks, parallel modes, every weight used)
EXPECTED = {
    "decoder": ("decoder", False, True, False, False, True, False, 2, ("ddp", "fsdp", "tp"), True),
    "encoder": ("encoder", True, False, False, False, False, True, 2, ("ddp", "fsdp"), False),
    "encoder-decoder": ("encoder-decoder", False, False, True, False, True, False, 5, ("ddp",), False),
    "lstm": ("lstm", False, True, False, True, True, False, 0, ("ddp",), False),
    "classifier": ("encoder", True, False, False, False, False, False, 2, ("ddp", "fsdp"), False),
    "decoder+lora": ("decoder", False, True, False, False, True, False, 2, ("ddp",), True),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_every_model_class_answers_the_interface(name):
    model = models()[name]
    assert isinstance(model, ModelInterface)
    got = (model.kind, model.is_encoder, model.is_decoder, model.is_seq2seq, model.recurrent,
           model.can_generate(), model.has_mlm_head(), len(model.repeated_blocks()),
           model.parallel_modes(), model.uses_every_weight())
    assert got == EXPECTED[name]
    # FLOPs: 6 per parameter and token at least, and a batch is tokens x per-token (an
    # encoder-decoder counts its source and target sides apart, tested in test_seq2seq).
    per_token = model.flops_per_token(16)
    assert per_token >= 6 * model.num_parameters(non_embedding=True)
    batch = {"input_ids": torch.zeros(2, 16, dtype=torch.long)}
    assert model.batch_flops(batch, 32, per_token) == 32 * per_token
    # Save/load hooks round-trip, tied copies stored once, and a wrong tensor is refused.
    state = model_state(model)
    assert "lm_head.weight" not in state or not model.config.tie_embeddings
    clone = models()[name]
    load_model_state(clone, state, "test")
    for key, value in model_state(clone).items():
        torch.testing.assert_close(value, state[key])
    bad = dict(state)
    bad.pop(next(iter(bad)))
    with pytest.raises(Exception, match="missing|do not fit"):
        load_model_state(clone, bad, "test")


def test_lstm_flops_are_6n_and_decoder_adds_attention():
    all_models = models()
    lstm, gpt = all_models["lstm"], all_models["decoder"]
    assert lstm.flops_per_token(16) == 6 * lstm.num_parameters(non_embedding=True)
    cfg = gpt.config
    assert gpt.flops_per_token(16) == (6 * gpt.num_parameters(non_embedding=True)
                                       + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * 16)


def test_parallel_modes_are_refused_from_the_model_and_objective():
    from lmforge.training.distributed import Ranks, check_parallel
    all_models = models()
    causal, mlm = get_objective("causal_lm"), get_objective("mlm", tokenizer=wordpiece(None))
    bptt = get_objective("bptt_lm")
    check_parallel(all_models["decoder"], Ranks(0, 2, parallel="tp"), "bf16", causal)
    check_parallel(all_models["encoder"], Ranks(0, 2, parallel="fsdp"), "bf16", mlm)
    cases = [("encoder", "tp", mlm, "--parallel tp does not run encoder models"),
             ("encoder-decoder", "fsdp", causal, "does not run encoder-decoder models"),
             ("decoder+lora", "fsdp", causal, "LoRA fine-tuning runs with --parallel ddp"),
             ("lstm", "ddp", bptt, "objective 'bptt_lm' carries per-stream state")]
    for name, mode, objective, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_parallel(all_models[name], Ranks(0, 2, parallel=mode), "bf16", objective)
    generative = all_tasks()["sft"](wordpiece(None), "decoder", 64)
    with pytest.raises(ConfigError, match="does not run task 'sft' \\(it calls the model beyond forward\\)"):
        check_parallel(all_models["decoder"], Ranks(0, 2, parallel="fsdp"), "bf16", generative)


# Where the engine and its users must ask the model, not read its config's arch string.
DISPATCH = re.compile(r"getattr\(\s*[\w.]*(cfg|config),\s*[\"']arch[\"']"  # getattr(model.config, "arch"
                      r"|\.config\.arch\b|\bcfg\.arch\b"  # model.config.arch == ..., cfg.arch
                      r"|type\([^)]*\)\.__name__\s*[!=]="  # type(m).__name__ == "LoRALinear"
                      r"|objective\.name\s*[!=]="  # objective.name == "mlm"
                      r"|getattr\(\s*objective,\s*[\"']name[\"']")


def test_no_string_dispatch_outside_models():
    # cli/models_cmd.py tabulates preset *configs* (no model is built), so it reads cfg.arch.
    paths = [p for folder in ("training", "objectives", "evaluation", "generation", "tasks", "cli")
             for p in sorted((SRC / folder).rglob("*.py")) if p.name != "models_cmd.py"]
    paths += [SRC / "api.py", SRC / "pipelines.py", SRC / "hub.py"]
    offenders = [f"{path.relative_to(SRC)}:{number}: {line.strip()}"
                 for path in paths
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if DISPATCH.search(line)]
    assert not offenders, "\n".join(offenders)


def test_dispatch_pattern_catches_what_it_forbids():
    for line in ('if getattr(model.config, "arch", "decoder") == "encoder":',
                 "arch = backbone.config.arch", 'if type(m).__name__ == "LoRALinear":',
                 'if getattr(cfg, "arch", "decoder") == "lstm":', 'if cfg.arch == "encoder-decoder":',
                 'if objective.name == "mlm":', 'getattr(objective, "name", "")'):
        assert DISPATCH.search(line), line
    assert not DISPATCH.search("if model.is_encoder:")


# ---- typed options ---------------------------------------------------------------------------
def all_options() -> dict[str, type]:
    return {**{f"objective {n}": c.Options for n, c in OBJECTIVES.items()},
            **{f"task {n}": c.Options for n, c in all_tasks().items()}}


@pytest.mark.parametrize("owner", sorted(all_options()))
def test_every_option_is_a_typed_field_with_help(owner):
    options = all_options()[owner]
    assert dataclasses.is_dataclass(options)
    for f in dataclasses.fields(options):
        assert f.metadata.get("help"), f"{owner}: option {f.name} has no help"
    options()  # every option has a default


def test_model_config_fields_all_have_help():
    from lmforge.models.config import ModelConfig
    assert [f.name for f in dataclasses.fields(ModelConfig) if not f.metadata.get("help")] == []


def test_unknown_option_key_is_one_line_listing_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        get_objective("mlm", tokenizer=None, mask_probability=0.2)
    message = str(err.value)
    assert "\n" not in message and "mask_probability" in message
    assert "valid options: mask_prob, replace_prob" in message
    with pytest.raises(ConfigError, match="objective 'causal_lm': unknown option.*valid options: none"):
        get_objective("causal_lm", foo=1)
    with pytest.raises(ConfigError, match="task 'qa': unknown option.*doc_strides.*doc_stride"):
        options_from_dict(all_tasks()["qa"].Options, {"doc_strides": 3}, where="task 'qa'")


def wordpiece(_=None):
    return train_tokenizer([str(Path(__file__))], kind="wordpiece", vocab_size=300)


def test_option_flags_reach_the_objective(tmp_path):
    from lmforge.cli.pretrain_cmd import config_from_args
    parser = build_parser("pretrain")
    args = parser.parse_args(["pretrain", "--data", "d", "--objective", "mlm", "--objective_args",
                              '{"mask_prob": 0.2, "span_p": 0.5}', "--mlm.mask_prob", "0.3",
                              "--mlm.whole-word", "true"])
    cfg = config_from_args(args)
    assert cfg.objective_args == {"mask_prob": 0.3, "span_p": 0.5, "whole_word": True}
    objective = get_objective(cfg.objective, tokenizer=wordpiece(tmp_path), **cfg.objective_args)
    assert objective.options.mask_prob == objective.mask_prob == 0.3
    assert objective.whole_word is True and objective.span_p == 0.5
    wrong = parser.parse_args(["pretrain", "--data", "d", "--mlm.mask_prob", "0.3"])
    with pytest.raises(ConfigError, match="--mlm.mask_prob is an option of objective 'mlm', but "
                                          "this run's objective is 'causal_lm'"):
        config_from_args(wrong)
    bad = parser.parse_args(["pretrain", "--data", "d", "--objective", "mlm", "--mlm.max_span", "x"])
    with pytest.raises(ConfigError, match="max_span"):
        config_from_args(bad)


def test_task_option_flags_reach_the_task(tmp_path):
    import argparse

    from lmforge.cli.finetune_cmd import task_options
    from lmforge.config import merge_option_flags
    parser = build_parser("finetune")
    args = parser.parse_args(["finetune", "--task", "qa", "--qa.doc_stride", "64",
                              "--qa.articles", "0,2", "--task_args", '{"n_best": 5}'])
    task_args = merge_option_flags(args, task_options(), "qa", "task", args.task_args)
    assert task_args == {"n_best": 5, "doc_stride": 64, "articles": [0, 2]}
    task = all_tasks()["qa"](wordpiece(tmp_path), "encoder", 128, **task_args)
    assert (task.doc_stride, task.n_best, task.articles) == (64, 5, [0, 2])
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    help_text = commands.choices["finetune"].format_help()
    assert "--qa.doc-stride" in help_text and "--sft.packing" in help_text
    assert "--classification.text_column" not in help_text  # fine-tuning's own --text_column


def test_unknown_option_flag_and_key_on_the_command_line(tmp_path):
    data = make_char_dataset(tmp_path / "data", chars=20_000)
    common = ["--data", data, "--model", "baby", "--max_steps", "1", "--progress", "false",
              "--tensorboard", "false"]
    proc = run_cli("pretrain", *common, "--out_dir", tmp_path / "r1", "--objective_args", '{"bogus": 1}')
    assert_one_line_error(proc, "unknown option(s) bogus", "valid options: none")
    proc = run_cli("pretrain", *common, "--out_dir", tmp_path / "r2", "--mlm.mask_prob", "0.2")
    assert_one_line_error(proc, "--mlm.mask_prob is an option of objective 'mlm'")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


# ---- the Trainer's parts -----------------------------------------------------------------------
TINY = dict(model="baby", block_size=16, batch_size=4, warmup_steps=0, eval_interval=0,
            eval_batches=1, progress=False, precision="fp32", tensorboard=False, threads=1,
            model_args={"n_layer": 1, "n_embd": 32, "n_head": 2})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_char_dataset(tmp_path_factory.mktemp("data") / "chars", chars=30_000)


def test_train_state_round_trips_through_its_files(data, tmp_path):
    trainer = Trainer(TrainConfig(data=str(data), out_dir=str(tmp_path / "run"), max_steps=2, **TINY))
    trainer.fit()
    state = trainer.train_state()
    assert isinstance(state, ckpt.TrainState) and state.step == 2 and state.tokens_seen == 2 * 4 * 16
    files, tensors = state.files()
    saved = ckpt.read_state(ckpt.latest_checkpoint(trainer.ckpt_dir))
    assert set(files) == set(saved)  # the same state.json layout as a written checkpoint
    back = ckpt.TrainState.from_files(files, tensors)
    assert (back.step, back.tokens_seen, back.best_step, back.best_val) == (2, 128, 2, state.best_val)
    torch.testing.assert_close(back.data["generator"], state.data["generator"])
    assert back.files()[0] == files


class Teacher(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)


def test_objective_frozen_modules_go_to_the_device_in_eval_mode(data, tmp_path, monkeypatch):
    teacher = Teacher().train()
    monkeypatch.setattr(Objective, "frozen_modules", lambda self: {"teacher": teacher})
    trainer = Trainer(TrainConfig(data=str(data), out_dir=str(tmp_path / "run"), max_steps=1, **TINY))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}


# ---- run length, warmup, run folder (bugs of issue 14) ------------------------------------------
def test_whichever_of_max_steps_and_epochs_is_given_wins(caplog):
    caplog.set_level(logging.WARNING)
    base = dict(data="x", model="m")
    assert (FinetuneConfig(**base).validate().epochs, FinetuneConfig(**base).max_steps) == (3.0, None)
    cfg = FinetuneConfig(**base, max_steps=7).validate()
    assert (cfg.max_steps, cfg.epochs) == (7, None)
    assert not caplog.records
    cfg = FinetuneConfig(**base, epochs=2).validate()
    assert (cfg.max_steps, cfg.epochs) == (None, 2)
    cfg = FinetuneConfig(**base, epochs=2, max_steps=7).validate()
    assert (cfg.max_steps, cfg.epochs) == (7, None)
    assert [r.getMessage() for r in caplog.records] == [
        "warning: both max_steps (7) and epochs (2) are given; max_steps wins"]
    assert _TrainConfig(data="x").validate().max_steps == 1000  # pretraining's default length


def test_finetune_config_inherits_train_config_with_finetuning_defaults():
    assert issubclass(FinetuneConfig, TrainConfig)
    own = {f.name for f in dataclasses.fields(FinetuneConfig)} - {f.name for f in dataclasses.fields(TrainConfig)}
    assert "task" in own and not own & {"epochs", "lr", "batch_size"}
    cfg = FinetuneConfig()
    assert (cfg.out_dir, cfg.batch_size, cfg.lr, cfg.min_lr, cfg.schedule, cfg.warmup_steps,
            cfg.weight_decay, cfg.beta2, cfg.eval_interval, cfg.best_metric, cfg.export_best,
            cfg.keep_last, cfg.log_interval, cfg.beta1, cfg.grad_clip) == (
        "runs/finetune", 32, 1e-4, 0.0, "linear", 0, 0.01, 0.999, 0, "auto", True, 1, 20, 0.9, 1.0)
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(FinetuneConfig)}
    assert helps["lr"] == "peak learning rate of the body" and helps["beta1"] == "AdamW beta1"


def finetune_files(tmp_path: Path) -> list[str]:
    from lmforge.models.io import save_pretrained
    tok = wordpiece(tmp_path)
    body = build_model(preset("bert-mini", vocab_size=tok.get_vocab_size(), n_layer=1, n_embd=32,
                              n_head=2))
    save_pretrained(body, tmp_path / "body", tokenizer=tok)
    rows = ["text\tlabel"] + [f"{'good' if i % 2 else 'bad'} thing {i}\t{i % 2}" for i in range(40)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    return ["--model", str(tmp_path / "body"), "--data", str(tmp_path / "train.tsv"),
            "--batch_size", "8", "--progress", "false", "--tensorboard", "false"]


def steps_run(run: Path) -> int:
    return json.loads((run / "eval.json").read_text())["step"]


def test_finetune_max_steps_is_honoured_and_conflicts_warn(tmp_path):
    common = finetune_files(tmp_path)
    r = run_cli("finetune", *common, "--out_dir", tmp_path / "steps", "--max_steps", "2")
    assert r.returncode == 0, r.stderr
    assert steps_run(tmp_path / "steps") == 2 and "warning" not in r.stderr
    r = run_cli("finetune", *common, "--out_dir", tmp_path / "both", "--max_steps", "2", "--epochs", "3")
    assert r.returncode == 0, r.stderr
    assert steps_run(tmp_path / "both") == 2
    assert "warning: both max_steps (2) and epochs (3) are given; max_steps wins" in r.stderr
    r = run_cli("finetune", *common, "--out_dir", tmp_path / "warm", "--max_steps", "3",
                "--warmup_steps", "5")
    assert r.returncode == 0, r.stderr
    assert "warning: warmup_steps (5) covers the whole run of 3 steps" in r.stderr


def test_failed_pretrain_leaves_no_run_folder_and_keeps_an_existing_one(data, tmp_path):
    common = ["--data", data, "--max_steps", "1", "--progress", "false", "--tensorboard", "false"]
    assert_one_line_error(run_cli("pretrain", *common, "--model", "no-such-preset",
                                  "--out_dir", tmp_path / "new"), "unknown model preset")
    assert_one_line_error(run_cli("pretrain", "--data", tmp_path / "missing", "--out_dir",
                                  tmp_path / "new"), "not found")
    assert_one_line_error(run_cli("pretrain", *common, "--model", "baby", "--lr", "-1",
                                  "--out_dir", tmp_path / "new"), "lr")
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text("precious: true\n")
    assert_one_line_error(run_cli("pretrain", *common, "--model", "no-such-preset", "--overwrite",
                                  "--out_dir", old), "unknown model preset")
    assert [p.name for p in old.iterdir()] == ["config.yaml"]
    assert (old / "config.yaml").read_text() == "precious: true\n"
