"""The data-layer experiments end to end on tiny generated data in the real on-disk formats."""

import json
import pathlib

import numpy as np
import pytest

from medjax.config import build_config
from medjax.data.splits import case_split
from medjax.train import loop
from tests.train.helpers import sklearn_classification_metrics


def _write_medmnist(root, name, shape, n_classes, sizes=(16, 8, 8), multi_label=0):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        labels = np.arange(n) % n_classes
        images = rng.integers(0, 60, (n, *shape), dtype=np.uint8)
        images[labels == 1] += 120  # learnable: class 1 is brighter
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(n, 1).astype(np.uint8)
    np.savez(root / f"{name}.npz", **arrays)


@pytest.mark.parametrize("variant, name, shape", [
    ("tiny", "breastmnist", (28, 28)),
    ("3d,tiny", "nodulemnist3d", (28, 28, 28)),
])
def test_medmnist_protocol_tiny(repo, tmp_path, variant, name, shape):
    _write_medmnist(tmp_path, name, shape, 2)
    overrides = [f"--config.data.name={name}", f"--config.data.root={tmp_path}",
                 f"--config.data.cache_dir={tmp_path / 'cache'}"]
    config = build_config(f"medmnist_resnet18:{variant}", overrides)
    workdir = tmp_path / "run"
    loop.train(config, str(workdir))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    # 16 training images, batch 8: 2 steps per epoch, 2 epochs; validation once per epoch
    assert [r["step"] for r in records if r["split"] == "val"] == [2, 4]
    result = loop.evaluate(config, str(workdir))
    reference = sklearn_classification_metrics(config, workdir)  # the cached split read back, scored by sklearn
    assert result["step"] == reference["step"]
    assert {k: result[k] for k in ("acc", "auc")} == pytest.approx({k: reference[k] for k in ("acc", "auc")},
                                                                   abs=1e-6)
    assert result["loss"] == pytest.approx(reference["loss"], rel=1e-4)
    assert len(list((tmp_path / "cache").glob(f"medmnist_{name}_28/*/spec.json"))) == 1


