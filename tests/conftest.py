"""Shared test fixtures.

Real data lives in ``shared/data`` beside the repository checkout (never inside it); tests
that need it take the ``shared_data`` fixture and are skipped where it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _util import FT, NAMES, PLACES, SMALL

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


# ---- tiny models and fine-tuned runs shared by the API, pipeline and server tests ------------


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, shakespeare) -> Path:
    """A WordPiece tokenizer, a tiny BERT-style encoder (MLM head) and decoder saved as model
    folders, and small synthetic task files."""
    import json
    import random

    import torch

    from lmforge.interop.model_folder import save_pretrained
    from lmforge.models import build_model, preset
    from lmforge.tokenization import train_tokenizer

    out = tmp_path_factory.mktemp("api")
    corpus = out / "corpus.txt"
    corpus.write_text(shakespeare.read_text()[:100_000] + "\n" + " ".join(NAMES + PLACES) * 20 + "\n")
    torch.manual_seed(0)
    wp = train_tokenizer([str(corpus)], kind="wordpiece", vocab_size=600, lowercase=True)
    save_pretrained(build_model(preset("bert-mini", vocab_size=wp.get_vocab_size(), **SMALL)),
                    out / "bert", wp)
    bpe = train_tokenizer([str(corpus)], kind="bpe", vocab_size=400)
    save_pretrained(build_model(preset("gpt-mini", vocab_size=bpe.get_vocab_size(), **SMALL)),
                    out / "gpt", bpe)
    rng = random.Random(0)
    rows = [(f"a {w} {rng.choice(['play', 'film', 'day'])}", label)
            for _ in range(40) for w, label in (("good", "pos"), ("bad", "neg"))]
    (out / "cls.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    ner = []
    for _ in range(60):
        name, place = rng.choice(NAMES), rng.choice(PLACES)
        ner.append({"tokens": ["today", name, "went", "to", place], "tags": ["O", "B-PER", "O", "O", "B-LOC"]})
    (out / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ner))
    qa = []
    for i in range(60):
        name, place = rng.choice(NAMES), rng.choice(PLACES)
        context = f"{name} lives in {place} ."
        qa.append({"id": str(i), "question": f"where does {name} live ?", "context": context,
                   "answers": [{"text": place, "answer_start": context.index(place)}]})
    (out / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))
    return out



@pytest.fixture(scope="session")
def tiny_runs(tiny_models) -> dict[str, Path]:
    """Tiny fine-tunes through the Python API: classification, NER and QA."""
    import lmforge
    work, out = tiny_models, {}
    for task, data, extra in (("classification", "cls.tsv", {}), ("token-classification", "ner.jsonl", {}),
                              ("qa", "qa.jsonl", {"task_args": {"max_query_length": 12}})):
        result = lmforge.finetune(work / "bert", work / data, out_dir=work / f"run-{task}",
                                  task=task, val_data=work / data, **FT, **extra)
        assert result["out_dir"] == str(work / f"run-{task}") and result["step"] >= 32
        out[task] = work / f"run-{task}"
    return out
