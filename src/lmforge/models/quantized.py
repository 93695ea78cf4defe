"""Quantized linear layers: weight-only int8 (per output channel, symmetric), weight-only int4
(grouped, asymmetric, the layout of torch's int4pack kernels) and dynamic int8 (int8 weights
and activations through fbgemm, CPU). They replace ``nn.Linear`` in place, save as plain
integer tensors + scales (safetensors), and are rebuilt on load from the ``quantization``
section of a model folder's config (:func:`apply_quantized_layout`).

    layer = Int8Linear.from_linear(linear)                  # or Int4Linear.from_linear(linear, 64)

Which kernel runs (measured on the 2-core AMX Xeon, one thread, SmolLM2-135M shapes; see
benchmarks/bench_quantize.py): torch's ``_weight_int8pack_mm`` / ``_weight_int4pack_mm_for_cpu``
are 1.3-4x faster than an fp32 ``F.linear`` for a few rows (decoding) *with bf16 activations*,
and 10-40x slower with fp32 activations (a scalar fallback), so activations enter the kernels in
bf16 and leave in the caller's dtype. For many rows (a prefill, a batch of sentences) the same
kernels lose to a dequantized bf16 matmul on AMX (512 rows x 576 -> 3072: int8 kernel 82 ms,
dequantize + bf16 matmul 9 ms, fp32 matmul 38 ms), so above :data:`KERNEL_MAX_ROWS` rows the
weight is dequantized for that call. Off CPU (CUDA) int4 uses ``_weight_int4pack_mm`` where the
shapes allow and otherwise, like int8, dequantizes (correct everywhere, fast where a kernel is).
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

METHODS = ("int8", "int4", "dynamic-int8")
GROUP_SIZES = (32, 64, 128)
# Rows (tokens x batch) up to which the int8/int4 kernels beat dequantize-then-matmul (decode
# steps and small batches); above, the weight is dequantized for the call (prefill).
KERNEL_MAX_ROWS = 16
# torch's CPU int4 packing works on blocks of 16 output channels.
INT4_OUT_MULTIPLE = 16
_EPS = 1e-8


def _fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    from ..runtime import cpu_has_fast_bf16
    return device.type == "cpu" and cpu_has_fast_bf16()


class QuantizedLinear(nn.Module):
    """Common part: shapes, the float bias, and kernel data cached per device/dtype (rebuilt
    after ``.to()``, never saved)."""

    method = ""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._cache: dict = {}

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .bfloat16(): kernel data goes stale
        self._cache = {}
        return super()._apply(fn, recurse)

    def __getstate__(self):  # copies (cast_for_inference deep-copies models) start cacheless
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_cache": {}}

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (float32), for code that reads ``.weight`` (export, tests)."""
        return self.dequantize(torch.float32)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def _out(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(QuantizedLinear):
    """``x W^T + b`` with W stored as int8 (N, K) and one fp32 scale per output channel
    (symmetric, ``W ~ qweight * scale``). ``dynamic``: also quantize activations to int8 per
    call (fbgemm's dynamic linear, CPU; elsewhere it runs weight-only)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dynamic: bool = False):
        super().__init__(in_features, out_features, bias)
        self.dynamic = dynamic
        self.method = "dynamic-int8" if dynamic else "int8"
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float32))

    @classmethod
    def from_linear(cls, linear: nn.Linear, dynamic: bool = False) -> "Int8Linear":
        w = linear.weight.detach().float()
        layer = cls(w.shape[1], w.shape[0], linear.bias is not None, dynamic)
        scale = w.abs().amax(dim=1).clamp(min=_EPS) / 127.0
        layer.qweight.copy_(torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8))
        layer.scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self.qweight.to(dtype) * self.scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, rows = x.dtype, x.numel() // self.in_features
        if self.dynamic and x.device.type == "cpu":
            return self._dynamic(x)
        compute = torch.bfloat16 if _fast_bf16(x.device) else torch.float32
        if x.device.type == "cpu" and compute == torch.bfloat16 and rows <= KERNEL_MAX_ROWS:
            scale = self._cached("scale", lambda: self.scale.to(torch.bfloat16))
            y = torch.ops.aten._weight_int8pack_mm(
                x.reshape(-1, self.in_features).to(compute).contiguous(), self.qweight, scale)
            return self._out(y.view(*x.shape[:-1], self.out_features), dtype)
        compute = dtype if x.device.type == "cuda" else compute
        return self._out(F.linear(x.to(compute), self.dequantize(compute)), dtype)

    def _dynamic(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._cached("fbgemm", self._prepack)
        y = torch.ops.quantized.linear_dynamic(x.float(), packed, True)
        return y.to(x.dtype)

    def _prepack(self):
        with warnings.catch_warnings():  # quantized-tensor creation is deprecated, fbgemm is not
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(
                self.qweight.cpu(), self.scale.double().cpu(),
                torch.zeros(self.out_features, dtype=torch.long), 0)
        bias = self.bias.detach().float() if self.bias is not None else None
        return torch.ops.quantized.linear_prepack(qw, bias)

    def _cached(self, name, build):
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]


class Int4Linear(QuantizedLinear):
    """``x W^T + b`` with W in 4 bits per weight, groups of ``group_size`` input features along
    each output row, each group with a scale and a zero (``W ~ (q - 8) * scale + zero``, q in
    0..15: the convention of torch's int4pack kernels and torchao). ``qweight`` (N, Kp/2) uint8
    holds two weights a byte (even k in the low nibble); ``in_features`` not divisible by the
    group size are zero-padded up to Kp (the padding columns meet zero-padded activations)."""

    method = "int4"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 128):
        super().__init__(in_features, out_features, bias)
        self.group_size = group_size
        self.padded_in = -(-in_features // group_size) * group_size
        groups = self.padded_in // group_size
        self.register_buffer("qweight", torch.zeros(out_features, self.padded_in // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.bfloat16))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.bfloat16))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128) -> "Int4Linear":
        w = linear.weight.detach().float()
        n, k = w.shape
        layer = cls(k, n, linear.bias is not None, group_size)
        w = F.pad(w, (0, layer.padded_in - k)).view(n, -1, group_size)
        lo, hi = w.amin(dim=-1), w.amax(dim=-1)
        scale = ((hi - lo) / 15).clamp(min=_EPS)
        # scales/zeros are stored in bf16 (what the kernel reads): quantize against those values
        scale, lo = scale.to(torch.bfloat16).float(), lo
        zero = (lo + 8 * scale).to(torch.bfloat16).float()
        q = torch.round((w - zero[..., None]) / scale[..., None] + 8).clamp_(0, 15).to(torch.uint8)
        q = q.view(n, -1)
        layer.qweight.copy_(q[:, 0::2] | (q[:, 1::2] << 4))
        layer.scales.copy_(scale)
        layer.zeros.copy_(zero)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def int_values(self) -> torch.Tensor:
        """The 4-bit values q (N, Kp) as uint8 0..15."""
        q = torch.stack((self.qweight & 15, self.qweight >> 4), dim=-1)
        return q.view(self.out_features, self.padded_in)

    def dequantize(self, dtype: torch.dtype, padded: bool = False) -> torch.Tensor:
        n, gs = self.out_features, self.group_size
        q = self.int_values().view(n, -1, gs).to(dtype) - 8
        w = (q * self.scales.to(dtype)[..., None] + self.zeros.to(dtype)[..., None]).view(n, -1)
        return w if padded else w[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, rows = x.dtype, x.numel() // self.in_features
        device = x.device
        if rows <= KERNEL_MAX_ROWS and _fast_bf16(device):
            y = self._kernel(x.reshape(-1, self.in_features))
            if y is not None:
                return self._out(y.view(*x.shape[:-1], self.out_features), dtype)
        compute = dtype if device.type == "cuda" else (torch.bfloat16 if _fast_bf16(device) else torch.float32)
        return self._out(F.linear(x.to(compute), self.dequantize(compute)), dtype)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor | None:
        """The int4pack matmul of (rows, K) ``x``, or None where no kernel fits (then the
        caller dequantizes)."""
        if "packed" not in self._cache:
            self._cache["packed"] = self._pack(x.device)
        packed = self._cache["packed"]
        if packed is None:
            return None
        x = x.to(torch.bfloat16)
        if self.padded_in != self.in_features:
            x = F.pad(x, (0, self.padded_in - self.in_features))
        x = x.contiguous()
        if x.device.type == "cpu":
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed[0], self.group_size, packed[1])
        return torch.ops.aten._weight_int4pack_mm(x, packed[0], self.group_size, packed[1])

    def _pack(self, device: torch.device):
        scales_zeros = torch.stack((self.scales, self.zeros), dim=-1).transpose(0, 1).contiguous()
        scales_zeros = scales_zeros.to(torch.bfloat16)
        try:
            if device.type == "cpu":
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                    self.int_values().to(torch.int32), 1)
            else:  # CUDA: (N, K/2) uint8 with the even k in the high nibble, 8 inner k-tiles
                q = self.int_values()
                packed = torch.ops.aten._convert_weight_to_int4pack(
                    (q[:, 0::2] << 4 | q[:, 1::2]).contiguous(), 8)
        except (RuntimeError, NotImplementedError) as exc:  # shape the kernel does not take
            log.debug("int4 kernel unavailable for %s (%s); dequantizing", self.extra_repr(), exc)
            return None
        return packed, scales_zeros

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


def quantized_layer(linear: nn.Linear, method: str, group_size: int = 128) -> QuantizedLinear:
    """``linear`` quantized by ``method`` (one of :data:`METHODS`)."""
    if method == "int4":
        return Int4Linear.from_linear(linear, group_size)
    return Int8Linear.from_linear(linear, dynamic=method == "dynamic-int8")


def empty_layer(linear: nn.Linear, method: str, group_size: int = 128) -> QuantizedLinear:
    """An uninitialised quantized layer of ``linear``'s shape, for loading saved tensors."""
    n, k = linear.out_features, linear.in_features
    if method == "int4":
        return Int4Linear(k, n, linear.bias is not None, group_size)
    return Int8Linear(k, n, linear.bias is not None, dynamic=method == "dynamic-int8")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantization_of(model: nn.Module) -> dict | None:
    """The ``quantization`` section a quantized model's config.json carries (method, group
    size, the quantized layers), or None for a float model."""
    return getattr(model, "quantization", None)


def apply_quantized_layout(model: nn.Module, spec: dict, source: str = "") -> nn.Module:
    """Replace the layers named in ``spec`` (a saved ``quantization`` section) with empty
    quantized layers of the same shapes, so the saved integer tensors load strictly."""
    try:
        method, group_size, layers = spec["method"], int(spec.get("group_size") or 128), spec["layers"]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{source}: malformed quantization section in config.json") from None
    if method not in METHODS:
        raise CheckpointError(f"{source}: unknown quantization method {method!r}")
    per_layer = spec.get("layer_methods") or {}
    for name in layers:
        if per_layer.get(name, method) not in METHODS:
            raise CheckpointError(f"{source}: unknown quantization method {per_layer[name]!r} for {name}")
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{source}: quantized layer {name} is not in the model") from None
        if not isinstance(linear, nn.Linear):
            raise CheckpointError(f"{source}: quantized layer {name} is not a linear layer")
        replace_module(model, name, empty_layer(linear, per_layer.get(name, method), group_size))
    model.quantization = dict(spec)
    return model


def refuse_quantized(model: nn.Module, what: str) -> None:
    """A ConfigError for operations that need float weights (Hugging Face export, training)."""
    spec = quantization_of(model)
    if spec is not None:
        raise ConfigError(f"{what} needs a float model; this one is quantized ({spec['method']}): "
                          "use the float model it was quantized from")


def check_method(method: str, group_size: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"quantization method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "int4" and group_size not in GROUP_SIZES:
        raise ConfigError(f"int4 group size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size}")


def dequantized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's saved state with every quantized layer as a float32 ``weight`` (+ ``bias``)
    again, under the names of the float model (for exporters that re-encode weights, as GGUF)."""
    state = model.state_for_save()
    prefixes = {}  # module name -> the name its tensors carry in the saved state
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            prefixes[name] = module
    for name, module in prefixes.items():
        key = name.removeprefix("backbone.")  # a task model saves its backbone's names
        for suffix in ("qweight", "scale", "scales", "zeros"):
            state.pop(f"{key}.{suffix}", None)
        state[f"{key}.weight"] = module.dequantize(torch.float32)
    return state
