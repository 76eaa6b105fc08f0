"""Widgets, one per file; sub-packages follow the tabs (presets, runs, monitor, data, chat)."""
