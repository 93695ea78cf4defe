"""Model compression: smaller, faster models from trained ones (distillation: :mod:`.distill`)."""
