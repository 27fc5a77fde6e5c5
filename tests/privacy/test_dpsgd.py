"""DP-SGD in the train step: the clipped sum against one-example-at-a-time gradients, the ordinary gradient in the
limit, the noise's standard deviation, devices and pmap, the budget stop, and the refusals."""

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from medjax import cli, rng, schema
from medjax.config import build_config
from medjax.errors import MedjaxError
from medjax.privacy import accounting, dpsgd
from medjax.tasks import make_task
from medjax.train import loop
from medjax.train.parallel import replicated_to_host
from tests.train.helpers import assert_trees_close

GROUP = ("--config.model.norm=group", "--config.model.width=8", "--config.model.stage_sizes=(1,)")
SGD = ("--config.optimizer.name=sgd", "--config.optimizer.learning_rate=0.1")


def dp_config(*overrides):
    """DP-SGD on the 24 synthetic examples: sigma 1, batches padded to 28 (> 24: never cut, so the accountant
    composes the plain Poisson PLD, fast to build; cut batches are tested in test_accounting)."""
    return build_config("synthetic:classification", [*GROUP, "--config.privacy.enabled=True",
                                                     "--config.privacy.noise_multiplier=1.0",
                                                     "--config.privacy.delta=1e-3",
                                                     "--config.privacy.padded_batch_size=28", *overrides])


@pytest.fixture(scope="module")
def tiny():
    """A one-stage GroupNorm ResNet task, its parameters and a batch of 6 rows whose row 4 is padding."""
    config = schema.complete(build_config("synthetic:classification", list(GROUP)))
    task = make_task(config, ["a", "b", "c"])
    gen = np.random.default_rng(0)
    batch = {"image": gen.normal(size=(6, 16, 16, 1)).astype(np.float32),
             "label": np.array([0, 1, 2, 1, 0, 2], np.int32),
             "weight": np.array([1, 1, 1, 1, 0, 1], np.float32),
             "index": np.arange(6, dtype=np.int32)}
    params = task.init_variables(rng.key(0), batch["image"][:1])["params"]
    return task, params, batch


def one_example_grads(task, params, batch):
    """Each example's (loss, gradient) on its own (JAX's own convolution gradients, no vmap): the reference."""
    grad = jax.jit(jax.value_and_grad(lambda p, b: task.loss(p, {}, b, jax.random.key(0))[0]))
    return [grad(params, {k: v[i:i + 1] for k, v in batch.items()}) for i in range(len(batch["weight"]))]


@pytest.fixture(scope="module")
def dp_fn(tiny):
    """`make_dp_grads` compiled once with clip norm, noise std and normalizer as arguments."""
    task = tiny[0]

    def fn(clip, noise_std, normalizer, params, batch, key):
        return dpsgd.make_dp_grads(task, clip, noise_std, normalizer)(params, {}, batch, key, 0)

    return jax.jit(fn)


def test_noise_free_dp_gradient_is_mean_of_clipped_per_example_gradients(tiny, dp_fn):
    task, params, batch = tiny
    losses, reference = zip(*one_example_grads(task, params, batch))
    norms = [float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(r)))) for r in reference]
    clip = float(np.median(norms))  # some examples are clipped, some not
    real = batch["weight"] > 0
    expected = jax.tree.map(lambda *gs: sum(g * min(1.0, clip / n) for g, n, r in zip(gs, norms, real) if r) / 5.0,
                            *reference)
    grads, _, metrics = dp_fn(clip, 0.0, 5.0, params, batch, jax.random.key(1))
    assert_trees_close(grads, expected, rtol=1e-4, atol=1e-6)
    assert float(metrics["examples"]) == 5.0
    assert float(metrics["clip_fraction"]) == pytest.approx(np.mean([n > clip for n, r in zip(norms, real) if r]))
    assert float(metrics["loss"]) == pytest.approx(np.mean([v for v, r in zip(losses, real) if r]), rel=1e-5)


def test_infinite_clip_and_no_noise_is_the_ordinary_gradient(tiny, dp_fn):
    task, params, batch = tiny
    ordinary = jax.jit(jax.grad(lambda p: task.loss(p, {}, batch, jax.random.key(0))[0]))(params)
    grads, _, _ = dp_fn(float("inf"), 0.0, 5.0, params, batch, jax.random.key(1))
    assert_trees_close(grads, ordinary, rtol=1e-4, atol=1e-6)


