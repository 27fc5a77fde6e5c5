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

Gradient accumulation (`accum_steps` N > 1, `config.compute.grad_accum_steps`) splits the (augmented) batch into
N micro-batches, example i to micro-batch i mod N, and runs them one after another in a `lax.scan` (one
micro-batch's activations alive at a time). On CPU the scan is unrolled (`lax.platform_dependent`): XLA:CPU runs
a loop body with convolutions about 20x slower, and there the unrolled form saves no memory, only the larger
effective batch (`medjax/bench/train_options.py compute`). Gradients and metrics are averaged,
the BatchNorm statistics thread from one micro-batch to the next, and micro-batch j's loss key is
`fold_in(fold_in(step_key, MICRO_STREAM), j)`. N = 1 is exactly the plain step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from medjax import rng
from medjax.inference.predictive import predictive_logits
from medjax.train.state import TrainState

AUGMENT_STREAM = 1  # folded into the step key for augmentation; the task's own randomness uses the step key
MICRO_STREAM = 2  # folded into the step key for the micro-batches of gradient accumulation


def micro_batches(batch: dict, n: int) -> dict:
    """(B, ...) leaves -> (n, B / n, ...): micro-batch j holds examples j, j + n, ... (a reshape keeps every
    device's contiguous rows spread evenly over the micro-batches)."""
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} examples is not divisible into {n} micro-batches")
        return jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(task, tx: optax.GradientTransformation, axis_name: str | None = None,
                    augment: Callable[[jax.Array, dict], dict] | None = None, finetune=None,
                    accum_steps: int = 1, dp_grads: Callable | None = None) -> Callable:
    """`train_step(state, batch) -> (state, metrics)`: augment (optional), loss, gradients (accumulated over
    `accum_steps` micro-batches), one optimizer update. `dp_grads` `(params, batch_stats, batch, step_key, step) ->
    (grads, batch_stats, metrics)` replaces the gradient computation (DP-SGD: `medjax.privacy.dpsgd`)."""

    def grads_of(params, batch_stats, batch, key, step):
        def loss_fn(p):
            return task.loss(p, batch_stats, batch, key)

        if finetune is not None:
            loss_fn = finetune.wrap_loss(loss_fn, batch_stats, step)
        (_, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, batch_stats, metrics

    def accumulated(params, batch_stats, batch, step_key, step):
        micro_key = jax.random.fold_in(step_key, MICRO_STREAM)
        micro = micro_batches(batch, accum_steps)

        def body(carry, xs):
            grad_sum, stats, metric_sum = carry
            j, mb = xs
            grads, stats, metrics = grads_of(params, stats, mb, jax.random.fold_in(micro_key, j), step)
            return (jax.tree.map(jnp.add, grad_sum, grads), stats, jax.tree.map(jnp.add, metric_sum, metrics)), None

        def init(batch_stats, micro):
            first = jax.tree.map(lambda x: x[0], micro)
            zero_metrics = jax.tree.map(jnp.zeros_like, jax.eval_shape(
                lambda: grads_of(params, batch_stats, first, micro_key, step)[2]))
            return jax.tree.map(jnp.zeros_like, params), batch_stats, zero_metrics

        def scanned(batch_stats, micro):  # one compiled body, one micro-batch's activations alive at a time
            return jax.lax.scan(body, init(batch_stats, micro), (jnp.arange(accum_steps), micro))[0]

        def unrolled(batch_stats, micro):  # XLA:CPU runs a scan body with convolutions ~20x slower
            return jax.lax.scan(body, init(batch_stats, micro), (jnp.arange(accum_steps), micro), unroll=True)[0]

        grad_sum, batch_stats, metric_sum = jax.lax.platform_dependent(
            batch_stats, micro, cpu=unrolled, default=scanned)
        mean = lambda tree: jax.tree.map(lambda v: v / accum_steps, tree)  # noqa: E731
        return mean(grad_sum), batch_stats, mean(metric_sum)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(rng.from_data(state.rng), state.step)
        if augment is not None:
            batch = augment(jax.random.fold_in(step_key, AUGMENT_STREAM), batch)

        if dp_grads is not None:
            grads, batch_stats, metrics = dp_grads(state.params, state.batch_stats, batch, step_key, state.step)
        elif accum_steps == 1:
            grads, batch_stats, metrics = grads_of(state.params, state.batch_stats, batch, step_key, state.step)
        else:
            grads, batch_stats, metrics = accumulated(state.params, state.batch_stats, batch, step_key, state.step)
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


def make_eval_step(task, members: int = 0, **score) -> Callable:
    """`eval_step(state, batch) -> per-example outputs` of the model, or of an ensemble's mean prediction
    (`members` K > 0: the state's leaves carry a member axis); `score` goes to `task.outputs_from_logits` (e.g.
    `per_case=True`)."""
    def eval_step(state: TrainState, batch: dict) -> dict:
        if not members:  # the task's own outputs (a bag task's need more than the image)
            return task.eval_outputs(state.params, state.batch_stats, batch, **score)
        logits = predictive_logits(task, state.params, state.batch_stats, batch["image"], members)
        return task.outputs_from_logits(logits, batch, **score)

    return eval_step
