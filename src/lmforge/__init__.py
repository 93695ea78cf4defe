"""lmforge: pretrain Transformer language models from raw text and fine-tune them.

The public API, on which the `lmforge` CLI is built::

    import lmforge
    tok = lmforge.train_tokenizer(["corpus.txt"], kind="bpe", vocab_size=8192)
    lmforge.prepare_corpus(["corpus.txt"], tok, "data/corpus")
    lmforge.pretrain(lmforge.TrainConfig(data="data/corpus", out_dir="runs/gpt", model="gpt-mini"))
    model = lmforge.from_pretrained("runs/gpt")
    lmforge.generate_text(model, tok, ["Once upon a time"], max_new_tokens=50)
    lmforge.score_text(model, tok, "To be, or not to be").perplexity
"""

__version__ = "0.1.0"

from .data.prepare import prepare_corpus  # noqa: E402
from .errors import CheckpointError, ConfigError, DataError, LMForgeError  # noqa: E402
from .generation import generate, generate_text  # noqa: E402
from .evaluation.scoring import score_text  # noqa: E402
from .models import GPT, PRESETS, ModelConfig, from_pretrained, preset, save_pretrained  # noqa: E402
from .tokenization import load_tokenizer, save_tokenizer, train_tokenizer  # noqa: E402
from .training import TrainConfig, Trainer, pretrain  # noqa: E402

__all__ = [
    "GPT", "ModelConfig", "PRESETS", "TrainConfig", "Trainer",
    "LMForgeError", "ConfigError", "DataError", "CheckpointError",
    "from_pretrained", "generate", "generate_text", "load_tokenizer", "prepare_corpus", "preset",
    "pretrain", "save_pretrained", "save_tokenizer", "score_text", "train_tokenizer",
]