def test_micro_batches_give_the_same_gradient(tiny, dp_fn):
    task, params, batch = tiny
    whole = dp_fn(0.5, 0.3, 5.0, params, batch, jax.random.key(2))
    chunked = jax.jit(dpsgd.make_dp_grads(task, 0.5, 0.3, 5.0, chunks=2))(params, {}, batch, jax.random.key(2), 0)
    assert_trees_close(chunked[0], whole[0], rtol=1e-5, atol=1e-6)  # 2 micro-batches of 3 rows, noise included
    np.testing.assert_allclose(chunked[2]["loss"], whole[2]["loss"], rtol=1e-6)


def test_noise_has_the_stated_standard_deviation(tiny, dp_fn):
    """With every row padding, the gradient is noise / normalizer. Sum of squares / (sigma C)^2 is chi-square with
    one degree of freedom per parameter: outside its central 1 - 1e-9 interval fails with probability 1e-9."""
    task, params, batch = tiny
    empty = dict(batch, weight=np.zeros(6, np.float32))
    sigma_c, normalizer = 0.7 * 2.0, 4.0
    grads, _, _ = dp_fn(2.0, sigma_c, normalizer, params, empty, jax.random.key(3))
    z = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)]) * normalizer
    k = z.size
    assert k == sum(np.size(p) for p in jax.tree.leaves(params))
    lo, hi = stats.chi2.ppf([0.5e-9, 1 - 0.5e-9], k)
    assert lo < np.sum((z / sigma_c) ** 2) < hi
    std = float(np.sqrt(np.mean(z ** 2)))  # the sample std (mean 0 known) has std sigma_c / sqrt(2k)
    assert abs(std - sigma_c) < 6 * sigma_c / np.sqrt(2 * k)
    assert std == pytest.approx(1.407014, abs=1e-5)  # this key's draw, 1299 parameters: 0.5% above 1.4
    again, _, _ = dp_fn(2.0, sigma_c, normalizer, params, empty, jax.random.key(3))
    other, _, _ = dp_fn(2.0, sigma_c, normalizer, params, empty, jax.random.fold_in(jax.random.key(3), 1))
    assert_trees_close(again, grads, rtol=0, atol=0)  # from the step key only
    assert not np.allclose(jax.tree.leaves(other)[0], jax.tree.leaves(grads)[0])


def dp_steps(tmp_path, devices=None, *overrides, steps=3):
    """`steps` DP-SGD steps through the real setup, stream and compiled step; (host state, metrics, setup)."""
    config = dp_config(*SGD, *overrides)
    s = loop.setup(config, str(tmp_path), devices)
    stream, state = s.train_stream(), s.initial_state()
    step = s.strategy.compile_train_step(s.train_step_fn())
    history = []
    for _ in range(steps):
        state, metrics = step(state, s.strategy.put_batch(next(stream), stream.global_batch_size))
        history.append(s.strategy.metrics_to_host(metrics))
    return replicated_to_host(s.strategy.to_canonical(state)), history, s


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """`train` on 4 devices with a budget that lasts 3 of 6 steps; (config, workdir, what it printed)."""
    workdir = tmp_path_factory.mktemp("budget")
    config = dp_config(*SGD, "--config.privacy.target_epsilon=3.0", "--config.num_train_steps=6",
                       "--config.checkpoint_every=100", "--config.eval_every=100")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        loop.train(config, str(workdir))
    return config, workdir, err.getvalue()


def test_train_stops_when_the_budget_is_spent(budget_run):
    config, workdir, printed = budget_run
    mech = accounting.Mechanism(24, 8, 28, 1.0, "pld", 1e-3)
    assert mech.epsilon(3) <= 3.0 < mech.epsilon(4)  # 2.81, 3.20: step 4 would overspend
    assert "padded to 28" in printed and "lasts 3 of 6 steps" in printed
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 3]
    assert [r["epsilon"] for r in train] == pytest.approx([mech.epsilon(2), mech.epsilon(3)])
    assert [r["step"] for r in records if r["split"] == "val"] == [3]  # the last step validates ...
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3"]  # ... and checkpoints
    assert json.loads((workdir / "timing.json").read_text())["steps"] == 3
    result = loop.evaluate(config, str(workdir), which="latest", split="test")
    assert result["step"] == 3 and result["epsilon"] == pytest.approx(mech.epsilon(3))
    assert json.loads((workdir / "eval.json").read_text())["epsilon"] == result["epsilon"]


