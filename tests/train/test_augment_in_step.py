"""Augmentation inside the jitted train step: the documented key, sharding invariance, and an effect on training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medjax import rng
from medjax.data.augment import make_augment
from medjax.train.state import create_state
from medjax.train.steps import AUGMENT_STREAM, make_train_step
from tests.train.helpers import assert_trees_close, run_steps, synthetic_config

AUG = ("--config.augment.transforms=flip,affine,gamma,noise", "--config.augment.affine.p=1.0",
       "--config.augment.noise.p=1.0")
SGD = ("--config.optimizer.name=sgd", "--config.optimizer.learning_rate=0.1")


class _SeesBatch:
    """A task whose 'loss' reports what the step fed it: image and label sums per example."""

    def init_variables(self, key, example):
        return {"params": {"w": jnp.zeros(())}}

    def loss(self, params, batch_stats, batch, key):
        metrics = {"loss": params["w"], "image": jnp.sum(batch["image"], axis=(1, 2, 3)),
                   "label": jnp.sum(batch["label"], axis=(1, 2))}
        return params["w"], (batch_stats, metrics)


def _batch(n=4, size=12):
    r = np.random.default_rng(0)
    return {"image": r.normal(size=(n, size, size, 1)).astype(np.float32),
            "label": r.integers(0, 3, size=(n, size, size)).astype(np.int32),
            "weight": np.ones(n, np.float32), "index": np.arange(10, 10 + n, dtype=np.int32)}


def test_step_augments_with_fold_in_of_the_step_key():
    cfg = {"transforms": ("flip", "affine"), "affine": {"p": 1.0}}
    augment = make_augment(cfg)
    tx = optax.sgd(0.1)
    state = create_state(lambda k: _SeesBatch().init_variables(k, None), tx, seed=3)
    state = state.replace(step=jnp.int32(5))
    batch = _batch()
    _, seen = jax.jit(make_train_step(_SeesBatch(), tx, augment=augment))(state, batch)
    step_key = jax.random.fold_in(rng.from_data(state.rng), 5)
    expected = augment(jax.random.fold_in(step_key, AUGMENT_STREAM), batch)
    np.testing.assert_allclose(seen["image"], expected["image"].sum(axis=(1, 2, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(seen["label"], expected["label"].sum(axis=(1, 2)))
    assert not np.allclose(seen["image"], batch["image"].sum(axis=(1, 2, 3)))  # the affine (p=1) changed it
    _, plain = jax.jit(make_train_step(_SeesBatch(), tx))(state, batch)
    np.testing.assert_allclose(plain["image"], batch["image"].sum(axis=(1, 2, 3)), rtol=1e-5)


def test_a_different_step_sees_different_augmentations():
    augment = make_augment({"transforms": ("affine",), "affine": {"p": 1.0}})
    tx = optax.sgd(0.1)
    state = create_state(lambda k: _SeesBatch().init_variables(k, None), tx, seed=3)
    step = jax.jit(make_train_step(_SeesBatch(), tx, augment=augment))
    _, a = step(state, _batch())
    _, b = step(state.replace(step=jnp.int32(1)), _batch())
    assert not np.allclose(a["image"], b["image"])


@pytest.fixture(scope="module")
def augmented_one_device(tmp_path_factory):
    from tests.conftest import REPO

    config = synthetic_config(REPO, "segmentation", *AUG, *SGD)
    return run_steps(config, tmp_path_factory.mktemp("aug1"), 3, devices=jax.devices()[:1])


@pytest.mark.parametrize("strategy", ["sharding", "pmap"])
def test_augmented_training_is_the_same_on_four_devices(repo, tmp_path, augmented_one_device, strategy):
    config = synthetic_config(repo, "segmentation", *AUG, *SGD, f"--config.parallel.strategy={strategy}")
    four, history, _ = run_steps(config, tmp_path, 3)
    one, history1, _ = augmented_one_device
    assert_trees_close(four.params, one.params)
    np.testing.assert_allclose([h["loss"] for h in history], [h["loss"] for h in history1], rtol=1e-5)


def test_augmentation_changes_training(repo, tmp_path, augmented_one_device):
    plain, history, _ = run_steps(synthetic_config(repo, "segmentation", *SGD), tmp_path, 3,
                                  devices=jax.devices()[:1])
    _, augmented, _ = augmented_one_device
    assert history[0]["loss"] != pytest.approx(augmented[0]["loss"], rel=1e-4)


def test_bad_augment_config_fails_at_setup(repo, tmp_path):
    from medjax.errors import MedjaxError
    from medjax.train.loop import setup

    config = synthetic_config(repo, "segmentation", "--config.augment.transforms=flip,warp")
    with pytest.raises(MedjaxError, match=r"unknown augmentation 'warp' in config\.augment\.transforms"):
        setup(config, str(tmp_path))
