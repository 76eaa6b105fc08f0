"""The monitor tab."""
