"""Clip sampling of sequences: start positions, strides, per-sequence keys, and the seeded training stream."""

import ml_collections
import numpy as np
import pytest

from medjax.data.clips import check_clip, clip_starts, frame_keys, sample_clip, take_clip
from medjax.data.sources import train_transform
from medjax.data.stream import TrainStream
from medjax.errors import MedjaxError


def _example(t=10):
    frames = np.arange(t, dtype=np.float32)
    return {"image": np.broadcast_to(frames[:, None, None, None], (t, 2, 2, 1)).copy(),
            "label": np.broadcast_to(np.arange(t)[:, None, None], (t, 2, 2)).copy(), "target": np.float32(0.6)}


def test_take_clip_slices_frames_with_stride_and_keeps_sequence_keys():
    clip = take_clip(_example(), 1, 3, 2)
    np.testing.assert_array_equal(clip["image"][:, 0, 0, 0], [1, 3, 5])
    np.testing.assert_array_equal(clip["label"][:, 0, 0], [1, 3, 5])
    assert clip["target"] == np.float32(0.6)
    assert check_clip(3, 2) == 5 and check_clip(1, 7) == 1


def test_clips_cut_every_per_frame_array_and_keep_per_sequence_ones():
    example = dict(_example(), mask=np.arange(10.0)[:, None, None] * np.ones((10, 2, 2)),
                   labelled=np.arange(10) % 3 == 0, target=np.array([0.6], np.float32))
    assert frame_keys(example) == ["image", "label", "mask", "labelled"]
    clip = take_clip(example, 2, 3, 3)  # frames 2, 5, 8
    np.testing.assert_array_equal(clip["mask"][:, 0, 0], [2, 5, 8])
    np.testing.assert_array_equal(clip["labelled"], [False, False, False])
    np.testing.assert_array_equal(take_clip(example, 0, 2, 3)["labelled"], [True, True])  # frames 0, 3
    assert clip["target"] is example["target"]


def test_a_clip_carries_the_mask_of_its_frames_and_drops_the_sequences_ed_es_frames():
    example = {**_example(), "mask": np.zeros((10, 2, 2), np.float32), "ed_es": np.array([2, 7], np.int32)}
    example["mask"][[2, 7]] = 1.0  # labelled on ED and ES only
    clip = take_clip(example, 1, 4, 2)  # frames 1, 3, 5, 7
    np.testing.assert_array_equal(clip["mask"][:, 0, 0], [0, 0, 0, 1])
    assert set(clip) == {"image", "label", "mask", "target"}


def test_clip_starts_tile_the_sequence_and_end_at_the_last_frame():
    assert clip_starts(10, 4, 1) == [0, 4, 6]  # the last clip moved back to end at frame 9
    assert clip_starts(10, 3, 2) == [0, 5]  # span 5
    assert clip_starts(10, 4, 1, step=2) == [0, 2, 4, 6]
    assert clip_starts(5, 5, 1) == [0]


def test_sample_clip_draws_every_start_uniformly():
    rng = np.random.default_rng(0)
    starts = [int(sample_clip(_example(), 4, 2, rng)["image"][0, 0, 0, 0]) for _ in range(4000)]
    counts = np.bincount(starts, minlength=4)  # span 7 in 10 frames: starts 0..3
    assert len(counts) == 4 and counts.min() > 900


@pytest.mark.parametrize("length,stride,match", [(0, 1, "must be >= 1"), (3, 0, "must be >= 1"),
                                                 (6, 2, "spans 11 frames, but the sequence has 10")])
def test_bad_clips_are_named(length, stride, match):
    with pytest.raises(MedjaxError, match=match):
        sample_clip(_example(), length, stride, np.random.default_rng(0))


def test_clip_stride_without_length_is_an_error():
    with pytest.raises(MedjaxError, match="clip_stride is set but config.data.clip_length is not"):
        train_transform(ml_collections.ConfigDict(dict(clip_stride=2)))
    assert train_transform(ml_collections.ConfigDict(dict(name="x"))) is None


def test_train_stream_clips_are_a_function_of_seed_and_position():
    arrays = {k: np.stack([_example()[k]] * 6) for k in ("image", "label", "target")}
    transform = train_transform(ml_collections.ConfigDict(dict(clip_length=3, clip_stride=2)))
    a = TrainStream(arrays, 4, slice(0, 4), seed=1, transform=transform)
    first = [next(a) for _ in range(3)]
    assert first[0]["image"].shape == (4, 3, 2, 2, 1) and first[0]["label"].shape == (4, 3, 2, 2)
    starts = np.concatenate([b["image"][:, 0, 0, 0, 0] for b in first])
    assert len(set(starts.tolist())) > 1  # clips start at different frames
    np.testing.assert_array_equal(first[0]["image"][:, 1] - first[0]["image"][:, 0], 2.0)  # stride 2
    # Two processes (rows 0:2 and 2:4) and a resumed stream see the same clips.
    halves = [TrainStream(arrays, 4, rows, seed=1, transform=transform) for rows in (slice(0, 2), slice(2, 4))]
    np.testing.assert_array_equal(np.concatenate([next(h)["image"] for h in halves]), first[0]["image"])
    b = TrainStream(arrays, 4, slice(0, 4), seed=1, transform=transform)
    b.set_state(dict(position=8, seed=1, num_examples=6))
    np.testing.assert_array_equal(next(b)["image"], first[2]["image"])
