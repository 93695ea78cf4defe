"""lmforge's GPT is the published architecture: with Hugging Face weights copied in, its fp32
logits, loss and gradients match ``GPT2LMHeadModel`` and ``LlamaForCausalLM``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lmforge.models import GPT, ModelConfig

transformers = pytest.importorskip("transformers")

ATOL = 1e-5


def gpt2_pair() -> tuple[GPT, torch.nn.Module]:
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, activation_function="gelu_new",
        bos_token_id=None, eos_token_id=None))
    ours = GPT(ModelConfig(vocab_size=97, context_length=32, n_embd=48, n_layer=2, n_head=4))
    h = hf.transformer
    state = {"wte.weight": h.wte.weight, "wpe.weight": h.wpe.weight,
             "ln_f.weight": h.ln_f.weight, "ln_f.bias": h.ln_f.bias}
    for i, block in enumerate(h.h):
        # HF's Conv1D stores weights as (in, out): the transpose of nn.Linear's.
        pairs = {"ln_1": block.ln_1, "ln_2": block.ln_2, "attn.qkv": block.attn.c_attn,
                 "attn.proj": block.attn.c_proj, "mlp.fc": block.mlp.c_fc, "mlp.proj": block.mlp.c_proj}
        for name, module in pairs.items():
            conv = isinstance(module, transformers.pytorch_utils.Conv1D)
            state[f"blocks.{i}.{name}.weight"] = module.weight.t() if conv else module.weight
            state[f"blocks.{i}.{name}.bias"] = module.bias
    load(ours, state)
    assert ours.lm_head.weight is ours.wte.weight  # still tied after loading
    return ours, hf


def llama_pair() -> tuple[GPT, torch.nn.Module]:
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False))
    ours = GPT(ModelConfig(vocab_size=97, context_length=32, n_embd=64, n_layer=2, n_head=4,
                           n_kv_head=2, intermediate_size=96, pos_embedding="rope", norm="rmsnorm",
                           mlp="swiglu", activation="silu", bias=False, tie_embeddings=False))
    m = hf.model
    state = {"wte.weight": m.embed_tokens.weight, "ln_f.weight": m.norm.weight,
             "lm_head.weight": hf.lm_head.weight}
    for i, layer in enumerate(m.layers):
        a, mlp = layer.self_attn, layer.mlp
        state |= {
            f"blocks.{i}.ln_1.weight": layer.input_layernorm.weight,
            f"blocks.{i}.ln_2.weight": layer.post_attention_layernorm.weight,
            f"blocks.{i}.attn.qkv.weight": torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
            f"blocks.{i}.attn.proj.weight": a.o_proj.weight,
            f"blocks.{i}.mlp.fc.weight": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
            f"blocks.{i}.mlp.proj.weight": mlp.down_proj.weight,
        }
    load(ours, state)
    return ours, hf


def load(model: GPT, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` in, requiring every parameter of ``model`` to be covered."""
    params = dict(model.named_parameters())  # tied weights appear once
    assert set(params) == set(state), set(params) ^ set(state)
    with torch.no_grad():
        for name, value in state.items():
            assert params[name].shape == value.shape, name
            params[name].copy_(value)


PAIRS = {"gpt2": gpt2_pair, "llama": llama_pair}


@pytest.fixture(params=list(PAIRS))
def pair(request):
    torch.manual_seed(0)
    ours, hf = PAIRS[request.param]()
    return ours.train(), hf.train()  # dropout is 0: train mode must match too


