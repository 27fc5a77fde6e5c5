"""The GAN trainer: every task trains and evaluates, resume is exact, pmap equals sharding, divergence stops."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.config import build_config
from medjax.data.stream import TrainStream
from medjax.errors import MedjaxError
from medjax.gan import loop
from medjax.gan.step import make_gan_step
from medjax.train import loop as train_loop
from medjax.train.checkpoint import Checkpoints
from medjax.train.loop import TrainingDiverged
from medjax.train.parallel import replicated_to_host
from tests.train.helpers import assert_trees_close


def gan_config(repo, variant="gan", *overrides):
    return build_config(f"gan_synthetic:{variant}", list(overrides))


def _final_state(workdir, config):
    s = loop.setup(config, str(workdir))
    ckpts = Checkpoints(str(workdir))
    state, _, step, _ = ckpts.restore(s.abstract_state())
    ckpts.close()
    return step, replicated_to_host(state)


@pytest.mark.parametrize("variant,val_keys", [
    ("gan", {"sample_mean", "sample_std"}),
    ("pix2pix", {"psnr", "ssim", "l1", "dice_1", "dice_2", "dice_mean"}),
    ("super_resolution", {"psnr", "ssim", "l1", "bicubic_psnr", "bicubic_ssim"}),
])
def test_every_task_trains_evaluates_and_draws_samples(repo, tmp_path, variant, val_keys):
    extra = ["--config.task.feature_weight=1.0"] if variant == "super_resolution" else []
    metrics = train_loop.train(gan_config(repo, variant, "--config.num_train_steps=4", *extra), str(tmp_path))
    assert val_keys <= set(metrics) and all(np.isfinite(v) for v in metrics.values())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4] and all(np.isfinite(r["d_loss"]) for r in train)
    assert all(("g_features" in r) == bool(extra) for r in train)
    if extra:  # G's loss is the sum of its weighted parts
        r = train[-1]
        np.testing.assert_allclose(r["g_loss"], 1.0 * r["g_l1"] + 0.01 * r["g_adversarial"] + r["g_features"],
                                   rtol=1e-5)
    assert (tmp_path / "plots" / "samples_000004.png").stat().st_size > 1000
    assert json.loads((tmp_path / "gan.json").read_text())["task"] == variant


def test_super_resolution_baseline_is_bicubic_and_l1_only_leaves_d_untouched(repo, tmp_path):
    """adversarial_weight=0 is the L1-only generator: D keeps its initial weights; the untrained generator's PSNR
    is bicubic interpolation's (its last convolution starts at zero)."""
    config = gan_config(repo, "super_resolution", "--config.num_train_steps=2", "--config.task.adversarial_weight=0.0",
                        "--config.g_optimizer.learning_rate=0.0", "--config.eval_every=2")
    metrics = train_loop.train(config, str(tmp_path))
    np.testing.assert_allclose(metrics["psnr"], metrics["bicubic_psnr"], rtol=1e-5)
    s = loop.setup(config, str(tmp_path))
    _, final = _final_state(tmp_path, config)
    initial = replicated_to_host(s.strategy.init_state(s.create))
    jax.tree.map(np.testing.assert_array_equal, final.d_params, initial.d_params)


