"""Test-time augmentation: draws of config.augment, segmentation maps mapped back exactly (flips, rot90)."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from medjax.data import augment
from medjax.errors import MedjaxError
from medjax.inference import predictive
from medjax.inference.tta import check as tta_check
from medjax.inference.tta import invert, make_tta
from medjax.tasks.segmentation import SegmentationTask


def _cfg(*names, **p):
    cfg = augment.default_config(names)
    for name, value in p.items():
        cfg[name].p = value
    return cfg


def test_flips_and_quarter_turns_are_undone_exactly():
    image = np.random.default_rng(0).normal(size=(6, 5, 5, 2)).astype(np.float32)
    draw = make_tta(_cfg("flip", "rot90"), (5, 5), dense=True)
    batch = {"image": image, "index": np.arange(6, dtype=np.int32)}
    moved, draw = 0, jax.jit(draw)
    for t in range(3):
        aug, voxels = draw(jax.random.key(t), batch)
        moved += int(np.sum(np.any(np.asarray(aug) != image, axis=(1, 2, 3))))
        np.testing.assert_array_equal(invert(aug, voxels), image)  # the augmented image is a permutation
    assert moved > 0  # some examples were flipped or turned


def test_tta_of_an_equivariant_model_agrees_with_itself():
    """A "model" whose logits are its input: every inverted draw equals the un-augmented prediction, so the
    draws agree exactly (zero mutual information)."""

    class Identity(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            return x

    task = SegmentationTask(ml_collections.ConfigDict({"num_classes": 3}),
                            ml_collections.ConfigDict({"name": "unet", "features": (4, 8)}), [])
    task.model = Identity()
    image = np.random.default_rng(1).normal(size=(2, 4, 4, 3)).astype(np.float32)
    state = type("S", (), {"params": {}, "batch_stats": {}})
    sample = predictive.sampler(task, 0, "tta", 4, seed=0, tta=make_tta(_cfg("flip", "rot90", flip=1.0), (4, 4),
                                                                         dense=True))
    logits = jax.jit(lambda x: sample(state, {"image": x, "index": np.arange(2, dtype=np.int32)}))(image)
    assert logits.shape == (4, 2, 4, 4, 3)
    np.testing.assert_array_equal(logits, np.broadcast_to(image, logits.shape))


def test_what_tta_refuses():
    with pytest.raises(MedjaxError, match="applies no transform"):
        make_tta(_cfg("flip", flip=0.0), (4, 4), dense=False)
    with pytest.raises(MedjaxError, match="undoes flip, rot90 exactly but not affine, elastic"):
        make_tta(_cfg("flip", "affine", "elastic"), (4, 4), dense=True)
    tta_check(_cfg("affine", "elastic"), dense=False)  # a classifier's prediction does not move: any transform
