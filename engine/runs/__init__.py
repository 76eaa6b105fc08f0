"""Runs: the run directory (status, lock, heartbeat, detached launch), the pipeline of stages, and tracking."""
