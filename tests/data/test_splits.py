"""Official splits: split roots, a CSV split column, split files (nnU-Net's splits_final.json and {train, val,
test}), the Decathlon's labelled test entries, nnU-Net's k-fold (pinned against scikit-learn), and every bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from medjax import schema
from medjax.data.splits import case_id, case_split, kfold, resolve, select, select_ids, split_cases
from medjax.errors import MedjaxError

IDS = [f"case_{i:02d}" for i in (7, 3, 9, 0, 5, 1, 8, 2, 6, 4, 11, 10)]  # a source's order, not sorted


def _cfg(name="image_folder", **kw):
    return schema.filled("data", dict(name=name, **kw))


def _nnunet_folds(ids, k=5):
    """nnU-Net's generate_crossval_split over its sorted case ids (KFold, shuffle, seed 12345)."""
    from sklearn.model_selection import KFold

    ids = np.sort(np.asarray(ids))
    return [{"train": [str(c) for c in ids[tr]], "val": [str(c) for c in ids[va]]}
            for tr, va in KFold(n_splits=k, shuffle=True, random_state=12345).split(ids)]


def _ids(split, name):
    return sorted(IDS[i] for i in split.get(name, []))


def test_split_cases_is_deterministic_and_disjoint():
    train, val = split_cases(10, 0.2, seed=0)
    assert len(train) == 8 and len(val) == 2 and sorted(train + val) == list(range(10))
    assert (train, val) == split_cases(10, 0.2, seed=0)
    assert val == [4, 6]  # pinned: numpy PCG64, seed 0
    assert split_cases(10, 0.2, seed=1)[1] != val
    assert len(split_cases(3, 0.01)[1]) == 1  # at least one val case
    assert split_cases(5, 0.0) == ([0, 1, 2, 3, 4], [])
    assert len(split_cases(2, 0.9)[0]) == 1  # always one training case left
    with pytest.raises(MedjaxError, match="need at least 2"):
        split_cases(1, 0.2)
    with pytest.raises(MedjaxError, match=r"val_fraction must be in \[0, 1\)"):
        split_cases(10, 1.0)
    with pytest.raises(MedjaxError, match="n >= 1"):
        split_cases(0, 0.2)


def test_case_split_is_seeded_and_disjoint_and_the_default():
    split = case_split(10, 0.2, 0.3, 0)
    assert [len(split[k]) for k in ("train", "val", "test")] == [5, 2, 3]
    assert sorted(sum(split.values(), [])) == list(range(10))
    assert split == case_split(10, 0.2, 0.3, 0) and split != case_split(10, 0.2, 0.3, 1)
    assert set(case_split(5, 0.0, 0.0, 0)) == {"train"}  # no empty splits
    with pytest.raises(MedjaxError, match="leave cases for training"):
        case_split(10, 0.5, 0.5, 0)
    # no split given anywhere: the seeded permutation, for every folder source
    for name in ("image_folder", "cine_folder", "msd"):
        assert resolve(IDS, _cfg(name, test_fraction=0.3)) == case_split(12, 0.2, 0.3, 0)


def test_kfold_is_sklearns_kfold():
    from sklearn.model_selection import KFold

    assert kfold(10, 5, 0) == ([1, 2, 3, 4, 5, 6, 8, 9], [0, 7])  # pinned: sklearn 1.x, RandomState(12345)
    assert kfold(10, 5, 4) == ([0, 1, 3, 4, 6, 7, 8, 9], [2, 5])
    for n in (2, 5, 7, 12, 23):
        for k in range(2, min(n, 5) + 1):
            reference = KFold(n_splits=k, shuffle=True, random_state=12345).split(np.arange(n))
            for fold, (train, val) in enumerate(reference):
                assert kfold(n, k, fold) == (train.tolist(), val.tolist()), (n, k, fold)


