"""lmforge.hub loads a model from anywhere: an lmforge folder, a training run's folder, a
Hugging Face folder or GGUF file (see test_hf_interop / test_gguf), or a preset name."""

from __future__ import annotations

import logging

import pytest
import torch

import lmforge
from lmforge.errors import CheckpointError
from lmforge.hub import from_pretrained, load_model
from lmforge.models import GPT, preset, save_pretrained
from lmforge.models.encoder import Encoder
from lmforge.models.task_head import TaskModel, TaskSpec
from lmforge.tokenization import train_tokenizer


def test_a_preset_name_gives_a_random_model_without_tokenizer(caplog):
    with caplog.at_level(logging.WARNING, logger="lmforge.hub"):
        model, tokenizer, tok_cfg = load_model("bert-mini")
    assert isinstance(model, Encoder) and not model.training
    assert model.config == preset("bert-mini")
    assert tokenizer is None and tok_cfg == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "bert-mini" in warnings[0] and "random" in warnings[0]
    half = from_pretrained("gpt-mini", dtype=torch.bfloat16)
    assert isinstance(half, GPT) and half.lm_head.weight.dtype == torch.bfloat16


def test_a_name_that_is_neither_path_nor_preset_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError) as exc_info:
        load_model("gpt-9000")
    message = str(exc_info.value)
    assert "\n" not in message and "gpt-9000" in message and "lmforge models" in message
    with pytest.raises(CheckpointError, match="model not found: .*missing"):
        from_pretrained(tmp_path / "missing")


def test_folder_and_run_folder_give_the_model_its_tokenizer_and_task_head(tmp_path, shakespeare):
    tok = train_tokenizer([shakespeare], kind="char")
    backbone = GPT(preset("baby", vocab_size=tok.get_vocab_size()))
    task = TaskModel(backbone, TaskSpec("classification", labels=["neg", "pos"]))
    save_pretrained(task, tmp_path / "run" / "model", tokenizer=tok,
                    tokenizer_config={"pad_token": "<|endoftext|>"})
    for where in (tmp_path / "run", tmp_path / "run" / "model"):
        model, tokenizer, tok_cfg = load_model(where)
        assert isinstance(model, TaskModel) and model.spec.labels == ["neg", "pos"]
        assert torch.equal(model.head.weight, task.head.weight)
        assert tokenizer.to_str() == tok.to_str() and tok_cfg == {"pad_token": "<|endoftext|>"}


def test_top_level_from_pretrained_is_the_hub_one():
    assert lmforge.from_pretrained is from_pretrained
