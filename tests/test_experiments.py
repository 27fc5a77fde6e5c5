"""The data-layer experiments end to end on tiny generated data in the real on-disk formats."""

import json

import numpy as np
import pytest

from medjax.config import build_config
from medjax.data.sources import case_split
from medjax.train import loop


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
    config = build_config(str(repo / "experiments" / "medmnist_resnet18.py") + f":{variant}", overrides)
    workdir = tmp_path / "run"
    loop.train(config, str(workdir))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    # 16 training images, batch 8: 2 steps per epoch, 2 epochs; validation once per epoch
    assert [r["step"] for r in records if r["split"] == "val"] == [2, 4]
    result = loop.evaluate(config, str(workdir))
    assert set(result) >= {"auc", "acc", "loss", "step"} and 0 <= result["auc"] <= 1
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
    config = build_config(str(repo / "experiments" / "msd_unet3d.py") + ":tiny", overrides)
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
    assert [c["case"] for c in cases] == [0]  # position within the test split
    assert cases[0]["shape"] == [20 + 2 * test_case, 18 + test_case, 16 + test_case % 3]
    case_dice = [c["dice/ball"] for c in cases]
    assert result["dice/ball"] == pytest.approx(np.mean(case_dice))
    assert 0 <= result["dice_mean"] <= 1 and result["split"] == "test"
    assert (workdir / "plots" / "test_predictions.png").stat().st_size > 0
    assert len(list((tmp_path / "cache").glob("msd_Ball/*/spec.json"))) == 1
    assert {p: p.stat().st_mtime_ns for p in task.rglob("*")} == before  # the data folder is only read
    pmap = build_config(str(repo / "experiments" / "msd_unet3d.py") + ":tiny",
                        [*overrides, "--config.parallel.strategy=pmap"])
    again = loop.evaluate(pmap, str(workdir))  # windows sharded by pmap instead of jit: the same Dice
    assert again["dice/ball"] == pytest.approx(result["dice/ball"], abs=1e-6)


def test_msd_needs_a_root(repo):
    from medjax.data.sources import load_splits
    from medjax.errors import MedjaxError

    config = build_config(str(repo / "experiments" / "msd_unet3d.py") + ":tiny")
    with pytest.raises(MedjaxError, match="config.data.root must name a Decathlon task folder"):
        load_splits(config.data)


def test_case_split_is_seeded_and_disjoint():
    split = case_split(10, 0.2, 0.3, 0)
    assert [len(split[k]) for k in ("train", "val", "test")] == [5, 2, 3]
    assert sorted(sum(split.values(), [])) == list(range(10))
    assert split == case_split(10, 0.2, 0.3, 0) and split != case_split(10, 0.2, 0.3, 1)
    assert set(case_split(5, 0.0, 0.0, 0)) == {"train"}  # no empty splits
    from medjax.errors import MedjaxError
    with pytest.raises(MedjaxError, match="leave cases for training"):
        case_split(10, 0.5, 0.5, 0)
