"""The config-driven Transformer: presets, init, save/load round trips, refusal of bad folders."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.errors import CheckpointError, ConfigError
from lmforge.hub import from_pretrained
from lmforge.models import GPT, PRESETS, preset, save_pretrained
from lmforge.models.transformer import RMSNorm

from _util import run_cli


def meta_params(name: str, **overrides) -> int:
    with torch.device("meta"):
        return GPT(preset(name, **overrides)).num_parameters()


def test_preset_parameter_counts_match_the_published_models():
    assert meta_params("gpt2") == 124_439_808          # GPT2LMHeadModel (tied head)
    assert meta_params("smollm2-135m") == 134_515_008  # SmolLM2-135M
    assert meta_params("baby") == 809_856              # nanoGPT's baby: 0.80M
    assert meta_params("gpt-10m") == 10_770_816        # nanoGPT shakespeare-char: 10.65M + wpe


def test_models_command_lists_every_preset():
    proc = run_cli("models")
    assert proc.returncode == 0
    for name in PRESETS:
        assert name in proc.stdout
    assert "124.44M" in proc.stdout and "134.52M" in proc.stdout


def test_llama_style_parts_come_from_config():
    model = GPT(preset("llama-mini"))
    cfg = model.config
    assert model.wpe is None and isinstance(model.ln_f, RMSNorm)
    assert all(p is None for p in [model.blocks[0].attn.qkv.bias, model.blocks[0].mlp.fc.bias])
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    assert model.blocks[0].attn.qkv.out_features == q + 2 * kv  # grouped-query: fewer k/v heads
    assert model.blocks[0].mlp.fc.out_features == 2 * cfg.intermediate_size  # SwiGLU gate + up
    gpt2 = GPT(preset("baby"))
    assert isinstance(gpt2.ln_f, torch.nn.LayerNorm) and gpt2.wpe is not None
    assert gpt2.lm_head.weight is gpt2.wte.weight  # tied


def test_residual_projections_are_scaled_at_init():
    torch.manual_seed(0)
    model = GPT(preset("gpt-10m", vocab_size=65))
    n_layer = model.config.n_layer
    proj = torch.cat([b.attn.proj.weight.flatten() for b in model.blocks])
    qkv = torch.cat([b.attn.qkv.weight.flatten() for b in model.blocks])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * n_layer), rel=0.05)
    assert qkv.std().item() == pytest.approx(0.02, rel=0.05)


def test_causality_future_tokens_do_not_change_past_logits():
    for name in ("baby", "llama-mini"):
        model = GPT(preset(name, vocab_size=50)).eval()
        x = torch.randint(0, 50, (2, 24))
        y = x.clone()
        y[:, 12:] = torch.randint(0, 50, (2, 12))
        with torch.no_grad():
            assert torch.allclose(model(x)[:, :12], model(y)[:, :12], atol=1e-6)
            assert not torch.allclose(model(x)[:, 12:], model(y)[:, 12:])


def test_dropout_is_active_only_in_training():
    model = GPT(preset("baby", dropout=0.5))
    x = torch.randint(0, 65, (2, 16))
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", ["baby", "llama-mini"])
def test_save_and_load_round_trip_is_bit_exact(tmp_path, name):
    model = GPT(preset(name, vocab_size=100)).eval()
    save_pretrained(model, tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "model.safetensors"]
    assert "lmforge" in json.loads((tmp_path / "m" / "config.json").read_text())
    loaded = from_pretrained(tmp_path / "m")
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert loaded.lm_head.weight is loaded.wte.weight
    x = torch.randint(0, 100, (1, 10))
    assert torch.equal(model(x), loaded(x))
    # No pickle anywhere in the folder.
    assert not list((tmp_path / "m").glob("*.pt")) and not list((tmp_path / "m").glob("*.bin"))


def test_bad_model_folders_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="model not found"):
        from_pretrained(tmp_path / "missing")
    model = GPT(preset("baby", vocab_size=100))
    save_pretrained(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        from_pretrained(tmp_path / "m")
    weights.write_bytes(good)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["lmforge"]["n_embd"] = 64
    cfg["lmforge"]["n_head"] = 4
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit this architecture"):
        from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("overrides,field", [
    ({"n_head": 5}, "n_kv_head"), ({"norm": "batchnorm"}, "norm"), ({"n_layer": 0}, "n_layer"),
    ({"dropout": 1.5}, "dropout"), ({"pos_embedding": "alibi"}, "pos_embedding"),
])
def test_invalid_model_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        preset("llama-mini", **overrides)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown model preset 'gpt5'"):
        preset("gpt5")
