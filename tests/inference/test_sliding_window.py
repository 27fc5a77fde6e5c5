"""medjax's sliding-window inference against `monai.inferers.sliding_window_inference` on the same predictor."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
monai_inferers = pytest.importorskip("monai.inferers")
monai_data_utils = pytest.importorskip("monai.data.utils")

from monai.inferers.utils import _get_scan_interval  # noqa: E402

from medjax.errors import MedjaxError  # noqa: E402
from medjax.inference import gaussian_importance_map, sliding_window_inference, window_starts  # noqa: E402

OUT = 3


def _mixing_predictor(roi, channels, seed):
    """tanh(1x1 channel mixing) + a fixed term that depends on the position inside the window, in jax and torch."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((channels, OUT)).astype(np.float32)
    pos = rng.standard_normal((*roi, OUT)).astype(np.float32)
    w_t, pos_t = torch.from_numpy(w), torch.from_numpy(np.moveaxis(pos, -1, 0).copy())

    def jax_fn(x):  # (B, *roi, C)
        return jnp.tanh(x @ w) + pos

    def torch_fn(x):  # (B, C, *roi)
        return torch.tanh(torch.einsum("bc...,co->bo...", x, w_t)) + pos_t[None]

    return jax_fn, torch_fn


def _conv_predictor(nd, channels, seed):
    """A 3-wide conv with zero padding 1 (= 'SAME'), so window borders matter; shared weights, transposed."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((OUT, channels) + (3,) * nd) / 3).astype(np.float32)  # torch O I *k
    b = rng.standard_normal(OUT).astype(np.float32)
    w_j = np.moveaxis(w, (0, 1), (-1, -2))  # *k I O
    spec = ("NHWC", "HWIO", "NHWC") if nd == 2 else ("NDHWC", "DHWIO", "NDHWC")
    conv_t = torch.nn.functional.conv2d if nd == 2 else torch.nn.functional.conv3d

    def jax_fn(x):
        return jax.lax.conv_general_dilated(x, w_j, (1,) * nd, [(1, 1)] * nd, dimension_numbers=spec) + b

    def torch_fn(x):
        return conv_t(x, torch.from_numpy(w), torch.from_numpy(b), padding=1)

    return jax_fn, torch_fn


def _monai(torch_fn, x, roi, **kw):
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    with torch.no_grad():
        out = monai_inferers.sliding_window_inference(xt, roi, predictor=torch_fn, **kw)
    return np.moveaxis(out.numpy(), 1, -1)


CASES = [
    # shape (N, *spatial, C), roi, overlap, mode, sw_batch_size
    ((1, 20, 27, 2), (8, 8), 0.25, "gaussian", 3),  # not divisible by the roi
    ((2, 17, 5, 2), (8, 12), 0.5, "constant", 1),  # smaller than the roi in dim 2: padded, cropped
    ((2, 13, 15, 1), (6, 7), 0.5, "gaussian", 3),  # chunks straddle the two images
    ((1, 16, 9, 2), (16, 4), 0.25, "constant", 3),  # roi == image in dim 1
    ((1, 10, 13, 9, 2), (6, 6, 6), 0.25, "gaussian", 3),
    ((2, 9, 4, 11, 1), (5, 6, 5), 0.5, "gaussian", 1),  # smaller than the roi in dim 2
    ((1, 7, 11, 8, 2), (4, 5, 6), 0.5, "constant", 3),
    ((1, 5, 12, 10, 1), (8, 6, 4), 0.25, "constant", 1),  # smaller in dim 1 (odd pad)
]


@pytest.mark.parametrize("shape,roi,overlap,mode,sw", CASES)
def test_matches_monai(shape, roi, overlap, mode, sw):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    jax_fn, torch_fn = _mixing_predictor(roi, shape[-1], seed=len(roi) + sw)
    run = jax.jit(lambda v: sliding_window_inference(jax_fn, v, roi, overlap=overlap, mode=mode, sw_batch_size=sw))
    got = np.asarray(run(x))
    ref = _monai(torch_fn, x, roi, sw_batch_size=sw, overlap=overlap, mode=mode)
    assert got.shape == shape[:-1] + (OUT,) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("nd", [2, 3])
def test_matches_monai_with_a_conv_predictor(nd):
    shape, roi = ((1, 19, 14, 2), (8, 16)) if nd == 2 else ((1, 11, 6, 10, 2), (5, 8, 6))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    jax_fn, torch_fn = _conv_predictor(nd, 2, seed=nd)
    got = np.asarray(jax.jit(lambda v: sliding_window_inference(jax_fn, v, roi, overlap=0.5, sw_batch_size=3))(x))
    ref = _monai(torch_fn, x, roi, sw_batch_size=3, overlap=0.5, mode="gaussian")
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_roi_fallback_padding_value_and_per_dim_sigma_match_monai():
    shape, roi = (1, 7, 20, 2), (9, -1)  # -1: the whole image along dim 1; dim 0 padded with cval
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    jax_fn, torch_fn = _mixing_predictor((9, 20), 2, seed=5)
    kw = dict(overlap=(0.5, 0.25), mode="gaussian", sigma_scale=(0.25, 0.125))
    got = np.asarray(sliding_window_inference(jax_fn, x, roi, sw_batch_size=2, padding_value=0.7, **kw))
    ref = _monai(torch_fn, x, roi, sw_batch_size=2, cval=0.7, **kw)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_window_starts_match_monai():
    rng = np.random.default_rng(0)
    for _ in range(300):
        nd = int(rng.integers(1, 4))
        roi = tuple(int(r) for r in rng.integers(1, 12, nd))
        size = tuple(max(r, int(n)) for r, n in zip(roi, rng.integers(1, 30, nd)))
        overlap = float(rng.choice([0.0, 0.25, 0.5, 0.75, 0.9]))
        interval = _get_scan_interval(size, roi, nd, (overlap,) * nd)
        ref = [tuple(s.start for s in sl) for sl in monai_data_utils.dense_patch_slices(size, roi, interval)]
        assert window_starts(size, roi, overlap) == ref, (size, roi, overlap)


def test_gaussian_importance_map_matches_monai():
    for roi in [(5,), (8, 8), (7, 6, 5), (1, 2), (16, 9, 4)]:
        for scale in [0.125, 0.5, 1.0, (0.25, 0.125, 0.5)[: len(roi)]]:
            ref = monai_data_utils.compute_importance_map(roi, mode="gaussian", sigma_scale=scale).numpy()
            got = gaussian_importance_map(roi, scale)
            assert got.dtype == np.float32 and got.shape == roi
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)


def test_compiles_to_one_program_and_does_not_retrace():
    traces = []

    def predict(x):
        traces.append(x.shape)
        return x * 2.0 + 1.0

    run = jax.jit(lambda v: sliding_window_inference(predict, v, (4, 4, 4), sw_batch_size=2))
    x = jnp.ones((1, 9, 6, 5, 1))
    compiled = run.lower(x).compile()
    np.testing.assert_allclose(np.asarray(compiled(x)), 3.0, rtol=1e-6)
    n = len(traces)
    assert n > 0 and all(s == (2, 4, 4, 4, 1) for s in traces)  # the predictor sees whole chunks only
    run(x)
    run(x + 1)
    assert len(traces) == n  # a second call with the same shapes does not retrace
    assert "while" in compiled.as_text()  # the windows are a loop inside the one program, not unrolled


def test_errors_name_the_problem():
    x = jnp.ones((1, 8, 8, 1))
    ident = lambda v: v  # noqa: E731
    with pytest.raises(MedjaxError, match="overlap"):
        sliding_window_inference(ident, x, (4, 4), overlap=1.0)
    with pytest.raises(MedjaxError, match="mode"):
        sliding_window_inference(ident, x, (4, 4), mode="mean")
    with pytest.raises(MedjaxError, match="roi_size"):
        sliding_window_inference(ident, x, (4, 4, 4))
    with pytest.raises(MedjaxError, match="predict_fn"):
        sliding_window_inference(lambda v: v[:, ::2], x, (4, 4))


def test_benchmark_smoke(tmp_path):
    from medjax.bench import sliding_window as bench

    out = tmp_path / "bench.json"
    bench.main(["--size", "24", "--roi", "16", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    for k in ["medjax_compile_s", "medjax_run_s", "monai_run_s", "monai_over_medjax", "max_abs_diff", "num_windows"]:
        assert k in result
    assert result["max_abs_diff"] <= 1e-4 and result["num_windows"] == 8


@pytest.mark.parametrize("shape, roi, overlap, sw", [((23, 17, 2), (8, 8), 0.5, 3), ((6, 20, 1), (10, 7), 0.25, 4),
                                                     ((9, 11, 10, 1), (4, 6, 4), 0.5, 5)])
def test_volume_form_equals_one_program_form(shape, roi, overlap, sw):
    from medjax.inference.sliding_window import sliding_window_volume

    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    kernel = np.random.default_rng(1).normal(size=(shape[-1], 3)).astype(np.float32)

    def predict(windows):  # position-dependent, so misplaced windows would show
        return jnp.tanh(windows @ kernel + jnp.cumsum(windows, axis=1)[..., :1])

    calls = []
    def host_predict(windows):
        calls.append(windows.shape)
        return np.asarray(jax.jit(predict)(windows))

    expected = jax.jit(lambda x: sliding_window_inference(predict, x, roi, overlap=overlap, sw_batch_size=sw))(
        image[None])[0]
    got = sliding_window_volume(host_predict, image, roi, overlap=overlap, sw_batch_size=sw, padding_value=0.0)
    assert got.shape == (*shape[:-1], 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-5, atol=1e-6)
    assert set(calls) == {(sw, *roi, shape[-1])}  # one window shape: compiled once per dataset


def test_volume_form_rejects_a_wrong_predictor():
    from medjax.inference.sliding_window import sliding_window_volume

    with pytest.raises(MedjaxError, match="predict_windows must map"):
        sliding_window_volume(lambda w: w[:, :2], np.zeros((8, 8, 1), np.float32), (4, 4))
