"""Fine-tuning for NLP tasks: task heads, labeled-data readers, task objectives for the one
training engine, and the metrics each task's community reports."""
