"""The benchmark's torch twins of medjax's own networks compute what the medjax models compute on the same
weights (otherwise a bench row would compare different functions), in eval and train mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medjax.bench import twins  # noqa: E402
from medjax.models import build_model  # noqa: E402


def _variables(model, x):
    """Initial variables with non-trivial BatchNorm statistics and affine parameters (one jitted program: op by op,
    every leaf's shape would compile its own)."""
    @jax.jit
    def make():
        v = model.init(jax.random.key(0), x, train=False)
        keys = iter(jax.random.split(jax.random.key(1), 512))
        bump = lambda a: a + 0.2 * jax.random.normal(next(keys), a.shape)  # noqa: E731
        out = {"params": jax.tree.map(bump, v["params"])}
        if "batch_stats" in v:
            out["batch_stats"] = jax.tree.map(lambda a: jnp.abs(bump(a)) + 0.5, v["batch_stats"])
        return out
    return make()


def _apply(model, v, x, train):
    """The medjax model, jitted (one compile instead of one per operation); train mode updates no state here."""
    if train:
        return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])(v, x)
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)


def _torch(v):
    p = twins.torch_weights(jax.device_get(v["params"]))
    s = twins.torch_weights(jax.device_get(v.get("batch_stats", {})))
    return p, s


def _nc(x, frames=False):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 2 if frames else 1)))


def _close(ours, ref, frames=False):
    ref = np.moveaxis(ref.detach().numpy(), 2 if frames else 1, -1)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("shape,kw", [
    ((2, 20, 18, 1), dict(features=(4, 8, 16), norm="batch")),  # the quickstart's U-Net (odd sizes: edge padding)
    ((1, 12, 10, 12, 2), dict(features=(4, 8, 8), norm="instance", deep_supervision=True)),  # the MSD 3D U-Net
])
def test_unet_twin_matches_medjax(shape, kw):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    model = build_model("unet", num_classes=3, **kw)
    v = _variables(model, jnp.asarray(x))
    p, s = _torch(v)
    depth, ds = len(kw["features"]), kw.get("deep_supervision", False)
    _close(_apply(model, v, jnp.asarray(x), train=False),
           twins.unet(p, s, _nc(x), depth, kw["norm"], train=False, deep_supervision=ds))
    ours = _apply(model, v, jnp.asarray(x), train=True)
    ref = twins.unet(p, s, _nc(x), depth, kw["norm"], train=True, deep_supervision=ds)
    for a, b in zip(ours if ds else (ours,), ref if ds else (ref,)):
        _close(a, b)


def test_convlstm_twins_match_medjax():
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 12, 1)).astype(np.float32)
    seg = build_model("convlstm_unet", num_classes=3, features=(4, 8))
    v = _variables(seg, jnp.asarray(x))
    p, s = _torch(v)
    for train in (False, True):
        _close(_apply(seg, v, jnp.asarray(x), train), twins.convlstm_unet(p, s, _nc(x, True), 2, "batch", train),
               frames=True)
    reg = build_model("convlstm_regressor", num_classes=1, features=(4, 8), lstm_features=4)
    v = _variables(reg, jnp.asarray(x))
    p, s = _torch(v)
    np.testing.assert_allclose(np.asarray(_apply(reg, v, jnp.asarray(x), False)),
                               twins.convlstm_regressor(p, s, _nc(x, True), 2, "batch", False).detach().numpy(),
                               atol=1e-5)


def test_deep_supervision_weights_and_label_resizing_match_medjax():
    """The torch loss of a deep-supervised row: medjax's 1, 1/2, 1/4 (normalised) and nearest label sampling."""
    from medjax.tasks.segmentation import resize_labels

    labels = np.random.default_rng(2).integers(0, 3, (2, 9, 7)).astype(np.int64)
    np.testing.assert_array_equal(twins.resize_labels(torch.from_numpy(labels), (5, 4)).numpy(),
                                  np.asarray(resize_labels(jnp.asarray(labels), (5, 4))))
    seen = []
    total = twins.deep_supervision(lambda logits, lab: seen.append(tuple(lab.shape)) or float(logits.shape[2]),
                                   (torch.zeros(2, 3, 9, 7), torch.zeros(2, 3, 5, 4), torch.zeros(2, 3, 3, 2)),
                                   torch.from_numpy(labels))
    assert seen == [(2, 9, 7), (2, 5, 4), (2, 3, 2)]
    assert total == pytest.approx((9 * 4 + 5 * 2 + 3 * 1) / 7)
