"""Evaluation: score text with a language model (log-probabilities, perplexity; an encoder's
pseudo-log-likelihood), fill in [MASK]s with an encoder, and embed sentences."""

from .embeddings import embed
from .fill_mask import Prediction, fill_in, fill_mask
from .pseudo_likelihood import pll_score_text, pll_token_logprobs
from .scoring import ScoreResult, TokenScore, score_ids, score_text, token_logprobs

__all__ = ["Prediction", "ScoreResult", "TokenScore", "embed", "fill_in", "fill_mask",
           "pll_score_text", "pll_token_logprobs", "score_ids", "score_text", "token_logprobs"]
