"""medjax/bench/train_options.py: the scaling run's plumbing (one process per device count) and its
table, and the compute rows at the smoke shape. No timing assertions; the compute mode also runs in
notebooks/performance.ipynb."""

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


def test_compute_rows_run_the_smoke_shape_and_skip_what_the_batch_cannot_split():
    rows = train_options.run_compute("medmnist_r18_2d_1ch", repeats=1, options=["plain", "grad_accum_4"],
                                     batch_size=2, shape="smoke")
    plain, accum = rows
    assert accum == {"option": "grad_accum_4", "skipped": "batch 2 not divisible by 4"}  # never compiled
    assert (plain["option"], plain["precision"], plain["remat"], plain["grad_accum_steps"]) == ("plain", "float32",
                                                                                                False, 1)
    assert plain["batch"] == 2 and plain["input_shape"] == [2, 16, 16, 1]  # bench's smoke row, not 28 x 28
    assert plain["time_vs_plain"] == 1.0 and plain["temp_vs_plain"] == 1.0 and plain["temp_bytes"] > 0
