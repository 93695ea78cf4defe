"""Scaling studies: plan an isoFLOP sweep of a model family, run it through the training engine,
fit Chinchilla/Kaplan scaling laws to the results, predict bigger runs, search architectures."""
