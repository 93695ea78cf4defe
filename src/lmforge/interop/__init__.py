"""Interchange with other ecosystems: Hugging Face model folders (``hf``) and llama.cpp's GGUF
files (``gguf``). Both map to and from lmforge's own names and ``ModelConfig``."""