def _write_msd(root, n_cases=6):
    """A Decathlon folder of small MR volumes of different shapes: a bright ball (class 1) holding a brighter
    core (class 2), plus noise; one unlabelled test image."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    training = []
    for i in range(n_cases + 1):
        shape = (20 + 2 * i, 18 + i, 16 + (i % 3))
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
        dist = np.linalg.norm(grid - np.array(shape) / 2 + i % 2, axis=-1)
        label = np.where(dist < 3, 2, np.where(dist < 7, 1, 0)).astype(np.uint8)
        image = (100 + 200 * (label > 0) + 150 * (label == 2) + rng.normal(0, 20, shape)).astype(np.float32)
        folder, name = ("imagesTs", f"brain_{i:03d}.nii.gz") if i == n_cases else ("imagesTr", f"brain_{i:03d}.nii.gz")
        (root / folder).mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(image, np.diag([1.0, 1.0, 1.5, 1.0])), root / folder / name)
        if i < n_cases:
            (root / "labelsTr").mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(label, np.diag([1.0, 1.0, 1.5, 1.0])), root / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "Ball", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "ball", "2": "core"},
            "training": training, "test": [f"./imagesTs/brain_{n_cases:03d}.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta))


def test_msd_unet3d_tiny(repo, tmp_path):
    task = tmp_path / "Task99_Ball"
    task.mkdir()
    _write_msd(task)
    before = {p: p.stat().st_mtime_ns for p in task.rglob("*")}
    overrides = [f"--config.data.root={task}", f"--config.data.cache_dir={tmp_path / 'cache'}"]
    config = build_config("msd_unet3d:tiny", overrides)
    workdir = tmp_path / "run"
    loop.train(config, str(workdir))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [2, 4]
    assert set(val[0]) >= {"dice/ball", "dice/core", "dice_mean"}
    result = loop.evaluate(config, str(workdir))
    # 6 labelled cases: 1 test (20%), 1 val (20%), 4 train; the unlabelled imagesTs case is not used
    cases = json.loads((workdir / "eval_cases.json").read_text())["cases"]
    (test_case,) = case_split(6, 0.2, 0.2, 0)["test"]
    assert [(c["case"], c["index"]) for c in cases] == [(f"brain_{test_case:03d}", 0)]  # id, position in the split
    assert cases[0]["shape"] == [20 + 2 * test_case, 18 + test_case, 16 + test_case % 3]
    case_dice = [c["dice/ball"] for c in cases]
    assert result["dice/ball"] == pytest.approx(np.mean(case_dice))
    assert result["dice_mean"] == pytest.approx(np.nanmean([result["dice/ball"], result["dice/core"]]))
    # surface metrics in mm: the cache keeps each case's spacing (1, 1, 1.5); MONAI on the same prediction
    from medjax.train import volume_eval

    s = loop.setup(config, str(workdir))
    example = s.splits["test"][0]
    np.testing.assert_array_equal(example["spacing"], [1.0, 1.0, 1.5])
    canonical, _, _, _ = s.checkpoints(read_only=True).restore(s.abstract_state(), which="best")
    state = s.strategy.from_canonical(canonical)
    pred = volume_eval.predict_volume(s, volume_eval.window_predictor(s, state), example["image"]).argmax(-1)
    expected = _monai_surface(pred, example["label"], 3, (1.0, 1.0, 1.5), 1.0)  # (metric, class)
    for m, metric in enumerate(("hd95", "assd", "nsd")):
        for c, name in enumerate(("ball", "core")):
            want = None if np.isnan(expected[m, c]) else pytest.approx(float(expected[m, c]), rel=1e-5)
            assert cases[0][f"{metric}/{name}"] == want
            assert result[f"{metric}/{name}"] == (pytest.approx(float(expected[m, c]), rel=1e-5, nan_ok=True))
        assert result[f"{metric}_mean"] == pytest.approx(np.nanmean(expected[m]), rel=1e-5)
    assert result["split"] == "test"
    assert (workdir / "plots" / "test_predictions.png").stat().st_size > 0
    assert len(list((tmp_path / "cache").glob("msd_Ball/*/spec.json"))) == 1
    assert {p: p.stat().st_mtime_ns for p in task.rglob("*")} == before  # the data folder is only read
    pmap = build_config("msd_unet3d:tiny",
                        [*overrides, "--config.parallel.strategy=pmap"])
    again = loop.evaluate(pmap, str(workdir))  # windows sharded by pmap instead of jit: the same Dice
    assert again["dice/ball"] == pytest.approx(result["dice/ball"], abs=1e-6)


def test_msd_needs_a_root(repo):
    from medjax.data.sources import load_splits
    from medjax.errors import MedjaxError

    config = build_config("msd_unet3d:tiny")
    with pytest.raises(MedjaxError, match="config.data.root must name a Decathlon task folder"):
        load_splits(config.data)


def _write_image_folder(root, n=10, size=16, fov_dir="fov", fov_suffix=""):
    """PNG images (a bright square inside a disc-shaped field of view, black outside it), 0/255 masks of the
    square that also mark the corners outside the FOV as foreground (annotation noise there must not count),
    and 0/255 FOV masks."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    fov = (yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2 <= (size / 2 - 1) ** 2
    for folder in ("images", "masks", fov_dir):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        square = np.zeros((size, size), bool)
        y, x = rng.integers(3, size - 8, 2)
        square[y:y + 5, x:x + 5] = True
        image = np.where(fov, 60 + 120 * square + rng.integers(0, 40, (size, size)), 0).astype(np.uint8)
        label = (square & fov) | ~fov
        Image.fromarray(image).save(root / "images" / f"case{i:02d}.png")
        Image.fromarray(label.astype(np.uint8) * 255).save(root / "masks" / f"case{i:02d}.png")
        Image.fromarray(fov.astype(np.uint8) * 255).save(root / fov_dir / f"case{i:02d}{fov_suffix}.png")
    return fov


