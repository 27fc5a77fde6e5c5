"""The accountant against dp-accounting and Opacus, truncated Poisson batches, solving sigma for a target epsilon,
and the padded batch shapes of `medjax.privacy.sampling`."""

import math

import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.privacy import accounting, sampling

Q, SIGMA, STEPS, DELTA = 0.02, 1.0, 200, 1e-5  # the known case: rdp epsilon 2.2298, pld 1.8529


def test_rdp_epsilon_equals_dp_accountings_and_opacus():
    pytest.importorskip("opacus")
    import dp_accounting
    from opacus.accountants import RDPAccountant

    ours = accounting.poisson_epsilon(Q, SIGMA, STEPS, DELTA, "rdp")
    event = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(SIGMA))
    google = dp_accounting.rdp.RdpAccountant().compose(event, STEPS).get_epsilon(DELTA)
    opacus = RDPAccountant()
    opacus.history = [(SIGMA, Q, STEPS)]  # what STEPS calls of opacus.step(noise_multiplier, sample_rate) leave
    assert ours == pytest.approx(2.229844, abs=1e-6)
    assert ours == google
    assert opacus.get_epsilon(DELTA) == pytest.approx(ours, rel=0.01)  # 2.229833: Opacus's alphas are fewer
    assert opacus.get_epsilon(DELTA) == pytest.approx(ours, rel=1e-4)


def test_pld_epsilon_is_dp_accountings_and_tighter_than_rdp():
    import dp_accounting

    ours = accounting.poisson_epsilon(Q, SIGMA, STEPS, DELTA, "pld")
    acc = dp_accounting.pld.PLDAccountant()  # its default discretisation (1e-4); medjax's 1e-3 is pessimistic
    acc.compose(dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(SIGMA)), STEPS)
    assert ours == pytest.approx(1.852855, abs=1e-5)
    assert acc.get_epsilon(DELTA) == pytest.approx(1.852735, abs=1e-5) and acc.get_epsilon(DELTA) <= ours
    assert ours < 0.85 * accounting.poisson_epsilon(Q, SIGMA, STEPS, DELTA, "rdp")


def test_truncated_batches_cost_epsilon_and_pld_accounts_for_it():
    """N = 200, expected batch 16 (q = 0.08), sigma 1, 50 steps, delta 1e-4: batches cut at 24 (+2 std) spend
    6.08, never cut (padded to 201 > N: the plain Poisson event) 3.41."""
    cut = accounting.Mechanism(200, 16, 24, 1.0, "pld", 1e-4)
    whole = accounting.Mechanism(200, 16, 201, 1.0, "pld", 1e-4)
    assert cut.epsilon(50) == pytest.approx(6.084456, abs=1e-5)
    assert whole.epsilon(50) == pytest.approx(3.405044, abs=1e-5)
    assert whole.epsilon(50) == accounting.poisson_epsilon(0.08, 1.0, 50, 1e-4, "pld")
    assert cut.epsilon(0) == 0.0


def test_rdp_pays_for_truncation_in_delta_or_refuses():
    """rdp has no truncated event: the automatic padded size (48 here) makes the cut probability cost 5.4e-9 of
    delta, so epsilon barely moves; a padded size of 20 cuts too often and is refused (inf)."""
    padded = sampling.auto_padded_batch_size(200, 16, 4, "rdp", 50, 1e-4, 1.0)
    assert padded == 48
    mech = accounting.Mechanism(200, 16, padded, 1.0, "rdp", 1e-4)
    assert mech.truncation_delta(50) == pytest.approx(5.428e-9, rel=1e-3)
    assert mech.epsilon(50) == pytest.approx(accounting.poisson_epsilon(0.08, 1.0, 50, 1e-4, "rdp"), rel=1e-5)
    assert accounting.Mechanism(200, 16, 20, 1.0, "rdp", 1e-4).epsilon(50) == math.inf


def test_target_epsilon_solves_sigma_as_opacus_does():
    """The smallest sigma (to 0.5%) whose epsilon after 1000 steps is <= 2 (q = 0.01, untruncated, rdp): Opacus's
    get_noise_multiplier finds 1.0229; ours is within its tolerance of it and brackets the target."""
    mech = lambda s: accounting.Mechanism(1000, 10, 1001, s, "rdp", 1e-5)  # noqa: E731
    sigma = accounting.solve_noise_multiplier(2.0, 1000, mech)
    assert sigma == pytest.approx(1.02294921875, rel=5e-3)
    assert mech(sigma).epsilon(1000) <= 2.0 < mech(sigma / 1.005).epsilon(1000)


def test_steps_within_a_budget_and_the_unreachable_target():
    mech = accounting.Mechanism(200, 16, 201, 1.0, "pld", 1e-4)
    assert mech.steps_within(2.0, 50) == 12  # epsilon 1.946 after 12 steps, 2.0002 after 13
    assert mech.epsilon(12) <= 2.0 < mech.epsilon(13)
    assert mech.steps_within(100.0, 50) == 50
    with pytest.raises(MedjaxError, match="target_epsilon=0.01 is out of reach in 1000 steps"):
        accounting.solve_noise_multiplier(0.01, 1000, lambda s: accounting.Mechanism(1000, 500, 1001, s, "pld", 1e-5))


def test_poisson_batches_are_seeded_by_position_padded_and_cut():
    indices, weights = sampling.poisson_batch(0, 3, 20, 0.25, 12)  # 8 examples drawn, 4 rows of padding
    assert indices.tolist() == [11, 10, 1, 17, 3, 12, 14, 15, 0, 0, 0, 0]
    assert weights.tolist() == [1.0] * 8 + [0.0] * 4
    again = sampling.poisson_batch(0, 3, 20, 0.25, 12)
    assert all(np.array_equal(a, b) for a, b in zip(again, (indices, weights)))  # a pure function of (seed, step)
    cut = sampling.poisson_batch(0, 3, 20, 0.25, 5)  # 8 drawn, cut to a uniformly random 5
    assert cut[1].tolist() == [1.0] * 5 and len(set(cut[0].tolist())) == 5
    sizes = [int(sampling.poisson_batch(0, s, 1000, 0.032, 1001)[1].sum()) for s in range(400)]
    assert np.mean(sizes) == pytest.approx(32, abs=3 * math.sqrt(32 * 0.968 / 400))  # Binomial(1000, 0.032)
    assert sampling.auto_padded_batch_size(200, 16, 4, "pld") == 36  # 16 + 5 std = 34.9 -> 35 -> multiple of 4
    assert sampling.auto_padded_batch_size(30, 25, 4, "pld") == 32  # never more than N + 1, rounded up
