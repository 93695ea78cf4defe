"""Checkpoints that resume exactly and never damage the previous good one.

A checkpoint is a folder ``checkpoints/step-NNNNNNNN/`` holding ``model.safetensors``,
``optimizer.pt`` and ``tensors.pt`` (tensors only, read back with ``weights_only=True``: no
arbitrary unpickling), ``state.json`` (step, RNG states, data position, config) and
``manifest.json`` (SHA-256 of every file, written last). It is written under a temporary name
and renamed into place, so a crash mid-write leaves only a stray temp folder.

A distributed run (torchrun) writes model and optimizer through ``torch.distributed.checkpoint``
instead: ``dcp/`` holds each rank's shards and the metadata that lets any number of ranks, one
included, load them resharded (:func:`save_sharded`, :func:`load_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import atomic_write_text, replace_dir
from ..models.state import load_model_state, load_weights, model_state
from safetensors.torch import save_file

STEP_DIR = re.compile(r"^step-(\d{8})$")
DCP_DIR = "dcp"


@dataclass
class TrainState:
    """Everything a checkpoint holds besides the model and optimizer tensors, in one object:
    the step (which fixes the learning-rate schedule's position), tokens seen, the best
    validation value and its step, the RNG streams of every rank, the sampler's and the
    objective's positions, the fp16 loss scaler, and the world and config that wrote it.

    :meth:`files` splits it into ``state.json`` and the tensors of ``tensors.pt``;
    :meth:`from_files` reads it back."""

    step: int = 0
    tokens_seen: int = 0
    best_val: float = math.inf
    best_step: int | None = None
    evals_since_best: int = 0
    rng: dict = field(default_factory=dict)  # rank 0's python and numpy states
    rng_tensors: dict = field(default_factory=dict)  # torch/CUDA states; other ranks' as "rankN.*"
    rank_rng: list = field(default_factory=list)  # every rank's python and numpy states (torchrun)
    data: dict = field(default_factory=dict)  # the sampler's state_dict (tensors included)
    objective: dict = field(default_factory=dict)  # the objective's state_dict (tensors included)
    scaler: dict | None = None  # fp16 GradScaler
    model_config: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    layout: dict = field(default_factory=dict)  # world size, data parallel, global batch, ...
    lmforge_version: str = ""

    def files(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(``state.json`` mapping, ``tensors.pt`` mapping)."""
        tensors = dict(self.rng_tensors)
        data = dict(self.data)
        if "generator" in data:
            tensors["data.generator"] = data.pop("generator")
        objective = {}
        for key, value in self.objective.items():
            if isinstance(value, torch.Tensor):
                tensors[f"objective.{key}"] = value
            else:
                objective[key] = value
        state = {"step": self.step, "tokens_seen": self.tokens_seen,
                 "best_val": None if math.isinf(self.best_val) else self.best_val,
                 "best_step": self.best_step, "evals_since_best": self.evals_since_best,
                 "rng": self.rng, "data": data, "objective": objective,
                 "model_config": self.model_config, "config": self.config,
                 "lmforge_version": self.lmforge_version, **self.layout}
        if self.scaler is not None:
            state["scaler"] = self.scaler
        if self.rank_rng:
            state["rank_rng"] = self.rank_rng
        return state, tensors

    @classmethod
    def from_files(cls, state: dict, tensors: dict[str, torch.Tensor]) -> "TrainState":
        data = dict(state["data"])
        if data.get("kind") == "random":
            data["generator"] = tensors["data.generator"]
        objective = dict(state.get("objective", {}))
        objective.update({k.removeprefix("objective."): v for k, v in tensors.items()
                          if k.startswith("objective.")})
        best = state.get("best_val")
        layout = {k: state[k] for k in LAYOUT_KEYS if k in state}
        return cls(step=state["step"], tokens_seen=state["tokens_seen"],
                   best_val=math.inf if best is None else best, best_step=state.get("best_step"),
                   evals_since_best=state.get("evals_since_best", 0), rng=state["rng"],
                   rng_tensors={k: v for k, v in tensors.items()
                                if not k.startswith(("objective.", "data."))},
                   rank_rng=state.get("rank_rng", []), data=data, objective=objective,
                   scaler=state.get("scaler"), model_config=state["model_config"],
                   config=state.get("config", {}), layout=layout,
                   lmforge_version=state.get("lmforge_version", ""))

    def rank_rng_state(self, rank: int) -> tuple[dict, dict] | None:
        """(JSON part, tensors) of ``rank``'s RNG streams, or None for a rank the saving run did
        not have."""
        if rank == 0:
            return self.rng, self.rng_tensors
        if rank >= len(self.rank_rng):
            return None
        prefix = f"rank{rank}."
        return self.rank_rng[rank], {k.removeprefix(prefix): v for k, v in self.rng_tensors.items()
                                     if k.startswith(prefix)}


LAYOUT_KEYS = ("world_size", "data_parallel", "global_batch", "parallel", "tensor_parallel")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def rng_state() -> tuple[dict, dict]:
    """(JSON-able, tensor) parts of the python, numpy, torch and CUDA generator states."""
    py = random.getstate()
    np_state = np.random.get_state()
    json_part = {"python": [py[0], list(py[1]), py[2]],
                 "numpy": [np_state[0], np_state[1].tolist(), *map(lambda v: v.item() if hasattr(v, "item") else v, np_state[2:])]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    return json_part, tensors


def set_rng_state(json_part: dict, tensors: dict) -> None:
    py = json_part["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = json_part["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(ckpt_root: Path, step: int, model: torch.nn.Module, optimizer, state: dict,
                    tensors: dict[str, Any]) -> Path:
    """Write ``ckpt_root/step-NNNNNNNN`` atomically and point ``ckpt_root/latest`` at it."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(model_state(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(tensors, tmp / "tensors.pt")
        (tmp / "state.json").write_text(json.dumps(state))
        _seal(tmp, final, step, {p.name: _sha256(p) for p in sorted(tmp.iterdir())})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _seal(tmp: Path, final: Path, step: int, files: dict[str, str]) -> None:
    """Write the manifest of ``files`` (relative name -> SHA-256) last, flush everything to
    disk, rename ``tmp`` to ``final`` and point ``latest`` at it."""
    (tmp / "manifest.json").write_text(json.dumps({"step": step, "files": files}, indent=1))
    for name in (*files, "manifest.json"):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    replace_dir(tmp, final)
    atomic_write_text(final.parent / "latest", final.name)
    _fsync_dir(final.parent)


def verify(ckpt: Path) -> dict:
    """Check the manifest's hashes; return the manifest or raise CheckpointError."""
    manifest_path = ckpt / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"incomplete checkpoint {ckpt} (no manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"corrupt checkpoint {ckpt}: unreadable manifest.json") from None
    for name, digest in manifest.get("files", {}).items():
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"corrupt checkpoint {ckpt}: {name} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(f"corrupt checkpoint {ckpt}: {name} does not match its checksum "
                                  "(truncated or modified)")
    return manifest


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    pointer = ckpt_root / "latest"
    if pointer.is_file():
        candidate = ckpt_root / pointer.read_text().strip()
        if candidate.is_dir():
            return candidate
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def save_sharded(ckpt_root: Path, step: int, model: torch.nn.Module, optimizer, state: dict,
                 tensors: dict[str, Any], rank: int) -> Path:
    """Collective form of :func:`save_checkpoint` for every rank of a distributed run: each rank
    writes its own model and optimizer shards to ``dcp/`` (``torch.distributed.checkpoint``) and
    hashes them; rank 0 writes the rest and renames the folder into place."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}"  # one name for all ranks (no pid)
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    model_state_dict, optim_state_dict = get_state_dict(model, optimizer)
    dcp.save({"model": model_state_dict, "optim": optim_state_dict}, checkpoint_id=str(tmp / DCP_DIR))
    own = {f"{DCP_DIR}/{p.name}": _sha256(p) for p in sorted((tmp / DCP_DIR).glob(f"__{rank}_*"))}
    hashes: list[dict] = [{}] * dist.get_world_size()
    dist.all_gather_object(hashes, own)
    if rank == 0:
        try:
            torch.save(tensors, tmp / "tensors.pt")
            (tmp / "state.json").write_text(json.dumps(state))
            files = {name: _sha256(tmp / name) for name in ("tensors.pt", "state.json")}
            files[f"{DCP_DIR}/.metadata"] = _sha256(tmp / DCP_DIR / ".metadata")
            for part in hashes:
                files.update(part)
            _seal(tmp, final, step, files)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    return final


def is_sharded(ckpt: Path) -> bool:
    """Whether ``ckpt`` was written by a distributed run (``torch.distributed.checkpoint``)."""
    return (ckpt / DCP_DIR).is_dir()


def read_state(ckpt: Path) -> dict:
    """A checkpoint's ``state.json`` (step, data position, the world that wrote it)."""
    try:
        return json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise CheckpointError(f"corrupt checkpoint {ckpt}: unreadable state.json") from None


def load_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer,
                    verified: bool = False) -> tuple[dict, dict]:
    """Verify (unless ``verified``), then load model and optimizer in place; return
    (state.json, tensors). A sharded checkpoint loads into any world size: the model may be
    plain, DDP's or sharded by FSDP (collective then: every rank calls this)."""
    if not verified:
        verify(ckpt)
    state = read_state(ckpt)
    from torch.distributed.checkpoint.api import CheckpointException
    try:
        tensors = torch.load(ckpt / "tensors.pt", map_location="cpu", weights_only=True)
        if is_sharded(ckpt):
            _load_sharded(ckpt, model, optimizer)
        else:
            load_model_state(model, load_weights(ckpt / "model.safetensors"), str(ckpt))
            opt_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
            optimizer.load_state_dict(opt_state)
    except (RuntimeError, ValueError, KeyError, CheckpointException) as exc:
        raise CheckpointError(f"checkpoint {ckpt} does not fit this run's model or optimizer: "
                              f"{str(exc).strip().splitlines()[0]}") from None
    return state, tensors


def _load_sharded(ckpt: Path, model: torch.nn.Module, optimizer=None) -> None:
    """Read ``dcp/`` into ``model`` (and ``optimizer``), resharding to this run's world (one
    process without a process group included)."""
    import warnings

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                         set_model_state_dict, set_state_dict)
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        state = dict(zip(("model", "optim"), get_state_dict(model, optimizer)))
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(ckpt / DCP_DIR), no_dist=not dist.is_initialized())
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_model_weights(ckpt: Path, model: torch.nn.Module, verified: bool = False) -> None:
    """Verify a checkpoint and load only its model weights (e.g. the best one, for export)."""
    if not verified:
        verify(ckpt)
    if is_sharded(ckpt):
        _load_sharded(ckpt, model)
    else:
        load_model_state(model, load_weights(ckpt / "model.safetensors"), str(ckpt))


def prune(ckpt_root: Path, keep_last: int, keep: set[str]) -> None:
    """Delete all but the newest ``keep_last`` step folders and those named in ``keep``."""
    found = list_checkpoints(ckpt_root)
    for path in found[:-keep_last] if keep_last else found:
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
