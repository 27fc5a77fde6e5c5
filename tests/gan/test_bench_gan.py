"""The GAN bench rows compute the same first step in medjax and in torch (the smoke bench covers both rows)."""

import pytest

from medjax.bench import bench
from medjax.bench.gan_bench import run_gan_case


def test_pix2pix_step_matches_torch_on_the_same_weights():
    case = bench.CASES["gan_pix2pix"]
    records = run_gan_case(case, "smoke", 0, 1, ("medjax", "torch_eager"), log=lambda _: None)
    medjax, torch = records
    assert medjax["framework"] == "medjax" and torch["loss_check"]["passed"]
    assert torch["first_g_loss"] == pytest.approx(medjax["first_g_loss"], rel=1e-4)
    assert torch["first_d_loss"] == pytest.approx(medjax["first_d_loss"], rel=1e-4)
    assert medjax["first_g_loss"] > 10  # the 100 x L1 term of an untrained generator dominates
    assert medjax["train_examples_per_s"] > 0 and torch["infer_examples_per_s"] > 0


def test_conditional_spectral_norm_dcgan_step_matches_torch():
    """The augmentation experiment's DCGAN: class-conditional, projection discriminator, spectral norm, hinge."""
    case = bench.CASES["gan_dcgan"]
    medjax, torch = run_gan_case(case, "smoke", 0, 1, ("medjax", "torch_eager"), log=lambda _: None)
    assert medjax["discriminator"]["spectral_norm"] is True and medjax["loss"] == "hinge"
    assert torch["first_d_loss"] == pytest.approx(medjax["first_d_loss"], rel=1e-5)
    assert torch["first_g_loss"] == pytest.approx(medjax["first_g_loss"], rel=1e-5)
