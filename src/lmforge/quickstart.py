"""The quickstart: tokenizer -> prepare -> pretrain -> generate on the packaged Shakespeare,
in a few minutes on a laptop CPU. It is the README workflow in one function."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from .data.prepare import prepare_corpus
from .errors import ConfigError, DataError
from .generation import generate_text
from .hub import from_pretrained
from .tokenization import load_tokenizer, save_tokenizer, train_tokenizer
from .training import TrainConfig, Trainer

DEFAULT_CORPUS = "tinyshakespeare.txt"
PARTS = ("tokenizer", "data", "run")  # what a quickstart folder holds


def packaged_corpus() -> Path:
    """Tiny Shakespeare (public domain), shipped with lmforge so the demo runs offline."""
    return Path(str(resources.files("lmforge") / "assets" / DEFAULT_CORPUS))


def quickstart(out: str | Path = "runs/quickstart", corpus: str | Path | None = None,
               vocab_size: int = 1024, max_steps: int = 900, prompt: str = "ROMEO:",
               progress: bool = True, log=print) -> dict:
    """Train a byte-level BPE tokenizer and a small GPT, then sample from it."""
    out = Path(out)
    corpus = Path(corpus) if corpus else packaged_corpus()
    # Checked before minutes of work, and before anything in ``out`` is replaced.
    if max_steps < 1:
        raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
    if not corpus.is_file():
        raise DataError(f"corpus not found: {corpus}")
    if out.exists() and (not out.is_dir() or any(p.name not in PARTS for p in out.iterdir())):
        raise DataError(f"{out} exists and is not a quickstart folder (it would be overwritten); "
                        "choose another --out")
    t0 = time.perf_counter()
    log(f"[1/4] training a byte-level BPE tokenizer (vocab {vocab_size}) on {corpus.name}")
    tokenizer = train_tokenizer([corpus], kind="bpe", vocab_size=vocab_size)
    tok_file = save_tokenizer(tokenizer, out / "tokenizer")

    log("[2/4] preparing the corpus: clean, split into speeches, tokenize, shard")
    meta = prepare_corpus([corpus], tokenizer, out / "data", split_on_blank_lines=True,
                          val_fraction=0.05, overwrite=True, progress=progress)
    log(f"      {meta['splits']['train']['tokens']:,} train / {meta['splits']['val']['tokens']:,} val tokens")

    log(f"[3/4] pretraining a small GPT for {max_steps} steps")
    cfg = TrainConfig(data=str(out / "data"), out_dir=str(out / "run"), model="gpt-mini",
                      model_args={"n_layer": 4, "n_head": 4, "n_embd": 192, "context_length": 128},
                      block_size=128, batch_size=16, max_steps=max_steps, lr=2e-3, min_lr=2e-4,
                      warmup_steps=50, eval_interval=max(max_steps // 4, 1), eval_batches=10,
                      dropout=0.0, weight_decay=0.1, progress=progress, log_interval=25)
    result = Trainer(cfg, overwrite=True).fit()
    log(f"      validation loss {result['val_loss']:.3f} (perplexity {result['val_ppl']:.1f}); "
        f"loss curve: {out / 'run' / 'loss.png'}")

    log(f"[4/4] sampling from {out / 'run' / 'model'} with prompt {prompt!r}:\n")
    model = from_pretrained(out / "run" / "model")
    text = generate_text(model, load_tokenizer(tok_file), [prompt], max_new_tokens=120,
                         temperature=0.8, top_k=50, seed=1337)[0].text
    log(prompt + text)
    log(f"\ndone in {time.perf_counter() - t0:.0f}s. Next: lmforge generate --model {out / 'run'} "
        f"--prompt 'JULIET:'")
    return {**result, "sample": text, "run_dir": str(out / "run")}