def test_num_folds_are_nnunets_folds_of_the_sorted_non_test_cases():
    folds = _nnunet_folds(IDS)
    for fold in range(5):
        split = resolve(IDS, _cfg(num_folds=5, fold=fold, test_fraction=0.0))
        assert set(split) == {"train", "val"}
        assert (_ids(split, "train"), _ids(split, "val")) == (folds[fold]["train"], folds[fold]["val"])
    # an official test split stays out of the folds
    given = ["test" if c in ("case_00", "case_11") else "train" for c in IDS]
    folds = _nnunet_folds([c for c in IDS if c not in ("case_00", "case_11")], k=3)
    split = resolve(IDS, _cfg(num_folds=3, fold=2), given, "config.data.test_root")
    assert _ids(split, "test") == ["case_00", "case_11"] and _ids(split, "val") == folds[2]["val"]
    assert _ids(split, "train") == folds[2]["train"]
    # without an official test split the default test_fraction is held out first, then folded
    rest, test = split_cases(12, 0.2, 0)
    split = resolve(IDS, _cfg(num_folds=4, fold=1))
    folds = _nnunet_folds([IDS[i] for i in rest], k=4)
    assert split["test"] == test and _ids(split, "val") == folds[1]["val"]


def test_nnunet_splits_final_json(tmp_path):
    folds = _nnunet_folds(IDS)
    (tmp_path / "splits_final.json").write_text(json.dumps(folds))
    split = resolve(IDS, _cfg(root=str(tmp_path), split_file="splits_final.json", fold=3))
    assert set(split) == {"train", "val"}  # every case is listed in train or val: no test split
    assert (_ids(split, "train"), _ids(split, "val")) == (folds[3]["train"], folds[3]["val"])
    assert split["val"] == sorted(split["val"]) and split["train"] == sorted(split["train"])
    # the folds of the training cases, with the official test cases from their own folder
    ids = [*IDS, "test_a", "test_b"]
    split = resolve(ids, _cfg(split_file=str(tmp_path / "splits_final.json")), ["train"] * 12 + ["test"] * 2,
                    "config.data.test_root")
    assert split["test"] == [12, 13] and _ids(split, "val") == folds[0]["val"]


