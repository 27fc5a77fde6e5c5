"""TFDS array_record cache (built once, reused, rebuilt on change) read through the one training stream."""

import numpy as np
import pytest

from medjax.data.cache import arrays_generator, build_or_load, file_fingerprint
from medjax.data.stream import ArraySource, TrainStream, as_arrays
from medjax.errors import MedjaxError

FEATURES = {"image": ((4, 4, 1), np.float32), "label": ((), np.int32)}


def _arrays(n=10):
    return {"image": np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((n, 4, 4, 1), np.float32),
            "label": np.arange(n, dtype=np.int32)}


@pytest.fixture
def source(tmp_path):
    splits = {"train": arrays_generator(_arrays())}
    return build_or_load("t", {"v": 1}, FEATURES, splits, cache_dir=str(tmp_path))["train"]


def test_cache_keeps_order_and_values(source):
    assert len(source) == 10
    out = as_arrays(source)
    np.testing.assert_array_equal(out["label"], np.arange(10))
    np.testing.assert_array_equal(out["image"][3], np.full((4, 4, 1), 3.0))


def test_second_build_reuses_the_files_and_a_new_spec_rebuilds(tmp_path):
    calls = []

    def gen():
        calls.append(1)
        yield from arrays_generator(_arrays())()

    build_or_load("t", {"v": 1}, FEATURES, {"train": gen}, cache_dir=str(tmp_path))
    build_or_load("t", {"v": 1}, FEATURES, {"train": gen}, cache_dir=str(tmp_path))
    assert len(calls) == 1  # preprocessing is not redone
    build_or_load("t", {"v": 2}, FEATURES, {"train": gen}, cache_dir=str(tmp_path))
    assert len(calls) == 2
    assert len([p for p in (tmp_path / "t").iterdir()]) == 2


def test_file_fingerprint_changes_with_the_file(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"1")
    before = file_fingerprint([str(f)])
    f.write_bytes(b"22")
    assert file_fingerprint([str(f)]) != before


def test_stream_epochs_resume_and_process_rows(source):
    s = TrainStream(source, 4, slice(0, 4), seed=0)
    batches = [next(s) for _ in range(5)]
    labels = np.concatenate([b["label"] for b in batches])
    assert sorted(labels[:10]) == list(range(10))  # first epoch is a permutation
    assert [b["index"].tolist() for b in batches[:2]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    state = s.get_state()
    assert state == {"position": 20, "seed": 0, "num_examples": 10}
    resumed = TrainStream(source, 4, slice(0, 4), seed=0)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["label"], next(s)["label"])
    p0, p1 = TrainStream(source, 4, slice(0, 2), seed=0), TrainStream(source, 4, slice(2, 4), seed=0)
    for b in batches[:3]:
        np.testing.assert_array_equal(np.concatenate([next(p0)["label"], next(p1)["label"]]), b["label"])
    with pytest.raises(MedjaxError, match="does not match"):
        TrainStream(source, 4, slice(0, 4), seed=1).set_state(state)


def test_host_transform_randomness_depends_on_position_only(source):
    def transform(example, rng):
        return {"image": example["image"] + rng.uniform(), "label": example["label"]}

    a = TrainStream(source, 4, slice(0, 4), seed=0, transform=transform)
    b = TrainStream(source, 4, slice(2, 4), seed=0, transform=transform)
    np.testing.assert_array_equal(next(a)["image"][2:], next(b)["image"])


def test_every_cached_key_reaches_the_batches(tmp_path):
    """A field-of-view mask stored with the examples travels with them (nothing is silently dropped)."""
    arrays = dict(_arrays(6), mask=(np.arange(6)[:, None, None] * np.ones((6, 4, 4)) > 2).astype(np.float32))
    features = dict(FEATURES, mask=((4, 4), np.float32))
    splits = {"train": arrays_generator(arrays)}
    source = build_or_load("m", {"v": 1}, features, splits, cache_dir=str(tmp_path))["train"]
    batch = next(TrainStream(source, 3, slice(0, 3), seed=0))
    assert set(batch) == {"image", "label", "mask", "index", "weight"}
    np.testing.assert_array_equal(batch["mask"][:, 0, 0], batch["label"] > 2)
    assert set(as_arrays(source)) == {"image", "label", "mask"}


def test_a_cached_split_streams_exactly_as_the_same_arrays_in_memory(source):
    """One data path: the cache and the in-memory arrays give the same batches, with or without a transform."""
    def transform(example, rng):
        return {"image": example["image"] * rng.uniform(), "label": example["label"]}

    for t in (None, transform):
        cached, memory = (TrainStream(s, 4, slice(1, 3), seed=7, transform=t) for s in (source, _arrays()))
        for _ in range(6):  # past the first epoch boundary
            a, b = next(cached), next(memory)
            assert set(a) == set(b)
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
    assert isinstance(memory.source, ArraySource)
