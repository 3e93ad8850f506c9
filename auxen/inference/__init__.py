"""Inference: providers, the instance lifecycle, the OpenAI-compatible proxy, usage capture."""
