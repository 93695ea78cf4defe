"""muP (``ModelConfig.mup_base_width``): the per-parameter rules (init std, Adam learning-rate
scale, readout and attention multipliers), that it reduces to the standard parametrization at
the base width, that it round-trips and refuses what it cannot do, and the two behaviours a
user turns it on for: update sizes that do not grow with width (coordinate check) and a best
learning rate that stays put across widths (transfer)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _util import SHAKESPEARE
from lmforge.errors import ConfigError
from lmforge.models.config import ModelConfig, preset
from lmforge.models.io import build_model
from lmforge.models.task_head import TaskModel, TaskSpec
from lmforge.training.config import TrainConfig
from lmforge.training.optim import param_groups

torch.set_num_threads(1)

HEAD_DIM = 16


def decoder_cfg(width: int, mup: bool, base: int = 64, layers: int = 2, **kw) -> ModelConfig:
    """A small GPT-2 style decoder of ``width`` whose head size stays ``HEAD_DIM`` (more heads
    as it widens), char vocabulary."""
    extra = dict(mup_base_width=base, mup_base_head_dim=HEAD_DIM) if mup else {}
    return preset("baby", n_layer=layers, n_embd=width, n_head=width // HEAD_DIM, context_length=64,
                  vocab_size=65, **extra, **kw)


def scales(model, **train) -> dict[str, float]:
    cfg = TrainConfig(**train)
    return {name: model.lr_scale(name, cfg) for name, _ in model.named_parameters()}


# ---- the rules ------------------------------------------------------------------------------
def test_lr_scale_of_named_parameters():
    model = build_model(decoder_cfg(256, mup=True, base=64))  # m = 4
    s = scales(model)
    for name in ("blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.1.mlp.fc.weight",
                 "blocks.1.mlp.proj.weight"):
        assert s[name] == pytest.approx(0.25), name
    for name in ("wte.weight", "wpe.weight", "blocks.0.attn.qkv.bias", "blocks.0.mlp.proj.bias",
                 "blocks.0.ln_1.weight", "blocks.0.ln_1.bias", "ln_f.weight"):
        assert s[name] == 1.0, name
    # The engine's optimizer groups carry the scale: hidden matrices in a 1/4 group.
    groups = param_groups(model, TrainConfig())
    quarter = [g for g in groups if g["lr_scale"] == pytest.approx(0.25)]
    assert sum(len(g["params"]) for g in quarter) == 4 * 2
    # Standard parametrization: everything 1.
    assert set(scales(build_model(decoder_cfg(256, mup=False))).values()) == {1.0}
    # An untied readout keeps its learning rate (one infinite dimension, as MuReadout).
    untied = build_model(decoder_cfg(256, mup=True, tie_embeddings=False))
    assert scales(untied)["lm_head.weight"] == 1.0


def test_task_head_lr_scale_composes_with_mup():
    backbone = build_model(decoder_cfg(128, mup=True, base=32))  # m = 4
    model = TaskModel(backbone, TaskSpec("classification", labels=["a", "b"]))
    s = scales(model, lr=1e-3, head_lr=1e-2, layer_decay=0.5)
    assert s["head.weight"] == pytest.approx(10.0)  # head_lr / lr, no muP factor
    # block 0 of 2: layer decay 0.5 ** 2, times muP's 1/4 on hidden matrices only
    assert s["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(0.25 * 0.25)
    assert s["backbone.blocks.0.attn.qkv.bias"] == pytest.approx(0.25)
    assert s["backbone.blocks.1.mlp.fc.weight"] == pytest.approx(0.5 * 0.25)
    assert s["backbone.wte.weight"] == pytest.approx(0.5 ** 3)


def test_encoder_rules():
    cfg = preset("bert-mini", n_layer=2, n_embd=128, n_head=2, vocab_size=100, context_length=32,
                 mup_base_width=32)  # m = 4
    model = build_model(cfg)
    s = scales(model)
    for name in ("pooler.weight", "mlm_head.dense.weight", "blocks.1.attn.qkv.weight"):
        assert s[name] == pytest.approx(0.25), name
    for name in ("wte.weight", "wtt.weight", "sentence_head.weight", "mlm_head.bias", "emb_norm.weight"):
        assert s[name] == 1.0, name
    assert model.mlm_head.readout_multiplier == pytest.approx(0.25)
    # Same heads at a quarter of the width: base head_dim 16, this 64 -> scale 1/sqrt(64) / 2.
    assert model.blocks[0].attn.scale == pytest.approx(64 ** -0.5 * 0.5)


@pytest.mark.parametrize("mup", [False, True])
def test_init_std(mup):
    width, base, layers = 512, 128, 2
    model = build_model(decoder_cfg(width, mup=mup, base=base, layers=layers, init_std=0.02))
    m = width / base if mup else 1.0
    hidden, resid = 0.02 / math.sqrt(m), 0.02 / math.sqrt(m) / math.sqrt(2 * layers)
    block = model.blocks[0]
    for weight, want in ((block.attn.qkv.weight, hidden), (block.mlp.fc.weight, hidden),
                         (block.attn.proj.weight, resid), (block.mlp.proj.weight, resid),
                         (model.wte.weight, 0.02), (model.wpe.weight, 0.02)):
        assert weight.std().item() == pytest.approx(want, rel=0.03)
    assert float(block.attn.qkv.bias.detach().abs().max()) == 0.0


def test_attention_and_output_multipliers():
    # Widened by adding heads (head_dim fixed): the attention scale is the standard one.
    assert build_model(decoder_cfg(256, mup=True)).blocks[0].attn.scale is None
    # Widened at a fixed head count (the default base head_dim): sqrt(base_hd) / hd.
    cfg = preset("baby", n_embd=256, n_head=4, mup_base_width=64)  # head_dim 64, base 16
    assert build_model(cfg).blocks[0].attn.scale == pytest.approx(16 ** 0.5 / 64)
    # A user-set scale is composed with, not replaced.
    cfg = preset("baby", n_embd=256, n_head=4, mup_base_width=64, attention_scale=1.0)
    assert build_model(cfg).blocks[0].attn.scale == pytest.approx(0.5)
    # Logits: the LM head of output_scale * h / m (tied embeddings: MuSharedReadout).
    torch.manual_seed(0)
    model = build_model(decoder_cfg(256, mup=True, output_scale=3.0)).eval()
    x = torch.randint(0, 65, (2, 10))
    with torch.no_grad():
        want = model.hidden_states(x) * 3.0 / 4 @ model.wte.weight.T
        torch.testing.assert_close(model(x), want)


def test_base_width_is_the_standard_parametrization():
    """At m = 1 every muP rule is the identity: same init, logits and Adam step as SP."""
    x = torch.randint(0, 65, (4, 32))
    runs = []
    for mup in (False, True):
        torch.manual_seed(0)
        model = build_model(decoder_cfg(64, mup=mup, base=64))
        groups = param_groups(model, TrainConfig(lr=1e-2))
        for g in groups:
            g["lr"] = 1e-2 * g["lr_scale"]
        opt = torch.optim.AdamW(groups)
        for _ in range(2):
            loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        runs.append(model(x).detach())
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


# ---- round trips and refusals -------------------------------------------------------------------
def test_config_round_trips(tmp_path):
    from lmforge.hub import load_model
    from lmforge.interop.model_folder import has_hf_names, save_pretrained
    cfg = decoder_cfg(128, mup=True, base=32)
    cfg.save(tmp_path / "model.json")
    assert ModelConfig.load(tmp_path / "model.json") == cfg
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    save_pretrained(model, tmp_path / "folder")
    # No Hugging Face layout (transformers would drop the 1/m readout): lmforge's own format.
    assert not has_hf_names(tmp_path / "folder")
    loaded = load_model(tmp_path / "folder")[0]
    assert loaded.config.mup_base_width == 32 and loaded.config.mup_base_head_dim == HEAD_DIM
    x = torch.randint(0, 65, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_export_refused(tmp_path):
    from lmforge.interop.gguf import gguf_architecture
    from lmforge.interop.hf import export_hf
    model = build_model(decoder_cfg(128, mup=True, base=32))
    with pytest.raises(ConfigError, match="muP model .* cannot be exported to Hugging Face"):
        export_hf(model, None, tmp_path / "hf")
    with pytest.raises(ConfigError, match="muP model .* cannot be exported to GGUF"):
        gguf_architecture(model.config)
    assert not (tmp_path / "hf").exists()


def test_bad_mup_settings():
    with pytest.raises(ConfigError, match="mup_base_width"):
        preset("baby", mup_base_width=0)
    with pytest.raises(ConfigError, match="supports decoder and encoder"):
        preset("t5-tiny", mup_base_width=64)
    with pytest.raises(ConfigError, match="needs 'mup_base_width'"):
        preset("baby", mup_base_head_dim=16)
    model = build_model(decoder_cfg(128, mup=True))
    with pytest.raises(ConfigError, match="Adam only"):
        param_groups(model, TrainConfig(optimizer="sgd"))


def test_cli_flag_and_convert_refusal(tmp_path, capsys):
    """--mup-base-width is a pretrain flag (ModelConfig fields are) that reaches model_args;
    converting a muP model to Hugging Face is one error line, exit 2."""
    from lmforge.cli.main import build_parser, main
    from lmforge.cli.pretrain_cmd import config_from_args
    from lmforge.interop.model_folder import save_pretrained
    args = build_parser(only="pretrain").parse_args(
        ["pretrain", "--data", "d", "--model", "baby", "--mup-base-width", "64"])
    model_args = config_from_args(args).model_args
    assert preset("baby", **model_args).mup_base_width == 64
    save_pretrained(build_model(decoder_cfg(128, mup=True, base=32)), tmp_path / "model")
    code = main(["convert", str(tmp_path / "model"), str(tmp_path / "hf"), "--to", "hf"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot be exported to Hugging Face" in err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "hf").exists()


# ---- behaviour: coordinate check and learning-rate transfer -------------------------------------
_TEXT = SHAKESPEARE.read_text(encoding="utf-8")[:100_000]
_VOCAB = sorted(set(_TEXT))
_IDS = torch.tensor([_VOCAB.index(c) for c in _TEXT])


def char_batches(n: int, batch: int, length: int, seed: int):
    """``n`` (inputs, targets) batches of random Tiny Shakespeare windows."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        start = torch.randint(len(_IDS) - length - 1, (batch,), generator=g)
        rows = torch.stack([_IDS[s: s + length + 1] for s in start.tolist()])
        yield rows[:, :-1], rows[:, 1:]


