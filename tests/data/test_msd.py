"""MSD task folders: tiny generated CT / multi-channel MR tasks, a task built around the real ICBM152 T1, and every
way a folder can be broken."""

import hashlib
import json
import os

import nibabel as nib
import numpy as np
import pytest

from medjax.data.icbm152 import FILES, default_root
from medjax.data.msd import MsdIndex, load_msd_case, load_msd_index
from medjax.errors import MedjaxError

LAS = np.array([[-0.8, 0, 0, 20.0], [0, 0.8, 0, -30.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])


def _nii(path, data, affine=LAS):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)


def _ct_image(case: int) -> np.ndarray:
    """HU volume: air -1000 outside, soft tissue 40 inside, a 'lesion' of 240 + case."""
    x = np.full((10, 8, 6), -1000, np.int16)
    x[2:8, 2:6, 1:5] = 40
    x[4:6, 3:5, 2:4] = 240 + case
    return x


def _ct_label(case: int) -> np.ndarray:
    y = np.zeros((10, 8, 6), np.uint8)
    y[2:8, 2:6, 1:5] = 1
    y[4:6, 3:5, 2:4] = 2
    return y


def _write_task(root, modality=None, n_train=3, n_test=1, image_fn=_ct_image, label_fn=_ct_label, extra=None):
    """A task folder as the MSD tarballs unpack, AppleDouble ``._`` files included."""
    modality = modality or {"0": "CT"}
    training = []
    for i in range(n_train):
        name = f"liver_{i:03d}.nii.gz"
        _nii(os.path.join(root, "imagesTr", name), image_fn(i))
        _nii(os.path.join(root, "labelsTr", name), label_fn(i))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    test = []
    for i in range(n_test):
        name = f"liver_{100 + i:03d}.nii.gz"
        _nii(os.path.join(root, "imagesTs", name), image_fn(100 + i))
        test.append(f"./imagesTs/{name}")
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        with open(os.path.join(root, folder, "._liver_000.nii.gz"), "wb") as f:
            f.write(b"\x00\x05\x16\x07 AppleDouble")
    training.append({"image": "./imagesTr/._liver_000.nii.gz", "label": "./labelsTr/._liver_000.nii.gz"})
    meta = {"name": "Liver", "tensorImageSize": "3D", "modality": modality,
            "labels": {"1": "liver", "0": "background", "2": "cancer"},  # int order, not file order
            "numTraining": n_train, "numTest": n_test, "training": training, "test": test}
    meta.update(extra or {})
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(meta, f)
    return str(root)


def _rewrite(root, **changes):
    path = os.path.join(root, "dataset.json")
    with open(path) as f:
        meta = json.load(f)
    for k, v in changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    with open(path, "w") as f:
        json.dump(meta, f)


@pytest.fixture
def ct_task(tmp_path):
    return _write_task(str(tmp_path / "Task03_Liver"))


def test_index_reads_dataset_json(ct_task):
    index = load_msd_index(ct_task)
    assert isinstance(index, MsdIndex) and index.name == "Liver"
    assert index.class_names == ("background", "liver", "cancer") and index.num_classes == 3
    assert index.modalities == ("CT",)
    assert len(index.training) == 3  # the listed ._ entry is dropped
    assert index.training[1] == (os.path.join(ct_task, "imagesTr", "liver_001.nii.gz"),
                                 os.path.join(ct_task, "labelsTr", "liver_001.nii.gz"))
    assert index.test == (os.path.join(ct_task, "imagesTs", "liver_100.nii.gz"),)


