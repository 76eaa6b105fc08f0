"""The presets tab."""