def train_adam(cfg: ModelConfig, lr: float, steps: int, batch: int = 8, length: int = 64,
               warmup: int = 0, seed: int = 1):
    """Adam with the engine's parameter groups (lr x lr_scale), linear warmup; the model."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    groups = param_groups(model, TrainConfig(lr=lr, weight_decay=0.0))
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    for step, (x, y) in enumerate(char_batches(steps, batch, length, seed)):
        for g in groups:
            g["lr"] = lr * g["lr_scale"] * (min(1.0, (step + 1) / warmup) if warmup else 1.0)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def logit_change(width: int, mup: bool, lr: float = 3e-3, steps: int = 5) -> float:
    """RMS change of the output logits on a fixed batch after ``steps`` Adam steps."""
    cfg = decoder_cfg(width, mup=mup)
    x, _ = next(char_batches(1, 8, 64, seed=99))
    torch.manual_seed(0)  # the same init as train_adam's
    with torch.no_grad():
        before = build_model(cfg).eval()(x)
    trained = train_adam(cfg, lr, steps)
    with torch.no_grad():
        after = trained(x)
    return (after - before).pow(2).mean().sqrt().item()


def test_coordinate_check():
    """Under SP the logits move more per Adam step the wider the model (measured on a shared
    Xeon core: x2.4 from width 64 to 256); under muP the move is the same at every width
    (x0.96)."""
    sp = [logit_change(w, mup=False) for w in (64, 128, 256)]
    mup = [logit_change(w, mup=True) for w in (64, 128, 256)]
    assert sp[0] == pytest.approx(mup[0], rel=1e-5)  # the base width: the same model
    assert sp[2] / sp[0] > 1.8, sp
    assert sp[0] < sp[1] < sp[2], sp
    assert 0.75 < mup[2] / mup[0] < 1.33, mup
    assert 0.75 < mup[1] / mup[0] < 1.33, mup


LRS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]  # half-decade steps over two decades


def sweep_best(width: int, mup: bool, base: int, layers: int = 1, steps: int = 40,
               warmup: int = 5, length: int = 32) -> int:
    """Index in LRS of the lowest held-out loss after ``steps`` Adam steps, each run from the
    same init and batches."""
    cfg = decoder_cfg(width, mup=mup, base=base, layers=layers)
    held_out = list(char_batches(4, 16, length, seed=1234))
    losses = []
    for lr in LRS:
        model = train_adam(cfg, lr, steps, batch=16, length=length, warmup=warmup)
        with torch.no_grad():
            losses.append(sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
                              for x, y in held_out) / len(held_out))
    return min(range(len(LRS)), key=losses.__getitem__)


def check_transfer(widths: list[int], **protocol) -> None:
    """Under muP the best learning rates of all widths (the narrowest is the base) lie within
    one grid step; under SP the widest model's is at least one step below the base's, and it
    never rises with width."""
    base = widths[0]
    at_base = sweep_best(base, False, base, **protocol)  # SP and muP: the same model here
    sp = [sweep_best(w, False, base, **protocol) for w in widths[1:]]
    mup = [sweep_best(w, True, base, **protocol) for w in widths[1:]]
    found = f"best LR index: base {at_base}, SP {sp}, muP {mup} (grid {LRS})"
    assert max([at_base] + mup) - min([at_base] + mup) <= 1, found
    assert sp[-1] <= at_base - 1, found
    assert all(a >= b for a, b in zip([at_base] + sp, sp)), found  # SP: never up with width


def test_lr_transfer_quick():
    """Two widths 4x apart, 1 block, 40 steps (measured: width 32 best 1e-2; width 128 SP 1e-3,
    muP 3e-2)."""
    check_transfer([32, 128])


@pytest.mark.slow
def test_lr_transfer():
    """Three widths, 2 blocks, 60 steps (measured: width 32 best 3e-3; widths 128 and 256 SP
    1e-3 and 1e-3, muP 1e-2 and 3e-3)."""
    check_transfer([32, 128, 256], layers=2, steps=60, warmup=10)
