"""Run outputs a person reads: `metrics.jsonl`, TensorBoard events, and a training-curve PNG.

Only process 0 writes. On resume, records past the restored step (written by the killed run after its last
checkpoint) are dropped first, so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from medjax.viz import save_curves_png


def read_records(path: str) -> list[dict]:
    """All JSON records of a metrics.jsonl file (a torn last line from a killed run is skipped)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _atomic_write_lines(path: str, lines: list[str]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    value = float(value)
    return value if math.isfinite(value) else str(value)


class MetricLog:
    """Appends `{"step", "split", ...metrics}` records to jsonl and TensorBoard (`<split>/<name>` tags)."""

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.plot_path = os.path.join(workdir, "plots", "training_curves.png")
        self._tb = None
        if not enabled:
            return
        os.makedirs(os.path.dirname(self.plot_path), exist_ok=True)
        kept = [r for r in read_records(self.path) if resume_step is not None and r.get("step", 0) <= resume_step]
        _atomic_write_lines(self.path, [json.dumps(r) + "\n" for r in kept])
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in metrics.items():
            self._tb.add_scalar(f"{split}/{key}", float(value), int(step))

    def plot(self) -> None:
        if self.enabled:
            save_curves_png(self.plot_path, read_records(self.path))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
