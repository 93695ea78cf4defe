"""Generation: KV-cached sampling from a decoder LM over token ids, encoder-decoder generation and
beam search for both, a text-level wrapper with stop strings and streaming, and chat (the
model's chat template, history kept), all on weights cast once to the generation dtype."""

from .sampling import (Completion, apply_repetition_penalty, generate, sample_next, top_k_filter,
                       top_p_filter)
from .seq2seq import (BeamCompletion, beam_search, beam_search_decoder, generate_seq2seq,
                      generate_tokens)
from .steps import DecoderStep, RecurrentStep, Seq2SeqStep
from .text import IncrementalDecoder, TextCompletion, generate_text
from .chat import ChatSession, generate_chat

__all__ = ["BeamCompletion", "ChatSession", "Completion", "DecoderStep", "IncrementalDecoder",
           "RecurrentStep", "Seq2SeqStep", "TextCompletion", "apply_repetition_penalty",
           "beam_search", "beam_search_decoder", "generate", "generate_chat", "generate_seq2seq",
           "generate_text", "generate_tokens", "sample_next", "top_k_filter", "top_p_filter"]
