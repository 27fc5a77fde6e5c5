"""DP-SGD (Abadi et al. 2016) inside medjax's one train step: per-example gradients, clipping, noise.

`config.privacy.enabled=True` (see `medjax keys privacy`) swaps the gradient computation of
`medjax.train.steps.make_train_step` for `make_dp_grads`' function; everything else (optimizer, state, strategies,
checkpoints, the loop) is unchanged. Per step, over the padded Poisson batch (`medjax.privacy.sampling`):

1. per-example gradients: `vmap(grad)` of the task's loss on a batch of one example, inside
   `medjax.models.ops.per_example_kernel_grads()` (convolution kernel gradients as batched matmuls: on a 2-core
   CPU the dp_icbm152 ResNet's step took 1.9x the CPU time of the non-private step at the same batch, against
   Opacus's 2.5x over a much slower step; docs/privacy.md); in chunks of `microbatch_size` examples per device
   (a `lax.scan` that adds up the clipped sums, so memory holds one chunk's gradients) when memory asks;
2. each example's gradient is scaled to an L2 norm (over all parameters) of at most `clip_norm`; padding rows
   (weight 0) count as zero;
3. the clipped gradients are summed and Gaussian noise of std `noise_multiplier * clip_norm` is added ONCE per
   global batch: drawn from `fold_in(step_key, NOISE_STREAM)`, the same on every device and process (under jit
   + sharding the draw is replicated; under pmap every device draws the same and the step's `pmean` keeps it);
4. the sum is divided by the expected batch size q N (`config.batch_size`), not by the number of examples drawn
   (which would depend on the private sample).

Training metrics are means over the real examples of the batch, plus `clip_fraction` (the share of them that
were clipped) and `examples` (how many there were).

Refused with a message: models with BatchNorm (its statistics mix examples; Opacus's ModuleValidator refuses it
too; `model.norm=group` or `instance` works), GAN tasks, `compute.grad_accum_steps > 1` (use `microbatch_size`),
`sampling=shuffle` (no accountant in dp-accounting covers shuffled batches; accounting them as Poisson
under-reports epsilon, Chua et al. 2024). Supported: `compute.precision=bfloat16` (the gradients and the noise
stay float32), `compute.remat`, `config.finetune` parameter freezing (frozen parameters get zero per-example
gradients, so they do not count in the clipped norm) and `init.from`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax.traverse_util import flatten_dict
from jax.flatten_util import ravel_pytree

from medjax.errors import MedjaxError
from medjax.models import ops
from medjax.privacy import accounting, sampling

NOISE_STREAM = 3  # folded into the step key for the noise (augmentation uses 1, gradient accumulation 2)
EXAMPLE_STREAM = 4  # folded into the step key, then each example's stream position: the task's per-example key
SAMPLINGS = ("poisson", "shuffle")


def is_enabled(config: ml_collections.ConfigDict) -> bool:
    return bool(config.privacy.enabled)


def check(config: ml_collections.ConfigDict, num_train: int) -> None:
    """Every `config.privacy` value (and the options it cannot combine with) checked before anything is built."""
    p = config.privacy
    if p.sampling not in SAMPLINGS:
        raise MedjaxError(f"unknown config.privacy.sampling={p.sampling!r}; known: {list(SAMPLINGS)}")
    if p.sampling == "shuffle":
        raise MedjaxError("config.privacy.sampling='shuffle': no accountant in dp-accounting covers shuffled "
                          "batches (accounting them as Poisson under-reports epsilon); use sampling='poisson'")
    accounting.check_accountant(p.accountant)
    if not 0 < p.delta < 1 / num_train:
        raise MedjaxError(f"config.privacy.delta={p.delta:g} must be in (0, 1/N) = (0, {1 / num_train:.3g}) for the "
                          f"{num_train} training examples: a larger delta allows leaking whole examples")
    if not p.clip_norm > 0:
        raise MedjaxError(f"config.privacy.clip_norm={p.clip_norm!r} must be > 0")
    if p.noise_multiplier < 0 or p.target_epsilon < 0:
        raise MedjaxError("config.privacy.noise_multiplier and target_epsilon must be >= 0")
    if p.noise_multiplier == 0 and p.target_epsilon == 0:
        raise MedjaxError("config.privacy: set noise_multiplier (sigma) or target_epsilon (sigma is then solved "
                          "for num_train_steps)")
    if p.microbatch_size < 0 or p.padded_batch_size < 0:
        raise MedjaxError("config.privacy.microbatch_size and padded_batch_size must be >= 0")
    if config.task.name == "detection":
        raise MedjaxError("config.privacy: detectors (task 'detection') do not train with DP-SGD yet: their focal and "
                          "box losses are normalised by the whole batch's anchor counts, not per example")
    if config.ensemble.size > 1:
        raise MedjaxError("config.ensemble.size > 1 does not combine with config.privacy: train the members as "
                          "separate DP-SGD runs (each spends its own budget on the same data)")
    if config.compute.grad_accum_steps != 1:
        raise MedjaxError("config.compute.grad_accum_steps > 1 does not combine with config.privacy (the clipped "
                          "sum is over the whole batch already): use config.privacy.microbatch_size for memory")


def check_model(config: ml_collections.ConfigDict, batch_stats: Any) -> None:
    """Refuse models with BatchNorm, naming one such layer, how many there are, and the fix."""
    layers = sorted({path.rsplit("/", 1)[0] for path in flatten_dict(dict(batch_stats or {}), sep="/")})
    if not layers:
        return
    fix = ("set config.model.norm=group (or instance)" if "norm" in config.model
           else "use a model with a `norm` option and set config.model.norm=group (or instance)")
    raise MedjaxError(f"config.privacy: model {config.model.name!r} has {len(layers)} BatchNorm layer(s) (e.g. "
                      f"{layers[0]!r}), whose batch statistics mix examples, so per-example gradients (DP-SGD) are "
                      f"not defined; {fix}")


def make_dp_grads(task: Any, clip_norm: float, noise_std: float, normalizer: float, axis_name: str | None = None,
                  chunks: int = 1, finetune: Any = None) -> Callable:
    """`(params, batch_stats, batch, step_key, step) -> (grads, batch_stats, metrics)`: the DP-SGD gradient
    (module docstring) in the form `medjax.train.steps.make_train_step` takes. Under pmap (`axis_name`) each device
    returns its share scaled so that the step's `pmean` gives the global value: (devices x local clipped sum +
    noise) / normalizer. `chunks` > 1 splits each device's rows into that many micro-batches."""
    from medjax.train.steps import micro_batches

    def example_grads(params, batch_stats, batch, step_key, step):
        keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(step_key, EXAMPLE_STREAM), batch["index"])

        def one(example, key):
            single = jax.tree.map(lambda x: x[None], example)
            (_, (_, metrics)), g = jax.value_and_grad(task.loss, has_aux=True)(params, batch_stats, single, key)
            return g, metrics

        with ops.per_example_kernel_grads():
            g, metrics = jax.vmap(one)(batch, keys)
        return (g if finetune is None else finetune.trainable(g, step)), metrics

    def clipped_sum(params, batch_stats, batch, step_key, step):
        g, metrics = example_grads(params, batch_stats, batch, step_key, step)
        norms = jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32)).reshape(leaf.shape[0], -1), axis=1)
                             for leaf in jax.tree.leaves(g)))
        real = (batch["weight"] > 0).astype(jnp.float32)
        scale = real * jnp.minimum(1.0, clip_norm / jnp.maximum(norms, jnp.finfo(jnp.float32).tiny))
        summed = jax.tree.map(lambda leaf: jnp.tensordot(scale, leaf.astype(jnp.float32), axes=1), g)
        sums = {k: jnp.sum(real * v) for k, v in metrics.items()}
        sums["clip_fraction"] = jnp.sum(real * (norms > clip_norm))
        return summed, sums, jnp.sum(real)

    def total(params, batch_stats, batch, step_key, step):
        if chunks == 1:
            return clipped_sum(params, batch_stats, batch, step_key, step)
        micro = micro_batches(batch, chunks)
        first = jax.tree.map(lambda x: x[0], micro)
        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(clipped_sum, params, batch_stats, first, step_key, step))

        def body(carry, mb):
            return jax.tree.map(jnp.add, carry, clipped_sum(params, batch_stats, mb, step_key, step)), None

        return jax.lax.scan(body, zeros, micro)[0]

    def dp_grads(params, batch_stats, batch, step_key, step):
        summed, sums, count = total(params, batch_stats, batch, step_key, step)
        devices = 1 if axis_name is None else jax.lax.psum(1, axis_name)
        examples = count if axis_name is None else jax.lax.psum(count, axis_name)
        flat, unravel = ravel_pytree(summed)
        noise = unravel(noise_std * jax.random.normal(jax.random.fold_in(step_key, NOISE_STREAM), flat.shape,
                                                      flat.dtype))
        grads = jax.tree.map(lambda s, z, p: ((devices * s + z) / normalizer).astype(p.dtype), summed, noise, params)
        metrics = {k: devices * v / jnp.maximum(examples, 1.0) for k, v in sums.items()}
        metrics["examples"] = examples
        return grads, batch_stats, metrics

    return dp_grads


