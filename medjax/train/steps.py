"""Pure step bodies: `(state, batch) -> (state, metrics)` and `(state, batch) -> per-example outputs`.

The same body serves both strategies; under pmap (`axis_name` set) gradients and metrics are averaged across
devices explicitly, under jit + sharding XLA does it from the shardings.

Augmentation (`augment(key, batch) -> batch`, from `medjax.data.augment.make_augment`) runs inside the jitted
step, on the device, before the forward pass. Its key is `fold_in(step_key, AUGMENT_STREAM)` and each example
then folds in its global index, so what an example sees depends on the seed, the step and the example only: not
on the batch split across devices or processes, and a resumed run replays it exactly.

Fine-tuning (`finetune`, a `medjax.train.finetune.Plan`, None without `config.finetune`) may freeze BatchNorm
statistics in the forward pass (always, or during a linear probe) and makes `grad_norm` measure the gradients of
the parameters that train at this step; without it the step is exactly the plain one.
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

from medjax import rng
from medjax.train.state import TrainState

AUGMENT_STREAM = 1  # folded into the step key for augmentation; the task's own randomness uses the step key


def make_train_step(task, tx: optax.GradientTransformation, axis_name: str | None = None,
                    augment: Callable[[jax.Array, dict], dict] | None = None, finetune=None) -> Callable:
    """`train_step(state, batch) -> (state, metrics)`: augment (optional), loss, gradients, one optimizer update."""

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(rng.from_data(state.rng), state.step)
        if augment is not None:
            batch = augment(jax.random.fold_in(step_key, AUGMENT_STREAM), batch)

        def loss_fn(params):
            return task.loss(params, state.batch_stats, batch, step_key)

        if finetune is not None:
            loss_fn = finetune.wrap_loss(loss_fn, state.batch_stats, state.step)
        (_, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if finetune is not None:
            grads = finetune.trainable(grads, state.step)  # only for the metric; the optimizer masks its own
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(task) -> Callable:
    def eval_step(state: TrainState, batch: dict) -> dict:
        return task.eval_outputs(state.params, state.batch_stats, batch)

    return eval_step
