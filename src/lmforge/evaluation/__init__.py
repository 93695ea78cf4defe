"""Evaluation: score text with a language model (log-probabilities, perplexity)."""

from .scoring import ScoreResult, TokenScore, score_ids, score_text, token_logprobs

__all__ = ["ScoreResult", "TokenScore", "score_ids", "score_text", "token_logprobs"]