def test_logits_match_hugging_face(pair):
    ours, hf = pair
    idx = torch.randint(97, (3, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(input_ids=idx).logits, atol=ATOL, rtol=0)


def test_loss_and_gradients_match_hugging_face(pair):
    ours, hf = pair
    idx = torch.randint(97, (3, 20))
    x, y = idx[:, :-1], idx[:, 1:]
    losses = [F.cross_entropy(m_logits.flatten(0, 1), y.flatten())
              for m_logits in (ours(x), hf(input_ids=x).logits)]
    torch.testing.assert_close(losses[0], losses[1], atol=ATOL, rtol=0)
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(ours.wte.weight.grad, hf.get_input_embeddings().weight.grad,
                               atol=ATOL, rtol=0)
    if isinstance(hf, transformers.GPT2LMHeadModel):
        hf_out = hf.transformer.h[-1].mlp.c_proj.weight.grad.t()  # Conv1D layout
    else:
        hf_out = hf.model.layers[-1].mlp.down_proj.weight.grad
    torch.testing.assert_close(ours.blocks[-1].mlp.proj.weight.grad, hf_out, atol=ATOL, rtol=0)


def test_padded_batch_matches_hugging_face(pair):
    """Left padding through ``attention_mask``: real positions' logits still match."""
    ours, hf = pair
    idx = torch.randint(97, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ours(idx, position_ids=positions, attention_mask=mask)
        b = hf(input_ids=idx, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("kind", ["causal", "padding", "bias", "cached-causal"])
def test_explicit_attention_matches_sdpa(kv_heads, kind):
    """The explicit-matmul attention that CPU bf16 training uses for short sequences is SDPA's
    attention: causal, with a key-padding mask, with an additive (T5) bias and a custom scale,
    and causal for queries after cached keys; grouped-query heads included."""
    from lmforge.models.transformer import explicit_attention

    torch.manual_seed(0)
    T, S = (5, 16) if kind == "cached-causal" else (16, 16)
    q = torch.randn(2, 4, T, 8)
    k, v = torch.randn(2, kv_heads, S, 8), torch.randn(2, kv_heads, S, 8)
    gqa = kv_heads != 4
    if kind == "causal":
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        got = explicit_attention(q, k, v, causal=True)
    elif kind == "padding":
        mask = torch.ones(2, 1, 1, S, dtype=torch.bool)
        mask[1, ..., 11:] = False
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        got = explicit_attention(q, k, v, mask)
    elif kind == "bias":
        bias = torch.randn(1, 4, T, S)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0, enable_gqa=gqa)
        got = explicit_attention(q, k, v, bias, scale=1.0)
    else:
        mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        got = explicit_attention(q, k, v, causal=True)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_bf16_training_path_matches_fp32(monkeypatch):
    """Under CPU bf16 autocast (explicit attention, bf16 RoPE) logits stay within bf16 rounding
    of the fp32 model's and of the SDPA path's."""
    import lmforge.models.transformer as transformer

    torch.manual_seed(0)
    ours, _ = llama_pair()
    idx = torch.randint(97, (2, 32))
    with torch.no_grad():
        reference = ours(idx)
        with torch.autocast("cpu", torch.bfloat16):
            explicit = ours(idx).float()
            monkeypatch.setattr(transformer, "EXPLICIT_ATTENTION_MAX_LEN", 0)  # SDPA instead
            fused = ours(idx).float()
    assert reference.std() > 0.1  # logits of a real scale: the bound below means something
    torch.testing.assert_close(explicit, reference, atol=1e-2, rtol=0)
    torch.testing.assert_close(explicit, fused, atol=1e-2, rtol=0)


@pytest.mark.parametrize("bias_rows", [1, 2])
def test_explicit_attention_gradients_match_sdpa(bias_rows):
    """Gradients through the explicit attention, additive bias included (one bias shared by the
    batch is broadcast over the scores, a per-row bias goes through baddbmm), equal SDPA's."""
    from lmforge.models.transformer import explicit_attention

    torch.manual_seed(0)
    inputs = [torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3)]
    bias = torch.randn(bias_rows, 4, 16, 16, requires_grad=True)
    grads = []
    for attend in (lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, attn_mask=b, scale=1.0),
                   lambda q, k, v, b: explicit_attention(q, k, v, b, scale=1.0)):
        out = attend(*inputs, bias)
        grads.append(torch.autograd.grad(out, [*inputs, bias], torch.randn_like(out, generator=torch.Generator().manual_seed(1))))
    for expected, got in zip(*grads):
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_rms_norm_matches_torch():
    """lmforge's RMSNorm (a hand-written backward on CPU) equals ``nn.RMSNorm``: outputs and the
    gradients of input and scale in fp32, double-precision gradcheck, bf16 inputs, and under
    autocast with ``autocast_output`` the autocast dtype holding the same rounded values."""
    from lmforge.models.transformer import RMSNorm, _RMSNormFunction

    torch.manual_seed(0)
    ours, ref = RMSNorm(32, eps=1e-6), torch.nn.RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        ref.weight.normal_()
    ours.load_state_dict(ref.state_dict())  # the same state dict layout
    x = torch.randn(3, 5, 32, requires_grad=True)
    grad = torch.randn(3, 5, 32)
    got, expected = ours(x), ref(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    gx, gw = torch.autograd.grad(got, [x, ours.weight], grad)
    ex, ew = torch.autograd.grad(expected, [x, ref.weight], grad)
    torch.testing.assert_close(gx, ex, atol=1e-5, rtol=0)
    torch.testing.assert_close(gw, ew, atol=1e-5, rtol=0)

    x64 = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _RMSNormFunction.apply(a, b, 1e-6, torch.float64),
                                    (x64, w64))

    xb = x.detach().bfloat16()
    torch.testing.assert_close(copy.deepcopy(ours).bfloat16()(xb), copy.deepcopy(ref).bfloat16()(xb),
                               atol=2e-2, rtol=0)

    cast = RMSNorm(32, eps=1e-6, autocast_output=True)
    cast.load_state_dict(ref.state_dict())
    with torch.autocast("cpu", torch.bfloat16):
        out = cast(x)
        plain = ours(x)
    assert out.dtype == torch.bfloat16 and plain.dtype == torch.float32  # only where asked
    # the fp32 values rounded to bf16 (to within one rounding step, at a rounding boundary)
    torch.testing.assert_close(out.float(), expected.detach().float(), atol=0, rtol=2 ** -8)
