"""Sampled predictions in one program: MC-dropout passes and ensemble members equal the passes run one by one."""

import jax
import ml_collections
import numpy as np

from medjax import rng
from medjax.inference import predictive
from medjax.tasks.classification import ClassificationTask
from medjax.trust.uncertainty import mean_logits


def _task():
    return ClassificationTask(ml_collections.ConfigDict({"num_classes": 3}), ml_collections.ConfigDict(
        {"name": "resnet", "stage_sizes": (1,), "block": "basic", "stem": "small", "width": 4,
         "dropout_rate": 0.5}), [])


def test_mc_dropout_samples_differ_and_their_mean_is_the_programs():
    task = _task()
    image = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)
    v = task.init_variables(rng.key(0), image)
    sampler = predictive.sampler(task, 0, "mc_dropout", 3, seed=7)
    base = jax.random.fold_in(rng.key(7), predictive.SAMPLE_STREAM)

    @jax.jit
    def programs(p, s, x):  # the vmapped passes; the same passes one by one; the deterministic forward
        one_by_one = [task.forward(p, s, x, jax.random.fold_in(base, t)) for t in range(3)]
        return sampler(type("S", (), {"params": p, "batch_stats": s}), {"image": x}), one_by_one, task.forward(p, s, x)

    stacked, one_by_one, deterministic = programs(v["params"], v["batch_stats"], image)
    stacked, one_by_one = np.asarray(stacked), np.stack(one_by_one)
    np.testing.assert_allclose(stacked, one_by_one, rtol=1e-5, atol=1e-6)
    assert not np.allclose(stacked[0], stacked[1]) and not np.allclose(stacked[1], stacked[2])
    np.testing.assert_allclose(jax.nn.softmax(mean_logits(stacked, "softmax")),
                               jax.nn.softmax(one_by_one).mean(0), rtol=1e-5)
    assert not np.allclose(stacked[0], deterministic)


def test_members_are_each_members_model():
    task = _task()
    image = np.random.default_rng(1).normal(size=(2, 8, 8, 1)).astype(np.float32)
    members = [task.init_variables(rng.key(k), image) for k in (0, 1)]
    stacked = jax.tree.map(lambda *x: np.stack(x), *members)
    key = rng.key(3)

    @jax.jit
    def programs(stacked, members):  # vmapped over the members (without and with MC-dropout), and one by one
        p, s = stacked["params"], stacked["batch_stats"]
        return (predictive.member_logits(task, p, s, image, 2), predictive.predictive_logits(task, p, s, image, 2),
                predictive.member_logits(task, p, s, image, 2, key),
                [task.forward(v["params"], v["batch_stats"], image) for v in members],
                [task.forward(v["params"], v["batch_stats"], image, jax.random.fold_in(key, k))  # member k folds k
                 for k, v in enumerate(members)])

    logits, mean, dropped, one_by_one, dropped_one_by_one = programs(stacked, members)
    np.testing.assert_allclose(logits, np.stack(one_by_one), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, mean_logits(logits, "softmax"), rtol=1e-6)
    np.testing.assert_allclose(dropped, np.stack(dropped_one_by_one), rtol=1e-5, atol=1e-6)
    assert not np.allclose(dropped, logits)
