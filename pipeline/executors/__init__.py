"""Executors run a plan's tasks through the one worker entry (pipeline.worker)."""