def test_test_entries_with_labels_are_labelled_cases(ct_task):
    """A dataset.json in the MSD layout whose test entries carry labels (plain paths stay unlabelled)."""
    _nii(os.path.join(ct_task, "labelsTs", "liver_100.nii.gz"), _ct_label(100))
    _nii(os.path.join(ct_task, "imagesTs", "liver_101.nii.gz"), _ct_image(101))
    _rewrite(ct_task, test=[{"image": "./imagesTs/liver_100.nii.gz", "label": "./labelsTs/liver_100.nii.gz"},
                            {"image": "./imagesTs/liver_101.nii.gz"}, "./imagesTs/._liver_000.nii.gz"])
    index = load_msd_index(ct_task)
    assert index.labelled_test == ((os.path.join(ct_task, "imagesTs", "liver_100.nii.gz"),
                                    os.path.join(ct_task, "labelsTs", "liver_100.nii.gz")),)
    assert index.test == (os.path.join(ct_task, "imagesTs", "liver_101.nii.gz"),)
    assert index.cases == index.training + index.labelled_test and len(index.cases) == 4
    image, _ = load_msd_case(index, 3, normalize="none")  # the labelled test case, after the 3 training cases
    assert image.array.max() == 240 + 100
    _rewrite(ct_task, test=[{"label": "./labelsTs/liver_100.nii.gz"}])
    with pytest.raises(MedjaxError, match=r"dataset.json: test\[0\] must be a path or \{\"image\""):
        load_msd_index(ct_task)
    _rewrite(ct_task, test=[{"image": "./imagesTs/liver_100.nii.gz", "label": "./labelsTs/nope.nii.gz"}])
    with pytest.raises(MedjaxError, match=r"lists 1 file\(s\) that do not exist, e.g. \['.*labelsTs/nope.nii.gz'\]"):
        load_msd_index(ct_task)


def test_ct_case_is_windowed_and_canonical(ct_task):
    index = load_msd_index(ct_task)
    image, label = load_msd_case(index, 2)
    assert image.array.shape == (10, 8, 6, 1) and image.array.dtype == np.float32
    assert label.array.shape == (10, 8, 6) and label.array.dtype == np.int32
    assert image.spacing == pytest.approx((0.8, 0.8, 2.5)) and nib.aff2axcodes(image.affine) == ("R", "A", "S")
    # W400/L40: air -> 0, soft tissue 40 HU -> 0.5, lesion 242 HU -> 1 (clipped).
    assert sorted(np.unique(image.array).tolist()) == [0.0, 0.5, 1.0]
    assert image.array[0, 0, 0, 0] == 0.0 and image.array[7, 3, 2, 0] == 0.5 and image.array[4, 4, 3, 0] == 1.0
    assert np.bincount(label.array.ravel()).tolist() == [384, 88, 8]
    np.testing.assert_array_equal(label.array, _ct_label(2)[::-1])  # LAS -> RAS flips x
    raw, _ = load_msd_case(index, 2, normalize="none")
    assert raw.array[4, 4, 3, 0] == 242.0 and raw.array[0, 0, 0, 0] == -1000.0
    lung, _ = load_msd_case(index, 2, ct_level=-600, ct_width=1500)
    assert lung.array[0, 0, 0, 0] == pytest.approx(350 / 1500)
    z, _ = load_msd_case(index, 2, normalize="zscore")
    assert abs(z.array.mean()) < 1e-5  # CT has no zero background: every voxel counts
    with pytest.raises(MedjaxError, match="normalize must be one of"):
        load_msd_case(index, 0, normalize="minmax")


def test_case_resampled_to_spacing(ct_task):
    index = load_msd_index(ct_task)
    image, label = load_msd_case(index, 0, spacing=(1.6, 1.6, 5.0))
    assert image.array.shape == (5, 4, 3, 1) and label.array.shape == (5, 4, 3)
    assert image.spacing == pytest.approx((1.6, 1.6, 5.0)) and label.spacing == pytest.approx((1.6, 1.6, 5.0))
    np.testing.assert_allclose(image.affine, label.affine)
    assert set(np.unique(label.array)) <= {0, 1, 2} and label.array.dtype == np.int32
    assert image.array.min() >= 0.0 and image.array.max() <= 1.0


def test_multichannel_mr_is_zscored_per_channel_over_nonzero(tmp_path):
    rng = np.random.default_rng(1)

    def image(i):
        x = np.zeros((10, 8, 6, 2), np.float32)
        x[2:8, 2:6, 1:5, 0] = rng.normal(800, 100, (6, 4, 4))  # FLAIR-like
        x[2:8, 2:6, 1:5, 1] = rng.normal(50, 5, (6, 4, 4))  # T1-like, other scale
        return x

    root = _write_task(str(tmp_path / "Task01_BrainTumour"), {"0": "FLAIR", "1": "T1w"}, image_fn=image)
    index = load_msd_index(root)
    assert index.modalities == ("FLAIR", "T1w")
    img, _ = load_msd_case(index, 0)
    assert img.array.shape == (10, 8, 6, 2)
    brain = _ct_label(0)[::-1] > 0
    for c in range(2):
        assert abs(img.array[..., c][brain].mean()) < 1e-5 and abs(img.array[..., c][brain].std() - 1) < 1e-4
        assert np.all(img.array[..., c][~brain] == 0)
    wrong = _write_task(str(tmp_path / "wrong"), {"0": "FLAIR", "1": "T1w", "2": "T2w"}, image_fn=image)
    with pytest.raises(MedjaxError, match=r"liver_000.nii.gz has 2 channel\(s\) but dataset.json lists 3"):
        load_msd_case(load_msd_index(wrong), 0)


