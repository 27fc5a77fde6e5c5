"""Lesion / nodule detection building blocks, one implementation for 2D and 3D (the box rank follows the
coordinate count): boxes (`boxes`), anchors (`anchors`), box coding (`coder`), anchor matching (`matching`),
post-processing compiled into the inference program (`postprocess`), host-side metrics (`metrics`: COCO
mAP/AR, LUNA16 FROC/CPM, bootstrap intervals) and objects from label maps (`instances`: connected-component
boxes, the segmentation baseline). See docs/detection.md.
"""

from medjax.detection import anchors, boxes, coder, instances, matching, metrics, postprocess
from medjax.detection.postprocess import Detections, detect, flatten_levels

__all__ = ["Detections", "anchors", "boxes", "coder", "detect", "flatten_levels", "instances", "matching",
           "metrics", "postprocess"]
