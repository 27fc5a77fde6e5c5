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
    return train_steps(s, stream, num_steps)


def train_steps(s, stream, num_steps):
    """`num_steps` steps of the setup's compiled train step on `stream` from its initial state; returns (host
    state, per-step metrics, the jitted step)."""
    state = s.initial_state()
    step = s.strategy.compile_train_step(s.train_step_fn())
    history = []
    for _ in range(num_steps):
        state, metrics = step(state, s.strategy.put_batch(next(stream), s.config.batch_size))
        history.append(s.strategy.metrics_to_host(metrics))
    return replicated_to_host(s.strategy.to_canonical(state)), history, step


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    import numpy as np

    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def sklearn_classification_metrics(config, workdir, split="test", which="best"):
    """acc, auc (binary, or one-vs-rest macro) and loss of `split` computed by scikit-learn from the restored
    checkpoint's own predictions: the reference that evaluate()'s numbers are pinned against (single-label)."""
    import numpy as np
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    from medjax.data.stream import as_arrays
    from medjax.tasks.base import apply_model
    from medjax.train.loop import restore_checkpoint

    s = setup(config, str(workdir))
    canonical, step, _ = restore_checkpoint(s, str(workdir), which)
    params, stats = replicated_to_host((canonical.params, canonical.batch_stats))
    arrays = as_arrays(s.splits[split])
    logits, _ = apply_model(s.task.model, params, stats, arrays["image"], train=False)
    probs = np.asarray(jax.nn.softmax(logits.astype(np.float32)), np.float64)
    probs /= probs.sum(-1, keepdims=True)
    labels = np.asarray(arrays["label"]).reshape(-1)
    classes = list(range(probs.shape[-1]))
    auc = roc_auc_score(labels, probs[:, 1]) if len(classes) == 2 else roc_auc_score(labels, probs, multi_class="ovr")
    return {"step": step, "acc": accuracy_score(labels, probs.argmax(-1)), "auc": auc,
            "loss": log_loss(labels, probs, labels=classes)}