def test_real_icbm152_as_an_mr_task(tmp_path):
    """The real T1 (linked, not copied) with a brain mask label written here: RAS 1 mm -> 2 mm."""
    src = os.path.join(default_root(), FILES["t1"])
    root = tmp_path / "Task99_ICBM"
    (root / "imagesTr").mkdir(parents=True)
    os.symlink(src, root / "imagesTr" / "icbm_001.nii.gz")
    t1 = nib.load(src)
    data = np.asanyarray(t1.dataobj)
    _nii(str(root / "labelsTr" / "icbm_001.nii"), (data > 0.2 * data.max()).astype(np.uint8), t1.affine)
    with open(root / "dataset.json", "w") as f:
        json.dump({"name": "ICBM", "modality": {"0": "T1"}, "labels": {"0": "background", "1": "brain"},
                   "training": [{"image": "./imagesTr/icbm_001.nii.gz", "label": "./labelsTr/icbm_001.nii"}],
                   "test": []}, f)
    index = load_msd_index(str(root))
    image, label = load_msd_case(index, 0)
    assert image.array.shape == (197, 233, 189, 1) and label.array.shape == (197, 233, 189)
    assert int(label.array.sum()) == 1_882_989  # T1 > 51 of 255: 1.883 L at 1 mm
    nz = image.array[..., 0] != 0
    assert abs(image.array[..., 0][nz].mean()) < 1e-4 and abs(image.array[..., 0][nz].std() - 1) < 1e-4
    image2, label2 = load_msd_case(index, 0, spacing=2.0)
    assert image2.array.shape == (98, 116, 94, 1) and label2.array.shape == (98, 116, 94)
    assert abs(int(label2.array.sum()) * 8 - 1_882_989) / 1_882_989 < 0.01


