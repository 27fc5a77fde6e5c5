"""The wsi_folder source: slides + labels CSV -> bags of tissue tiles per slide, padded and capped as documented,
sampled per (seed, stream position) for training, cached in array_record identically; the user's mistakes are
named; the Camelyon16 labels CSV follows its published layout."""

import csv

import ml_collections
import numpy as np
import pytest

from medjax.data import bags, wsi
from medjax.data import wsi_synthetic as W
from medjax.data.sources import load_splits, train_transform
from medjax.data.stream import TrainStream, as_arrays, global_indices
from medjax.errors import MedjaxError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    W.write_dataset(root, blocks={3: W.SMALL_BLOCKS})  # s3 has 12 tissue tiles, the others 18
    return root


def _data(root, **kw):
    return ml_collections.ConfigDict(dict(name="wsi_folder", root=str(root), tile_size=32, magnification=20.0, **kw))


def _slide_tiles(root, name, indices, raw=False):
    with wsi.open_slide(str(root / "slides" / name)) as s:
        tiles = wsi.read_tiles(s, wsi.tile_grid(s, 32, magnification=20), indices)
    return tiles if raw else wsi.tiles_to_float(tiles)


def test_bags_hold_every_tissue_tile_padded_to_the_longest_of_the_split(root):
    data = load_splits(_data(root))
    assert data.class_names == ["normal", "tumor"] and sorted(data.splits) == ["train", "val"]
    train, val = data.splits["train"], data.splits["val"]
    assert (len(train), len(val), data.num_examples("val")) == (2, 2, 2)
    assert [e.name for e in val.entries] == ["s2", "s3"] and [e.label for e in val.entries] == [0, 1]
    bag = train[1]
    assert bag["image"].shape == (18, 32, 32, 3) and int(bag["label"]) == 1
    np.testing.assert_array_equal(np.asarray(bag["image"]), _slide_tiles(root, "s1.tif", None))
    np.testing.assert_array_equal(bag["image"][[5, 2]], _slide_tiles(root, "s1.tif", [5, 2]))
    short = val[1]  # 12 tiles padded to the split's 18 with zeros and mask 0
    np.testing.assert_array_equal(short["instance_mask"], [1.0] * 12 + [0.0] * 6)
    image = np.asarray(short["image"])
    np.testing.assert_array_equal(image[:12], _slide_tiles(root, "s3.tif", None))
    assert not image[12:].any()
    arrays = as_arrays(val)  # the eval path: whole bags stacked
    assert arrays["image"].shape == (2, 18, 32, 32, 3) and arrays["label"].tolist() == [0, 1]


def test_max_tiles_keeps_evenly_spaced_tiles(root):
    val = load_splits(_data(root, max_tiles=5)).splits["val"]
    np.testing.assert_array_equal(val.bag_tiles(0), [0, 4, 8, 13, 17])  # round(linspace(0, 17, 5))
    np.testing.assert_array_equal(val.bag_tiles(1), [0, 3, 6, 8, 11])  # round(linspace(0, 11, 5))
    np.testing.assert_array_equal(np.asarray(val[0]["image"]), _slide_tiles(root, "s2.tif", [0, 4, 8, 13, 17]))
    sampled = load_splits(_data(root, max_tiles=5, bag_size=4)).splits  # training draws from every tile
    np.testing.assert_array_equal(sampled["train"].bag_tiles(0), np.arange(18))
    np.testing.assert_array_equal(sampled["val"].bag_tiles(0), [0, 4, 8, 13, 17])


