"""Atomic writes (lmforge.files): the old output survives a failed write, a finished one
replaces it whole, and no temporary file or folder is left behind either way."""

from __future__ import annotations

import os

import pytest

from lmforge.files import atomic_dir, atomic_file, atomic_write_text, replace_dir, temp_dir_beside


def test_atomic_dir_replaces_the_folder_only_when_the_write_finishes(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    with atomic_dir(dest) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in dest.iterdir()] == ["new.txt"]


def test_temp_dir_beside_is_on_the_same_filesystem_and_not_private(tmp_path):
    tmp = temp_dir_beside(tmp_path / "a" / "data")
    assert tmp.parent == tmp_path / "a" and tmp.name.startswith(".data.tmp-")
    umask = os.umask(0)
    os.umask(umask)
    assert tmp.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir makes it (mkdtemp: 0o700)
    replace_dir(tmp, tmp_path / "a" / "data")
    assert (tmp_path / "a" / "data").is_dir() and not tmp.exists()


def test_atomic_file_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = atomic_write_text(tmp_path / "latest", "step-1")
    with pytest.raises(ValueError):
        with atomic_file(path) as partial:
            partial.write_text("step-2 (half")
            raise ValueError("writer failed")
    assert path.read_text() == "step-1" and [p.name for p in tmp_path.iterdir()] == ["latest"]
    atomic_write_text(path, "step-2")
    assert path.read_text() == "step-2" and [p.name for p in tmp_path.iterdir()] == ["latest"]
