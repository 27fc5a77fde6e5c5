"""config.compute: gradient accumulation, mixed precision and rematerialisation through the real trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from medjax.errors import MedjaxError
from medjax.models import build_model
from medjax.train import compute
from medjax.train.steps import micro_batches
from tests.train.helpers import assert_trees_close, run_steps, synthetic_config


def test_micro_batches_take_every_nth_example():
    batch = {"image": jnp.arange(8.0)[:, None], "label": jnp.arange(8)}
    micro = micro_batches(batch, 2)
    np.testing.assert_array_equal(micro["label"], [[0, 2, 4, 6], [1, 3, 5, 7]])
    assert micro["image"].shape == (2, 4, 1)
    with pytest.raises(ValueError, match="not divisible into 3"):
        micro_batches(batch, 3)


@pytest.mark.parametrize("strategy", ["sharding", "pmap"])
def test_accumulation_without_batch_norm_equals_the_full_batch(repo, tmp_path, strategy):
    """Instance norm has no cross-example statistics, so 2 micro-batches of 4 give the batch of 8's update."""
    common = ("--config.model.norm=instance", f"--config.parallel.strategy={strategy}")
    full, h_full, _ = run_steps(synthetic_config(repo, "segmentation", *common), tmp_path / "a", 2)
    accum, h_acc, _ = run_steps(synthetic_config(repo, "segmentation", *common, "--config.compute.grad_accum_steps=2"),
                                tmp_path / "b", 2)
    assert_trees_close(accum.params, full.params, rtol=2e-5, atol=2e-6)
    assert_trees_close(accum.opt_state, full.opt_state, rtol=2e-5, atol=1e-7)
    for a, b in zip(h_acc, h_full):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)


def test_accumulation_with_batch_norm_uses_micro_batch_statistics(repo, tmp_path):
    """The documented difference: BatchNorm normalises each micro-batch by its own statistics."""
    full, _, _ = run_steps(synthetic_config(repo, "segmentation"), tmp_path / "a", 1)
    accum, _, _ = run_steps(synthetic_config(repo, "segmentation", "--config.compute.grad_accum_steps=2"),
                            tmp_path / "b", 1)
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(accum.batch_stats), jax.tree.leaves(full.batch_stats)))
    assert diff > 1e-4


def test_accumulation_batch_must_split_over_devices_and_micro_batches(repo, tmp_path):
    config = synthetic_config(repo, "segmentation", "--config.compute.grad_accum_steps=3")
    with pytest.raises(MedjaxError, match=r"config.batch_size=8 must be divisible by config.compute.grad_accum"):
        run_steps(config, tmp_path, 1)


@pytest.mark.parametrize("key,value,match", [
    ("precision", "float16", "config.compute.precision='float16'"),
    ("grad_accum_steps", 0, "grad_accum_steps must be an integer >= 1"),
])
def test_bad_compute_values_are_named(repo, key, value, match):
    config = synthetic_config(repo, "segmentation")
    with config.compute.unlocked():
        config.compute[key] = value
    with pytest.raises(MedjaxError, match=match):
        compute.model_config(config)


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state(repo, tmp_path):
    full, h_full, _ = run_steps(synthetic_config(repo, "segmentation"), tmp_path / "a", 1)
    mixed, h_mixed, _ = run_steps(synthetic_config(repo, "segmentation", "--config.compute.precision=bfloat16"),
                                  tmp_path / "b", 1)
    for tree in (mixed.params, mixed.opt_state, mixed.batch_stats):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)} \
            == {jnp.dtype("float32")}
    loss_full, loss_mixed = float(h_full[0]["loss"]), float(h_mixed[0]["loss"])
    assert loss_mixed != loss_full and abs(loss_mixed - loss_full) < 2e-2 * abs(loss_full)

    config = synthetic_config(repo, "segmentation", "--config.compute.precision=bfloat16")
    model = build_model(**{k: v for k, v in compute.model_config(config).items()}, num_classes=3)
    x = jnp.ones((1, 16, 16, 1))
    variables = model.init(jax.random.key(0), x, train=False)
    _, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    inner = {"/".join(k): v for k, v in flatten_dict(state["intermediates"]).items()}
    assert inner["enc1/conv1/__call__"][0].dtype == jnp.bfloat16
    assert inner["__call__"][0].dtype == jnp.float32  # logits


def test_precision_contradicting_the_models_dtype_is_an_error(repo):
    config = synthetic_config(repo, "segmentation", "--config.compute.precision=bfloat16")
    with config.model.unlocked():
        config.model.dtype = "float16"
    with pytest.raises(MedjaxError, match="contradicts config.compute.precision"):
        compute.model_config(config)


@pytest.mark.parametrize("model,overrides", [
    ("unet", dict(features=(4, 8), norm="batch")),
    ("basic_unet", dict(features=(4, 4, 4, 4, 4, 4))),
    ("resnet18", dict(width=4, stem="small")),
    ("densenet", dict(growth_rate=4, num_init_features=4, block_config=(1, 1), stem="small")),
])
def test_remat_gives_the_same_gradients_and_parameter_names(model, overrides):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 1)).astype(np.float32))
    plain, remat = (build_model(model, num_classes=3, remat=r, **overrides) for r in (False, True))
    variables = plain.init(jax.random.key(0), x, train=False)
    assert jax.tree.map(jnp.shape, remat.init(jax.random.key(0), x, train=False)) == \
        jax.tree.map(jnp.shape, variables)

    def loss(m):
        def f(params):
            out, _ = m.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(out))
        return jax.jit(jax.grad(f))

    assert_trees_close(loss(remat)(variables["params"]), loss(plain)(variables["params"]), rtol=1e-5, atol=1e-6)


def test_remat_on_a_model_without_it_is_named(repo):
    from medjax.tasks.base import model_from_config

    config = synthetic_config(repo, "segmentation", "--config.compute.remat=True")
    with config.unlocked():
        config.model = type(config.model)(dict(name="monai_unet", channels=(4, 8), strides=(2,)))
    with pytest.raises(MedjaxError, match="config.compute.remat: model 'monai_unet'"):
        model_from_config(compute.model_config(config), 3, None)


def test_accumulation_is_a_loop_on_accelerators_and_unrolled_on_cpu():
    """A scan keeps one micro-batch's activations alive on GPU/TPU; XLA:CPU runs loop bodies slowly, so CPU unrolls."""
    import optax

    from medjax import rng
    from medjax.train.state import TrainState
    from medjax.train.steps import make_train_step

    class Task:
        def loss(self, params, batch_stats, batch, key):
            loss = jnp.mean((batch["image"] @ params["w"] - batch["label"]) ** 2)
            return loss, (batch_stats, {"loss": loss})

    tx = optax.sgd(0.1)
    params = {"w": jnp.ones((3,))}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=tx.init(params),
                       rng=rng.to_data(rng.key(0)))
    batch = {"image": jnp.ones((8, 3)), "label": jnp.zeros((8,))}
    step = jax.jit(make_train_step(Task(), tx, accum_steps=4))

    def lowered(platform):
        return step.trace(state, batch).lower(lowering_platforms=(platform,)).as_text()

    assert "stablehlo.while" in lowered("cuda")
    assert "stablehlo.while" not in lowered("cpu")
