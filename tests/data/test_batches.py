import numpy as np
import pytest

from medjax.data.stream import TrainStream, eval_batches, global_indices
from medjax.errors import MedjaxError


def _arrays(n=10):
    return {"image": np.arange(n, dtype=np.float32)[:, None], "label": np.arange(n, dtype=np.int32)}


def test_each_epoch_is_a_permutation():
    idx = global_indices(seed=1, position=0, count=30, n=10)
    for e in range(3):
        assert sorted(idx[10 * e: 10 * (e + 1)]) == list(range(10))
    assert not np.array_equal(idx[:10], idx[10:20])  # reshuffled each epoch


def test_stream_is_resumable_bit_for_bit():
    a = TrainStream(_arrays(), 4, slice(0, 4), seed=0)
    first = [next(a)["label"] for _ in range(7)]
    b = TrainStream(_arrays(), 4, slice(0, 4), seed=0)
    for _ in range(3):
        next(b)
    c = TrainStream(_arrays(), 4, slice(0, 4), seed=0)
    c.set_state(b.get_state())
    rest = [next(c)["label"] for _ in range(4)]
    np.testing.assert_array_equal(np.stack(first[3:]), np.stack(rest))
    assert b.get_state() == {"position": 12, "seed": 0, "num_examples": 10}


def test_processes_split_the_same_global_batch():
    whole = TrainStream(_arrays(), 4, slice(0, 4), seed=5)
    p0 = TrainStream(_arrays(), 4, slice(0, 2), seed=5)
    p1 = TrainStream(_arrays(), 4, slice(2, 4), seed=5)
    for _ in range(5):
        w, a, b = next(whole), next(p0), next(p1)
        np.testing.assert_array_equal(w["label"], np.concatenate([a["label"], b["label"]]))
        np.testing.assert_array_equal(w["index"], np.concatenate([a["index"], b["index"]]))


def test_resume_rejects_other_data():
    s = TrainStream(_arrays(10), 4, slice(0, 4), seed=0)
    with pytest.raises(MedjaxError, match="does not match"):
        s.set_state({"position": 4, "seed": 0, "num_examples": 11})


def test_eval_batches_cover_everything_once_with_padding():
    batches = list(eval_batches(_arrays(10), 4, slice(0, 4)))
    assert len(batches) == 3
    weights = np.concatenate([b["weight"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert weights.tolist() == [1] * 10 + [0, 0]
    assert labels[weights > 0].tolist() == list(range(10))


def test_every_array_key_travels_with_its_rows():
    """A per-pixel "mask" (the image_folder source's FOV) is batched like image and label, in train and eval."""
    arrays = dict(_arrays(10), mask=np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 2, 3), np.float32))
    batch = next(TrainStream(arrays, 4, slice(0, 4), seed=0))
    np.testing.assert_array_equal(batch["mask"][:, 0, 0], batch["label"])
    for batch in eval_batches(arrays, 4, slice(0, 4)):
        assert batch["mask"].shape == (4, 2, 3)
        np.testing.assert_array_equal(batch["mask"][:, 0, 0], batch["label"])


def test_empty_or_ragged_split_is_an_error():
    with pytest.raises(MedjaxError, match="empty"):
        list(eval_batches({"image": np.zeros((0, 1)), "label": np.zeros(0)}, 4, slice(0, 4)))
    with pytest.raises(MedjaxError, match="different lengths"):
        TrainStream({"image": np.zeros((3, 1)), "label": np.zeros(2)}, 2, slice(0, 2), seed=0)
