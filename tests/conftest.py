"""Shared test fixtures.

Real data lives in ``shared/data`` beside the repository checkout (never inside it); tests
that need it take the ``shared_data`` fixture and are skipped where it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Tiny Shakespeare ships inside the package, so tests that only need some text run anywhere.
SHAKESPEARE = Path(__file__).resolve().parents[1] / "src" / "lmforge" / "assets" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``shared/data``; skips the test when the folder is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    """Tiny Shakespeare as packaged in ``lmforge/assets`` (always present, unlike shared data)."""
    return SHAKESPEARE


@pytest.fixture(scope="session")
def small_bpe(tmp_path_factory):
    """A byte-level BPE of vocab 512 trained on the first 200 kB of Tiny Shakespeare."""
    from lmforge.tokenization import train_tokenizer

    text = SHAKESPEARE.read_text(encoding="utf-8")[:200_000]
    path = tmp_path_factory.mktemp("small_bpe") / "train.txt"
    path.write_text(text, encoding="utf-8")
    return train_tokenizer([path], kind="bpe", vocab_size=512)


@pytest.fixture(scope="session")
def run_lmforge():
    """Run ``python -m lmforge ARGS...`` in a subprocess (importing this checkout's sources)."""
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}

    def run(*args: str, input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lmforge", *map(str, args)], input=input,
                              capture_output=True, text=True, env=env, timeout=timeout)

    return run