def test_image_folder_unet_tiny_scores_inside_the_fov(repo, tmp_path):
    import jax

    from medjax import metrics
    from medjax.train.parallel import replicated_to_host

    fov = _write_image_folder(tmp_path / "data")
    config = build_config("image_folder_unet:tiny",
                          [f"--config.data.root={tmp_path / 'data'}"])
    workdir = tmp_path / "run"
    loop.train(config, str(workdir))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [2] and set(val[0]) >= {"dice/class0", "dice/class1", "dice_mean"}
    result = loop.evaluate(config, str(workdir))

    # the test split's Dice, recomputed from the model's predictions counting only the pixels inside the FOV
    s = loop.setup(config, str(workdir))
    test = s.splits["test"]
    assert len(test["image"]) == 2 and test["mask"].dtype == np.float32
    np.testing.assert_array_equal(test["mask"], np.broadcast_to(fov, test["mask"].shape))
    canonical, _, _, _ = s.checkpoints(read_only=True).restore(s.abstract_state(), which="best")
    params, stats = replicated_to_host((canonical.params, canonical.batch_stats))
    pred = np.asarray(jax.jit(s.task.predict)(params, stats, test["image"]))

    def dice(where):
        p, y = pred[:, where], test["label"][:, where]
        return [2 * ((p == c) & (y == c)).sum() / ((p == c).sum() + (y == c).sum()) for c in (0, 1)]

    inside, everywhere = dice(fov), dice(np.ones_like(fov))
    assert [result["dice/class0"], result["dice/class1"]] == pytest.approx(inside, abs=1e-6)
    assert result["dice_mean"] == pytest.approx(inside[1], abs=1e-6)
    assert everywhere != pytest.approx(inside, abs=1e-3)  # the corners outside the FOV would have counted
    counts = metrics.dice_counts(pred, test["label"], 2)  # cross-check: unmasked counts give the other number
    assert list(metrics.dice_from_counts(*counts)) == pytest.approx(everywhere, abs=1e-6)
    pmap = build_config("image_folder_unet:tiny",
                        [f"--config.data.root={tmp_path / 'data'}", "--config.parallel.strategy=pmap"])
    again = loop.evaluate(pmap, str(workdir))  # the batch and its mask split by pmap instead of jit: same Dice
    assert again["dice/class1"] == pytest.approx(result["dice/class1"], abs=1e-6)


