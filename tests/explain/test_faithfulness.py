"""Faithfulness: deletion / insertion curves against hand-computed ones, Spearman against scipy, IG against a
random map on a trained model, and the cascading parameter-randomisation check on that model."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from medjax import rng
from medjax.errors import MedjaxError
from medjax.explain import faithfulness, gradients
from medjax.explain.methods import voxel_maps


def _sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def test_deletion_insertion_curves_by_hand():
    """A linear 'model' on a 2x2 image: class-0 logit s = sum(w * x), class-1 logit 0, so p = sigmoid(s). The map
    orders the voxels (0,1) > (1,0) > (1,1) > (0,0); with 4 steps one voxel goes per step."""
    w = np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)[..., None]
    apply = lambda v, x: jnp.stack([jnp.sum(x * v, axis=(1, 2, 3)), jnp.zeros(len(x))], -1)  # noqa: E731
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)[None, ..., None]  # contributions 1, -2, 1.5, 8: s = 8.5
    maps = np.array([[[0.1, 0.4], [0.3, 0.2]]], np.float32)
    out = faithfulness.deletion_insertion(apply, w, x, maps, np.array([0]), steps=4)
    deletion = _sigmoid([8.5, 10.5, 9.0, 1.0, 0.0])  # removing -2, then 1.5, then 8, then 1
    insertion = _sigmoid([0.0, -2.0, -0.5, 7.5, 8.5])
    np.testing.assert_allclose(out["deletion"][0], deletion, rtol=1e-6)
    np.testing.assert_allclose(out["insertion"][0], insertion, rtol=1e-6)
    np.testing.assert_allclose(out["deletion_auc"][0], (deletion.sum() - (deletion[0] + deletion[-1]) / 2) / 4,
                               rtol=1e-6)
    np.testing.assert_allclose(out["insertion_auc"][0], np.trapezoid(insertion, dx=0.25), rtol=1e-6)
    # A fill of 1 instead of 0: the first deletion step replaces x[0, 1] = 2 by 1 -> s = 8.5 + 1.
    filled = faithfulness.deletion_insertion(apply, w, x, maps, np.array([0]), steps=4, baseline=1.0)
    np.testing.assert_allclose(filled["deletion"][0, :2], _sigmoid([8.5, 9.5]), rtol=1e-6)
    with pytest.raises(MedjaxError, match=r"maps \(1, 4\) must be the inputs' spatial shape \(1, 2, 2\)"):
        faithfulness.deletion_insertion(apply, w, x, maps.reshape(1, 4), np.array([0]))


def test_segmentation_probability_is_the_region_mean():
    logits = np.array([[[[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [3.0, 0.0]]]], np.float32)  # (1, 2, 2, K=2)
    region = np.array([[1.0, 1.0], [0.0, 0.0]], np.float32)
    p1 = _sigmoid(-2.0), _sigmoid(1.0)  # softmax of class 1 at the two region voxels
    got = faithfulness.target_probability(jnp.asarray(logits), 1, jnp.asarray(region))
    np.testing.assert_allclose(got, np.mean(p1), rtol=1e-6)
    empty = faithfulness.target_probability(jnp.asarray(logits), 1, jnp.zeros((2, 2)))  # falls back to all voxels
    np.testing.assert_allclose(empty, np.mean(_sigmoid([-2.0, 1.0, 0.0, -3.0])), rtol=1e-6)


def test_spearman_matches_scipy_with_ties():
    r = np.random.default_rng(0)
    a = np.round(r.normal(size=(3, 6, 5)), 1)  # rounding makes ties
    b = np.where(r.random((3, 6, 5)) < 0.3, 0.0, a + r.normal(scale=0.5, size=(3, 6, 5)))  # ReLU-like zeros
    got = faithfulness.spearman(jnp.asarray(a), jnp.asarray(b))
    want = [stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(faithfulness.average_ranks(jnp.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])
    assert float(faithfulness.spearman(jnp.ones((1, 4)), jnp.arange(4.0)[None])[0]) == 0.0


@pytest.fixture(scope="module")
def restored(trained_classifier):
    """(apply, variables, a fresh initialisation, test images, predicted classes) of the trained run."""
    from medjax.train import loop
    from medjax.train.parallel import replicated_to_host

    config, workdir = trained_classifier
    s = loop.setup(config, workdir)
    canonical, step, _ = loop.restore_checkpoint(s, workdir)
    assert step == 36
    params, stats_ = replicated_to_host((canonical.params, canonical.batch_stats))
    variables = {"params": params, "batch_stats": stats_}
    x = np.asarray(s.splits["test"]["image"][:8], np.float32)
    fresh = jax.jit(s.task.init_variables)(rng.key(1), x[:1])
    apply = functools.partial(s.task.model.apply, train=False)
    targets = np.asarray(jnp.argmax(apply(variables, x), -1), np.int32)
    return apply, variables, fresh, x, targets


def test_integrated_gradients_beat_a_random_map_on_deletion(restored):
    """On the trained classifier, deleting voxels in IG's order destroys the prediction much sooner than in a
    random order (lower deletion AUC), and inserting them restores it sooner (higher insertion AUC)."""
    apply, variables, _, x, targets = restored
    assert targets.tolist() == [2, 0, 0, 0, 1, 2, 1, 0]
    ig = voxel_maps(gradients.integrated_gradients(apply, variables, x, targets, steps=16), "sum")
    ours = faithfulness.deletion_insertion(apply, variables, x, ig, targets, steps=16, batch_size=64)
    rand = faithfulness.deletion_insertion(apply, variables, x, faithfulness.random_maps(0, ig.shape), targets,
                                           steps=16, batch_size=64)
    means = {k: float(v.mean()) for k, v in (("ig_deletion", ours["deletion_auc"]),
                                             ("random_deletion", rand["deletion_auc"]),
                                             ("ig_insertion", ours["insertion_auc"]),
                                             ("random_insertion", rand["insertion_auc"]))}
    # this run's numbers (36 Adam steps, seed 0), measured on the 2-core AMD EPYC CPU
    assert means == pytest.approx({"ig_deletion": 0.4688, "random_deletion": 0.6967, "ig_insertion": 0.9176,
                                   "random_insertion": 0.6575}, abs=1e-3)
    assert (ours["deletion_auc"] < rand["deletion_auc"]).sum() == 8  # every example, not only on average


def test_parameter_randomisation_cascade(restored):
    """Saliency maps lose their rank agreement with the trained model's as layers are re-initialised from the head
    down (Adebayo et al.); every map equals itself when nothing is randomised."""
    apply, variables, fresh, x, targets = restored
    explain = lambda v: voxel_maps(gradients.saliency(apply, v, x[:4], targets[:4]), "absmax")  # noqa: E731
    layers = faithfulness.top_down_layers(apply, variables, x)
    assert layers == ["head", "stage2_block1", "stage1_block1", "stem_bn", "stem_conv"]
    out = faithfulness.randomization_check(explain, variables, fresh, layers)
    assert out["spearman"].shape == (5, 4)
    np.testing.assert_allclose(np.asarray(out["spearman"]).mean(1), [0.6394, 0.6114, 0.0410, 0.0866, 0.1069],
                               atol=1e-3)
    np.testing.assert_array_equal(out["spearman_abs"], out["spearman"])  # absmax maps are >= 0 already
    same = faithfulness.randomization_check(explain, variables, variables, ["head"])
    np.testing.assert_allclose(same["spearman"], 1.0, rtol=1e-6)
    with pytest.raises(MedjaxError, match="no parameters named 'fc'"):
        faithfulness.randomization_check(explain, variables, fresh, ["fc"])