@dataclasses.dataclass
class Plan:
    """A DP-SGD run: its mechanism (for the accountant), where it stops, its step's gradient and its batches."""

    mechanism: accounting.Mechanism
    clip_norm: float
    target_epsilon: float  # 0 = no budget
    final_step: int  # num_train_steps, or the last step within the budget
    select: sampling.PoissonSelect
    chunks: int  # micro-batches per step (config.privacy.microbatch_size), 1 = all examples at once
    _epsilon: dict = dataclasses.field(default_factory=dict, repr=False)

    def grads(self, task: Any, axis_name: str | None, finetune: Any = None) -> Callable:
        m = self.mechanism
        return make_dp_grads(task, self.clip_norm, m.noise_multiplier * self.clip_norm, m.batch_size, axis_name,
                             self.chunks, finetune)

    def epsilon(self, step: int) -> float:
        """epsilon at delta after `step` steps (remembered: the loop asks at every log)."""
        if step not in self._epsilon:
            self._epsilon[step] = self.mechanism.epsilon(step)
        return self._epsilon[step]

    def summary(self, num_train_steps: int) -> str:
        m = self.mechanism
        stop = (f"; the budget epsilon={self.target_epsilon:g} lasts {self.final_step} of {num_train_steps} steps, "
                f"the run stops there with a checkpoint" if self.final_step < num_train_steps else "")
        return (f"medjax: DP-SGD noise_multiplier={m.noise_multiplier:.4g}, clip_norm={self.clip_norm:g}, Poisson "
                f"q={m.q:.4g} (expected batch {m.batch_size} of {m.dataset_size}, padded to {m.padded_batch_size}), "
                f"{m.accountant}: epsilon={self.epsilon(self.final_step):.4g} at delta={m.delta:g} after "
                f"{self.final_step} steps{stop}")