def test_simple_split_file(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": IDS[:7], "val": IDS[7:9], "test": IDS[9:]}))
    assert resolve(IDS, _cfg(split_file=str(path))) == {"train": list(range(7)), "val": [7, 8],
                                                         "test": [9, 10, 11]}
    path.write_text(json.dumps({"train": IDS[:10], "val": IDS[10:]}))
    assert resolve(IDS, _cfg(split_file=str(path))) == {"train": list(range(10)), "val": [10, 11]}
    path.write_text(json.dumps({"train": IDS, "val": []}))
    assert resolve(IDS, _cfg(split_file=str(path))) == {"train": list(range(12))}  # an empty val list: no val
    # no val list: val is drawn from the file's training cases, as from a train_root
    path.write_text(json.dumps({"train": IDS[:9], "test": IDS[9:]}))
    split = resolve(IDS, _cfg(split_file=str(path), val_fraction=0.3))
    assert split["test"] == [9, 10, 11] and split["val"] == split_cases(9, 0.3, 1)[1] and len(split["val"]) == 3


def test_layout_splits_and_val_drawn_from_the_training_cases():
    given = ["test", "train", "train", "test", "train", "train", "train", "train", "train", "test", "train", "test"]
    split = resolve(IDS, _cfg(val_fraction=0.25), given, "config.data.train_root/test_root")
    rest = [1, 2, 4, 5, 6, 7, 8, 10]
    assert split["test"] == [0, 3, 9, 11]
    assert split["val"] == [rest[j] for j in split_cases(8, 0.25, 1)[1]] == [1, 7]  # 25% of the 8 non-test cases
    split = resolve(IDS, _cfg(), ["val" if g == "test" else g for g in given], "config.data.train_root/val_root")
    assert split == {"train": [1, 2, 4, 5, 6, 7, 8, 10], "val": [0, 3, 9, 11]}  # no test, no draw
    split = resolve(IDS, _cfg(), ["train"] * 12, "config.data.train_root")  # train_root alone: no test split
    assert set(split) == {"train", "val"} and len(split["val"]) == 2


def test_split_case_ids_follow_the_examples():
    from medjax.data.sources import Dataset

    split = {"train": [0, 2], "test": [3]}
    assert select_ids(["a", "b", "c", "d"], split) == {"train": ["a", "c"], "test": ["d"]}
    np.testing.assert_array_equal(select({"x": np.arange(4) * 10}, split)["train"]["x"], [0, 20])
    data = Dataset({"train": {"x": np.zeros(2)}, "test": {"x": np.zeros(3)}}, [], case_ids={"train": ["a", "c"]})
    assert data.cases("train") == ["a", "c"] and data.cases("test") == ["0", "1", "2"]  # default: the position


def test_case_ids_are_file_stems():
    assert [case_id(p) for p in ("/d/imagesTr/hippocampus_001.nii.gz", "a/x.NII", "21_training.tif", "im0001.ah.ppm",
                                 "p1")] == ["hippocampus_001", "x", "21_training", "im0001.ah", "p1"]


@pytest.mark.parametrize("keys, given, match", [
    (dict(split_file="s.json", num_folds=5), None,
     "config.data.split_file='s.json' and config.data.num_folds=5 both choose the validation cases"),
    (dict(num_folds=1), None, r"config.data.num_folds=1: k-fold cross-validation needs k >= 2"),
    (dict(fold=2), None, "config.data.fold=2 picks a fold, but neither config.data.split_file nor config.data.num_"),
    (dict(num_folds=5, fold=5), None, r"config.data.fold=5 is out of range: config.data.num_folds=5 makes folds 0..4"),
    (dict(num_folds=5, fold=-1), None, r"config.data.fold=-1 is out of range"),
    (dict(num_folds=13, test_fraction=0.0), None, "config.data.num_folds=13 folds need at least 13 cases"),
    (dict(test_fraction=0.1), "test", "config.data.test_fraction=0.1 contradicts config.data.test_root, which gives "
                                      "the test split: leave test_fraction at 0.2"),
    (dict(val_fraction=0.3), "val", "config.data.val_fraction=0.3 contradicts config.data.test_root, which gives the"
                                    " validation split"),
    (dict(num_folds=3), "val", "config.data.test_root gives the validation cases and so does config.data.num_folds=3"),
    (dict(val_fraction=0.3, num_folds=3), None, "config.data.val_fraction=0.3 contradicts config.data.num_folds=3"),
    (dict(), "all_test", "the train split is empty: config.data.test_root gives every case to the test split"),
    (dict(), "no_train", "the train split is empty: config.data.test_root leaves no case for training"),
])
def test_contradicting_keys_and_empty_train_name_what_to_fix(keys, given, match):
    layouts = {None: None, "test": ["train"] * 10 + ["test"] * 2, "val": ["train"] * 10 + ["val"] * 2,
               "all_test": ["test"] * 12, "no_train": ["val"] * 10 + ["test"] * 2}
    with pytest.raises(MedjaxError, match=match):
        resolve(IDS, _cfg(**keys), layouts[given], "config.data.test_root")


def test_bad_split_files_name_the_file_and_the_case(tmp_path):
    path = tmp_path / "split.json"

    def check(content, match, fold=0, given=None):
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(MedjaxError, match=match):
            resolve(IDS, _cfg(split_file=str(path), fold=fold), given, "config.data.test_root")

    check({"train": IDS[:8], "val": IDS[7:]}, f"case '{IDS[7]}' is in two splits of {path}: 'train' and 'val'")
    check({"train": IDS, "test": ["case_99"]}, rf"{path} names case 'case_99', which is not among the 12 cases "
                                               r"of the data \(case_00, case_01")
    check({"train": IDS[1:]}, f"case '{IDS[0]}' is in no split of {path}: list it")
    check(_nnunet_folds(IDS), rf"config.data.fold=5 is out of range: {path} holds 5 folds \(0..4\)", fold=5)
    check({"train": IDS}, f"config.data.fold=1 picks a fold, but {path} holds one split", fold=1)
    check({"train": [], "val": IDS}, f"the train split is empty: {path} leaves no case for training")
    check({"train": IDS[:11], "val": IDS[11:]}, f"case '{IDS[11]}' is in two splits: 'test' by config.data.test_root "
          f"and 'val' by {path}", given=["train"] * 11 + ["test"])
    check({"train": IDS[:10], "test": IDS[10:]}, f"case '{IDS[10]}' is in two splits: 'train' by config.data.test_"
          f"root and 'test' by {path}", given=["train"] * 12)
    check({"train": IDS[:10], "val": IDS[10:]}, f"config.data.test_root gives the validation cases and so does "
          f"{path}: use one of them", given=["train"] * 10 + ["val"] * 2)
    check({"train": IDS[:11]}, f"case '{IDS[10]}' is in two splits: 'val' by config.data.test_root and 'train' by "
          f"{path}", given=["train"] * 10 + ["val"] * 2)
    check({"train": IDS, "validation": []}, r"expected the keys train/val/test \(train required\), got \['train', "
                                            r"'validation'\]")
    check([{"train": IDS, "test": []}], r"\(fold 0\): expected the keys train/val")
    check({"train": "case_00"}, "'train' must be a list of case ids")
    check("{not json", f"cannot read split file {path}")
    with pytest.raises(MedjaxError, match="config.data.split_file not found: .*nope.json"):
        resolve(IDS, _cfg(root=str(tmp_path), split_file="nope.json"))
    path.write_text(json.dumps({"train": IDS}))
    with pytest.raises(MedjaxError, match="cases 0 and 12 share the id 'case_07'"):
        resolve([*IDS, "case_07"], _cfg(split_file=str(path)))


# ------------------------------------------------------------------------------------------------ the sources

def _write_cases(folder, cases):
    """8x8 grey PNG images whose pixels all equal the case's number (so a split shows which cases it holds), and
    0/255 masks."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    for name, value in cases.items():
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(folder / "images" / f"{name}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{name}.png")


def _values(split):
    return sorted(int(round(float(v) * 255)) for v in split["image"][:, 0, 0, 0])


def test_image_folder_takes_every_form_of_split(tmp_path):
    from medjax.data.sources import load_splits

    root = tmp_path / "data"
    _write_cases(root / "train", {f"t{i}": 10 + i for i in range(6)})
    _write_cases(root / "test", {f"s{i}": 100 + i for i in range(3)})
    _write_cases(root / "val", {"v0": 200})
    data = load_splits(_cfg(root=str(root), train_root="train", test_root="test"))
    val = [10 + j for j in split_cases(6, 0.2, 1)[1]]  # 20% of the 6 training cases
    assert len(val) == 1 and {k: _values(v) for k, v in data.splits.items()} == {
        "train": sorted(set(range(10, 16)) - set(val)), "val": val, "test": [100, 101, 102]}
    data = load_splits(_cfg(root=str(root), train_root="train", val_root="val", test_root=str(root / "test")))
    assert {k: _values(v) for k, v in data.splits.items()} == {"train": [10, 11, 12, 13, 14, 15], "val": [200],
                                                               "test": [100, 101, 102]}
    with pytest.raises(MedjaxError, match="config.data.test_root needs config.data.train_root"):
        load_splits(_cfg(root=str(root), test_root="test"))

    # a split column in the pairs CSV (any case), and what it must not hold
    rows = [("t0", "train"), ("t1", "Train"), ("t2", "val"), ("t3", " test "), ("t4", "train"), ("t5", "TEST")]
    csv = root / "pairs.csv"
    csv.write_text("image,mask,split\n" + "".join(f"train/images/{c}.png,train/masks/{c}.png,{s}\n" for c, s in rows))
    data = load_splits(_cfg(root=str(root), pairs_csv="pairs.csv"))
    assert {k: _values(v) for k, v in data.splits.items()} == {"train": [10, 11, 14], "val": [12], "test": [13, 15]}
    with pytest.raises(MedjaxError, match="config.data.pairs_csv lists the files .*: leave config.data.train_root"):
        load_splits(_cfg(root=str(root), pairs_csv="pairs.csv", train_root="train"))
    with pytest.raises(MedjaxError, match="config.data.test_fraction=0.3 contradicts the split column of "):
        load_splits(_cfg(root=str(root), pairs_csv="pairs.csv", test_fraction=0.3))
    csv.write_text("image,mask,split\ntrain/images/t0.png,train/masks/t0.png,train\n"
                   "train/images/t1.png,train/masks/t1.png,validation\n")
    with pytest.raises(MedjaxError, match=r"pairs.csv line 3: split 'validation' is not one of train/val/test"):
        load_splits(_cfg(root=str(root), pairs_csv="pairs.csv"))
    csv.write_text("image,mask,split\ntrain/images/t0.png,train/masks/t0.png,\n")
    with pytest.raises(MedjaxError, match=r"pairs.csv line 2: split '' is not one of train/val/test"):
        load_splits(_cfg(root=str(root), pairs_csv="pairs.csv"))
    csv.write_text("image,mask,split\ntrain/images/t0.png,train/masks/t0.png,val\n"
                   "train/images/t1.png,train/masks/t1.png,test\n")
    with pytest.raises(MedjaxError, match="the train split is empty: the split column of .*pairs.csv leaves no case"):
        load_splits(_cfg(root=str(root), pairs_csv="pairs.csv"))

    # a split file naming the cases by file stem, over the split roots
    (root / "split.json").write_text(json.dumps({"train": ["t0", "t1", "t2", "t3"], "val": ["t4", "t5"]}))
    data = load_splits(_cfg(root=str(root), train_root="train", test_root="test", split_file="split.json"))
    assert {k: _values(v) for k, v in data.splits.items()} == {"train": [10, 11, 12, 13], "val": [14, 15],
                                                               "test": [100, 101, 102]}


def test_cine_folder_takes_split_roots_and_a_split_file(tmp_path):
    from medjax.data.cine_io import load_cine_folder
    from medjax.data.sources import load_splits
    from tests.data.test_cine_io import _cases

    _cases(tmp_path / "train", n=4, frames=3, size=16)
    _cases(tmp_path / "test", n=2, frames=3, size=16)
    train, test = (load_cine_folder(str(tmp_path / s)) for s in ("train", "test"))
    data = load_splits(_cfg("cine_folder", root=str(tmp_path), train_root="train", test_root="test",
                            val_fraction=0.25))
    (val,) = split_cases(4, 0.25, 1)[1]
    assert {k: len(v["image"]) for k, v in data.splits.items()} == {"train": 3, "val": 1, "test": 2}
    np.testing.assert_array_equal(data.splits["test"]["image"], test["image"])
    np.testing.assert_array_equal(data.splits["val"]["target"], train["target"][[val]])
    (tmp_path / "folds.json").write_text(json.dumps(_nnunet_folds(["p0", "p1", "p2", "p3"], k=2)))
    data = load_splits(_cfg("cine_folder", root=str(tmp_path), train_root="train", split_file="folds.json",
                            fold=1))  # (the test root's cases are also named p0, p1: ids must be unique)
    val = [int(c[1:]) for c in _nnunet_folds(["p0", "p1", "p2", "p3"], k=2)[1]["val"]]
    np.testing.assert_array_equal(data.splits["val"]["label"], train["label"][val])
    _cases(tmp_path / "other", n=2, frames=4, size=16)
    with pytest.raises(MedjaxError, match="the cases of .*other and .*train differ in what they hold or in shape"):
        load_splits(_cfg("cine_folder", root=str(tmp_path), train_root="train", test_root="other"))


def test_msd_test_entries_with_labels_are_the_test_split(tmp_path):
    from medjax.data.msd import load_msd_case, load_msd_index
    from medjax.data.sources import load_splits
    from medjax.data.stream import as_source
    from tests.data.test_msd import _ct_label, _nii, _rewrite, _write_task

    root = _write_task(tmp_path / "Task03_Liver", n_train=5, n_test=2)
    _nii(str(tmp_path / "Task03_Liver" / "labelsTs" / "liver_100.nii.gz"), _ct_label(100))
    _rewrite(root, test=[{"image": "./imagesTs/liver_100.nii.gz", "label": "./labelsTs/liver_100.nii.gz"},
                         "./imagesTs/liver_101.nii.gz"])
    index = load_msd_index(root)
    cache = str(tmp_path / "cache")
    data = load_splits(_cfg("msd", root=root, cache_dir=cache))
    sizes = {k: len(as_source(v)) for k, v in data.splits.items()}
    assert sizes == {"train": 4, "val": 1, "test": 1}  # val: 20% of the 5 training cases; liver_101 has no label
    image, label = load_msd_case(index, 5)  # the labelled test entry
    (example,) = (as_source(data.splits["test"])[0],)
    np.testing.assert_array_equal(example["label"], label.array)
    np.testing.assert_allclose(example["image"], image.array)
    (tmp_path / "Task03_Liver" / "splits_final.json").write_text(json.dumps(_nnunet_folds(
        [f"liver_{i:03d}" for i in range(5)])))
    data = load_splits(_cfg("msd", root=root, cache_dir=cache, split_file="splits_final.json", fold=2))
    val = [int(c[-3:]) for c in _nnunet_folds([f"liver_{i:03d}" for i in range(5)])[2]["val"]]
    assert {k: len(as_source(v)) for k, v in data.splits.items()} == {"train": 4, "val": 1, "test": 1}
    np.testing.assert_array_equal(as_source(data.splits["val"])[0]["label"], load_msd_case(index, val[0])[1].array)
    with pytest.raises(MedjaxError, match="config.data.test_fraction=0.5 contradicts the test entries with labels "
                                          "of .*dataset.json"):
        load_splits(_cfg("msd", root=root, cache_dir=cache, test_fraction=0.5))
