"""The GAN train state and its jitted step: one discriminator update, then one generator update, then EMA.

The state is a plain pytree (like `medjax.train.state.TrainState`), so the supervised strategies (`sharding`,
`pmap`), checkpoints and donation apply unchanged. Randomness: the latent vectors of step s come from
`fold_in(rng, s)` and are drawn for the whole global batch, then each pmap device takes its rows, so both
strategies see the same numbers. A step whose losses or gradients are not finite leaves the state as it was
(except the step counter) and reports `finite=0`; the loop stops at the next metrics flush, so no checkpoint
ever holds non-finite weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from medjax import rng
from medjax.gan import losses
from medjax.gan.task import GANTask, apply, feature_matching


@flax.struct.dataclass
class GANState:
    step: jax.Array
    g_params: Any
    g_stats: Any
    d_params: Any
    d_stats: Any
    g_opt: Any
    d_opt: Any
    ema_params: Any  # exponential moving average of g_params (what evaluation and sampling use)
    rng: jax.Array


def latents(key: jax.Array, local_batch: int, latent_dim: int, axis_name: str | None) -> jax.Array:
    """Standard normal latent vectors for this device's rows of the global batch."""
    if axis_name is None:
        return jax.random.normal(key, (local_batch, latent_dim))
    n = jax.lax.psum(1, axis_name)
    z = jax.random.normal(key, (local_batch * n, latent_dim))
    return jax.lax.dynamic_slice_in_dim(z, jax.lax.axis_index(axis_name) * local_batch, local_batch)


def create_gan_state(task: GANTask, g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
                     seed: int, example: dict) -> GANState:
    """Initialise both networks and optimizers from `seed` (pure: run under jit with out_shardings)."""
    g_key, d_key, z_key, train_key = jax.random.split(rng.key(seed), 4)
    example = {k: jnp.asarray(v) for k, v in example.items()}
    z = jax.random.normal(z_key, (example["image"].shape[0], task.latent_dim)) if task.name == "gan" else None
    g_vars = task.generator.init(g_key, *task.generator_inputs(example, z), train=False)
    d_vars = task.discriminator.init(d_key, *task.discriminator_inputs(example, task.real(example)), train=False)
    return GANState(step=jnp.zeros((), jnp.int32), g_params=g_vars["params"], g_stats=g_vars.get("batch_stats", {}),
                    d_params=d_vars["params"], d_stats=d_vars.get("batch_stats", {}),
                    g_opt=g_tx.init(g_vars["params"]), d_opt=d_tx.init(d_vars["params"]),
                    ema_params=g_vars["params"], rng=rng.to_data(train_key))


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_gan_step(task: GANTask, g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
                  ema_decay: float, axis_name: str | None) -> Callable:
    """(state, batch) -> (state, metrics); pmean over `axis_name` under pmap."""

    def mean(x):
        return jax.lax.pmean(x, axis_name) if axis_name else x

    def step(state: GANState, batch: dict) -> tuple[GANState, dict]:
        key = jax.random.fold_in(rng.from_data(state.rng), state.step)
        z = latents(key, batch["image"].shape[0], task.latent_dim, axis_name) if task.name == "gan" else None
        g_inputs = task.generator_inputs(batch, z)
        real = task.real(batch)

        # Discriminator: real against the current generator's samples (no gradient into G).
        fake, _ = apply(task.generator, state.g_params, state.g_stats, *g_inputs, train=True)
        fake = jax.lax.stop_gradient(fake)

        def d_objective(d_params):
            real_logits, stats = apply(task.discriminator, d_params, state.d_stats,
                                       *task.discriminator_inputs(batch, real), train=True)
            fake_logits, stats = apply(task.discriminator, d_params, stats,
                                       *task.discriminator_inputs(batch, fake), train=True)
            loss = losses.discriminator_loss(real_logits, fake_logits, task.loss)
            penalty = jnp.zeros(())
            if task.r1_gamma:
                def logits_of(x):
                    return apply(task.discriminator, d_params, stats, *task.discriminator_inputs(batch, x),
                                 train=False)[0]
                penalty = losses.r1_penalty(logits_of, real, task.r1_gamma)
            aux = {"d_real_logit": jnp.mean(real_logits), "d_fake_logit": jnp.mean(fake_logits), "r1": penalty,
                   "d_adversarial": loss}
            return loss + penalty, (stats, aux)

        if task.trains_discriminator:
            (d_loss, (d_stats, d_aux)), d_grads = jax.value_and_grad(d_objective, has_aux=True)(state.d_params)
            d_grads = mean(d_grads)
            if axis_name:
                d_stats = jax.tree.map(mean, d_stats)
            d_updates, d_opt = d_tx.update(d_grads, state.d_opt, state.d_params)
            d_params = optax.apply_updates(state.d_params, d_updates)
        else:
            d_loss, d_stats, d_grads = jnp.zeros(()), state.d_stats, {}
            d_aux = {k: jnp.zeros(()) for k in ("d_real_logit", "d_fake_logit", "r1", "d_adversarial")}
            d_opt, d_params = state.d_opt, state.d_params

        # Generator: fool the updated discriminator (its statistics frozen here) and match the target.
        def g_objective(g_params):
            fake, g_stats = apply(task.generator, g_params, state.g_stats, *g_inputs, train=True)
            fake_logits, features = jnp.zeros(()), None
            if task.trains_discriminator:
                fake_logits, _ = apply(task.discriminator, d_params, d_stats,
                                       *task.discriminator_inputs(batch, fake), train=False)
            if task.feature_weight and task.trains_discriminator:
                features = feature_matching(task.discriminator, d_params, d_stats,
                                            task.discriminator_inputs(batch, real),
                                            task.discriminator_inputs(batch, fake))
            loss, aux = task.generator_objective(fake_logits, fake, batch, features)
            return loss, (g_stats, aux)

        (g_loss, (g_stats, g_aux)), g_grads = jax.value_and_grad(g_objective, has_aux=True)(state.g_params)
        g_grads = mean(g_grads)
        if axis_name:
            g_stats = jax.tree.map(mean, g_stats)
        g_updates, g_opt = g_tx.update(g_grads, state.g_opt, state.g_params)
        g_params = optax.apply_updates(state.g_params, g_updates)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, g_params)

        metrics = mean({"d_loss": d_loss, "g_loss": g_loss, **d_aux, **g_aux})
        finite = _all_finite((metrics, d_grads, g_grads))
        new = state.replace(g_params=g_params, g_stats=g_stats, d_params=d_params, d_stats=d_stats, g_opt=g_opt,
                            d_opt=d_opt, ema_params=ema)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        metrics["finite"] = finite.astype(jnp.float32)
        return new.replace(step=state.step + 1), metrics

    return step