def test_resume_is_exact(repo, tmp_path):
    """8 steps in one run == 4 steps, stop, resume to 8 (latents, data order, EMA and both optimizers)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_loop.train(gan_config(repo, "gan", "--config.num_train_steps=8"), str(straight))
    train_loop.train(gan_config(repo, "gan", "--config.num_train_steps=4"), str(split))
    train_loop.train(gan_config(repo, "gan", "--config.num_train_steps=8"), str(split))
    config = gan_config(repo, "gan", "--config.num_train_steps=8")
    (step_a, a), (step_b, b) = _final_state(straight, config), _final_state(split, config)
    assert step_a == step_b == 8
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _steps(config, num_steps, devices=None):
    s = loop.setup(config, "/unused", devices)
    stream = TrainStream(s.splits["train"], config.batch_size, s.strategy.local_rows(config.batch_size), config.seed)
    state = s.strategy.init_state(s.create)
    step = s.strategy.compile_train_step(make_gan_step(s.task, s.g_tx, s.d_tx, 0.9, s.strategy.axis_name))
    for _ in range(num_steps):
        state, metrics = step(state, s.strategy.put_batch(next(stream), config.batch_size))
    return replicated_to_host(s.strategy.to_canonical(state)), s.strategy.metrics_to_host(metrics)


# SGD, not Adam: a convolution bias before instance norm has a zero gradient up to float noise, which Adam's
# normalisation would blow up to +-learning-rate steps that differ between the two reduction orders.
SGD = ("--config.g_optimizer.name=sgd", "--config.d_optimizer.name=sgd")


@pytest.mark.parametrize("variant", ["gan", "pix2pix"])
def test_pmap_matches_sharding_on_four_devices(repo, variant):
    assert jax.device_count() == 4
    sharded, m1 = _steps(gan_config(repo, variant, *SGD), 2)
    pmapped, m2 = _steps(gan_config(repo, variant, *SGD, "--config.parallel.strategy=pmap"), 2)
    np.testing.assert_allclose(m1["g_loss"], m2["g_loss"], rtol=1e-4)
    assert_trees_close(pmapped.g_params, sharded.g_params, rtol=1e-4, atol=1e-5)
    assert_trees_close(pmapped.d_params, sharded.d_params, rtol=1e-4, atol=1e-5)


def test_one_device_matches_four(repo):
    one, _ = _steps(gan_config(repo, "gan"), 2, devices=jax.devices()[:1])
    four, _ = _steps(gan_config(repo, "gan"), 2)
    assert_trees_close(four.g_params, one.g_params, rtol=1e-4, atol=1e-5)


def test_a_non_finite_step_leaves_the_state_unchanged(repo):
    config = gan_config(repo, "pix2pix")
    s = loop.setup(config, "/unused", jax.devices()[:1])
    state = s.strategy.init_state(s.create)
    step = jax.jit(make_gan_step(s.task, s.g_tx, s.d_tx, 0.9, None))
    batch = {k: jnp.asarray(v[:4]) for k, v in s.splits["train"].items()}
    batch["image"] = batch["image"].at[0, 0, 0, 0].set(jnp.nan)
    new, metrics = step(state, batch)
    assert float(metrics["finite"]) == 0.0 and int(new.step) == 1
    jax.tree.map(np.testing.assert_array_equal, (new.g_params, new.d_params, new.ema_params),
                 (state.g_params, state.d_params, state.ema_params))


def test_divergence_stops_with_the_last_good_checkpoint(repo, tmp_path):
    """D's learning rate warms up from 0 to 1e30: step 1 is harmless (and checkpointed), a later one overflows."""
    config = gan_config(repo, "gan", "--config.d_optimizer.name=sgd", "--config.d_optimizer.learning_rate=1e30",
                        "--config.d_optimizer.warmup_steps=4", "--config.checkpoint_every=1", "--config.log_every=1",
                        "--config.num_train_steps=8")
    with pytest.raises(TrainingDiverged, match="non-finite loss or gradient at step .* last good checkpoint is step"):
        train_loop.train(config, str(tmp_path))
    step, state = _final_state(tmp_path, config)
    assert 1 <= step < 8
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_a_pinned_discriminator_stops_the_run(repo, tmp_path):
    config = gan_config(repo, "gan", "--config.task.pinned_d_loss=1e9", "--config.task.pinned_patience=2",
                        "--config.log_every=1")
    with pytest.raises(TrainingDiverged, match=r"discriminator loss pinned below .* for 2 log intervals \(steps 1..2"):
        train_loop.train(config, str(tmp_path))


