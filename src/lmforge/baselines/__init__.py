"""Non-neural baselines to put beside trained models in a perplexity table."""

from .ngram import NGramLM, evaluate_on_dataset, fit_on_dataset, modified_discounts

__all__ = ["NGramLM", "evaluate_on_dataset", "fit_on_dataset", "modified_discounts"]
