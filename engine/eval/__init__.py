"""Evaluation: scoring what a model answers (held-out exact match today; bits per byte and multiple choice next)."""
