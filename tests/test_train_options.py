"""medjax/bench/train_options.py: the scaling run's plumbing (one process per device count) and its
table. No timing assertions; the compute mode runs in notebooks/performance.ipynb."""

import pytest

from medjax.bench import train_options


def test_scaling_runs_each_device_count_in_its_own_process():
    rows = train_options.run_scaling("medmnist_r18_2d_1ch", [1, 2], "sharding", repeats=1, shape="smoke")
    assert [r["devices"] for r in rows] == [1, 2]
    assert all(r["global_batch"] == 2 and r["examples_per_s"] > 0 for r in rows)
    assert rows[0]["throughput_vs_first"] == 1.0
    machine = {"platform": "p", "cpu_count": 2, "jax": "0", "device_kind": "cpu"}
    table = train_options._markdown("scaling", rows, machine)
    assert table.count("\n| 1 | 2 |") == 1 and table.count("\n| 2 | 2 |") == 1


def test_scaling_failure_names_the_device_count():
    with pytest.raises(RuntimeError, match="3 devices failed"):
        train_options.run_scaling("medmnist_r18_2d_1ch", [3], "sharding", repeats=1, shape="smoke")  # 2 % 3 != 0
