"""Serving models over HTTP: an OpenAI-compatible API with continuous batching
(:mod:`.engine`), task endpoints, metrics and a web playground (:mod:`.app`), run on uvicorn
(:mod:`.server`)."""
