"""Detection data: boxes files (MONAI JSON datalist in world coordinates, CSV in voxels, 2D and 3D), boxes from the
connected components of label maps, box-aware patches, and the bad inputs that must stop a run with one line."""

import json
import re

import ml_collections
import nibabel as nib
import numpy as np
import pytest

from medjax import schema
from medjax.data.detection import box_patch, check_boxes, with_boxes
from medjax.data.sources import Dataset, load_splits
from medjax.data.stream import as_source
from medjax.errors import MedjaxError


def _nifti(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))


def _boxes_config(root, tmp_path, **kw):
    cfg = dict(name="boxes", root=str(root), cache_dir=str(tmp_path / "cache"), max_boxes=3, **kw)
    return schema.filled("data", ml_collections.ConfigDict(cfg))


@pytest.fixture(scope="module")
def json_root(tmp_path_factory):
    """3 cases of (8, 10, 6) voxels stored with x flipped (affine diag(-2, 2, 3), origin (10, 5, 0)), a bright
    block at stored x 3..5, y 2..4, z 1..2, and its box in world mm (RAS): x -1..5, y 8..14, z 1.5..7.5."""
    root = tmp_path_factory.mktemp("json_boxes")
    (root / "images").mkdir()
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = (10.0, 5.0, 0.0)
    entries = []
    for i in range(3):
        data = np.random.default_rng(i).normal(1.0, 0.05, (8, 10, 6))
        data[3:6, 2:5, 1:3] = 5.0
        _nifti(root / "images" / f"case{i}.nii.gz", data, affine)
        entries.append({"image": f"images/case{i}.nii.gz", "box": [[-1.0, 8.0, 1.5, 5.0, 14.0, 7.5]],
                        "label": ["lesion"]})
    (root / "boxes.json").write_text(json.dumps({"training": entries[:2], "validation": entries[2:]}))
    return root


def test_json_datalist_in_world_coordinates(json_root, tmp_path):
    data = load_splits(_boxes_config(json_root, tmp_path, coordinates="world", class_names=("lesion",)))
    assert data.class_names == ["background", "lesion"] and sorted(data.splits) == ["train", "val"]  # its splits
    assert len(data.splits["train"]) == 2 and len(data.splits["val"]) == 1
    example = data.splits["train"][0]
    # RAS-canonical x = 7 - stored x; box coordinate = world -> voxel index + 1/2: x (-1 + 4) / 2 + 1/2 = 2 ...
    np.testing.assert_allclose(example["boxes"][0], [2, 2, 1, 5, 5, 3], atol=1e-5)
    np.testing.assert_array_equal(example["box_valid"], [True, False, False])
    np.testing.assert_array_equal(example["box_labels"], [0, -1, -1])
    assert example["image"].shape == (8, 10, 6, 1)
    bright = example["image"][..., 0] > example["image"].mean() + 1
    np.testing.assert_array_equal(example["label"] == 1, bright)  # the painted box is the bright block


def test_csv_boxes_in_2d_voxel_coordinates_and_center_format(tmp_path):
    root = tmp_path / "csv"
    (root / "images").mkdir(parents=True)
    for case in ("a", "b", "c", "d"):
        _nifti(root / "images" / f"{case}.nii.gz", np.ones((12, 9, 1)), np.eye(4))
    (root / "boxes.csv").write_text("case,class,cx,cy,w,h\na,tumour,3,4,2,4\na,cyst,8,5,4,2\nb,1,6,6,2,2\nc,,,,,\n"
                                    "d,cyst,2,2,2,2\n")
    cfg = _boxes_config(root, tmp_path, boxes_file="boxes.csv", box_format="center", class_names=("tumour", "cyst"),
                        normalize="none", val_fraction=0.25, test_fraction=0.25)
    data = load_splits(cfg)
    examples = {tuple(e["boxes"][e["box_valid"]].ravel()): e for split in data.splits.values()
                for e in (as_source(split)[i] for i in range(len(split)))}
    a = examples[(2.0, 2.0, 4.0, 6.0, 6.0, 4.0, 10.0, 6.0)]
    np.testing.assert_array_equal(a["box_labels"], [0, 1, -1])
    assert a["image"].shape == (12, 9, 1) and a["label"][2:4, 2:6].min() == 1 and a["label"][6:10, 4:6].min() == 2
    assert () in examples  # case c: listed without boxes
    assert sum(len(s) for s in data.splits.values()) == 4


