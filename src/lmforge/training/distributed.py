"""Scale-out on PyTorch's own machinery: torchrun's environment, one process group, and the model
parallelized from outside (DDP, FSDP2 ``fully_shard``, tensor-parallel linears), so the model
files stay plain PyTorch.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them a run is one ordinary
process and nothing here does anything. With them every rank builds the same model from the same
seed, follows the same global micro-batch stream from the same seeded sampler and trains on its own
rows: where the objective's batches are row-local (causal and BPTT LM) the sampler reads only
this rank's rows (:meth:`Ranks.row_range`), else the rank builds the global batch and keeps its
rows (:meth:`Ranks.own_rows`: masking draws over the whole batch must match one process). The
data position and the objective's random state are identical on every rank, so a checkpoint
resumes at any world size, and 2 ranks with batch B train exactly as 1 process with batch 2B.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import itertools
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import ConfigError, DistributedError, LMForgeError


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    parallel: str = "ddp"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, prints and writes run files."""
        return self.rank == 0

    @property
    def data_parallel(self) -> int:
        """How many ranks read different rows: all of them, except under tensor parallelism,
        where every rank computes a slice of the same batch."""
        return 1 if self.parallel == "tp" else self.world_size

    def row_range(self, rows: int) -> tuple[int, int]:
        """This rank's contiguous rows [lo, hi) of a global batch of ``rows``."""
        if self.data_parallel == 1:
            return 0, rows
        lo, hi = self.rank * rows // self.world_size, (self.rank + 1) * rows // self.world_size
        if hi == lo:
            lo = self.rank % max(rows, 1)
            hi = lo + 1
        return lo, hi

    def own_rows(self, batch: dict[str, Any]) -> dict[str, Any]:
        """This rank's contiguous rows of a global micro-batch (every per-row tensor cut the
        same way; scalars kept). A short last batch of an epoch with fewer rows than ranks
        gives each rank one row, repeating some."""
        if self.data_parallel == 1:
            return batch
        rows = next((v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim()), 0)
        lo, hi = self.row_range(rows)
        return {k: v[lo:hi] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == rows else v
                for k, v in batch.items()}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name} must be an integer, got {value!r}") from None


