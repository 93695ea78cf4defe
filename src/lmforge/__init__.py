"""lmforge: pretrain Transformer language models from raw text and fine-tune them.

The public API, on which the `lmforge` CLI is built::

    import lmforge
    tok = lmforge.train_tokenizer(["corpus.txt"], kind="bpe", vocab_size=8192)
    lmforge.prepare_corpus(["corpus.txt"], tok, "data/corpus")
    lmforge.pretrain(lmforge.TrainConfig(data="data/corpus", out_dir="runs/gpt", model="gpt-mini"))
    model = lmforge.from_pretrained("runs/gpt")
    lmforge.generate_text(model, tok, ["Once upon a time"], max_new_tokens=50)
    lmforge.score_text(model, tok, "To be, or not to be").perplexity

Each command has its function, with the command's defaults (`lmforge.finetune`, `predict`,
`evaluate`, `embed`, `convert`, `compress`, `plan`: see :mod:`lmforge.api`), and ``lmforge.pipeline(task,
model=...)`` gives transformers-style pipelines (see :mod:`lmforge.pipelines`).
"""

__version__ = "0.1.0"

# Names resolve on first use, so `import lmforge` (and every prepare worker process, which
# imports lmforge.data) stays light: torch is loaded only by what needs it.
_EXPORTS = {
    "prepare_corpus": ".data.prepare",
    "LMForgeError": ".errors", "ConfigError": ".errors", "DataError": ".errors",
    "CheckpointError": ".errors",
    "generate": ".generation", "generate_text": ".generation", "generate_chat": ".generation",
    "ChatSession": ".generation",
    "score_text": ".evaluation.scoring",
    "GPT": ".models", "PRESETS": ".models", "ModelConfig": ".models", "from_pretrained": ".hub",
    "preset": ".models", "save_pretrained": ".api",
    "compress": ".api", "convert": ".api", "distill": ".api", "keep_layers": ".models.layers",
    "embed": ".api", "evaluate": ".api", "finetune": ".api", "plan": ".api",
    "predict": ".api", "pipeline": ".pipelines",
    "scale_plan": ".api", "scale_run": ".api", "scale_fit": ".api", "scale_predict": ".api",
    "scale_search": ".api",
    "load_tokenizer": ".tokenization", "save_tokenizer": ".tokenization",
    "train_tokenizer": ".tokenization",
    "TrainConfig": ".training", "Trainer": ".training", "pretrain": ".training",
    "recipe_config": ".training.recipes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