def _raises(match, fn, *args):
    with pytest.raises(MedjaxError, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)  # the CLI prints it as one line
    return str(e.value)


def test_bad_boxes_files_stop_with_one_line(json_root, tmp_path):
    """The JSON datalist's missing image and the border rule (the CSV cases go through the CLI below)."""
    entries = json.loads((json_root / "boxes.json").read_text())
    entries["training"][0]["image"] = "images/missing.nii.gz"
    (tmp_path / "missing.json").write_text(json.dumps(entries))
    cfg = _boxes_config(json_root, tmp_path, boxes_file=str(tmp_path / "missing.json"), class_names=("lesion",))
    _raises("names case 'missing' whose image .* does not exist", load_splits, cfg)
    entries["training"][0]["label"] = [3]
    (tmp_path / "undeclared.json").write_text(json.dumps(entries))
    cfg = _boxes_config(json_root, tmp_path, boxes_file=str(tmp_path / "undeclared.json"), class_names=("lesion",))
    _raises(r"undeclared.json training\[0\] \(case 'missing'\): class 3 is not declared", load_splits, cfg)
    check_boxes(np.array([[0, 0, 8, 8]]), (8, 8), "edge")  # touching the border is inside


def _csv_data(tmp_path, rows):
    (tmp_path / "img").mkdir()
    for case in ("x", "y"):
        _nifti(tmp_path / "img" / f"{case}.nii.gz", np.ones((8, 8, 4)), np.eye(4))
    (tmp_path / "b.csv").write_text("case,class,x1,y1,z1,x2,y2,z2\n" + rows)
    return dict(name="boxes", root=str(tmp_path), boxes_file="b.csv", images_dir="img", class_names=("lesion",))