def launch_ranks(parallel: str = "ddp") -> Ranks:
    """The torchrun environment of this process (RANK, WORLD_SIZE, LOCAL_RANK)."""
    world = _env_int("WORLD_SIZE") or 1
    rank = _env_int("RANK") or 0
    local = _env_int("LOCAL_RANK")
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return Ranks(rank, world, rank if local is None else local, parallel)


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per rank: ``cuda:LOCAL_RANK`` (CPU ranks share the machine's cores)."""
    if device.type != "cuda" or not ranks.distributed:
        return device
    if ranks.local_rank >= torch.cuda.device_count():
        raise DistributedError(f"LOCAL_RANK {ranks.local_rank} has no GPU: this node has "
                               f"{torch.cuda.device_count()}; lower --nproc_per_node")
    device = torch.device("cuda", ranks.local_rank)
    torch.cuda.set_device(device)
    return device


def init_process_group(ranks: Ranks, device: torch.device, timeout_s: int) -> None:
    """Join the job's process group once per process: NCCL on GPUs, gloo on CPUs. A collective
    waiting longer than ``timeout_s`` for a rank fails instead of hanging."""
    if not ranks.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"rank {ranks.rank} could not join the process group ({backend}): "
                               f"{str(exc).splitlines()[0]}") from None
    atexit.register(destroy)


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over all ranks (the values themselves without a process group)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_object(obj: Any) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def main_decides(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and give its result to every rank; an lmforge error it raises
    is raised on every rank (so no rank waits in a collective for one that has failed)."""
    if not dist.is_initialized():
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except LMForgeError as exc:
            box[0] = ("error", exc)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def is_lost_rank(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another rank died or timed out."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer",
                                      "gloo", "NCCL", "Timed out", "timed out"))


# ---- applying the parallelism ---------------------------------------------------------------
class ObjectiveLoss(nn.Module):
    """The objective's loss on a batch as one module's forward. DDP wraps this rather than the
    model, so it sees every parameter the loss uses, heads called besides the model's forward
    (``mlm_logits``) included."""

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.objective.loss(self.model, batch)


def data_parallel(loss: ObjectiveLoss, ranks: Ranks, device: torch.device) -> nn.Module:
    """DDP over the loss module when this is a DDP run (else the module itself)."""
    if not ranks.distributed or ranks.parallel != "ddp":
        return loss
    ids = [device.index] if device.type == "cuda" else None
    # Gradients as views into DDP's communication buckets: no second copy of them. A decoder LM
    # uses every weight each step; other models may not (an MLM objective skips the NSP head, a
    # classifier the pretraining heads), which DDP must then look for after each forward.
    return nn.parallel.DistributedDataParallel(
        loss, device_ids=ids, gradient_as_bucket_view=True,
        find_unused_parameters=not loss.model.uses_every_weight())


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute every block's activations in backward (PyTorch's checkpoint wrapper; state
    dict names are unchanged)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    for blocks in model.block_lists():
        for i, block in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(block)


def compile_blocks(model: nn.Module) -> None:
    """``torch.compile`` each block in place (as torchtitan does before sharding): the gradients
    of a block are ready when its compiled backward ends, so DDP and FSDP communication overlaps
    with the rest of the backward."""
    for block in model.repeated_blocks():
        block.compile()


def check_parallel(model: nn.Module, ranks: Ranks, precision: str, objective) -> None:
    """Refuse, with one line, what a parallel mode does not support."""
    if not ranks.distributed:
        return
    if objective.carries_state:
        raise ConfigError(f"objective '{objective.name}' carries per-stream state between "
                          "batches; run it in one process (not under torchrun)")
    if ranks.parallel == "ddp":
        return
    if precision == "fp16":
        raise ConfigError(f"--parallel {ranks.parallel} trains in bf16 or fp32 (fp16 loss scaling "
                          "is for ddp); pass --precision bf16")
    if ranks.parallel not in model.supported_parallel_modes:
        raise ConfigError(f"--parallel {ranks.parallel} does not run {model.kind} models (they run "
                          f"under {', '.join(model.supported_parallel_modes)}); use --parallel ddp")
    if not objective.forward_only:  # e.g. generative fine-tuning calls more than forward
        raise ConfigError(f"--parallel {ranks.parallel} does not run {objective.noun} "
                          f"'{objective.name}' (it calls the model beyond forward); use --parallel ddp")
    if ranks.parallel not in model.parallel_modes():
        raise ConfigError(f"LoRA fine-tuning runs with --parallel ddp, not {ranks.parallel}")


def parallelize(model: nn.Module, ranks: Ranks, precision: str, device: torch.device) -> None:
    """Shard ``model`` in place for FSDP2 (each block, then the root; bf16 runs gather weights
    in bf16 and reduce gradients in fp32) or TP (the attention and MLP linears of every block).
    DDP leaves the model alone (:func:`data_parallel` wraps the loss)."""
    if not ranks.distributed or ranks.parallel == "ddp":
        return
    if ranks.parallel == "fsdp":
        shard_fsdp(model, precision)
    else:
        tensor_parallel(model, ranks.world_size, device)


def shard_fsdp(model: nn.Module, precision: str) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if precision == "bf16" else MixedPrecisionPolicy())
    for block in model.repeated_blocks():
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for method in model.extra_forward_methods:  # FSDP2 unshards the root's weights for them too
        register_fsdp_forward_method(model, method)


@contextlib.contextmanager
def gradient_sync(loss: nn.Module, model: nn.Module, enabled: bool):
    """Micro-steps of gradient accumulation: gradients stay local unless ``enabled`` (the last
    micro-step), so ranks communicate once per optimizer step (DDP's ``no_sync`` on the loss
    module, FSDP2's ``set_requires_gradient_sync`` on the model)."""
    from torch.distributed.fsdp import FSDPModule
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
    if isinstance(loss, nn.parallel.DistributedDataParallel) and not enabled:
        with loss.no_sync():
            yield
        return
    yield


def clip_grad_norm_(parameters, max_norm: float) -> float:
    """Clip the global gradient norm; also over a mix of sharded (DTensor) and plain gradients,
    as tensor parallelism leaves them (embeddings and norms stay plain)."""
    from torch.distributed.tensor import DTensor
    params = [p for p in parameters if p.grad is not None]
    kinds = {isinstance(p.grad, DTensor) for p in params}
    if len(kinds) < 2:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    norms = [torch.linalg.vector_norm(p.grad) for p in params]
    norms = [n.full_tensor() if isinstance(n, DTensor) else n for n in norms]
    total = float(torch.linalg.vector_norm(torch.stack(norms)))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for p in params:
            p.grad.mul_(coef)
    return total


# ---- tensor parallelism ---------------------------------------------------------------------
def _fused_rows(sections: list[int], tp: int) -> torch.Tensor:
    """Row order that makes contiguous chunk r of a fused projection (q|k|v or gate|up) hold
    rank r's part of every section, as column-wise sharding needs."""
    starts = [0, *itertools.accumulate(sections)][:-1]
    order = [torch.arange(start + r * size // tp, start + (r + 1) * size // tp)
             for r in range(tp) for start, size in zip(starts, sections)]
    return torch.cat(order)


def tp_row_orders(config, tp: int) -> dict[str, torch.Tensor]:
    """Per block-relative linear name, the row order its weights take under ``tp``-way tensor
    parallelism (only the fused projections are reordered)."""
    hd = config.head_dim
    orders = {"attn.qkv": _fused_rows([config.n_head * hd, config.n_kv_head * hd,
                                       config.n_kv_head * hd], tp)}
    if config.mlp in ("swiglu", "gated"):
        orders["mlp.fc"] = _fused_rows([config.intermediate_size] * 2, tp)
    return orders


def tensor_parallel(model: nn.Module, tp: int, device: torch.device) -> None:
    """Megatron-style TP of every block: q/k/v and MLP-up column-wise, the output projections
    row-wise (one all-reduce each in forward and backward); embeddings, norms and the head are
    replicated. Heads, KV heads and the MLP width must divide by ``tp``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    cfg = model.config
    for name in ("n_head", "n_kv_head", "intermediate_size"):
        if getattr(cfg, name) % tp:
            raise ConfigError(f"--parallel tp over {tp} ranks needs model field '{name}' "
                              f"({getattr(cfg, name)}) divisible by {tp}")
    mesh = init_device_mesh(device.type, (tp,))
    orders = tp_row_orders(cfg, tp)
    plan = {"attn.qkv": ColwiseParallel(), "attn.proj": RowwiseParallel(),
            "mlp.fc": ColwiseParallel(), "mlp.proj": RowwiseParallel()}
    for block in model.repeated_blocks():
        inner = getattr(block, "_checkpoint_wrapped_module", block)
        with torch.no_grad():
            for name, order in orders.items():
                linear = inner.get_submodule(name)
                linear.weight.copy_(linear.weight[order.to(linear.weight.device)])
                if linear.bias is not None:
                    linear.bias.copy_(linear.bias[order.to(linear.bias.device)])
        parallelize_module(inner, mesh, plan)
        inner.attn.n_head //= tp  # each rank runs its own heads
        inner.attn.n_kv_head //= tp


def canonical_tp_state(state: dict[str, torch.Tensor], config, tp: int) -> dict[str, torch.Tensor]:
    """A full state dict gathered from a TP run with the fused rows put back in model order."""
    orders = {k: torch.argsort(v) for k, v in tp_row_orders(config, tp).items()}
    out = {}
    for key, value in state.items():
        name = key.rsplit(".", 1)[0]
        order = next((o for suffix, o in orders.items() if name.endswith(suffix)), None)
        out[key] = value[order] if order is not None and ".blocks." in f".{key}" else value
    return out


# ---- gathering a sharded model for export ---------------------------------------------------
def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (same classes, config and tied weights) whose tensors live on the
    meta device: the skeleton rank 0 fills with gathered weights to export a sharded model."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def gathered_model(model: nn.Module, skeleton: nn.Module | None, ranks: Ranks) -> nn.Module | None:
    """The full model on rank 0 (None on the others), gathered from FSDP or TP shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    if not ranks.is_main:
        return None
    if ranks.parallel == "tp":
        state = canonical_tp_state(state, model.config, ranks.world_size)
    full = skeleton.to_empty(device="cpu")
    full.load_state_dict(state, strict=False)
    missing = {k for k in full.state_dict() if k not in state}
    if missing:
        raise DistributedError(f"gathering the model missed {', '.join(sorted(missing)[:3])}")
    return full
