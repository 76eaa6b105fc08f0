"""Checkpoints: the on-disk format, finding the one a user means, and export to Hugging Face and GGUF."""
