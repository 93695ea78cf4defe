"""Training recipes (`lmforge pretrain --recipe budget-encoder`): the resolved config has the
recipe's fields, --config and flags override them, and the Cramming-style encoder's sparse MLM
prediction (only masked positions reach the vocabulary) gives the dense path's loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lmforge
from lmforge.cli.main import build_parser
from lmforge.cli.pretrain_cmd import config_from_args
from lmforge.errors import ConfigError
from lmforge.models import build_model, preset
from lmforge.training.recipes import load_recipe, recipe_names


def _config(*argv: str):
    args = build_parser().parse_args(["pretrain", *map(str, argv)])
    return config_from_args(args)


def test_budget_encoder_recipe_resolves():
    assert "budget-encoder" in recipe_names()
    cfg = _config("--recipe", "budget-encoder", "--data", "d", "--time", "30m").validate()
    assert (cfg.model, cfg.objective, cfg.sampling) == ("bert-mini", "mlm", "random")
    assert (cfg.schedule, cfg.min_lr, cfg.lr, cfg.block_size) == ("linear", 0.0, 1e-3, 128)
    assert cfg.time == "30m" and cfg.max_steps == 10**9  # planned from the measured speed
    assert cfg.model_args["norm_placement"] == "pre" and cfg.model_args["pooler"] is False
    assert cfg.eval_interval == 0 and cfg.objective_args == {"mask_prob": 0.15}
    model = build_model(preset(cfg.model, vocab_size=100, **cfg.model_args))
    assert model.config.norm_placement == "pre" and model.sentence_head is None and model.has_mlm_head()
    # The Python API gives the same config.
    assert lmforge.recipe_config("budget-encoder", data="d", time="30m").validate() == cfg


def test_config_file_and_flags_override_the_recipe(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("lr: 2.0e-3\nmodel_args: {n_layer: 2}\n")
    cfg = _config("--recipe", "budget-encoder", "--config", file, "--data", "d",
                  "--batch-size", "8", "--n-embd", "128", "--schedule", "cosine")
    assert (cfg.lr, cfg.batch_size, cfg.schedule) == (2e-3, 8, "cosine")
    assert int(cfg.model_args["n_layer"]) == 2 and int(cfg.model_args["n_embd"]) == 128
    assert cfg.model_args["norm_placement"] == "pre"  # model_args merge key by key
    assert cfg.warmup_steps == load_recipe("budget-encoder")["warmup_steps"]


def test_unknown_recipe_is_refused(capsys):
    with pytest.raises(SystemExit):
        _config("--recipe", "nope", "--data", "d")
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown recipe"):
        lmforge.recipe_config("nope")


def test_sparse_mlm_prediction_equals_dense():
    torch.manual_seed(0)
    model = build_model(preset("bert-mini", vocab_size=500, n_layer=2, norm_placement="pre")).eval()
    ids = torch.randint(5, 500, (4, 64))
    labels = torch.full_like(ids, -100)
    picked = torch.rand(ids.shape) < 0.15
    labels[picked] = ids[picked]
    hidden = model(ids)
    dense = F.cross_entropy(model.mlm_logits(hidden).view(-1, 500), labels.view(-1))  # all positions
    sparse = F.cross_entropy(model.mlm_logits(hidden, picked), labels[picked])  # masked ones only
    assert torch.allclose(dense, sparse, atol=1e-6)
    assert model.mlm_logits(hidden, picked).shape == (int(picked.sum()), 500)
