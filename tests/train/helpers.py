"""Shared by the trainer tests: the synthetic configs and a few steps run in-process."""

import jax

from medjax.config import build_config
from medjax.data.stream import TrainStream
from medjax.train.loop import setup
from medjax.train.parallel import replicated_to_host


def synthetic_config(repo, variant="segmentation", *overrides):
    return build_config(f"synthetic:{variant}", list(overrides))


def run_steps(config, workdir, num_steps, devices=None):
    """`num_steps` training steps; returns (host state, per-step metrics, the jitted step)."""
    s = setup(config, str(workdir), devices)
    stream = TrainStream(s.splits["train"], config.batch_size, s.strategy.local_rows(config.batch_size), config.seed)
    state = s.initial_state()
    step = s.strategy.compile_train_step(s.train_step_fn())
    history = []
    for _ in range(num_steps):
        state, metrics = step(state, s.strategy.put_batch(next(stream), config.batch_size))
        history.append(s.strategy.metrics_to_host(metrics))
    return replicated_to_host(s.strategy.to_canonical(state)), history, step


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    import numpy as np

    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)