def test_config_errors_are_named(repo, tmp_path):
    with pytest.raises(MedjaxError, match="config.compute .* not supported for GAN"):
        loop.setup(gan_config(repo, "gan", "--config.compute.remat=True"), str(tmp_path))
    config = gan_config(repo, "gan")
    with config.unlocked():
        config.data.clip_length = 4
    with pytest.raises(MedjaxError, match=r"config.data.clip_length \(host-side sampling\) is not supported for GAN"):
        loop.setup(config, str(tmp_path))
    with pytest.raises(MedjaxError, match="unknown GAN loss 'wgan'"):
        loop.setup(gan_config(repo, "gan", "--config.task.loss=wgan"), str(tmp_path))
    with pytest.raises(MedjaxError, match="discriminator.name must be 'patchgan'"):
        loop.setup(gan_config(repo, "pix2pix", "--config.discriminator.name=dcgan"), str(tmp_path))
    with pytest.raises(MedjaxError, match="intensity_range must be"):
        loop.setup(gan_config(repo, "gan", "--config.task.intensity_range=(1.0, 0.0)"), str(tmp_path))


def test_intensities_map_to_unit_range_and_pix2pix_targets_are_one_hot(repo):
    np.testing.assert_allclose(loop.to_unit_range(np.array([0.0, 5.0, 10.0, 20.0]), 0.0, 10.0), [-1, 0, 1, 1])
    with pytest.raises(MedjaxError, match="training images are constant"):
        loop.intensity_range(gan_config(repo), np.ones((4, 8, 8, 1)))
    s = loop.setup(gan_config(repo, "pix2pix"), "/unused")
    train = s.splits["train"]
    assert train["target"].shape == train["image"].shape[:-1] + (3,)
    np.testing.assert_array_equal(train["target"].argmax(-1), (train["target"] > 0).argmax(-1))
    assert set(np.unique(train["target"])) == {-1.0, 1.0}
    assert train["image"].min() >= -1 and train["image"].max() <= 1


def test_cli_trains_and_evaluates_a_gan(repo, tmp_path, capsys):
    """`medjax train` / `evaluate` dispatch GAN configs to the GAN trainer (in-process: the subprocess form of the
    CLI is covered by tests/test_cli.py); a bad GAN setting exits 2 with one line."""
    from medjax import cli

    cfg = "gan_synthetic:super_resolution"
    assert cli.main(["train", "--config", cfg, "--workdir", str(tmp_path), "--config.num_train_steps=4"]) == 0
    assert cli.main(["evaluate", "--config", cfg, "--workdir", str(tmp_path), "--split", "val"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["checkpoint"] == "best" and {"psnr", "ssim", "bicubic_psnr"} <= set(result)
    capsys.readouterr()
    assert cli.main(["train", "--config", cfg, "--workdir", str(tmp_path / "x"), "--config.task.loss=x"]) == 2
    assert "medjax: error: unknown GAN loss 'x'" in capsys.readouterr().err


def test_3d_volumes_train_too(repo, tmp_path):
    """SR with a PatchGAN on 8^3 volumes (SSIM is skipped below its 11-voxel window; the grid shows middle
    slices). The 3D DCGAN networks are covered in test_models."""
    config = gan_config(repo, "super_resolution", "--config.data.size=(8, 8, 8)", "--config.num_train_steps=2",
                        "--config.eval_every=2", "--config.checkpoint_every=2",
                        "--config.discriminator.num_layers=1")  # 8 -> 4 -> 3 -> 2 patches
    metrics = train_loop.train(config, str(tmp_path))
    assert set(metrics) == {"psnr", "l1", "bicubic_psnr"}  # no SSIM below its 11-voxel window
    assert (tmp_path / "plots" / "samples_000002.png").exists()
    # the validation numbers by hand (numpy) from the EMA generator of the step-2 checkpoint
    step, state = _final_state(tmp_path, config)
    s = loop.setup(config, str(tmp_path))
    n = config.eval.num_examples
    real = s.splits["val"]["image"][:n].astype(np.float64)
    fake = np.asarray(jax.jit(lambda p, st, b: loop.generate(s.task, p, st, b, jax.random.key(0)))(
        state.ema_params, state.g_stats, {"image": s.splits["val"]["image"][:n]}), np.float64)
    mse = ((fake - real) ** 2).mean(axis=(1, 2, 3, 4))
    assert step == 2 and fake.shape == real.shape == (n, 8, 8, 8, 1)
    assert metrics["psnr"] == pytest.approx(np.mean(10 * np.log10(2.0**2 / mse)), rel=1e-5)
    assert metrics["l1"] == pytest.approx(np.abs(fake - real).mean(), rel=1e-5)