def _write_drive(root, training=range(21, 27), test=range(1, 6), size=16):
    """DRIVE as it unpacks: training/ and test/, each with images/NN_<set>.tif (RGB), 1st_manual/NN_manual1.gif
    (0/255 vessels) and mask/NN_<set>_mask.gif (0/255 field of view)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    fov = (yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2 <= (size / 2 - 1) ** 2
    for subset, numbers in (("training", training), ("test", test)):
        for folder in ("images", "1st_manual", "mask"):
            (root / subset / folder).mkdir(parents=True, exist_ok=True)
        for n in numbers:
            vessels = np.zeros((size, size), bool)
            vessels[rng.integers(2, size - 2), :] = vessels[:, rng.integers(2, size - 2)] = True
            vessels &= fov
            image = np.stack([np.where(fov, 90 + 100 * vessels + rng.integers(0, 30, fov.shape), 0)] * 3, -1)
            Image.fromarray(image.astype(np.uint8)).save(root / subset / "images" / f"{n:02d}_{subset}.tif")
            Image.fromarray(vessels.astype(np.uint8) * 255).save(root / subset / "1st_manual" / f"{n:02d}_manual1.gif")
            Image.fromarray(fov.astype(np.uint8) * 255).save(root / subset / "mask" / f"{n:02d}_{subset}_mask.gif")


def test_drive_official_split_scores_every_test_image(repo, tmp_path):
    """`image_folder_unet:drive` on a DRIVE-layout folder: trains on training/ (val drawn from it), and
    `evaluate --split test` scores all of test/, not a share of the training images."""
    import jax

    from medjax.data.image_folder import fov_weights, load_image_folder
    from medjax.train.parallel import replicated_to_host

    _write_drive(tmp_path / "DRIVE")
    config = build_config("image_folder_unet:drive,tiny", [f"--config.data.root={tmp_path / 'DRIVE'}"])
    workdir = tmp_path / "run"
    loop.train(config, str(workdir))
    result = loop.evaluate(config, str(workdir), split="test")
    assert result["split"] == "test" and set(result) >= {"dice/background", "dice/vessel", "dice_mean"}

    s = loop.setup(config, str(workdir))
    n_test = len(list((tmp_path / "DRIVE" / "test" / "images").iterdir()))
    assert {k: len(v["image"]) for k, v in s.splits.items()} == {"train": 5, "val": 1, "test": n_test} and n_test == 5
    test = load_image_folder(*(tmp_path / "DRIVE" / "test" / d for d in ("images", "1st_manual")),
                             fov_dir=tmp_path / "DRIVE" / "test" / "mask", case_pattern="[0-9]+", size=(16, 16))
    np.testing.assert_array_equal(s.splits["test"]["image"], test["image"])
    canonical, _, _, _ = s.checkpoints(read_only=True).restore(s.abstract_state(), which="best")
    params, stats = replicated_to_host((canonical.params, canonical.batch_stats))
    pred = np.asarray(jax.jit(s.task.predict)(params, stats, test["image"]))
    inside = fov_weights(test["fov"]) > 0  # Dice over every test image, counting the pixels inside each FOV

    def dice(c, n=n_test):
        p, y = pred[:n][inside[:n]] == c, test["label"][:n][inside[:n]] == c
        return 2 * (p & y).sum() / (p.sum() + y.sum())

    assert [result["dice/background"], result["dice/vessel"]] == pytest.approx([dice(0), dice(1)], abs=1e-6)
    assert result["dice/background"] != pytest.approx(dice(0, n_test - 1), abs=1e-6)  # not one image fewer


def _monai_surface(pred, label, num_classes, spacing, tolerance):
    """MONAI's HD95, ASSD and NSD (3, K-1) of one case's label maps."""
    import warnings

    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    p, y = (torch.from_numpy(np.moveaxis(np.eye(num_classes, dtype=np.float32)[a[None]], -1, 1))
            for a in (pred, label))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.stack([compute_hausdorff_distance(p, y, percentile=95, spacing=spacing)[0].numpy(),
                         compute_average_surface_distance(p, y, symmetric=True, spacing=spacing)[0].numpy(),
                         compute_surface_dice(p, y, [tolerance] * (num_classes - 1), spacing=spacing)[0].numpy()])


def test_image_folder_patch_trained_evaluates_whole_images_with_surface_metrics(repo, tmp_path):
    """Training on 8x8 patches carries the FOV masks; `evaluate` with patch_size still set scores whole 16x16
    images inside the FOV: Dice and, per case, HD95 / ASSD / NSD in mm (data.spacing) as MONAI gives them for
    the restored model's predictions with everything outside the FOV set to background."""
    import jax

    from medjax.train.parallel import replicated_to_host

    fov = _write_image_folder(tmp_path / "data", n=10)
    config = build_config("image_folder_unet:tiny",
                          [f"--config.data.root={tmp_path / 'data'}", "--config.data.patch_size=(8, 8)",
                           "--config.data.fg_ratio=1.0", "--config.data.spacing=(0.5, 0.8)",
                           "--config.task.nsd_tolerance_mm=1.0"])
    workdir = tmp_path / "run"
    loop.train(config, str(workdir))
    val = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r["split"] == "val"]
    assert "dice_mean" in val[-1] and not any(k.startswith(("hd95", "assd", "nsd")) for k in val[-1])  # not in training
    result = loop.evaluate(config, str(workdir))
    assert json.loads((workdir / "eval.json").read_text())["dice/class1"] == pytest.approx(result["dice/class1"])

    s = loop.setup(config, str(workdir))
    test = s.splits["test"]
    assert test["image"].shape == (2, 16, 16, 1)
    np.testing.assert_array_equal(test["spacing"], np.float32([[0.5, 0.8]] * 2))
    canonical, _, _, _ = s.checkpoints(read_only=True).restore(s.abstract_state(), which="best")
    params, stats = replicated_to_host((canonical.params, canonical.batch_stats))
    pred = np.asarray(jax.jit(s.task.predict)(params, stats, test["image"]))  # whole images
    p, y = pred[:, fov], test["label"][:, fov]
    dice = [2 * ((p == c) & (y == c)).sum() / ((p == c).sum() + (y == c).sum()) for c in (0, 1)]
    assert [result["dice/class0"], result["dice/class1"]] == pytest.approx(dice, abs=1e-6)

    cases = json.loads((workdir / "eval_cases.json").read_text())["cases"]
    assert [(c["case"], c["index"]) for c in cases] == [(f"case{i:02d}", k)
                                                        for k, i in enumerate(case_split(10, 0.2, 0.2, 0)["test"])]
    expected = np.stack([_monai_surface(pr * fov, lab * fov, 2, (0.5, 0.8), 1.0)[:, 0]
                         for pr, lab in zip(pred, test["label"])])  # (case, metric)
    for c, row in zip(cases, expected):
        assert [c[k] for k in ("hd95/class1", "assd/class1", "nsd/class1")] == pytest.approx(row.tolist(), rel=1e-5)
    for m, metric in enumerate(("hd95", "assd", "nsd")):
        assert result[f"{metric}/class1"] == pytest.approx(expected[:, m].mean(), rel=1e-5)
        assert result[f"{metric}_mean"] == result[f"{metric}/class1"]  # one foreground class
    assert "hd95/class0" not in result  # background has no surface to score
    assert np.isfinite(expected).all() and expected[:, 0].min() > 0


