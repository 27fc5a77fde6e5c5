"""On-device augmentation: exact geometry, pinned intensity maths, per-example keys, 2D and 3D.

Shapes are tiny (16x16, 8x8x8) and every jitted function is built once per config/rank, since XLA compiles
dominate the runtime on the CPU test machine.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage

from medjax import rng
from medjax.data import augment as A
from medjax.errors import MedjaxError

SHAPES = {2: (16, 16), 3: (8, 8, 8)}
LABEL_VALUES = (0, 3, 7)


def _labels(shape, n, seed):
    """Integer maps with a ball of 3 and a box of 7 at random places."""
    r = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    out = np.zeros((n, *shape), np.int32)
    for i in range(n):
        c = [r.uniform(0.3 * s, 0.7 * s) for s in shape]
        out[i][sum((g - ci) ** 2 for g, ci in zip(grids, c)) < (0.22 * min(shape)) ** 2] = 3
        lo = [r.integers(0, s // 2) for s in shape]
        out[i][tuple(slice(a, a + s // 4 + 1) for a, s in zip(lo, shape))] = 7
    return out


def _batch(nd, n=4, channels=2, seed=0):
    shape = SHAPES[nd]
    r = np.random.default_rng(seed)
    return {
        "image": r.normal(size=(n, *shape, channels)).astype(np.float32),
        "label": _labels(shape, n, seed),
        "index": (np.arange(n) * 7 + 3).astype(np.int32),
        "weight": np.ones(n, np.float32),
    }


@functools.cache
def _jitted(cfg_items):
    """One jitted augment per config (configs as hashable tuples), reused across tests."""
    cfg = ml_collections.ConfigDict()
    cfg.transforms = tuple(name for name, _ in cfg_items)
    for name, fields in cfg_items:
        cfg[name] = dict(fields)
    return jax.jit(A.make_augment(cfg))


def _cfg(**transforms):
    return tuple((name, tuple(sorted(fields.items()))) for name, fields in transforms.items())


def _run(cfg, batch, seed=0):
    out = _jitted(cfg)(rng.key(seed), batch)
    return {k: np.asarray(v) for k, v in out.items()}


def _shift(x, shift, fill=None):
    """np.roll over the leading len(shift) axes, filling with `fill` (per channel) or 0 instead of wrap-around."""
    out = np.zeros_like(x) if fill is None else np.broadcast_to(fill, x.shape).copy()
    src, dst = [], []
    for s, n in zip(shift, x.shape):
        src.append(slice(max(0, -s), n - max(0, s)))
        dst.append(slice(max(0, s), n - max(0, -s)))
    out[tuple(dst)] = x[tuple(src)]
    return out


# ------------------------------------------------------------------------------------------- identity


def test_disabled_configs_are_identity():
    batch = _batch(2)
    key = rng.key(0)
    for cfg in (None, ml_collections.ConfigDict(), ml_collections.ConfigDict({"transforms": ()}),
                A.default_config()):
        assert A.make_augment(cfg)(key, batch) is batch
    off = A.default_config(A.TRANSFORMS)
    for name in A.TRANSFORMS:
        off[name].p = 0.0
    assert A.make_augment(off)(key, batch) is batch


@pytest.mark.parametrize("name", A.TRANSFORMS)
def test_each_transform_with_p0_is_identity(name):
    x = jnp.asarray(_batch(3)["image"][0])
    y = jnp.asarray(_batch(3)["label"][0])
    fn = getattr(A, name)
    out_x, out_y = fn(rng.key(1), x, y, p=0.0)
    np.testing.assert_array_equal(out_x, x)
    np.testing.assert_array_equal(out_y, y)


IDENTITY = _cfg(
    affine=dict(p=1.0, rotate=0.0, scale=(1.0, 1.0), shear=0.0, translate=0.0),
    elastic=dict(p=1.0, magnitude=(0.0, 0.0)),
    gamma=dict(p=1.0, gamma=(1.0, 1.0)),
    contrast_brightness=dict(p=1.0, contrast=(1.0, 1.0), brightness=(1.0, 1.0)),
    noise=dict(p=1.0, std=(0.0, 0.0)),
    blur=dict(p=1.0, sigma=(0.0, 0.0)),
    bias_field=dict(p=1.0, magnitude=(0.0, 0.0)),
)


@pytest.mark.parametrize("nd", [2, 3])
def test_identity_parameters_with_p1_are_identity(nd):
    batch = _batch(nd)
    out = _run(IDENTITY, batch)
    np.testing.assert_allclose(out["image"], batch["image"], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(out["label"], batch["label"])
    assert out["label"].dtype == np.int32 and out["image"].dtype == np.float32


# -------------------------------------------------------------------------------------- flips, rot90


@pytest.mark.parametrize("nd", [2, 3])
def test_flip_and_rot90_with_p1_equal_numpy(nd):
    x = _batch(nd)["image"][0]
    y = _batch(nd)["label"][0]
    plane = (0, 2) if nd == 3 else (0, 1)

    @jax.jit
    def f(key, x, y):
        x, y = A.flip(key, x, y, p=1.0)
        return A.rot90(jax.random.fold_in(key, 1), x, y, p=1.0, axes=plane, k=(1,))

    out_x, out_y = f(rng.key(0), x, y)
    axes = tuple(range(nd))
    np.testing.assert_array_equal(out_x, np.rot90(np.flip(x, axes), 1, axes=plane))
    np.testing.assert_array_equal(out_y, np.rot90(np.flip(y, axes), 1, axes=plane))


@pytest.mark.parametrize("nd", [2, 3])
def test_random_flips_and_rot90_are_exact_and_move_image_and_label_together(nd):
    batch = _batch(nd, n=8)
    plane = (nd - 2, nd - 1)
    out = _run(_cfg(flip=dict(p=0.5), rot90=dict(p=0.75)), batch)
    chosen = set()
    for i in range(8):
        x, y = batch["image"][i], batch["label"][i]
        hits = []
        for flips in np.ndindex(*(2,) * nd):
            axes = tuple(a for a in range(nd) if flips[a])
            for k in range(4):
                cand_x = np.rot90(np.flip(x, axes), k, axes=plane)
                cand_y = np.rot90(np.flip(y, axes), k, axes=plane)
                if np.array_equal(out["image"][i], cand_x) and np.array_equal(out["label"][i], cand_y):
                    hits.append((axes, k))
        assert hits, f"example {i} is not an exact flip/rotation of its input (or image and label differ)"
        chosen.add(hits[0])
    assert len(chosen) >= 3  # the draws differ across examples


def test_rot90_on_a_non_square_plane_is_an_error_at_build_time():
    cfg = A.default_config(("rot90",))
    with pytest.raises(MedjaxError, match=r"config\.augment: .*rot90.*not square"):
        A.make_augment(cfg, spatial_shape=(8, 8, 6))
    A.make_augment(cfg, spatial_shape=(6, 8, 8))  # the default plane is the last two axes
    cfg.rot90.axes = (0, 1)
    A.make_augment(cfg, spatial_shape=(8, 8, 6))
    with pytest.raises(MedjaxError, match="not square"):
        A.rot90(rng.key(0), jnp.zeros((8, 6, 1)), None, p=1.0)


# ------------------------------------------------------------------------------------------ affine


AFFINE_CASES = {
    # pure integer translation: exact (to float rounding), like np.roll with the channel minimum filled in
    "translate": (dict(rotate=0.0, scale=(1.0, 1.0), translate=((2, 2), (-3, -3), (1, 1))), 0.0),
    # a quarter turn about the centre, then a translation: pins the rotation direction and composition order
    "rotate90": (dict(rotate=((90, 90), (0, 0), (0, 0)), scale=(1.0, 1.0), translate=((1, 1), (2, 2), (0, 0))),
                 1e-4),
}


@pytest.mark.parametrize("case", list(AFFINE_CASES))
@pytest.mark.parametrize("nd", [2, 3])
def test_affine_pins_translation_and_rotation(nd, case):
    params, atol = AFFINE_CASES[case]
    params = dict(params, p=1.0)
    params["translate"] = params["translate"][:nd]
    if nd == 2 and isinstance(params["rotate"], tuple):
        params["rotate"] = params["rotate"][:1]
    batch = _batch(nd, n=2)
    out = _run(_cfg(affine=params), batch)
    shift = [lo for lo, _ in params["translate"]]
    plane = (0, 1) if nd == 2 else (1, 2)
    k = 1 if case == "rotate90" else 0
    for i in range(2):
        channel_min = batch["image"][i].min(axis=tuple(range(nd)))  # the image's fill outside the input
        want_x = _shift(np.rot90(batch["image"][i], k, axes=plane), shift, fill=channel_min)
        want_y = _shift(np.rot90(batch["label"][i], k, axes=plane), shift)
        np.testing.assert_allclose(out["image"][i], want_x, atol=max(atol, 1e-5), rtol=0)
        np.testing.assert_array_equal(out["label"][i], want_y)


GEOMETRIC = dict(
    affine=dict(p=1.0, rotate=30.0, scale=(0.8, 1.2), shear=0.1, translate=1.5),
    elastic=dict(p=1.0, grid=4, magnitude=(1.5, 1.5)),
)


@pytest.mark.parametrize("nd", [2, 3])
def test_geometric_labels_keep_their_values_and_stay_aligned_with_the_image(nd):
    """Nearest sampling for both: the image channel that equals the label must still equal it everywhere."""
    batch = _batch(nd)
    batch["image"][..., 0] = batch["label"]
    out = _run(_cfg(**{k: dict(v, order=0) for k, v in GEOMETRIC.items()}), batch)
    assert set(np.unique(out["label"])) <= set(LABEL_VALUES)
    np.testing.assert_array_equal(out["image"][..., 0], out["label"].astype(np.float32))
    assert not np.array_equal(out["label"], batch["label"])
    assert (out["label"] > 0).sum() > 0.3 * (batch["label"] > 0).sum()  # foreground mostly stays in view


def test_a_voxel_mask_follows_the_geometry_of_the_label():
    """batch["mask"] (e.g. a field-of-view mask) moves exactly as the label does: flips, rotations and warps,
    nearest, 0 where the warp samples outside the input."""
    batch = _batch(2, n=8)
    batch["mask"] = (batch["label"] == 3).astype(np.float32)
    cfg = _cfg(flip=dict(p=0.5), rot90=dict(p=0.5), **GEOMETRIC, gamma=dict(p=1.0))
    out = _run(cfg, batch)
    assert out["mask"].dtype == np.float32
    np.testing.assert_array_equal(out["mask"], (out["label"] == 3).astype(np.float32))
    assert not np.array_equal(out["mask"], batch["mask"])
    with pytest.raises(MedjaxError, match=r"batch\['mask'\] of shape \(8, 16, 16, 1\)"):
        _run(cfg, dict(batch, mask=batch["mask"][..., None]))


def test_linear_image_sampling_stays_aligned_with_nearest_labels():
    batch = _batch(2)
    batch["image"][..., 0] = batch["label"] > 0
    out = _run(_cfg(**GEOMETRIC), batch)
    fg = out["label"] > 0
    img = out["image"][..., 0]
    assert set(np.unique(out["label"])) <= set(LABEL_VALUES)
    assert (img[fg] > 0.5).mean() > 0.9
    assert (img[~fg] < 0.5).mean() > 0.9
    assert not np.array_equal(fg, batch["label"] > 0)


# --------------------------------------------------------------------------------------- intensity


def test_gamma_follows_the_per_channel_formula_and_leaves_labels():
    batch = _batch(2, n=2)
    out = _run(_cfg(gamma=dict(p=1.0, gamma=(2.0, 2.0))), batch)
    x = batch["image"].astype(np.float64)
    mn = x.min(axis=(1, 2), keepdims=True)
    mx = x.max(axis=(1, 2), keepdims=True)
    want = ((x - mn) / (mx - mn)) ** 2 * (mx - mn) + mn
    np.testing.assert_allclose(out["image"], want, atol=1e-5)
    np.testing.assert_array_equal(out["label"], batch["label"])


def test_noise_has_the_requested_std_and_differs_per_example():
    batch = _batch(2, n=4)
    out = _run(_cfg(noise=dict(p=1.0, std=(0.3, 0.3))), batch)
    diff = (out["image"] - batch["image"]).reshape(4, -1)
    assert abs(diff.std() - 0.3) < 0.015  # 2048 samples: std error ~0.005
    assert abs(diff.mean()) < 0.03
    for i in range(4):
        assert abs(diff[i].std() - 0.3) < 0.04
    assert abs(np.corrcoef(diff[0], diff[1])[0, 1]) < 0.2


@pytest.mark.parametrize("nd", [2, 3])
def test_blur_matches_scipy_preserves_the_mean_and_reduces_variance(nd):
    batch = _batch(nd, n=2)
    out = _run(_cfg(blur=dict(p=1.0, sigma=(1.0, 1.0), truncate=3.0)), batch)
    for i in range(2):
        x = batch["image"][i]
        want = scipy.ndimage.gaussian_filter(x, sigma=(1.0,) * nd + (0,), mode="reflect", truncate=3.0)
        np.testing.assert_allclose(out["image"][i], want, atol=1e-5)
        np.testing.assert_allclose(out["image"][i].mean(axis=tuple(range(nd))), x.mean(axis=tuple(range(nd))),
                                   atol=1e-5)
        assert out["image"][i].var() < 0.5 * x.var()


@pytest.mark.parametrize("nd", [2, 3])
def test_bias_field_is_positive_multiplicative_smooth_and_has_the_requested_magnitude(nd):
    batch = _batch(nd, n=2)
    batch["image"] = np.abs(batch["image"]) + 0.5
    out = _run(_cfg(bias_field=dict(p=1.0, magnitude=(0.5, 0.5))), batch)
    ratio = out["image"] / batch["image"]
    assert (ratio > 0).all()
    np.testing.assert_allclose(ratio[..., 0], ratio[..., 1], rtol=1e-5)  # one field, all channels
    log_field = np.log(ratio[..., 0])
    for i in range(2):
        assert abs(np.abs(log_field[i]).max() - 0.5) < 1e-4
        for axis in range(nd):  # smooth: a cubic over 8-16 voxels has small second differences
            assert np.abs(np.diff(log_field[i], n=2, axis=axis)).max() < 0.15
    assert not np.allclose(log_field[0], log_field[1], atol=1e-2)
    np.testing.assert_array_equal(out["label"], batch["label"])


# ----------------------------------------------------------------------------- keys and composition


FULL = _cfg(**{name: dict(p=0.7) for name in A.TRANSFORMS if name != "hed"})  # hed: RGB only, tested below


def test_per_example_keys_make_results_independent_of_batch_split_and_order():
    batch = _batch(2, n=4)
    full = _run(FULL, batch, seed=5)
    again = _run(FULL, batch, seed=5)
    for k in full:
        np.testing.assert_array_equal(full[k], again[k])
    assert np.isfinite(full["image"]).all()
    other = _run(FULL, batch, seed=6)
    assert not np.allclose(other["image"], full["image"])
    # the two halves (same global indices) give the same rows: rbg keys, vmapped, batch size 2 vs 4
    for half in (slice(0, 2), slice(2, 4)):
        part = _run(FULL, {k: v[half] for k, v in batch.items()}, seed=5)
        np.testing.assert_allclose(part["image"], full["image"][half], atol=1e-6)
        np.testing.assert_array_equal(part["label"], full["label"][half])
    # a permuted batch gives the permuted rows
    perm = np.array([2, 0, 3, 1])
    shuffled = _run(FULL, {k: v[perm] for k, v in batch.items()}, seed=5)
    np.testing.assert_allclose(shuffled["image"], full["image"][perm], atol=1e-6)
    np.testing.assert_array_equal(shuffled["label"], full["label"][perm])
    # pass-through keys
    np.testing.assert_array_equal(full["weight"], batch["weight"])
    np.testing.assert_array_equal(full["index"], batch["index"])


def test_a_batch_sharded_across_devices_gives_the_same_result():
    devices = np.array(jax.devices()[:4])
    if len(devices) < 2:
        pytest.skip("needs several (fake) devices")
    mesh = jax.sharding.Mesh(devices, ("data",))
    batch = _batch(2, n=4)
    sharded = {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
               for k, v in batch.items()}
    full = _run(FULL, batch, seed=5)
    out = _run(FULL, sharded, seed=5)  # a differently fused program: float rounding may differ slightly
    np.testing.assert_allclose(out["image"], full["image"], atol=1e-5)
    np.testing.assert_array_equal(out["label"], full["label"])


def test_3d_full_pipeline_is_deterministic_and_label_values_survive():
    batch = _batch(3, n=4)
    out = _run(FULL, batch, seed=2)
    again = _run(FULL, batch, seed=2)
    np.testing.assert_array_equal(out["image"], again["image"])
    np.testing.assert_array_equal(out["label"], again["label"])
    assert np.isfinite(out["image"]).all() and out["image"].shape == batch["image"].shape
    assert set(np.unique(out["label"])) <= set(LABEL_VALUES)
    assert not np.allclose(out["image"], batch["image"])


def test_classification_labels_pass_through():
    batch = _batch(2, n=4)
    batch["label"] = np.array([0, 2, 1, 2], np.int32)
    out = _run(_cfg(noise=dict(p=1.0, std=(0.2, 0.2))), batch)
    np.testing.assert_array_equal(out["label"], batch["label"])
    assert not np.allclose(out["image"], batch["image"])


# ------------------------------------------------------------------------------------ HED stain jitter


def _ihc(n=1, size=16):
    from skimage import data

    ihc = data.immunohistochemistry()[:n * size, :size] / 255.0
    return ihc.reshape(n, size, size, 3).astype(np.float32)


def test_hed_equals_scikit_image_deconvolution_jitter_and_back():
    """Against skimage: rgb2hed's formula without its clamp at 0 (so a = 1, b = 0 is the identity), d * a + b,
    hed2rgb."""
    from skimage import color

    x = _ihc()[0]
    jitter = jax.jit(lambda key, x, a, b: A.hed(key, x, p=1.0, scale=(a, a), shift=(b, b))[0], static_argnums=(2, 3))
    out = jitter(rng.key(0), x, 1.2, -0.03)
    x64 = x.astype(np.float64)
    densities = (np.log(np.maximum(x64, 1e-6)) / np.log(1e-6)) @ color.hed_from_rgb
    np.testing.assert_array_equal(densities >= 0, color.rgb2hed(x64) == densities)  # the clamp is all that differs
    np.testing.assert_allclose(out, color.hed2rgb(densities * 1.2 - 0.03), rtol=0, atol=2e-6)
    np.testing.assert_allclose(jitter(rng.key(0), x, 1.0, 0.0), x, rtol=0, atol=2e-6)
    with pytest.raises(MedjaxError, match=r"hed: stain jitter needs RGB images .* got 2 channel"):
        A.hed(rng.key(0), jnp.zeros((4, 4, 2)), p=1.0)
    with pytest.raises(MedjaxError, match=r"config\.augment: augment hed: .* got 1 channel"):
        A.make_augment(A.default_config(("hed",)), spatial_shape=(16, 16))


def test_bags_augment_every_instance_with_its_own_key():
    """Instance k of bag i gets fold_in(fold_in(step_key, index[i]), k): the same as the transform called on that
    tile alone, and independent of the other bags in the batch."""
    tiles = _ihc(6).reshape(2, 3, 16, 16, 3)
    batch = {"image": tiles, "instance_mask": np.ones((2, 3), np.float32), "label": np.array([0, 1], np.int32),
             "index": np.array([5, 9], np.int32), "weight": np.ones(2, np.float32)}
    cfg = A.default_config(("hed",))
    cfg.hed.p = 1.0
    augment = jax.jit(A.make_augment(cfg, spatial_shape=(16, 16), channels=3, bags=True))
    key = rng.key(3)
    out = augment(key, batch)
    alone = jax.jit(lambda i, k, x: A.hed(jax.random.fold_in(jax.random.fold_in(key, i), k), x, p=1.0)[0])
    for i in range(2):
        for k in range(3):
            np.testing.assert_allclose(out["image"][i, k], alone(batch["index"][i], k, tiles[i, k]), rtol=0,
                                       atol=1e-6)  # vmapped vs single: float rounding only
    single = augment(key, {k: v[1:] for k, v in batch.items()})
    np.testing.assert_array_equal(single["image"][0], out["image"][1])
    np.testing.assert_array_equal(out["label"], batch["label"])
    assert not np.array_equal(out["image"][0, 0], out["image"][0, 1])


# ------------------------------------------------------------------------------------------- errors


def test_config_errors_name_the_key_and_list_the_valid_ones():
    with pytest.raises(MedjaxError, match=r"'mixup' in config\.augment\.transforms.*'flip'.*'bias_field'"):
        A.make_augment(ml_collections.ConfigDict({"transforms": ("flip", "mixup")}))
    with pytest.raises(MedjaxError, match=r"config\.augment\.noise\.sigma.*valid for noise: \['p', 'std'\]"):
        A.make_augment({"transforms": ("noise",), "noise": {"sigma": 0.1}})
    with pytest.raises(MedjaxError, match=r"config\.augment\.flips.*valid"):
        A.make_augment({"transforms": ("flip",), "flips": {"p": 0.1}})
    with pytest.raises(MedjaxError, match=r"flip\.p"):
        A.make_augment({"transforms": ("flip",), "flip": {"p": 1.5}})
    cfg = A.default_config(("affine",))
    cfg.affine.translate = (1.0, 2.0, 3.0)  # three ranges for a 2D image
    with pytest.raises(MedjaxError, match=r"config\.augment: augment affine\.translate.*2 ranges"):
        A.make_augment(cfg, spatial_shape=(16, 16))
    bad = _batch(2, n=2)
    bad["label"] = bad["label"][..., None]  # a channel axis the geometric transforms could not follow
    with pytest.raises(MedjaxError, match=r"batch\['label'\] of shape \(2, 16, 16, 1\)"):
        A.make_augment(A.default_config(("flip",)))(rng.key(0), bad)
    with pytest.raises(MedjaxError, match=r"batch\['index'\]"):
        A.make_augment(A.default_config(("noise",)))(rng.key(0), {"image": np.zeros((2, 4, 4, 1), np.float32)})


def _boxed_batch(nd, seed=0):
    """Label maps of two separated blocks (classes 1, 2) per example and their component boxes (G = 3)."""
    from medjax.detection.instances import component_boxes, pad_boxes

    shape = SHAPES[nd]
    r = np.random.default_rng(seed)
    labels = np.zeros((4, *shape), np.int32)
    for i in range(4):
        for cls, (lo, hi) in ((1, (0, shape[0] // 2 - 3)), (2, (shape[0] // 2, shape[0] - 3))):
            start = [r.integers(lo, hi)] + [r.integers(0, s - 3) for s in shape[1:]]
            labels[i][tuple(slice(a, a + int(r.integers(1, 4))) for a in start)] = cls
    rows = [pad_boxes(*component_boxes(lab), 3) for lab in labels]
    return {"image": labels[..., None].astype(np.float32), "label": labels, "index": np.arange(4, dtype=np.int32),
            "boxes": np.stack([b for b, _, _ in rows]), "box_labels": np.stack([c for _, c, _ in rows]),
            "box_valid": np.stack([v for _, _, v in rows])}


@pytest.mark.parametrize("nd", [2, 3])
def test_boxes_follow_flips_quarter_turns_and_translations_exactly(nd):
    """After the transform, each example's boxes are exactly the component boxes of its moved label map (boxes
    moved out of the image are dropped, cut ones clipped)."""
    from medjax.detection.instances import component_boxes

    batch = _boxed_batch(nd)
    cfg = {"transforms": ("flip", "rot90", "affine"), "flip": {"p": 0.5}, "rot90": {"p": 0.75},
           "affine": {"p": 1.0, "rotate": 0.0, "scale": (1.0, 1.0), "order": 0,
                      "translate": ((-2, -2),) + ((3, 3),) * (nd - 1)}}
    out = jax.jit(A.make_augment(cfg))(rng.key(1), batch)
    moved = 0
    for i in range(4):
        boxes, classes = component_boxes(np.asarray(out["label"][i]))
        valid = np.asarray(out["box_valid"][i])
        got = sorted(zip(np.asarray(out["box_labels"][i])[valid].tolist(),
                         map(tuple, np.asarray(out["boxes"][i])[valid].tolist())))
        assert got == sorted(zip(classes.tolist(), map(tuple, boxes.tolist())))
        moved += not np.array_equal(out["boxes"][i], batch["boxes"][i])
        np.testing.assert_array_equal(np.asarray(out["boxes"][i])[~valid], 0)
    assert moved == 4


def test_rotated_boxes_enclose_the_rotated_objects_and_elastic_is_refused():
    batch = _boxed_batch(2, seed=3)
    cfg = {"transforms": ("affine",), "affine": {"p": 1.0, "rotate": (30.0, 30.0), "scale": (1.0, 1.0),
                                                  "order": 0}}
    out = jax.jit(A.make_augment(cfg))(rng.key(2), batch)
    label = np.asarray(out["label"])
    for i in range(4):
        for box, cls, ok in zip(*(np.asarray(out[k][i]) for k in ("boxes", "box_labels", "box_valid"))):
            if ok:
                inside = np.zeros_like(label[i], bool)
                inside[int(np.floor(box[0])):int(np.ceil(box[2])), int(np.floor(box[1])):int(np.ceil(box[3]))] = True
                assert (label[i] == cls + 1).any() and not ((label[i] == cls + 1) & ~inside).any()
    with pytest.raises(MedjaxError, match="elastic deformation cannot move boxes"):
        A.make_augment({"transforms": ("elastic",), "elastic": {"p": 1.0}})(rng.key(0), batch)
