"""The whole-slide pipeline through the one training loop: slides written here -> wsi_folder bags -> ABMIL (task
'mil') trained from torchvision-named encoder weights with a frozen stem -> evaluate, pinned against scikit-learn
on the restored model's own predictions -> tile heat maps. Plus the task's loss by hand."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from medjax.config import build_config
from medjax.data import wsi_synthetic as W
from medjax.data.stream import as_arrays
from medjax.models import build_model
from medjax.tasks import make_task
from medjax.train import loop
from medjax.train.parallel import replicated_to_host
from tests.transfer.test_adapt import _medjax_to_torch, flat, random_variables

ENCODER = dict(stage_sizes=(1,), block="basic", stem="small", width=4)  # the tiny config's encoder


def test_mil_loss_and_metrics_by_hand():
    config = ml_collections.ConfigDict(dict(task=dict(name="mil", num_classes=2), model=dict(
        name="abmil", encoder="resnet", stage_sizes=(1,), stem="small", width=4, embed_dim=8, attention_dim=4)))
    task = make_task(config, ["normal", "tumor"])
    image = jnp.asarray(np.random.default_rng(0).random((2, 3, 8, 8, 3)), jnp.float32)
    batch = {"image": image, "instance_mask": jnp.array([[1, 1, 0], [1, 1, 1]], jnp.float32),
             "label": jnp.array([1, 0]), "weight": jnp.array([1.0, 1.0])}
    variables = jax.jit(task.init_variables)(jax.random.key(0, impl="rbg"), image)
    out = jax.jit(task.eval_outputs)(variables["params"], variables["batch_stats"], batch)
    log_p = np.log(np.asarray(out["probs"], np.float64))
    np.testing.assert_allclose(out["loss"], [-log_p[0, 1], -log_p[1, 0]], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["attention"]).sum(-1), [1, 1], atol=1e-6)
    assert float(out["attention"][0, 2]) == 0.0 and out["tile_probs"].shape == (2, 3, 2)
    summary = task.summarize(jax.tree.map(np.asarray, out))
    assert summary["acc"] == float(np.mean(np.argmax(log_p, -1) == [1, 0]))
    assert summary["loss"] == pytest.approx(float(np.mean(out["loss"])))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """4 slides (train: s0 normal, s1 tumour; val: s2 normal, s3 tumour), the tiny config from torchvision-named
    encoder weights with its stem frozen; trained 4 steps and evaluated on val."""
    root = tmp_path_factory.mktemp("slides")
    W.write_dataset(root)
    encoder = build_model("resnet", num_classes=8, **ENCODER)
    source = flat(random_variables(encoder, (1, 16, 16, 3), seed=3))
    weights = root / "resnet_torchvision.npz"
    np.savez(weights, **_medjax_to_torch(source))
    config = build_config("wsi_abmil:tiny", [
        f"--config.data.root={root}", f"--config.init.from={weights}", "--config.init.layout=torchvision",
        "--config.init.skip=('attention/*', 'classifier/*')", "--config.finetune.freeze=('encoder/stem_*',)",
        "--config.eval_every=4", "--config.checkpoint_every=4"])
    workdir = tmp_path_factory.mktemp("run")
    metrics = loop.train(config, str(workdir))
    result = loop.evaluate(config, str(workdir), split="val")
    return config, workdir, source, metrics, result


def test_the_loop_trains_and_evaluates_slides_as_bags(run):
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    config, workdir, source, metrics, result = run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [(2, "train"), (4, "train"), (4, "val")]
    assert (result["split"], result["step"]) == ("val", 4)
    assert json.loads((workdir / "eval.json").read_text()) == result
    # the restored model's own predictions on the whole val bags (16 evenly spaced tiles each), by scikit-learn
    s = loop.setup(config, str(workdir))
    canonical, _, _ = loop.restore_checkpoint(s, str(workdir), "best")
    params, stats = replicated_to_host((canonical.params, canonical.batch_stats))
    arrays = as_arrays(s.splits["val"])
    assert arrays["image"].shape == (2, 16, 16, 16, 3) and arrays["instance_mask"].sum() == 32
    logits = jax.jit(lambda p, b: s.task.forward_bags(p, b, arrays, train=False)[0])(params, stats)
    probs = np.asarray(jax.nn.softmax(logits), np.float64)
    probs /= probs.sum(-1, keepdims=True)
    labels = arrays["label"]
    assert labels.tolist() == [0, 1]
    assert result["acc"] == pytest.approx(accuracy_score(labels, probs.argmax(-1)))
    assert result["auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    assert result["loss"] == pytest.approx(log_loss(labels, probs, labels=[0, 1]), rel=1e-5)
    assert metrics["auc"] == pytest.approx(result["auc"])
    # the encoder started from the imported weights; the frozen stem kept them, the block trained
    trained = flat({"params": params})
    np.testing.assert_array_equal(trained["params/encoder/stem_conv/kernel"], source["params/stem_conv/kernel"])
    np.testing.assert_array_equal(trained["params/encoder/stem_bn/scale"], source["params/stem_bn/scale"])
    assert not np.array_equal(trained["params/encoder/stage1_block1/conv1/kernel"],
                              source["params/stage1_block1/conv1/kernel"])


def test_heat_maps_put_attention_and_tile_scores_back_on_the_slide(run):
    from PIL import Image

    from medjax.inference.wsi_heatmaps import write_heatmaps

    config, workdir, _, _, result = run
    maps = write_heatmaps(config, str(workdir), split="val")
    assert sorted(maps) == ["s2", "s3"]
    s = loop.setup(config, str(workdir))
    val = s.splits["val"]
    for i, entry in enumerate(val.entries):
        m = maps[entry.name]
        cells = entry.grid.cells[val.bag_tiles(i)]  # the 16 tiles of the bag, on the 32 x 48 grid
        assert m["attention"].shape == entry.grid.grid_shape == (32, 48)
        assert np.isfinite(m["attention"]).sum() == 16 and np.isfinite(m["attention"][cells[:, 0], cells[:, 1]]).all()
        assert np.nansum(m["attention"]) == pytest.approx(1.0, abs=1e-5)
        assert np.nanmin(m["tile_prob"]) >= 0 and np.nanmax(m["tile_prob"]) <= 1
        for path in m["paths"].values():
            with Image.open(path) as png:
                assert png.format == "PNG" and png.size[0] > 100
    # the per-slide probabilities are the evaluation's: its log loss from them
    probs = np.stack([maps["s2"]["probs"], maps["s3"]["probs"]]).astype(np.float64)
    assert -np.mean(np.log([probs[0, 0], probs[1, 1]])) == pytest.approx(result["loss"], rel=1e-5)
