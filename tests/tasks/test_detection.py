"""The detection task in the one training loop: a RetinaNet trained on the connected-component boxes of 2D label
maps (synthetic discs), its evaluation numbers recomputed from its own detections, exact resume, pmap = sharding,
sliding-window evaluation (one window per image = whole-image evaluation), and a 3D Decathlon-format folder with a
Retina U-Net, patches and sliding windows. One trained workdir is shared by the evaluation tests."""

import json

import jax
import ml_collections
import nibabel as nib
import numpy as np
import pytest

from medjax.detection import metrics
from medjax.errors import MedjaxError
from medjax.train import loop, volume_eval
from medjax.train.parallel import replicated_to_host
from tests.train.helpers import assert_trees_close, run_steps


def detection_config(**dotted) -> ml_collections.ConfigDict:
    """The test run's config; `dotted` keys ("optimizer.name") replace or add values."""
    c = dict(
        seed=0, batch_size=4, eval_batch_size=4, num_train_steps=4, log_every=2, eval_every=2, checkpoint_every=2,
        progress=False,
        data=dict(name="synthetic_segmentation", num_train=8, num_eval=4, size=(16, 16), num_classes=3, max_boxes=4),
        task=dict(name="detection", anchor_shapes=(4.0, 8.0), matcher="iou", score_thresh=0.01, max_detections=8),
        model=dict(name="retinanet", stage_sizes=(1, 1), width=8, stem="small", returned_layers=(1, 2),
                   fpn_channels=8, head_convs=1),
        # SGD: pmap and sharding reduce in different orders, which Adam's first steps (~lr * sign(g)) amplify; and
        # the pmap test's sharded run is then this run's program (one compile for both)
        optimizer=dict(name="sgd", learning_rate=0.1), checkpoint=dict(best_metric="cpm"))
    for key, value in dotted.items():
        *path, leaf = key.split(".")
        node = c
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return ml_collections.ConfigDict(c)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("detection")
    config = detection_config()
    last = loop.train(config, str(workdir))
    return config, workdir, last


def _latest(config, workdir):
    s = loop.setup(config, str(workdir))
    canonical, step, _ = loop.restore_checkpoint(s, str(workdir), "latest")
    return s, canonical, step


def test_trains_on_component_boxes_and_evaluates_its_own_detections(trained):
    config, workdir, last = trained
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4]
    assert all(r["fg_anchors"] > 1 and r["box_loss"] > 0 for r in train)  # every batch has matched anchors
    np.testing.assert_allclose([r["loss"] for r in train], [r["cls_loss"] + r["box_loss"] for r in train], rtol=1e-6)
    assert {"map", "ap50", "ap75", "ar8", "ap/class1", "ap/class2", "cpm", "froc/1"} <= set(last)
    result = loop.evaluate(config, str(workdir), which="latest", split="test")
    assert json.loads((workdir / "eval.json").read_text())["cpm"] == result["cpm"]
    assert {"map", "ap50", "cpm", *(f"froc/{r}" for r in ("0.125", "0.25", "0.5", "1", "2", "4", "8"))} <= set(result)
    assert result["cpm"] == pytest.approx(np.mean([result[k] for k in result if k.startswith("froc/")]), abs=1e-12)
    # the same numbers from the checkpoint's detections, unpadded by hand
    s, canonical, _ = _latest(config, workdir)
    params, stats = replicated_to_host((canonical.params, canonical.batch_stats))
    test = s.splits["test"]
    dets = jax.jit(s.task.detect)(params, stats, test["image"])
    pb, ps, pl = ([np.asarray(a)[i][np.asarray(dets.valid)[i]] for i in range(4)] for a in dets[:3])
    gb = [b[v] for b, v in zip(test["boxes"], test["box_valid"])]
    gl = [lab[v] for lab, v in zip(test["box_labels"], test["box_valid"])]
    coco = metrics.coco_metrics(pb, ps, pl, gb, gl, 2, max_dets=(1, 10, 8))
    froc = metrics.froc(pb, ps, gb)
    assert result["map"] == pytest.approx(coco["mAP"], abs=1e-12) and result["ap50"] == pytest.approx(coco["AP50"])
    assert result["cpm"] == pytest.approx(froc["cpm"], abs=1e-12)
    assert result["num_lesions"] == sum(len(b) for b in gb) > 4
    # eval_cases.json: each case's reference boxes and kept detections (best first), named by the case id
    cases = json.loads((workdir / "eval_cases.json").read_text())["cases"]
    assert [c["case"] for c in cases] == [str(i) for i in range(4)]
    for c, boxes, scores, labels, ref in zip(cases, pb, ps, pl, gb):
        np.testing.assert_allclose(c["detections"]["box"], boxes.reshape(-1, 4), atol=1e-4)
        np.testing.assert_allclose(c["detections"]["score"], scores, atol=1e-6)
        assert c["detections"]["label"] == [f"class{k + 1}" for k in labels]
        np.testing.assert_array_equal(c["reference"]["box"], ref)
        assert (c["num_boxes"], c["num_detections"]) == (len(ref), len(boxes))
    assert (workdir / "plots" / "test_detections.png").stat().st_size > 1000


