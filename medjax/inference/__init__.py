"""Inference over whole volumes: sliding-window inference as one jitted XLA program."""

from medjax.inference.sliding_window import (
    gaussian_importance_map,
    importance_map,
    sliding_window_inference,
    window_starts,
)

__all__ = ["gaussian_importance_map", "importance_map", "sliding_window_inference", "window_starts"]
