"""Fréchet distance of generated images on the features of a medjax encoder (not ImageNet's Inception-v3).

FID's Inception-v3 was trained on ImageNet photographs: its features describe dogs and textures, not MRI
contrast or tissue boundaries, it expects 299 px RGB, and its weights cannot be fetched here anyway. medjax
therefore measures synthesis on the penultimate features (the input of the `head` layer) of a classifier trained
with medjax on the same kind of images: the distance then means "how differently does a model of this data see
real and generated images". Numbers are comparable only between runs that use the same encoder checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from medjax.errors import MedjaxError
from medjax.image_metrics import frechet_distance


def penultimate_features(model: nn.Module, variables: Any, images: jax.Array, head: str = "head") -> jax.Array:
    """The input of `model`'s layer named `head` for `images` (eval mode), flattened to (N, F)."""
    captured = []

    def grab(next_fun, args, kwargs, context):
        if context.module.name == head and context.method_name == "__call__":
            captured.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
        model.apply(variables, images, train=False)
    if not captured:
        raise MedjaxError(f"model {type(model).__name__} has no layer named {head!r} to take features from")
    return captured[-1].reshape((images.shape[0], -1))


def load_encoder(config: ml_collections.ConfigDict, workdir: str, which: str = "best"
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """images (N, *spatial, C) -> (N, F) features, from a medjax classification run's checkpoint."""
    from medjax.train.loop import restore_checkpoint, setup
    from medjax.train.parallel import replicated_to_host

    s = setup(config, workdir)
    if not hasattr(s.task, "model"):
        raise MedjaxError(f"{workdir}: task {config.task.name!r} has no model to take features from")
    state, _, _ = restore_checkpoint(s, workdir, which)
    params, stats = replicated_to_host((state.params, state.batch_stats))
    variables = {"params": params, **({"batch_stats": stats} if stats else {})}
    encode = jax.jit(lambda x: penultimate_features(s.task.model, variables, x))
    return lambda images: np.asarray(encode(np.asarray(images, np.float32)))


def encoder_frechet_distance(encode: Callable[[np.ndarray], np.ndarray], real: np.ndarray, fake: np.ndarray,
                             batch_size: int = 64) -> float:
    """Fréchet distance between the encoder's features of `real` and of `fake` images."""
    def features(images):
        return np.concatenate([encode(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    return frechet_distance(features(real), features(fake))
