"""The GAN bench rows compute the same first step in medjax and in torch (the smoke bench covers dcgan_64)."""

import pytest

from experiments.benchmarks import bench
from experiments.benchmarks.gan_bench import run_gan_case


def test_pix2pix_step_matches_torch_on_the_same_weights():
    case = bench.CASES["pix2pix_256"]
    records = run_gan_case(case, bench.Shape(2, 32, (8, 16)), 0, 1, ("medjax", "torch_eager"), log=lambda _: None)
    medjax, torch = records
    assert medjax["framework"] == "medjax" and torch["loss_check"]["passed"]
    assert torch["first_g_loss"] == pytest.approx(medjax["first_g_loss"], rel=1e-4)
    assert torch["first_d_loss"] == pytest.approx(medjax["first_d_loss"], rel=1e-4)
    assert medjax["first_g_loss"] > 10  # the 100 x L1 term of an untrained generator dominates
    assert medjax["train_examples_per_s"] > 0 and torch["infer_examples_per_s"] > 0