def test_image_folder_source_options(repo, tmp_path):
    from medjax.data.image_folder import load_image_folder
    from medjax.data.sources import load_splits
    from medjax.errors import MedjaxError

    root = tmp_path / "drive"
    _write_image_folder(root, n=6, fov_dir="mask", fov_suffix="_mask")
    cfg = build_config("image_folder_unet",
                       [f"--config.data.root={root}", "--config.data.fov_dir=mask", "--config.data.fov_suffix=_mask",
                        "--config.data.size=(8, 8)", "--config.data.class_names=background,square",
                        "--config.data.val_fraction=0.2", "--config.data.test_fraction=0.0"]).data
    data = load_splits(cfg)
    assert data.class_names == ["background", "square"] and set(data.splits) == {"train", "val"}
    everything = load_image_folder(root / "images", root / "masks", fov_dir=root / "mask", fov_suffix="_mask",
                                   size=(8, 8))
    split = case_split(6, 0.2, 0.0, 0)
    for name in ("train", "val"):
        np.testing.assert_array_equal(data.splits[name]["image"], everything["image"][split[name]])
        np.testing.assert_array_equal(data.splits[name]["label"], everything["label"][split[name]])
        np.testing.assert_array_equal(data.splits[name]["mask"], everything["fov"][split[name]].astype(np.float32))
    assert data.splits["train"]["image"].shape == (5, 8, 8, 1)

    # a CSV of pairs without FOV masks: no "mask" key; mask_values map the stored 0/255; class names class0..
    (root / "pairs.csv").write_text("image,mask\n" + "".join(f"images/case{i:02d}.png,masks/case{i:02d}.png\n"
                                                             for i in range(6)))
    cfg.fov_dir, cfg.fov_suffix, cfg.pairs_csv, cfg.class_names = "", "", "pairs.csv", ()
    cfg.mask_values = {0: 0, 255: 2}
    data = load_splits(cfg)
    assert "mask" not in data.splits["train"] and data.class_names == ["class0", "class1", "class2"]
    assert set(np.unique(data.splits["train"]["label"])) == {0, 2}

    cfg.pairs_csv, cfg.root = "", ""
    with pytest.raises(MedjaxError, match="config.data.root must name a folder"):
        load_splits(cfg)
    cfg.root, cfg.class_names, cfg.num_classes, cfg.mask_values = str(root), ("a", "b", "c"), 2, None
    with pytest.raises(MedjaxError, match="config.data.num_classes=2 but config.data.class_names"):
        load_splits(cfg)


