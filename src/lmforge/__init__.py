"""lmforge: pretrain Transformer language models from raw text and fine-tune them."""

__version__ = "0.1.0"
