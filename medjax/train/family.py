"""Task families: what the one training loop (`medjax.train.loop.train` / `evaluate`) asks of a kind of task.

A family turns a config into a setup that implements `RunSetup`; the loop does the rest (resume, steps, logging,
divergence stops, validation, checkpoints, timing) the same way for all of them. The registry `FAMILIES` maps a
family name to its setup builder and `family_of` reads the name from `config.task.name`. A new kind of task
(detection, DP-SGD training) registers here instead of copying the loop.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import ml_collections

# family -> "module:function" that builds its setup (imported on use: no family is loaded that a run does not need)
FAMILIES: dict[str, str] = {
    "supervised": "medjax.train.loop:supervised_setup",
    "gan": "medjax.gan.loop:setup",
}


class RunSetup(Protocol):
    """Everything one run needs, built from its config before the first step."""

    config: ml_collections.ConfigDict  # resolved against the data
    workdir: str
    strategy: Any
    splits: dict

    @property
    def is_main(self) -> bool: ...  # process 0 writes files

    def checkpoints(self, read_only: bool = False) -> Any: ...  # medjax.train.checkpoint.Checkpoints
    def abstract_state(self) -> Any: ...  # the canonical state's shapes (for restoring)
    def initial_state(self) -> Any: ...  # the state of a run that starts now (on the strategy's devices)
    def start(self) -> None: ...  # before the first step (e.g. a GAN writes its intensity range)
    def train_stream(self) -> Any: ...  # host batches with next / get_state / set_state
    def train_step_fn(self) -> Any: ...  # the uncompiled (state, batch) -> (state, metrics) step
    def validate(self, state: Any, canonical: Any, step: int) -> dict[str, float]: ...
    def non_finite(self, host: list[tuple[int, dict]]) -> str | None: ...  # why these steps diverged, or None
    def check_record(self, step: int, record: dict[str, float]) -> str | None: ...  # e.g. a pinned GAN loss
    def final_step(self) -> int: ...  # the last step to train: num_train_steps, or less (a privacy budget)
    def host_record(self, step: int) -> dict[str, float]: ...  # host-side numbers logged with step's metrics
    def postfix(self, record: dict[str, float]) -> dict[str, str]: ...  # the progress bar's numbers
    def evaluate_checkpoint(self, canonical: Any, step: int, split: str) -> dict[str, Any]: ...


class SetupBase:
    """What every family's setup does the same way from its `config`, `workdir`, `strategy` and `create` (the pure
    function that builds a fresh state): process 0 writes, checkpoints from `config.checkpoint`, the canonical
    state's shapes."""

    @property
    def is_main(self) -> bool:
        import jax

        return jax.process_index() == 0

    def checkpoints(self, read_only: bool = False) -> Any:
        from medjax.train.checkpoint import Checkpoints

        c = self.config.checkpoint
        return Checkpoints(self.workdir, max_to_keep=c.max_to_keep, best_metric=c.best_metric or None,
                           best_mode=c.best_mode, read_only=read_only)

    def abstract_state(self) -> Any:
        import jax

        return self.strategy.abstract_canonical(jax.eval_shape(self.create))

    def final_step(self) -> int:
        """`config.num_train_steps`: the run trains to the end unless a family stops earlier on purpose (DP-SGD
        when its privacy budget is spent), with a checkpoint, as at the end."""
        return int(self.config.num_train_steps)

    def host_record(self, step: int) -> dict[str, float]:
        """Numbers known on the host for `step`, logged with its train metrics and in eval.json (none by
        default; DP-SGD: the epsilon spent)."""
        return {}


def family_of(config: ml_collections.ConfigDict) -> str:
    """`gan` for the GAN tasks (gan, pix2pix, super_resolution), `supervised` for every other task."""
    from medjax.gan.task import TASKS as GAN_TASKS

    return "gan" if config.task.name in GAN_TASKS else "supervised"


def setup(config: ml_collections.ConfigDict, workdir: str, devices=None) -> RunSetup:
    """The setup of `config`'s family (`devices` restricts the mesh; default every device), on the config
    completed by the schema (a config built in Python may leave any defaulted key out)."""
    from medjax import schema
    from medjax.train import ensemble

    config = schema.complete(config)
    family = family_of(config)
    ensemble.check(config, family)
    module, _, function = FAMILIES[family].partition(":")
    return getattr(importlib.import_module(module), function)(config, workdir, devices)