def resolved(config: ml_collections.ConfigDict, plan: Plan) -> ml_collections.ConfigDict:
    """`config` (locked copy) with `privacy.noise_multiplier` the plan's (solved from target_epsilon when it was 0):
    what WORKDIR/config.json stores, so that a resume that would train on with another sigma (other steps, batch
    or budget) is refused by the resume guard instead of mis-accounting the steps already taken."""
    d = config.to_dict()
    d["privacy"]["noise_multiplier"] = float(plan.mechanism.noise_multiplier)
    out = ml_collections.ConfigDict(d)
    out.lock()
    return out


def make_plan(config: ml_collections.ConfigDict, num_train: int, num_devices: int, batch_stats: Any,
              verbose: bool = True) -> Plan:
    """The DP-SGD plan of a resolved config: checks (`check`, `check_model`), the noise multiplier (given, or
    solved for `target_epsilon` over num_train_steps), the padded batch size, the final step within the budget."""
    check(config, num_train)
    check_model(config, batch_stats)
    p = config.privacy
    steps, batch_size = int(config.num_train_steps), int(config.batch_size)
    if not 0 < batch_size <= num_train:
        raise MedjaxError(f"config.batch_size={batch_size} must be between 1 and the {num_train} training examples "
                          "(the expected Poisson batch, config.privacy)")
    multiple = num_devices * max(int(p.microbatch_size), 1)
    if p.padded_batch_size % multiple:
        raise MedjaxError(f"config.privacy.padded_batch_size={p.padded_batch_size} must be a multiple of the devices "
                          f"x microbatch_size ({multiple})")

    def mechanism(sigma: float, padded: int, delta: float = p.delta) -> accounting.Mechanism:
        return accounting.Mechanism(num_train, batch_size, padded, sigma, p.accountant, delta)

    def padded_for(sigma: float) -> int:
        return p.padded_batch_size or sampling.auto_padded_batch_size(num_train, batch_size, multiple, p.accountant,
                                                                      steps, p.delta, sigma)

    sigma = float(p.noise_multiplier)
    if sigma == 0:  # solved for the untruncated mechanism first (fast), at the delta rdp leaves after truncation
        delta = p.delta * (1 - accounting.TRUNCATION_SHARE) if p.accountant == "rdp" else p.delta
        sigma = accounting.solve_noise_multiplier(p.target_epsilon, steps,
                                                  lambda s: mechanism(s, num_train + 1, delta))
        padded = padded_for(sigma)
        if p.accountant == "pld" and padded <= num_train:  # then for the batches as cut (medjax.privacy.accounting)
            sigma = accounting.solve_noise_multiplier(p.target_epsilon, steps, lambda s: mechanism(s, padded),
                                                      guess=sigma)
    mech = mechanism(sigma, padded_for(sigma))
    if not math.isfinite(mech.epsilon(steps)):
        raise MedjaxError(f"config.privacy.padded_batch_size={mech.padded_batch_size} cuts too many batches for "
                          "accountant='rdp' to neglect: use accountant='pld' (exact for cut batches) or "
                          "padded_batch_size=0 (auto)")
    final = steps
    if p.target_epsilon > 0:
        final = mech.steps_within(p.target_epsilon, steps)
        if final == 0:
            raise MedjaxError(f"config.privacy.target_epsilon={p.target_epsilon:g} is spent by the first step at "
                              f"noise_multiplier={sigma:g}: raise noise_multiplier, or set it to 0 to solve it")
    plan = Plan(mech, float(p.clip_norm), float(p.target_epsilon), final,
                sampling.PoissonSelect(int(config.seed), num_train, batch_size, mech.padded_batch_size),
                mech.padded_batch_size // multiple if p.microbatch_size else 1)
    if verbose and jax.process_index() == 0:
        print(plan.summary(steps), file=sys.stderr, flush=True)
    return plan