def test_cli_evaluate_saves_each_cases_boxes(trained, tmp_path, capsys):
    """`medjax evaluate --save-predictions`: predictions/test/<case>.json per case, the eval_cases.json detections
    in MONAI's box convention, and the PNG of the 4 cases."""
    from matplotlib.image import imread

    from medjax.cli import main

    config, workdir, _ = trained
    file = tmp_path / "det.py"
    file.write_text("import json\nimport ml_collections\n\n\ndef get_config(arg=None):\n"
                    f"    return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n")
    assert main(["evaluate", "--config", str(file), "--workdir", str(workdir), "--checkpoint", "latest",
                 "--save-predictions"]) == 0
    printed = json.loads(capsys.readouterr().out)
    cases = json.loads((workdir / "eval_cases.json").read_text())["cases"]
    saved = [json.loads((workdir / "predictions" / "test" / f"{i}.json").read_text()) for i in range(4)]
    assert sorted(p.name for p in (workdir / "predictions" / "test").iterdir()) == [f"{i}.json" for i in range(4)]
    for c, p in zip(cases, saved):
        assert p == {"case": c["case"], "split": "test", "step": 4, "coordinates": "voxel", "box_format": "corner",
                     **c["detections"]}
    assert printed["cpm"] == json.loads((workdir / "eval.json").read_text())["cpm"]
    assert imread(str(workdir / "plots" / "test_detections.png")).shape[:2] == (330, 1200)  # 4 panels of 3 in


def test_one_window_per_image_is_whole_image_evaluation(trained):
    config, workdir, _ = trained
    s, canonical, _ = _latest(config, workdir)
    state = s.strategy.from_canonical(canonical)
    whole = loop.evaluate_split(s, state, "test")
    windowed = detection_config(**{"inference.roi_size": (16, 16)})
    sw = loop.setup(windowed, str(workdir))
    outputs = volume_eval.detection_outputs(sw, sw.strategy.from_canonical(canonical), "test")
    assert sw.task.summarize(outputs) == whole
    np.testing.assert_array_equal(outputs["gt_valid"].sum(axis=1), s.splits["test"]["box_valid"].sum(axis=1))


def test_resume_is_exact(trained, tmp_path):
    config, workdir, _ = trained
    loop.train(detection_config(num_train_steps=2), str(tmp_path))
    loop.train(config, str(tmp_path))
    (_, a, step_a), (_, b, step_b) = _latest(config, workdir), _latest(config, tmp_path)
    assert step_a == step_b == 4
    jax.tree.map(np.testing.assert_array_equal, replicated_to_host(a.params), replicated_to_host(b.params))


def test_pmap_equals_sharding(trained, tmp_path):
    sharded, h1, _ = run_steps(detection_config(), tmp_path / "a", 2)
    pmapped, h2, _ = run_steps(detection_config(**{"parallel.strategy": "pmap"}), tmp_path / "b", 2)
    assert_trees_close(sharded.params, pmapped.params)
    assert_trees_close(sharded.batch_stats, pmapped.batch_stats)
    for key in ("loss", "cls_loss", "box_loss", "fg_anchors"):
        np.testing.assert_allclose([h[key] for h in h1], [h[key] for h in h2], rtol=1e-5)