def _empty_decathlon(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for i in range(3):
        _nifti(tmp_path / "imagesTr" / f"c{i}.nii.gz", np.ones((8, 8, 8)), np.eye(4))
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(tmp_path / "labelsTr" / f"c{i}.nii.gz"))
    (tmp_path / "dataset.json").write_text(json.dumps({
        "name": "empty", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "lesion"}, "test": [],
        "training": [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"} for i in range(3)]}))
    return dict(name="msd", root=str(tmp_path))


BAD_INPUTS = {  # the list: data, what the one line must say
    "box outside the image": (lambda p: _csv_data(p, "x,lesion,1,1,1,9,2,2\ny,lesion,1,1,1,2,2,2\n"),
                              r"case 'x' \(.*x.nii.gz\): box 0 \[1.0, 1.0, 1.0, 9.0, 2.0, 2.0\] lies outside the "
                              r"image of size \(8, 8, 4\)"),
    "zero-size box": (lambda p: _csv_data(p, "x,lesion,1,1,1,2,2,2\ny,lesion,1,1,2,3,3,2\n"),
                      r"case 'y' \(.*y.nii.gz\): box 0 \[1.0, 1.0, 2.0, 3.0, 3.0, 2.0\] has zero size along axis 2"),
    "undeclared class": (lambda p: _csv_data(p, "x,nodule,1,1,1,3,3,2\n"),
                         r"b.csv line 2 \(case 'x'\): class 'nodule' is not declared in config.data.class_names"),
    "case without an image": (lambda p: _csv_data(p, "x,lesion,1,1,1,3,3,2\nz,lesion,1,1,1,3,3,2\n"),
                              r"b.csv names case 'z', but .*img has no image file z"),
    "every label map empty": (_empty_decathlon, r"dataset 'msd': every training case's label map is empty"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_exits_2_with_one_line_naming_the_bad_input(case, tmp_path, capsys):
    """`medjax train` on each bad input of the issue's list: exit status 2, one line on stderr, before training."""
    from medjax.cli import main

    make, message = BAD_INPUTS[case]
    data = {**make(tmp_path), "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.0, "test_fraction": 0.0}
    config = tmp_path / "bad.py"
    config.write_text(
        "import ml_collections\nfrom medjax.configs import detection_icbm152\n\n\ndef get_config(arg=None):\n"
        "    c = detection_icbm152.get_config('3d,tiny')\n"
        f"    c.data = ml_collections.ConfigDict({data!r})\n    return c\n")
    assert main(["train", "--config", str(config), "--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(message, err), err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_boxes_from_label_map_components():
    label = np.zeros((2, 8, 8), np.int32)
    label[0, 1:3, 1:4] = 1
    label[0, 5:7, 5:6] = 1  # a second component of class 1
    label[0, 4, 0:2] = 2
    data = Dataset({"train": {"image": np.zeros((2, 8, 8, 1), np.float32), "label": label}},
                   ["background", "cell", "nucleus"])
    out = with_boxes(data, ml_collections.ConfigDict(dict(name="image_folder", max_boxes=4)))
    assert out.class_names == ["cell", "nucleus"]
    train = out.splits["train"]
    np.testing.assert_array_equal(train["boxes"][0][:3], [[1, 1, 3, 4], [5, 5, 7, 6], [4, 0, 5, 2]])
    np.testing.assert_array_equal(train["box_labels"][0], [0, 0, 1, -1])
    np.testing.assert_array_equal(train["box_valid"].sum(axis=1), [3, 0])
    empty = Dataset({"train": {"image": np.zeros((2, 8, 8, 1)), "label": np.zeros((2, 8, 8), np.int32)}}, ["bg", "x"])
    _raises("every training case's label map is empty", with_boxes, empty,
            ml_collections.ConfigDict(dict(name="msd", max_boxes=4)))
    label[1, 0, 0] = 3  # a value the dataset does not declare
    data = Dataset({"train": {"image": np.zeros((2, 8, 8, 1)), "label": label}}, ["background", "cell", "nucleus"],
                   case_ids={"train": ["a", "b"]})
    _raises(r"split 'train' case 'b': label value 3 is not a declared class \(the dataset declares \['background', "
            r"'cell', 'nucleus'\], values 0..2\)", with_boxes, data,
            ml_collections.ConfigDict(dict(name="x", max_boxes=4)))


def test_box_patch_moves_clips_and_drops_boxes():
    image = np.arange(20 * 16, dtype=np.float32).reshape(20, 16, 1)
    boxes = np.array([[2, 3, 6, 7], [14, 10, 20, 16], [0, 0, 0, 0]], np.float32)
    example = {"image": image, "label": np.zeros((20, 16), np.int32), "boxes": boxes,
               "box_labels": np.array([0, 1, -1], np.int32), "box_valid": np.array([True, True, False])}
    seen = set()
    for seed in range(30):
        out = box_patch(example, (8, 8), 1.0, 0.5, np.random.default_rng(seed))
        start = np.argwhere(image[..., 0] == out["image"][0, 0, 0])[0]  # where the patch was cut
        shifted = boxes - np.tile(start, 2)
        clipped = np.clip(shifted, 0, 8)
        area = np.prod(shifted[:, 2:] - shifted[:, :2], 1)
        keep = np.array([True, True, False]) & (np.prod(clipped[:, 2:] - clipped[:, :2], 1) >= 0.5 * area)
        np.testing.assert_array_equal(out["box_valid"], keep)
        np.testing.assert_array_equal(out["boxes"][keep], clipped[keep])
        np.testing.assert_array_equal(out["box_labels"], np.where(keep, [0, 1, -1], -1))
        inside = np.prod(np.maximum(clipped[:, 2:] - clipped[:, :2], 0), 1)
        assert inside[:2].max() > 0  # fg_ratio 1: centred on a point of a box, so that box is in view
        seen.add(tuple(start))
    assert len(seen) > 5
    again = box_patch(example, (8, 8), 1.0, 0.5, np.random.default_rng(3))
    np.testing.assert_array_equal(again["image"], box_patch(example, (8, 8), 1.0, 0.5,
                                                            np.random.default_rng(3))["image"])


def test_box_patch_places_the_box_anywhere_inside_the_patch():
    """fg_ratio 1: the one box lies wholly inside every patch, at positions spread over all the patch allows (not
    centred: a centred box teaches a detector where objects sit); a box longer than the patch is cut."""
    image = np.zeros((40, 40, 1), np.float32)
    example = {"image": image, "label": np.zeros((40, 40), np.int32),
               "boxes": np.array([[20, 10, 23, 34]], np.float32), "box_labels": np.array([0], np.int32),
               "box_valid": np.array([True])}
    offsets = set()
    for seed in range(200):
        out = box_patch(example, (8, 16), 1.0, 0.0, np.random.default_rng(seed))
        x1, y1, x2, y2 = out["boxes"][0]
        assert out["box_valid"][0] and x2 - x1 == 3 and 0 <= x1 and x2 <= 8  # whole along x (3 < 8)
        assert y2 - y1 >= 1  # cut along y (24 > 16): a drawn point of it stays inside
        offsets.add(int(x1))
    assert offsets == {0, 1, 2, 3, 4, 5}  # every start keeping x in [20, 23] inside the 8-wide patch
