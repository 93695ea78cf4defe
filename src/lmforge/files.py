"""Atomic writes, the one way every lmforge writer (prepare, save_pretrained, checkpoints,
tokenizer save, convert) puts files on disk: a reader sees the old output or the new one,
never a half-written one, and a failed write leaves the old output untouched.

    with atomic_dir("runs/gpt/model") as tmp:   # fill tmp; it replaces the folder on success
        (tmp / "config.json").write_text("{}")
    atomic_write_text("runs/gpt/latest", "step-00000100")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def temp_dir_beside(dest: str | Path) -> Path:
    """A new empty folder next to ``dest`` (same filesystem, so the final rename is atomic),
    with the permissions a plain ``mkdir`` would give (mkdtemp's are private)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def replace_dir(tmp: str | Path, dest: str | Path) -> None:
    """Put the finished folder ``tmp`` at ``dest`` by renames only, so ``dest`` is never a
    half-written folder (an old one is moved aside first and deleted last)."""
    tmp, dest = Path(tmp), Path(dest)
    if not dest.exists():
        os.replace(tmp, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``dest`` to fill; on success it replaces ``dest``, on any
    error (or Ctrl-C) it is deleted and ``dest`` is left as it was."""
    tmp = temp_dir_beside(dest)
    try:
        yield tmp
        replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a hidden partial path beside ``path`` for a writer that wants a file name (a
    tokenizer's or GGUF writer's ``save``); it is renamed over ``path`` only on success."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as partial:
        partial.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))