def test_folder_errors_name_the_path(tmp_path, ct_task):
    with pytest.raises(MedjaxError, match=r"MSD task folder not found: .*Task00_Nope"):
        load_msd_index(str(tmp_path / "Task00_Nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedjaxError, match=r"empty is not an MSD task folder: no dataset.json"):
        load_msd_index(str(empty))
    (empty / "dataset.json").write_text("{not json")
    with pytest.raises(MedjaxError, match=r"cannot read .*empty/dataset.json"):
        load_msd_index(str(empty))

    os.remove(os.path.join(ct_task, "labelsTr", "liver_001.nii.gz"))
    with pytest.raises(MedjaxError, match=r"Task03_Liver/dataset.json lists 1 file\(s\) that do not exist, "
                                          r"e.g. \['.*labelsTr/liver_001.nii.gz'\]"):
        load_msd_index(ct_task)
    _rewrite(ct_task, training=[])
    with pytest.raises(MedjaxError, match=r"Task03_Liver/dataset.json: the training list is empty"):
        load_msd_index(ct_task)
    _rewrite(ct_task, training=None)
    with pytest.raises(MedjaxError, match=r"Task03_Liver/dataset.json has no 'training' entry"):
        load_msd_index(ct_task)
    _rewrite(ct_task, training=[{"image": "./imagesTr/liver_000.nii.gz"}])
    with pytest.raises(MedjaxError, match=r"dataset.json: training\[0\] must be"):
        load_msd_index(ct_task)
    _rewrite(ct_task, labels={"0": "background", "2": "cancer"})
    with pytest.raises(MedjaxError, match=r"dataset.json: 'labels' keys must be 0..1, got \[0, 2\]"):
        load_msd_index(ct_task)


def test_case_errors_name_the_file(tmp_path, ct_task):
    index = load_msd_index(ct_task)
    with pytest.raises(MedjaxError, match=r"Task03_Liver: case 3 does not exist; labelled cases are 0..2"):
        load_msd_case(index, 3)

    def bad_label(i):
        y = _ct_label(i)
        y[0, 0, 0] = 5
        return y

    root = _write_task(str(tmp_path / "badlabel"), label_fn=bad_label)
    with pytest.raises(MedjaxError, match=r"labelsTr/liver_000.nii.gz: label values must be in 0..2, found \[5\]"):
        load_msd_case(load_msd_index(root), 0)

    def nan_image(i):
        x = _ct_image(i).astype(np.float32)
        x[1, 1, 1] = np.nan
        return x

    root = _write_task(str(tmp_path / "nan"), image_fn=nan_image)
    with pytest.raises(MedjaxError, match=r"imagesTr/liver_000.nii.gz: 1 non-finite voxels \(1 NaN, 0 inf\)"):
        load_msd_case(load_msd_index(root), 0)

    root = _write_task(str(tmp_path / "shape"), label_fn=lambda i: _ct_label(i)[:, :, :5])
    with pytest.raises(MedjaxError, match=r"image .*imagesTr/liver_000.nii.gz has shape \(10, 8, 6\) but label "
                                          r".*labelsTr/liver_000.nii.gz has \(10, 8, 5\)"):
        load_msd_case(load_msd_index(root), 0)

    root = _write_task(str(tmp_path / "moved"))
    moved = LAS.copy()
    moved[2, 3] += 2.5  # label one slice off
    _nii(os.path.join(root, "labelsTr", "liver_001.nii.gz"), _ct_label(1), moved)
    with pytest.raises(MedjaxError, match=r"image .*imagesTr/liver_001.nii.gz and label .*labelsTr/liver_001.nii.gz "
                                          r"are on different grids"):
        load_msd_case(load_msd_index(root), 1)


def test_loading_leaves_the_folder_unchanged(ct_task):
    def snapshot():
        out = {}
        for folder, _, files in os.walk(ct_task):
            for name in files:
                p = os.path.join(folder, name)
                with open(p, "rb") as f:
                    out[p] = (os.stat(p).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
        return out

    before = snapshot()
    index = load_msd_index(ct_task)
    for i in range(len(index.training)):
        load_msd_case(index, i, spacing=1.0)
    assert snapshot() == before


# ----------------------------------------------------------------- other challenges' layouts, without dataset.json

def _promise12(root, n=3):
    """PROMISE12's layout: TrainingData_Part1..N/CaseNN.mhd (+ .raw) with CaseNN_segmentation.mhd (+ .raw) beside
    it; here case i goes to part 1 + i % 2."""
    import SimpleITK as sitk

    for i in range(n):
        folder = os.path.join(root, f"TrainingData_Part{1 + i % 2}")
        os.makedirs(folder, exist_ok=True)
        image = (np.arange(6 * 7 * 5).reshape(5, 7, 6) * (i + 1)).astype(np.int16)  # (z, y, x)
        label = (image % 3 == 0).astype(np.uint8)
        for name, array in ((f"Case{i:02d}.mhd", image), (f"Case{i:02d}_segmentation.mhd", label)):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing((0.625, 0.625, 3.6))
            itk.SetOrigin((-50.0, 30.0, 12.0))
            sitk.WriteImage(itk, os.path.join(folder, name))
    return str(root)


PROMISE12 = dict(images_dir="TrainingData_Part*", labels_dir="TrainingData_Part*", label_suffix="_segmentation",
                 class_names=("background", "prostate"), modalities=("MR",))


def test_promise12_metaimage_folders_pair_by_name(tmp_path):
    from medjax.data.formats import load_label, load_volume

    root = _promise12(tmp_path / "PROMISE12")
    index = load_msd_index(root, **PROMISE12)
    assert index.training == tuple((os.path.join(root, f"TrainingData_Part{p}", f"Case{i:02d}.mhd"),
                                    os.path.join(root, f"TrainingData_Part{p}", f"Case{i:02d}_segmentation.mhd"))
                                   for p, i in ((1, 0), (1, 2), (2, 1)))
    assert index.class_names == ("background", "prostate") and index.modalities == ("MR",) and index.test == ()
    image, label = load_msd_case(index, 2, normalize="none")  # Case01: values x 2
    np.testing.assert_array_equal(image.array, load_volume(index.training[2][0]).array)
    np.testing.assert_array_equal(label.array, load_label(index.training[2][1]).array)
    assert image.spacing == pytest.approx((0.625, 0.625, 3.6)) and image.array[0, 0, 0, 0] == 2 * 41  # x,y flipped
    with pytest.raises(MedjaxError, match=r"PROMISE12 has no dataset.json: set config.data.class_names"):
        load_msd_index(root, images_dir="TrainingData_Part*")
    os.remove(os.path.join(root, "TrainingData_Part1", "Case02_segmentation.mhd"))
    with pytest.raises(MedjaxError, match=r"1 image\(s\) without a label named <stem>_segmentation.<ext> in its "
                                          r"folder, e.g. \['.*TrainingData_Part1/Case02.mhd'\]"):
        load_msd_index(root, **PROMISE12)
    with pytest.raises(MedjaxError, match=r"Case00.mhd would be its own label: set config.data.label_suffix"):
        load_msd_index(root, **{**PROMISE12, "label_suffix": ""})


def test_luna16_subsets_with_one_mask_folder(tmp_path):
    """LUNA16's layout: subset0..9/<seriesuid>.mhd CT, lung masks under seg-lungs-LUNA16/<seriesuid>.mhd."""
    import SimpleITK as sitk

    root = tmp_path / "LUNA16"
    for subset, uid in ((0, "1.3.6.1.111"), (0, "1.3.6.1.222"), (1, "1.3.6.1.333")):
        for folder in (f"subset{subset}", "seg-lungs-LUNA16"):
            (root / folder).mkdir(parents=True, exist_ok=True)
            array = np.full((3, 4, 5), 3 if folder.startswith("seg") else -1000, np.int16)
            sitk.WriteImage(sitk.GetImageFromArray(array), str(root / folder / f"{uid}.mhd"))
    index = load_msd_index(str(root), images_dir="subset*", labels_dir="seg-lungs-LUNA16",
                           class_names=("background", "c1", "c2", "lung"), modalities=("CT",))
    assert [(os.path.basename(os.path.dirname(a)), os.path.basename(b)) for a, b in index.training] == [
        ("subset0", "1.3.6.1.111.mhd"), ("subset0", "1.3.6.1.222.mhd"), ("subset1", "1.3.6.1.333.mhd")]
    image, label = load_msd_case(index, 2)
    assert float(image.array.max()) == 0.0 and int(label.array.min()) == 3  # CT window: -1000 HU is below it


def test_acdc_h5_files_hold_image_and_label(tmp_path):
    import h5py

    from medjax.data.hdf5 import Hdf5Layout

    data = tmp_path / "ACDC" / "data"
    data.mkdir(parents=True)
    for i in (1, 2):
        with h5py.File(data / f"patient{i:03d}_frame01.h5", "w") as f:
            f.create_dataset("image", data=np.full((3, 8, 6), float(i), np.float32))
            f.create_dataset("label", data=np.eye(8, 6, dtype=np.uint8)[None].repeat(3, 0) * 3)
    index = load_msd_index(str(tmp_path / "ACDC"), images_dir="data", labels_dir="data",
                           class_names=("background", "rv", "myo", "lv"), modalities=("MR",))
    assert [a == b for a, b in index.training] == [True, True]  # each file is its own label, under another key
    image, label = load_msd_case(index, 1, normalize="none", hdf5=Hdf5Layout())
    assert image.array.shape == (6, 8, 3, 1) and float(image.array.max()) == 2.0
    assert label.array.shape == (6, 8, 3) and int(label.array.sum()) == 3 * 6 * 3


def test_msd_source_reads_a_metaimage_folder_and_sees_its_raw_files(tmp_path):
    import ml_collections

    from medjax.data.sources import load_splits

    root = _promise12(tmp_path / "PROMISE12", n=5)
    cfg = ml_collections.ConfigDict(dict(name="msd", root=root, cache_dir=str(tmp_path / "cache"), **PROMISE12))
    data = load_splits(cfg)
    assert {k: data.num_examples(k) for k in ("train", "val", "test")} == {"train": 3, "val": 1, "test": 1}
    assert data.class_names == ["background", "prostate"]
    assert len(list((tmp_path / "cache").glob("msd_PROMISE12/*/spec.json"))) == 1
    raw = os.path.join(root, "TrainingData_Part1", "Case04.raw")  # only the voxel data changes: a new cache
    with open(raw, "r+b") as f:
        f.write(b"\x01\x00")
    os.utime(raw, ns=(1, 1))
    load_splits(cfg)
    assert len(list((tmp_path / "cache").glob("msd_PROMISE12/*/spec.json"))) == 2