def test_training_draws_bag_size_tiles_per_slide_from_seed_and_position(root):
    cfg = _data(root, bag_size=4)
    split = load_splits(cfg).splits["train"]
    stream = TrainStream(split, 2, slice(None), seed=3, transform=train_transform(cfg))
    batch = stream.batch_at(6)
    assert batch["image"].shape == (2, 4, 32, 32, 3) and batch["instance_mask"].tolist() == [[1.0] * 4] * 2
    for row, (g, i) in enumerate(zip(batch["index"], global_indices(3, 6, 2, len(split)))):
        chosen = np.sort(np.random.default_rng([3, int(g)]).choice(18, size=4, replace=False))
        np.testing.assert_array_equal(batch["image"][row], np.asarray(split[int(i)]["image"])[chosen])
        assert batch["label"][row] == split.entries[int(i)].label
    np.testing.assert_array_equal(stream.batch_at(6)["image"], batch["image"])  # a pure function of the position
    assert not np.array_equal(stream.batch_at(8)["image"], batch["image"])
    with pytest.raises(MedjaxError, match="bag_size samples the instances of bags; it does not combine"):
        train_transform(ml_collections.ConfigDict(dict(bag_size=4, patch_size=(8, 8))))


def test_sample_bag_pads_a_bag_with_fewer_valid_instances():
    example = {"image": np.arange(5 * 2, dtype=np.float32).reshape(5, 2, 1, 1), "instance_mask":
               np.array([1, 0, 1, 0, 0], np.float32), "label": np.int32(1)}
    out = bags.sample_bag(example, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(out["instance_mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(out["image"][:, :, 0, 0], [[0, 1], [4, 5], [0, 0], [0, 0]])
    assert out["label"] == 1
    with pytest.raises(MedjaxError, match="no 'instance_mask'"):
        bags.sample_bag({"image": np.zeros((3, 1))}, 2, np.random.default_rng(0))


def test_cached_tiles_are_the_slides_tiles(root, tmp_path):
    plain = load_splits(_data(root)).splits["val"]
    cached = load_splits(_data(root, cache_tiles=True, cache_dir=str(tmp_path))).splits["val"]
    assert cached.store.cached is not None and plain.store.cached is None
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(cached[i]["image"]), np.asarray(plain[i]["image"]))
    (built,) = list((tmp_path / "wsi_tiles").iterdir())
    load_splits(_data(root, cache_tiles=True, cache_dir=str(tmp_path)))  # the same settings reuse the cache
    assert list((tmp_path / "wsi_tiles").iterdir()) == [built]


def test_stain_normalisation_applies_to_every_tile_read(root, tmp_path):
    from PIL import Image

    from medjax.data import stain

    reference = W.ihc()[:128, 256:384]
    Image.fromarray(reference).save(tmp_path / "reference.png")
    raw = _slide_tiles(root, "s2.tif", [0, 7], raw=True)
    for method, expected in (
            ("macenko", [stain.macenko_normalize(t, stain.macenko_stains(reference)) for t in raw]),
            ("reinhard", [stain.reinhard_normalize(t, *stain.lab_stats(reference)) for t in raw])):
        val = load_splits(_data(root, stain_normalize=method, stain_reference=str(tmp_path / "reference.png")))
        np.testing.assert_allclose(val.splits["val"][0]["image"][[0, 7]], np.stack(expected), rtol=0, atol=1e-6)
    blank = np.full((1, 8, 8, 3), 250, np.uint8)  # nothing stained: passed through
    np.testing.assert_array_equal(stain.make_normalizer("macenko")(blank), blank / np.float32(255))
    with pytest.raises(MedjaxError, match=r"stain_normalize='reinhard' needs a reference image"):
        load_splits(_data(root, stain_normalize="reinhard"))
    with pytest.raises(MedjaxError, match=r"stain_reference is set but config\.data\.stain_normalize is not"):
        load_splits(_data(root, stain_reference="reference.png"))
    with pytest.raises(MedjaxError, match=r"unknown stain normalisation 'vahadane'"):
        load_splits(_data(root, stain_normalize="vahadane"))


def test_without_a_split_column_slides_are_split_by_case_split(tmp_path, root):
    from medjax.data.splits import case_split

    (tmp_path / "labels.csv").write_text("slide,label\n" + "".join(f"slides/s{i}.tif,{i % 2}\n" for i in range(4)))
    cfg = _data(tmp_path, slides_dir=str(root), labels_csv="labels.csv", val_fraction=0.25, test_fraction=0.25)
    data = load_splits(cfg)
    expected = case_split(4, 0.25, 0.25, 0)
    assert data.class_names == ["class0", "class1"]
    for split, idx in expected.items():
        assert [e.name for e in data.splits[split].entries] == [f"slides/s{i}.tif" for i in idx]


@pytest.mark.parametrize("csv_text, kw, message", [
    ("slide,label,split\ns0,normal,train\nmissing,tumor,train\n", {},
     r"labels\.csv: slide 'missing': no such file under .*slides \(config\.data\.slides_dir\)"),
    ("slide,label,split\ns0,normal,train\ns1,cancer,train\n", dict(class_names=("normal", "tumor")),
     r"labels\.csv: label 'cancer' is not one of the classes \['normal', 'tumor'\]"),
    ("name,class\ns0,normal\n", {}, r"labels\.csv: the labels CSV needs a header with the columns slide,label"),
    ("slide,label,split\ns0,normal,training\n", {}, r"split 'training' must be one of \['train', 'val', 'test'\]"),
    ("slide,label,split\ns0,normal,val\n", {},
     r"the train split is empty: the split column of .*labels\.csv leaves no case"),
])
def test_csv_mistakes_are_named(tmp_path, root, csv_text, kw, message):
    (tmp_path / "labels.csv").write_text(csv_text)
    with pytest.raises(MedjaxError, match=message):
        load_splits(_data(tmp_path, slides_dir=str(root / "slides"), **kw))


def test_a_slide_without_tissue_is_named(tmp_path):
    (tmp_path / "slides").mkdir()
    W.write_slide(tmp_path / "slides" / "blank.tif", W.level0(0, blocks=()), levels=2)
    (tmp_path / "labels.csv").write_text("slide,label,split\nblank,0,train\n")
    with pytest.raises(MedjaxError, match=r"blank\.tif: no tile has a tissue fraction >= config\.data\.min_tissue="
                                          r"0\.5 \(8 x 12 grid\)"):
        load_splits(_data(tmp_path, val_fraction=0.0))


def test_camelyon16_labels_follow_the_published_layout(tmp_path):
    from medjax.data.wsi_folder import camelyon16_labels

    for folder, names in (("training/normal", ("normal_001", "normal_002", "normal_003")),
                          ("training/tumor", ("tumor_001",)), ("testing/images", ("test_001", "test_002"))):
        (tmp_path / folder).mkdir(parents=True)
        for n in names:
            (tmp_path / folder / f"{n}.tif").write_bytes(b"")
    (tmp_path / "testing" / "reference.csv").write_text("Test_001,Tumor,Macro\nTest_002,Normal\n")
    out = tmp_path / "labels.csv"
    assert camelyon16_labels(str(tmp_path), str(out), val_fraction=0.25, seed=0) == {"train": 3, "val": 1, "test": 2}
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    val = 1 + np.random.default_rng(0).permutation(4)[0]  # split_cases' seeded pick among the 4 training slides
    assert rows[0] == ["slide", "label", "split"] and rows[val][2] == "val"
    assert [r[:2] for r in rows[1:]] == [["training/normal/normal_001.tif", "normal"],
                                         ["training/normal/normal_002.tif", "normal"],
                                         ["training/normal/normal_003.tif", "normal"],
                                         ["training/tumor/tumor_001.tif", "tumor"],
                                         ["testing/images/test_001.tif", "tumor"],
                                         ["testing/images/test_002.tif", "normal"]]
    (tmp_path / "testing" / "reference.csv").write_text("Test_001,Tumor\n")
    with pytest.raises(MedjaxError, match=r"reference\.csv: no Normal/Tumor row for the test slide "
                                          r"testing/images/test_002\.tif"):
        camelyon16_labels(str(tmp_path), str(out))
