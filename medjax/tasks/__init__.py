"""Task objects: one per kind of problem, built from config by `make_task`."""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from medjax.errors import MedjaxError
from medjax.tasks.classification import ClassificationTask
from medjax.tasks.detection import DetectionTask
from medjax.tasks.mil import MILTask
from medjax.tasks.regression import RegressionTask
from medjax.tasks.segmentation import SegmentationTask
from medjax.train import compute

TASKS = {"segmentation": SegmentationTask, "classification": ClassificationTask, "regression": RegressionTask,
         "mil": MILTask, "detection": DetectionTask}


def make_task(config: ml_collections.ConfigDict, class_names: Sequence[str], axis_name: str | None = None):
    """Build `config.task.name`'s task with `config.model` (under `config.compute`'s precision and remat)."""
    if config.task.name not in TASKS:
        raise MedjaxError(f"unknown config.task.name={config.task.name!r}; known: {sorted(TASKS)}")
    return TASKS[config.task.name](config.task, compute.model_config(config), class_names, axis_name)


def prepare_data(config: ml_collections.ConfigDict, data):
    """The loaded dataset as `config.task.name`'s task needs it (a task may define `prepare_data(data, config)`:
    detection adds boxes to segmentation data); unchanged for the others."""
    task = TASKS.get(config.task.name)
    return task.prepare_data(data, config) if hasattr(task, "prepare_data") else data
