"""Orbax checkpoints behind one small wrapper: the latest N for resume, the best-by-metric one for evaluation.

Each checkpoint holds two items: `state` (the replicated TrainState, `StandardSave`) and `data` (the loader
position, JSON). Orbax writes into a temporary directory and renames it when complete, so a run killed at any
moment leaves either a whole checkpoint or none; leftover temporaries are removed on the next start. Saves are
asynchronous; `wait()` blocks until they are on disk.
"""

from __future__ import annotations

import errno
import functools
import glob
import os
import shutil
from typing import Any

import orbax.checkpoint as ocp

from medjax.errors import MedjaxError


class CheckpointDiskFull(MedjaxError):
    """A checkpoint could not be written for lack of disk space; the previous checkpoints are intact."""


def _disk_full(error: BaseException) -> bool:
    """Whether `error`, or anything in its cause/context chain, is ENOSPC (Orbax wraps the OSError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


def last_intact_step(workdir: str) -> int | None:
    """The newest finished checkpoint's step under `workdir` (Orbax renames a save into place when it is
    complete: a partial one is still named *.orbax-checkpoint-tmp*), or None."""
    latest_dir = os.path.join(workdir, "checkpoints")
    steps = [int(d) for d in os.listdir(latest_dir) if d.isdigit()] if os.path.isdir(latest_dir) else []
    return max(steps, default=None)


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _reports_disk_full(method):
    """Turn a disk-full failure of a save (or of waiting for an async one) into one `CheckpointDiskFull` naming
    the workdir, the space one checkpoint needs and the last intact checkpoint, after removing the partial save."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            if not _disk_full(e):
                raise
            raise self.disk_full_error() from e

    return wrapper


def _manager(directory: str, name: str, **options: Any) -> ocp.CheckpointManager:
    """One manager; `name` prefixes its cross-process barrier keys. Without it the latest and best managers saving
    the same step both wait at `_async_write_complete.<step>` and a multi-process run fails ("barrier already
    ongoing") whenever one process reaches the second save while another is still in the first."""
    options = ocp.CheckpointManagerOptions(
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name), **options)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "data"))


class Checkpoints:
    """`<workdir>/checkpoints` (latest `max_to_keep`) and `<workdir>/best` (the single best by `best_metric`)."""

    def __init__(self, workdir: str, max_to_keep: int = 2, best_metric: str | None = None, best_mode: str = "max",
                 read_only: bool = False):
        if best_mode not in ("max", "min"):
            raise MedjaxError(f"config.checkpoint.best_mode must be 'max' or 'min', got {best_mode!r}")
        common = dict(enable_async_checkpointing=True, cleanup_tmp_directories=not read_only,
                      create=not read_only, read_only=read_only)
        self.workdir = workdir
        self.best_metric = best_metric
        self.best_mode = best_mode
        self._best_value: float | None = None  # the best value offered by this process (None after a restart)
        self.latest = _manager(os.path.join(workdir, "checkpoints"), "latest", max_to_keep=max_to_keep, **common)
        self.best = None
        if best_metric:
            self.best = _manager(os.path.join(workdir, "best"), "best", max_to_keep=1,
                                 best_fn=lambda m: m[best_metric], best_mode=best_mode,
                                 keep_checkpoints_without_metrics=False, **common)

    @staticmethod
    def _args(state: Any, data_state: dict) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))

    def disk_full_error(self) -> CheckpointDiskFull:
        """Remove partial saves (Orbax's temporaries) and describe what is left, for the disk-full report."""
        for manager in (self.latest, self.best):
            if manager is not None:
                try:  # let saves still in flight finish (or fail) before their temporaries are removed
                    manager.wait_until_finished()
                except Exception:  # noqa: BLE001  (the disk-full error is the one to report)
                    pass
        for pattern in ("checkpoints/*.orbax-checkpoint-tmp*", "best/*.orbax-checkpoint-tmp*"):
            for tmp in glob.glob(os.path.join(self.workdir, pattern)):
                shutil.rmtree(tmp, ignore_errors=True)
        latest_dir = os.path.join(self.workdir, "checkpoints")
        last = last_intact_step(self.workdir)
        free = f"{shutil.disk_usage(self.workdir).free / 2**20:.1f} MiB are free"
        if last is None:
            where = f"{free}; the partial save was removed and no checkpoint was written yet"
        else:
            need = _dir_bytes(os.path.join(latest_dir, str(last))) / 2**20
            where = (f"one checkpoint needs about {need:.1f} MiB, {free}; the partial save was removed and the last "
                     f"intact checkpoint is step {last} in {latest_dir}")
        return CheckpointDiskFull(f"disk full while writing a checkpoint in {self.workdir}: {where} (rerun the "
                                  "same command to resume once there is space)")

    @_reports_disk_full
    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Start an async save of the latest state (no-op if this step is already saved)."""
        if step not in self.latest.all_steps():
            self.latest.save(step, args=self._args(state, data_state), force=True)

    @_reports_disk_full
    def save_best(self, step: int, state: Any, data_state: dict, metrics: dict) -> None:
        """Offer the state to the best-checkpoint manager; Orbax keeps it only if `best_metric` improved. A value
        worse than the best this process already offered is not written at all (writing a whole checkpoint that
        Orbax deletes at once cost a save per epoch in the MedMNIST protocol)."""
        if self.best is None:
            return
        if self.best_metric not in metrics:
            raise MedjaxError(f"config.checkpoint.best_metric={self.best_metric!r} is not an eval metric; "
                              f"available: {sorted(metrics)}")
        value = float(metrics[self.best_metric])
        best = self._best_value
        if best is not None and (value < best if self.best_mode == "max" else value > best):
            return
        self._best_value = value
        if step not in self.best.all_steps():
            self.best.save(step, args=self._args(state, data_state), metrics={k: float(v) for k, v in metrics.items()},
                           force=True)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, abstract_state: Any, which: str = "latest") -> tuple[Any, dict, int, str]:
        """Restore (state, data_state, step, which) from `latest` or `best`; `best` falls back to the latest
        checkpoint when no validation has run, and the returned `which` says which one it was."""
        manager, step = self.latest, self.latest.latest_step()
        if which == "best" and self.best is not None and self.best.best_step() is not None:
            manager, step = self.best, self.best.best_step()
        else:
            which = "latest"
        if step is None:
            raise MedjaxError(f"no checkpoint found in {manager.directory}")
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["data"]), step, which

    @_reports_disk_full
    def wait(self) -> None:
        self.latest.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        if self.best is not None:
            self.best.close()
