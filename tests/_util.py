"""Small fixtures shared by the tests: a char-level dataset written without `prepare`, and a
helper to run the CLI in a subprocess the way a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "src" / "lmforge" / "assets" / "tinyshakespeare.txt"


def make_char_dataset(out: Path, chars: int = 200_000, val_fraction: float = 0.1) -> Path:
    """Tiny Shakespeare as char ids in the prepared-dataset format (first 90% train)."""
    text = SHAKESPEARE.read_text(encoding="utf-8")[:chars]
    vocab = sorted(set(text))
    ids = np.array([vocab.index(c) for c in text], dtype=np.uint16)
    n = int(len(ids) * (1 - val_fraction))
    out.mkdir(parents=True, exist_ok=True)
    ids[:n].tofile(out / "train-00000.bin")
    ids[n:].tofile(out / "val-00000.bin")
    meta = {"format": "lmforge-tokens/1", "dtype": "uint16", "vocab_size": len(vocab), "eos_id": 0,
            "tokenizer_sha256": "test",
            "splits": {"train": {"shards": ["train-00000.bin"], "shard_tokens": [n], "tokens": n, "docs": 1},
                       "val": {"shards": ["val-00000.bin"], "shard_tokens": [len(ids) - n],
                               "tokens": len(ids) - n, "docs": 1}}}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def cli_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, input: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge", *map(str, args)], capture_output=True,
                          text=True, input=input, timeout=timeout, env=cli_env())


def popen_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmforge", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """The CLI's contract for bad input: non-zero exit, one 'error' line, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    error_lines = [ln for ln in lines if "error" in ln.lower()]
    assert len(error_lines) == 1, proc.stderr
    for needle in needles:
        assert needle.lower() in error_lines[0].lower(), error_lines[0]


# Tiny models and fine-tunes of the shared fixtures (conftest.tiny_models / tiny_runs).
SMALL = dict(context_length=64, n_layer=1, n_head=2, n_embd=32)
NAMES = ["ada", "alan", "grace", "edsger", "barbara", "donald"]
PLACES = ["london", "paris", "rome", "oslo", "lima", "cairo"]
FT = dict(epochs=8, batch_size=16, block_size=32, lr=3e-3, head_lr=3e-3, threads=1,
          progress=False, tensorboard=False, precision="fp32")
