"""Pruning: unstructured (magnitude, Wanda, 2:4) zeroes exactly the weights its score ranks
lowest; structured pruning removes heads and FFN channels physically and the smaller model
computes what the original computes with those heads/channels masked out."""

from __future__ import annotations

import copy

import pytest
import torch

from lmforge.compression.calibration import calibration_data
from lmforge.compression.structured import prune_structured
from lmforge.compression.unstructured import block_linears, prune_unstructured
from lmforge.errors import ConfigError, LMForgeError
from lmforge.models import build_model, preset
from lmforge.models.task_head import TaskModel, TaskSpec

from _util import make_char_dataset

LLAMA_GQA = dict(vocab_size=97, context_length=64, n_layer=2, n_head=6, n_kv_head=2, n_embd=48,
                 head_dim=8, intermediate_size=64)


def llama(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset("llama-mini", **{**LLAMA_GQA, **kw})).eval()


def bert(vocab: int = 97) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset("bert-mini", vocab_size=vocab, context_length=64, n_layer=2,
                              n_head=4, n_embd=32, intermediate_size=48)).eval()


def windows(vocab: int = 97, n: int = 12, length: int = 33, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


# ---- unstructured ---------------------------------------------------------------------------

def test_magnitude_zeroes_exactly_the_smallest_share_of_every_block_linear():
    model = llama()
    before = {n: m.weight.detach().clone() for n, m in block_linears(model).items()}
    head, emb = model.lm_head.weight.clone(), model.wte.weight.clone()
    report = prune_unstructured(model, sparsity=0.3, method="magnitude")
    assert set(before) == {f"blocks.{i}.{k}" for i in range(2)
                           for k in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}
    for name, linear in block_linears(model).items():
        w, orig = linear.weight, before[name]
        zero = w == 0
        assert int(zero.sum()) == int(0.3 * w.numel())  # exact per layer
        assert orig.abs()[zero].max() <= orig.abs()[~zero].min()  # the smallest went
        assert torch.equal(w[~zero], orig[~zero])  # the rest untouched
    assert torch.equal(model.wte.weight, emb) and torch.equal(model.lm_head.weight, head)
    assert [r["sparsity"] for r in report.layers] == pytest.approx([0.3] * 8, abs=1e-3)
    assert report.parameters_after == report.parameters_before
    assert report.nonzero_after < report.parameters_before


def test_wanda_keeps_the_weights_with_the_highest_weight_times_input_norm_per_row():
    model = llama()
    ids = windows()
    calib = calibration_data(model, None, ids, batch_size=5)
    # By hand: the first block's qkv sees ln_1 of the token embeddings (RoPE adds nothing there).
    with torch.no_grad():
        x = model.blocks[0].ln_1(model.wte(ids[:, :-1])).flatten(0, 1)
    w = model.blocks[0].attn.qkv.weight.detach().clone()
    score = w.abs() * x.pow(2).sum(0).sqrt()[None, :]
    keep_by_hand = score.argsort(dim=1, descending=True)[:, : w.shape[1] // 2]
    prune_unstructured(model, 0.5, "wanda", calibration=calib)
    kept = model.blocks[0].attn.qkv.weight != 0
    expected = torch.zeros_like(kept).scatter_(1, keep_by_hand, True)
    assert torch.equal(kept, expected)
    # Not magnitude in disguise: per-row magnitude would keep other weights.
    by_magnitude = torch.zeros_like(kept).scatter_(1, w.abs().argsort(1, descending=True)[:, :24], True)
    assert not torch.equal(kept, by_magnitude)
    assert all((row == 24).all() for row in kept.sum(1, keepdim=True))  # 50% of every row


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_two_four_keeps_the_two_best_of_every_four_inputs(method):
    model = llama()
    before = {n: m.weight.detach().clone() for n, m in block_linears(model).items()}
    calib = calibration_data(model, None, windows(), batch_size=6)
    report = prune_unstructured(model, method=method, pattern="2:4", calibration=calib)
    assert report.sparsity == 0.5 and report.pattern == "2:4"
    for name, linear in block_linears(model).items():
        groups = (linear.weight != 0).reshape(linear.weight.shape[0], -1, 4)
        assert bool((groups.sum(-1) == 2).all()), name
    if method == "magnitude":  # the kept pair are the two largest |w| of their group
        w = before["blocks.1.mlp.proj"].reshape(48, -1, 4).abs()
        kept = (model.blocks[1].mlp.proj.weight != 0).reshape(48, -1, 4)
        assert torch.equal(kept, torch.zeros_like(kept).scatter_(-1, w.topk(2, dim=-1).indices, True))


def test_unstructured_model_equals_the_masked_reference_and_round_trips(tmp_path):
    from lmforge.hub import load_model
    from lmforge.interop.model_folder import save_pretrained
    model = llama()
    reference = copy.deepcopy(model)
    calib = calibration_data(model, None, windows(), batch_size=6)
    prune_unstructured(model, 0.5, "wanda", calibration=calib)
    with torch.no_grad():
        for (name, ref), pruned in zip(block_linears(reference).items(), block_linears(model).values()):
            ref.weight.mul_((pruned.weight != 0).to(ref.weight.dtype))
    x = windows(n=2, length=40, seed=5)
    assert torch.equal(model(x), reference(x))
    save_pretrained(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")[0]
    assert torch.equal(loaded(x), model(x))
    assert int((loaded.blocks[0].mlp.fc.weight == 0).sum()) == model.blocks[0].mlp.fc.weight.numel() // 2


def test_encoder_unstructured_through_mlm_calibration(tiny_models):
    from lmforge.hub import load_model
    model, tok, _ = load_model(tiny_models / "bert")
    calib = calibration_data(model, tok, tiny_models / "corpus.txt", sequences=8, length=32)
    assert calib.objective.name == "mlm" and len(calib.batches) == 1
    report = prune_unstructured(model, 0.5, "wanda", calibration=calib)
    assert report.sparsity == pytest.approx(0.5) and report.calibration_tokens == 8 * 32  # windows of 30 + [CLS] [SEP]


@pytest.mark.parametrize("bad", [dict(sparsity=0), dict(sparsity=1.0), dict(sparsity=-0.2),
                                 dict(method="random"), dict(pattern="4:2"), dict(pattern="two"),
                                 dict(method="wanda")])
def test_unstructured_bad_inputs_are_clear_errors(bad):
    with pytest.raises(ConfigError):
        prune_unstructured(llama(), **bad)


# ---- structured -----------------------------------------------------------------------------

def masked_reference(original: torch.nn.Module, report) -> torch.nn.Module:
    """``original`` with the removed heads' and channels' output-projection columns zeroed:
    what the structurally pruned model must compute."""
    ref = copy.deepcopy(original)
    body = getattr(ref, "backbone", ref)
    with torch.no_grad():
        for block, row in zip(body.blocks, report.layers):
            hd = block.attn.head_dim
            for h in row["removed_heads"]:
                block.attn.proj.weight[:, h * hd:(h + 1) * hd] = 0
            block.mlp.proj.weight[:, row["removed_channels"]] = 0
    return ref


@pytest.mark.parametrize("gqa,heads_left,kv_left", [("query", 4, 2), ("group", 3, 1)])
def test_structured_decoder_with_gqa_equals_masked_reference(gqa, heads_left, kv_left):
    model = llama()
    original = copy.deepcopy(model)
    calib = calibration_data(model, None, windows(), batch_size=4)
    report = prune_structured(model, heads=0.34 if gqa == "query" else 0.5, ffn=0.25,
                              calibration=calib, gqa=gqa)
    cfg = model.config
    assert (cfg.n_head, cfg.n_kv_head, cfg.intermediate_size, cfg.head_dim) == (heads_left, kv_left, 48, 8)
    for block in model.blocks:  # physically smaller matrices
        assert block.attn.qkv.weight.shape == ((heads_left + 2 * kv_left) * 8, 48)
        assert block.attn.proj.weight.shape == (48, heads_left * 8)
        assert block.mlp.fc.weight.shape == (2 * 48, 48) and block.mlp.proj.weight.shape == (48, 48)
    if gqa == "query":  # one query head from each of the two groups of three
        assert all(len({h // 3 for h in r["removed_heads"]}) == 2 for r in report.layers)
    else:  # one whole group of three
        assert all(len({h // 3 for h in r["removed_heads"]}) == 1 for r in report.layers)
    x = windows(n=2, length=40, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked_reference(original, report)(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(x), original(x), atol=1e-3)  # something was removed
    assert report.parameters_after < report.parameters_before
    # Generation with the KV cache works at the new size.
    cache = model.new_cache(1, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1, :10], cache=cache)[0, -1], model(x[:1, :10])[0, -1],
                                   atol=1e-5, rtol=1e-5)


def test_taylor_removes_the_heads_whose_removal_hurts_the_loss_least():
    """The taylor score ranks heads like the loss change of masking them does (first order)."""
    model = llama(n_layer=1)
    ids = windows(n=8)
    calib = calibration_data(model, None, ids, batch_size=8)
    base = calib.loss(model, calib.batches[0]).item()
    deltas = []
    for h in range(6):
        masked = copy.deepcopy(model)
        with torch.no_grad():
            masked.blocks[0].attn.proj.weight[:, h * 8:(h + 1) * 8] = 0
            deltas.append(abs(calib.loss(masked, calib.batches[0]).item() - base))
    report = prune_structured(copy.deepcopy(model), heads=0.34, ffn=0, calibration=calib)
    removed = report.layers[0]["removed_heads"]
    for h in removed:  # within its group, the removed head changes the loss least
        group = range(h // 3 * 3, h // 3 * 3 + 3)
        assert deltas[h] == min(deltas[g] for g in group)


def test_structured_encoder_and_task_model_equal_masked_reference(tiny_models):
    from lmforge.hub import load_model
    encoder, tok, _ = load_model(tiny_models / "bert")
    task = TaskModel(copy.deepcopy(encoder), TaskSpec(task="classification", labels=["neg", "pos"])).eval()
    ids = tok.encode("a good film today").ids
    x = torch.tensor([ids + [0] * 3, ids + ids[:3]])
    mask = torch.tensor([[1] * len(ids) + [0] * 3, [1] * (len(ids) + 3)])
    for model, source in ((encoder, tiny_models / "corpus.txt"), (task, tiny_models / "cls.tsv")):
        original = copy.deepcopy(model)
        calib = calibration_data(model, tok, source, sequences=16, length=32)
        assert calib.objective.name == ("mlm" if model is encoder else "classification")
        report = prune_structured(model, heads=0.5, ffn=0.5, calibration=calib)
        assert model.config.n_head == 1 and model.config.intermediate_size == 64
        with torch.no_grad():
            torch.testing.assert_close(model(x, mask), masked_reference(original, report)(x, mask),
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("importance", ["activation", "magnitude"])
def test_structured_without_a_loss(importance):
    model = llama()
    original = copy.deepcopy(model)
    calib = calibration_data(model, None, windows(), batch_size=6)
    calib.objective = None  # plain windows: activations only
    report = prune_structured(model, 0.34, 0.5, importance=importance, calibration=calib)
    x = windows(n=2, length=30, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked_reference(original, report)(x), atol=1e-5, rtol=1e-5)
    if importance == "activation":
        with pytest.raises(ConfigError, match="needs a loss"):
            prune_structured(llama(), 0.34, 0.5, importance="taylor", calibration=calib)


def test_structurally_pruned_models_save_and_load(tmp_path, tiny_models):
    from lmforge.hub import load_model
    from lmforge.interop.model_folder import save_pretrained
    decoder = llama()
    prune_structured(decoder, 0.34, 0.25, importance="magnitude")
    encoder, tok, _ = load_model(tiny_models / "bert")
    prune_structured(encoder, 0.5, 0.25, importance="magnitude")
    for name, model in (("dec", decoder), ("enc", encoder)):
        save_pretrained(model, tmp_path / name, tok if name == "enc" else None)
        loaded = load_model(tmp_path / name)[0]
        assert loaded.config == model.config
        x = windows(n=2, length=20, seed=4) % min(97, tok.get_vocab_size())
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    # The Llama-family decoder is still a Hugging Face folder (head_dim stays explicit).
    import json
    hf = json.loads((tmp_path / "dec" / "config.json").read_text())
    assert (hf["model_type"], hf["num_attention_heads"], hf["num_key_value_heads"], hf["head_dim"]) == \
        ("llama", 4, 2, 8)


@pytest.mark.parametrize("bad", [dict(heads=1.0), dict(heads=0.9), dict(ffn=-0.1),
                                 dict(ffn=0.999), dict(importance="random"), dict(gqa="kv"),
                                 dict(importance="taylor")])
def test_structured_bad_inputs_are_clear_errors(bad):
    model = llama()
    before = copy.deepcopy(model.config)
    with pytest.raises(LMForgeError) as err:
        prune_structured(model, **{"heads": 0.34, "ffn": 0.25, **bad})
    assert "\n" not in str(err.value)
    assert model.config == before  # refused before touching the model


def test_structured_refuses_encoder_decoders():
    torch.manual_seed(0)
    model = build_model(preset("t5-tiny", vocab_size=50, n_layer=1, n_decoder_layer=1, n_embd=32,
                               n_head=2, intermediate_size=32))
    with pytest.raises(ConfigError, match="decoder and encoder"):
        prune_structured(model, 0.5, 0.5, importance="magnitude")


# ---- calibration and recovery ---------------------------------------------------------------

def test_calibration_from_a_prepared_dataset(tmp_path):
    data = make_char_dataset(tmp_path / "data", chars=20_000)
    model = llama(vocab_size=80)
    calib = calibration_data(model, None, data, sequences=10, length=16, batch_size=4)
    assert [b["input_ids"].shape for b in calib.batches] == [(4, 16), (4, 16), (2, 16)]
    assert calib.tokens == 160
    starts = {tuple(b["input_ids"][i, :4].tolist()) for b in calib.batches for i in range(len(b["input_ids"]))}
    assert len(starts) == 10  # distinct windows


def test_recovery_finetune_of_a_pruned_task_model(tiny_models, tmp_path):
    from lmforge.compression.recovery import recover
    from lmforge.hub import load_model
    encoder, tok, tok_cfg = load_model(tiny_models / "bert")
    model = TaskModel(encoder, TaskSpec(task="classification", labels=["neg", "pos"])).eval()
    prune_structured(model, 0.5, 0.5, importance="magnitude")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained, result = recover(model, tok, tiny_models / "cls.tsv", steps=40, out_dir=tmp_path / "rec",
                              val_data=str(tiny_models / "cls.tsv"), batch_size=16, lr=3e-3,
                              head_lr=3e-3, threads=1, progress=False, tensorboard=False,
                              precision="fp32", eval_interval=40)
    assert trained.config.n_head == 1 and trained.spec.task == "classification"
    assert result["step"] == 40 and result["val_accuracy"] >= 0.9  # good vs bad is learnable
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, before[k])]
    assert changed


def test_semi_structured_kernels_are_refused_off_cuda():
    from lmforge.compression.unstructured import to_semi_structured
    model = llama()
    prune_unstructured(model, pattern="2:4")
    with pytest.raises(ConfigError, match="only on CUDA"):
        to_semi_structured(model)


def test_variant_names():
    from lmforge.compression.prune_methods import needs_calibration, prune_by_name, prune_spec
    assert prune_spec("prune50") == ("unstructured", {"method": "magnitude", "sparsity": 0.5})
    assert prune_spec("wanda60") == ("unstructured", {"method": "wanda", "sparsity": 0.6})
    assert prune_spec("2:4") == ("unstructured", {"method": "magnitude", "pattern": "2:4"})
    assert prune_spec("wanda2:4") == ("unstructured", {"method": "wanda", "pattern": "2:4"})
    assert prune_spec("heads25") == ("structured", {"heads": 0.25, "ffn": 0.0, "importance": "taylor"})
    assert prune_spec("heads50-ffn25@magnitude") == ("structured", {"heads": 0.5, "ffn": 0.25,
                                                                     "importance": "magnitude"})
    assert needs_calibration("wanda50") and not needs_calibration("prune50")
    assert not needs_calibration("ffn25@magnitude")
    for bad in ("int8", "heads", "heads25@random", "prune"):
        with pytest.raises(ConfigError):
            prune_spec(bad)
    model = llama()
    report = prune_by_name(model, "ffn50@magnitude")
    assert model.config.intermediate_size == 32 and report.method == "structured-magnitude"
