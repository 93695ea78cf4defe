"""Making models smaller and faster: quantization, pruning, and the `lmforge compress` report
that measures every variant side by side (distillation trains through the engine: see
:mod:`lmforge.objectives` and `lmforge distill`)."""
