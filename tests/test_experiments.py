"""The data-layer experiments end to end on tiny generated data in the real on-disk formats."""

import json

import numpy as np
import pytest

from medjax.config import build_config
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
