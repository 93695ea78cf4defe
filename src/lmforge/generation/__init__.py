"""Generation: KV-cached sampling from a decoder LM over token ids, and a text-level wrapper with
stop strings and streaming."""

from .sampling import (Completion, apply_repetition_penalty, generate, sample_next, top_k_filter,
                       top_p_filter)
from .text import IncrementalDecoder, TextCompletion, generate_text

__all__ = ["Completion", "IncrementalDecoder", "TextCompletion", "apply_repetition_penalty",
           "generate", "generate_text", "sample_next", "top_k_filter", "top_p_filter"]
