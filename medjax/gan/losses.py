"""Adversarial losses and the R1 gradient penalty, as pure functions of discriminator logits.

Kinds (`LOSSES`), with D's logits on real data r and on generated data f (means over every logit, so a PatchGAN's
map of logits counts each patch once):

* `non_saturating` (Goodfellow et al. 2014, the -log D trick): D: softplus(-r) + softplus(f); G: softplus(-f).
* `hinge` (Lim & Ye 2017; SAGAN, BigGAN): D: relu(1 - r) + relu(1 + f); G: -f.
* `least_squares` (Mao et al. 2017, LSGAN with targets 0 / 1): D: ((r - 1)^2 + f^2) / 2; G: (f - 1)^2 / 2.

`r1_penalty` is gamma / 2 * E ||grad_x D(x)||^2 on real images (Mescheder et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from medjax.errors import MedjaxError

LOSSES = ("non_saturating", "hinge", "least_squares")


def check_kind(kind: str) -> None:
    if kind not in LOSSES:
        raise MedjaxError(f"unknown GAN loss {kind!r}; expected one of {', '.join(LOSSES)}")


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, kind: str) -> jax.Array:
    """D's loss: push real logits up and generated ones down (the sum of both halves' means)."""
    check_kind(kind)
    r, f = jnp.asarray(real_logits, jnp.float32), jnp.asarray(fake_logits, jnp.float32)
    if kind == "non_saturating":
        return jnp.mean(jax.nn.softplus(-r)) + jnp.mean(jax.nn.softplus(f))
    if kind == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
    return 0.5 * (jnp.mean((r - 1.0) ** 2) + jnp.mean(f**2))


def generator_loss(fake_logits: jax.Array, kind: str) -> jax.Array:
    """G's adversarial loss on D's logits for generated data."""
    check_kind(kind)
    f = jnp.asarray(fake_logits, jnp.float32)
    if kind == "non_saturating":
        return jnp.mean(jax.nn.softplus(-f))
    if kind == "hinge":
        return -jnp.mean(f)
    return 0.5 * jnp.mean((f - 1.0) ** 2)


def r1_penalty(logits_fn: Callable[[jax.Array], jax.Array], real: jax.Array, gamma: float) -> jax.Array:
    """gamma / 2 * mean over examples of ||d sum(logits) / d x||^2, with `logits_fn(real)` D's logits."""
    grads = jax.grad(lambda x: jnp.sum(logits_fn(x)))(real)
    return 0.5 * gamma * jnp.mean(jnp.sum(jnp.reshape(grads, (grads.shape[0], -1)) ** 2, axis=1))