def test_transfer_icbm152_tiny(tmp_path):
    """Pretrain (tiny quickstart) -> fine-tune vs scratch on coronal slices; the fine-tuned arm starts from the
    pretrained weights, the scratch arm does not."""
    import importlib.util


    spec = importlib.util.spec_from_file_location("transfer_icbm152",
                                                  str(pathlib.Path(__file__).parents[1] / "experiments" /
                                                      "transfer_icbm152.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--tiny", "--seeds", "0", "--out", str(tmp_path / "out"),
                           "--pretrained", str(tmp_path / "pre")])
    assert set(results["arms"]) == {"finetune", "scratch"}
    assert set(results["arms"]["finetune"]) >= {"dice_mean", "dice/grey_matter"}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["arms"]["scratch"]["dice_mean"]["runs"] == results["arms"]["scratch"]["dice_mean"]["runs"]
    first = [json.loads(line) for line in (tmp_path / "out" / "finetune_s0" / "metrics.jsonl").read_text().splitlines()]
    scratch = [json.loads(line)
               for line in (tmp_path / "out" / "scratch_s0" / "metrics.jsonl").read_text().splitlines()]
    assert first[0]["loss"] != scratch[0]["loss"]  # same data and seed: only the initialisation differs


def test_cine_report_tiny_pairs_baselines_with_their_convlstm(tmp_path):
    from experiments import cine_report

    out = tmp_path / "cine"
    assert cine_report.main(["--out", str(out), "--tiny", "--variants", "segmentation", "segmentation_2d",
                             "--set", "data.noise=0.4"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in rows] == ["segmentation", "segmentation_2d"]
    assert rows[1]["settings"] == ["data.noise=0.4"] and rows[1]["patients"] == 4
    for key in ("dice_mean", "frame_dice_mean", "temporal_dice_change", "ef_abs_error"):
        mean, lo, hi = rows[1][key]
        assert lo <= mean <= hi
        assert rows[1]["vs"][key][0] == pytest.approx(mean - rows[0][key][0])  # paired difference of the means
    assert "| − its ConvLSTM (paired) |" in (out / "results.md").read_text()


def test_wsi_tile_reading_report(tmp_path):
    from experiments import wsi_tiles

    result = wsi_tiles.main(["--out", str(tmp_path), "--slides", "1", "--size", "2048", "--tiles", "8"])
    assert sorted(result["tiles_per_s"]) == ["array_record cache, 20x", "openslide, 0.6 µm/px (resized)",
                                             "openslide, 20x", "tiffslide, 0.6 µm/px (resized)", "tiffslide, 20x"]
    assert json.loads((tmp_path / "results.json").read_text()) == result
    # 2048 px at 0.25 µm/px with ihc.png over the left half: 4 x 4 tiles of 448 level-0 px at 20x, 2 columns tissue
    data = wsi_tiles.load_splits(wsi_tiles.ml_collections.ConfigDict(dict(
        name="wsi_folder", root=str(tmp_path / "data"), tile_size=224, magnification=20.0, val_fraction=0.0)))
    assert [len(e.grid) for e in data.splits["train"].entries] == [8]


def test_detection_icbm152_tiny_scores_detector_and_segmenter_alike(tmp_path):
    """Both arms (Retina U-Net; U-Net segmenter + connected components) train and are scored on the same test
    slices (2 test cases x 2 slices, 4 lesions); the detector's CPM is `medjax evaluate`'s (checked inside)."""
    from experiments import detection_icbm152

    rows = detection_icbm152.main(["--tiny", "--dims", "2", "--out", str(tmp_path)])
    assert [(r["dims"], r["arm"], r["config"]) for r in rows] == [(2, "det", "detection_icbm152:2d,tiny"),
                                                                  (2, "seg", "detection_icbm152:2d,seg,tiny")]
    for r in rows:
        assert (r["cases"], r["lesions"], r["steps"]) == (4, 4, 4)
        assert r["cpm_ci"][0] <= r["cpm"] <= r["cpm_ci"][1]
        assert r["cpm"] == pytest.approx(np.mean([r[f"froc/{x:g}"] for x in (0.125, 0.25, 0.5, 1, 2, 4, 8)]))
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["rows"] == json.loads(json.dumps(rows)) and "CPUs" in result["machine"]
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[0].startswith("| data | model | CPM [95% CI] |") and len(table) == 4
