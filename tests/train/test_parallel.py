"""Data parallelism: 4 fake CPU devices give the 1-device numbers; pmap gives the sharding numbers."""

import jax
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.train.parallel import PmapStrategy, ShardedStrategy, make_strategy, replicated_to_host
from tests.train.helpers import assert_trees_close, run_steps, synthetic_config

STEPS = 3
# SGD keeps updates proportional to gradients; Adam's first steps are ~lr*sign(g) and would amplify last-bit
# differences in the cross-device reduction order into visible ones.
SGD = ("--config.optimizer.name=sgd", "--config.optimizer.learning_rate=0.1")


@pytest.fixture(scope="module")
def one_device_run(request, tmp_path_factory):
    from tests.conftest import REPO

    config = synthetic_config(REPO, "segmentation", *SGD)
    return run_steps(config, tmp_path_factory.mktemp("one"), STEPS, devices=jax.devices()[:1])


def test_four_devices_exist():
    assert jax.device_count() == 4


def test_sharded_four_devices_equal_one(repo, tmp_path, one_device_run):
    four, history4, step = run_steps(synthetic_config(repo, "segmentation", *SGD), tmp_path, STEPS)
    one, history1, _ = one_device_run
    assert_trees_close(four.params, one.params)
    assert_trees_close(four.batch_stats, one.batch_stats)  # BatchNorm statistics are over the global batch
    np.testing.assert_allclose([h["loss"] for h in history4], [h["loss"] for h in history1], rtol=1e-5)
    assert int(four.step) == STEPS
    assert step._cache_size() == 1  # compiled once: no retracing between steps


def test_pmap_equals_sharding(repo, tmp_path, one_device_run):
    config = synthetic_config(repo, "segmentation", "--config.parallel.strategy=pmap", *SGD)
    pmapped, history, _ = run_steps(config, tmp_path, STEPS)
    one, history1, _ = one_device_run
    assert_trees_close(pmapped.params, one.params)
    assert_trees_close(pmapped.batch_stats, one.batch_stats)
    np.testing.assert_allclose([h["loss"] for h in history], [h["loss"] for h in history1], rtol=1e-5)


def test_classification_pmap_equals_sharding(repo, tmp_path):
    sharded, h1, _ = run_steps(synthetic_config(repo, "classification", *SGD), tmp_path / "a", 2)
    pmapped, h2, _ = run_steps(synthetic_config(repo, "classification", "--config.parallel.strategy=pmap", *SGD),
                               tmp_path / "b", 2)
    assert_trees_close(sharded.params, pmapped.params)
    np.testing.assert_allclose([h["acc"] for h in h1], [h["acc"] for h in h2])


def test_pmap_canonical_round_trip():
    strategy = PmapStrategy()
    tree = {"w": np.arange(6.0, dtype=np.float32).reshape(2, 3), "s": np.float32(2.0)}
    state = strategy.init_state(lambda: jax.tree.map(jax.numpy.asarray, tree))
    assert state["w"].shape == (4, 2, 3)  # one copy per local device
    canonical = strategy.to_canonical(state)
    assert canonical["w"].sharding.is_fully_replicated and canonical["w"].shape == (2, 3)
    back = replicated_to_host(strategy.to_canonical(strategy.from_canonical(canonical)))
    np.testing.assert_array_equal(back["w"], tree["w"])


def test_local_rows_and_batch_assembly():
    strategy = ShardedStrategy()
    assert strategy.local_rows(8) == slice(0, 8)  # one process feeds every row
    batch = strategy.put_batch({"x": np.arange(8, dtype=np.float32)}, 8)
    assert batch["x"].sharding.spec == jax.sharding.PartitionSpec("data")
    assert [s.data.shape for s in batch["x"].addressable_shards] == [(2,)] * 4


def test_bad_strategy_and_batch_size():
    with pytest.raises(MedjaxError, match="config.parallel.strategy"):
        make_strategy("ddp")
    with pytest.raises(MedjaxError, match="divisible by the number of devices"):
        ShardedStrategy().local_rows(6)