def test_one_device_and_pmap_equal_four_devices(budget_run, tmp_path):
    """The noise is drawn once per global batch from the step key: the same on 1 device, 4 devices and pmap, and
    with `privacy.microbatch_size` (per-example gradients one example per device at a time)."""
    _, workdir, _ = budget_run
    one, h1, s = dp_steps(workdir, jax.devices()[:1])  # writes nothing; its setup reads the run's checkpoint
    pmapped, hp, _ = dp_steps(tmp_path / "pmap", None, "--config.parallel.strategy=pmap")
    micro, _, sm = dp_steps(tmp_path / "micro", None, "--config.privacy.microbatch_size=1")
    four = replicated_to_host(loop.restore_checkpoint(s, str(workdir), "latest")[0])
    assert s.privacy.mechanism.padded_batch_size == 28 and sm.privacy.chunks == 7  # 7 rows per device, 1 at a time
    for other in (four, pmapped, micro):
        assert_trees_close(other.params, one.params, rtol=1e-4, atol=1e-6)
    for a, b in zip(hp, h1):
        assert set(a) == {"loss", "acc", "clip_fraction", "examples", "grad_norm"}
        np.testing.assert_allclose([a["loss"], a["examples"]], [b["loss"], b["examples"]], rtol=1e-5)
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged if r["split"] == "train"] == pytest.approx(
        [float(np.mean([h1[0]["loss"], h1[1]["loss"]])), float(h1[2]["loss"])], rel=1e-5)


def test_resume_is_exact_and_another_sigma_is_refused(budget_run, tmp_path):
    """2 steps, then a resume to 3, equal the budget run's 3 steps in one go (the Poisson batches and the noise
    are functions of the step); resuming under another noise multiplier would break the accounting: refused."""
    config, workdir, _ = budget_run
    base = (*SGD, "--config.checkpoint_every=100", "--config.eval_every=100")
    loop.train(dp_config(*base, "--config.num_train_steps=2"), str(tmp_path))
    loop.train(dp_config(*base, "--config.num_train_steps=3"), str(tmp_path))
    assert json.loads((tmp_path / "timing.json").read_text())["steps"] == 1  # resumed at step 2
    s = loop.setup(config, str(workdir))
    resumed = replicated_to_host(loop.restore_checkpoint(s, str(tmp_path), "latest")[0])
    whole = replicated_to_host(loop.restore_checkpoint(s, str(workdir), "latest")[0])
    assert int(resumed.step) == int(whole.step) == 3
    assert_trees_close(resumed.params, whole.params, rtol=1e-6, atol=1e-7)
    with pytest.raises(MedjaxError, match="config.privacy.noise_multiplier is 1.5 but the run .* was trained with 1.0"):
        loop.train(dp_config(*base, "--config.num_train_steps=4", "--config.privacy.noise_multiplier=1.5"),
                   str(tmp_path))


@pytest.mark.parametrize("overrides, message", [
    ((), "has 6 BatchNorm layer(s) (e.g. 'stage1_block1/bn1')"),
    (("--config.privacy.delta=0.05",), "config.privacy.delta=0.05 must be in (0, 1/N)"),
    (("--config.privacy.delta=0.0",), "config.privacy.delta=0 must be in (0, 1/N)"),
    (("--config.privacy.sampling=shuffle",), "no accountant in dp-accounting covers shuffled batches"),
    (("--config.privacy.noise_multiplier=0.0", "--config.privacy.target_epsilon=1e-4"),
     "target_epsilon=0.0001 is out of reach in 12 steps"),
    (("--config.privacy.target_epsilon=0.01",), "target_epsilon=0.01 is spent by the first step"),
    (("--config.compute.grad_accum_steps=2",), "use config.privacy.microbatch_size"),
    (("--config.privacy.accountant=rdp", "--config.privacy.padded_batch_size=8"), "cuts too many batches"),
])
def test_bad_privacy_config_is_one_line_and_exit_2(tmp_path, capsys, overrides, message):
    norm = () if overrides == () else GROUP  # the first case keeps the shipped BatchNorm ResNet
    args = ["train", "--config", "synthetic:classification", "--workdir", str(tmp_path), *norm,
            "--config.privacy.enabled=True", "--config.privacy.noise_multiplier=1.0", "--config.privacy.delta=1e-3",
            "--config.privacy.padded_batch_size=28", *overrides]
    assert cli.main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medjax: error")]
    assert len(lines) == 1 and message in lines[0], lines
    if overrides == ():
        assert "config.model.norm=group" in lines[0]
