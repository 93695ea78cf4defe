"""Checkpoints that resume exactly and never damage the previous good one.

A checkpoint is a folder ``checkpoints/step-NNNNNNNN/`` holding ``model.safetensors``,
``optimizer.pt`` and ``tensors.pt`` (tensors only, read back with ``weights_only=True``: no
arbitrary unpickling), ``state.json`` (step, RNG states, data position, config) and
``manifest.json`` (SHA-256 of every file, written last). It is written under a temporary name
and renamed into place, so a crash mid-write leaves only a stray temp folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..models.io import load_model_state, load_weights, model_state, replace_dir
from safetensors.torch import save_file

STEP_DIR = re.compile(r"^step-(\d{8})$")


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
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / "manifest.json").write_text(json.dumps({"step": step, "files": files}, indent=1))
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        replace_dir(tmp, final)
        _write_atomic(ckpt_root / "latest", final.name)
        _fsync_dir(ckpt_root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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


def load_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """Verify, then load model and optimizer in place; return (state.json, tensors)."""
    verify(ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    load_model_state(model, load_weights(ckpt / "model.safetensors"), str(ckpt))
    try:
        opt_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        tensors = torch.load(ckpt / "tensors.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(opt_state)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {ckpt} does not fit this run's optimizer: "
                              f"{str(exc).splitlines()[0]}") from None
    return state, tensors


def load_model_weights(ckpt: Path, model: torch.nn.Module) -> None:
    """Verify a checkpoint and load only its model weights (e.g. the best one, for export)."""
    verify(ckpt)
    load_model_state(model, load_weights(ckpt / "model.safetensors"), str(ckpt))


def prune(ckpt_root: Path, keep_last: int, keep: set[str]) -> None:
    """Delete all but the newest ``keep_last`` step folders and those named in ``keep``."""
    found = list_checkpoints(ckpt_root)
    for path in found[:-keep_last] if keep_last else found:
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
