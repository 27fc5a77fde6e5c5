import ml_collections
import numpy as np
import pytest

from medjax.errors import MedjaxError
from medjax.train.optim import make_optimizer, make_schedule


def _cfg(**kw):
    base = dict(name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0, decay_at=(0.5, 0.75),
                decay_factor=0.1, weight_decay=1e-4)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_piecewise_is_the_medmnist_protocol():
    sched = make_schedule(_cfg(schedule="piecewise"), num_train_steps=100)
    assert [float(sched(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])


def test_warmup_then_cosine():
    sched = make_schedule(_cfg(schedule="cosine", warmup_steps=10), num_train_steps=110)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(5e-4)
    assert float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(60)) == pytest.approx(5e-4, rel=1e-4)
    assert float(sched(110)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("key, value", [("name", "adamx"), ("schedule", "linear")])
def test_unknown_names_are_errors(key, value):
    with pytest.raises(MedjaxError, match=f"config.optimizer.{key}"):
        make_optimizer(_cfg(**{key: value}), 10)


def test_sgd_step_by_hand():
    import jax.numpy as jnp

    tx = make_optimizer(_cfg(name="sgd", learning_rate=0.1, momentum=0.0), 10)
    params = {"w": jnp.array([1.0, 2.0])}
    updates, _ = tx.update({"w": jnp.array([0.5, -1.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.05, 0.1], rtol=1e-6)


def test_adam_betas_are_configurable():
    """Two Adam steps by hand with b1=0.5, b2=0.9: the second update is -lr * m_hat / (sqrt(v_hat) + eps)."""
    import jax.numpy as jnp

    tx = make_optimizer(_cfg(learning_rate=0.1, b1=0.5, b2=0.9), 10)
    params = {"w": jnp.array([0.0])}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.array([1.0])}, state, params)
    updates, _ = tx.update({"w": jnp.array([3.0])}, state, params)
    m = (0.5 * 0.5 * 1.0 + 0.5 * 3.0) / (1 - 0.5**2)
    v = (0.9 * 0.1 * 1.0 + 0.1 * 9.0) / (1 - 0.9**2)
    np.testing.assert_allclose(updates["w"], [-0.1 * m / (np.sqrt(v) + 1e-8)], rtol=1e-6)