def _decathlon(root, cases=4):
    """A Decathlon task folder of 16^3 MR volumes, each with two blocks of classes 1 and 2."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for i in range(cases):
        label = np.zeros((16, 16, 16), np.int16)
        a, b = rng.integers(1, 6, 3), rng.integers(9, 13, 3)
        label[a[0]:a[0] + 3, a[1]:a[1] + 4, a[2]:a[2] + 3] = 1
        label[b[0]:b[0] + 3, b[1]:b[1] + 2, b[2]:b[2] + 3] = 2
        image = rng.normal(1.0, 0.1, label.shape) + label
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), str(root / "imagesTr" / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"c{i}.nii.gz"))
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "blocks", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "big", "2": "small"},
        "training": training, "test": []}))


def test_decathlon_folder_instances_from_components_in_3d(tmp_path):
    _decathlon(tmp_path / "Task")
    config = detection_config(
        num_train_steps=2, data=dict(name="msd", root=str(tmp_path / "Task"), val_fraction=0.25, test_fraction=0.25,
                                     patch_size=(8, 8, 8), max_boxes=3, cache_dir=str(tmp_path / "cache")),
        model=dict(name="retina_unet", features=(4, 8), head_levels=(2,), head_channels=8, head_convs=1),
        inference=dict(roi_size=(8, 8, 8), overlap=0.25), **{"task.anchor_shapes": (3.0,)})
    last = loop.train(config, str(tmp_path / "run"))
    assert {"cpm", "ap/big", "ap/small", "num_lesions"} <= set(last) and last["num_lesions"] == 2.0
    result = loop.evaluate(config, str(tmp_path / "run"), split="test")
    cases = json.loads((tmp_path / "run" / "eval_cases.json").read_text())["cases"]
    assert result["num_lesions"] == 2.0 and [c["num_boxes"] for c in cases] == [2]
    assert cases[0]["case"] in {"c0", "c1", "c2", "c3"} and cases[0]["num_detections"] <= 8
    assert sorted(cases[0]["reference"]["label"]) == ["big", "small"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["split"] == "train" and records[0]["seg_loss"] > 0  # the Retina U-Net's auxiliary loss


def test_refusals_name_the_key():
    from tests.train.helpers import synthetic_config

    with pytest.raises(MedjaxError, match=r"config.ensemble.size=2: detectors \(task 'detection'\) do not train"):
        loop.setup(detection_config(**{"ensemble.size": 2}), "unused")
    with pytest.raises(MedjaxError, match=r"config.privacy: detectors \(task 'detection'\) do not train with DP-SGD"):
        loop.setup(detection_config(**{"privacy.enabled": True, "privacy.noise_multiplier": 1.0,
                                       "privacy.delta": 1e-3}), "unused")
    with pytest.raises(MedjaxError, match="--save-predictions writes detection boxes; config.task.name='segmentation'"):
        loop.evaluate(synthetic_config(None, "segmentation"), "unused", save_predictions=True)


def test_boxes_in_slice_and_the_3d_detections_png(tmp_path):
    from matplotlib.image import imread

    from medjax.viz import boxes_in_slice, save_detections_png

    boxes = np.array([[1, 2, 3, 4, 5, 6], [0, 0, 5.5, 2, 2, 7], [0, 0, 0, 1, 1, 1]])
    cut, mask = boxes_in_slice(boxes, 4)  # voxel 4's centre 4.5: box 0 only
    np.testing.assert_array_equal(cut, [[1, 2, 4, 5]])
    np.testing.assert_array_equal(mask, [True, False, False])
    np.testing.assert_array_equal(boxes_in_slice(boxes, 5)[0], [[1, 2, 4, 5], [0, 0, 2, 2]])  # 5.5: edges count
    np.testing.assert_array_equal(boxes_in_slice(boxes[:, [0, 1, 3, 4]], 9)[0], boxes[:, [0, 1, 3, 4]])  # 2D as is
    record = {"reference": {"box": boxes[:1].tolist()}, "detections": {"box": boxes.tolist(), "score": [0.9, 0.5, 0.1]}}
    empty = {"reference": {"box": []}, "detections": {"box": [], "score": []}}
    save_detections_png(str(tmp_path / "d.png"), [("a", np.zeros((8, 8, 8, 1)), record), ("b", np.zeros((8, 8, 8, 1)),
                                                                                          empty)])
    assert imread(str(tmp_path / "d.png")).shape[:2] == (330, 600)
