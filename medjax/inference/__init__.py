"""Inference over whole volumes: sliding-window inference as one jitted XLA program, or with host-side blending
for datasets whose volumes differ in shape (`sliding_window_volume`); sliding-window detection
(`sliding_window_detect`: windows' detections shifted and merged)."""

from medjax.inference.detection import sliding_window_detect
from medjax.inference.sliding_window import (
    gaussian_importance_map,
    importance_map,
    sliding_window_inference,
    sliding_window_volume,
    window_starts,
)

__all__ = ["gaussian_importance_map", "importance_map", "sliding_window_inference", "sliding_window_detect",
           "sliding_window_volume", "window_starts"]
