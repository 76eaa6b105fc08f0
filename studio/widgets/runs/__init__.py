"""The runs tab."""
