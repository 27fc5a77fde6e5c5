"""Clips of image sequences: `length` frames taken every `stride` frames, for training on long cine / echo loops.

A sequence example holds (T, ...) arrays under `image` and, for per-frame segmentation, `label` (and `mask`, 0 on
frames without a reference). Every array whose leading axis has the image's T frames is per frame and is cut
with the image (`frame_keys`: labels, masks, per-frame flags); every other key (e.g. an ejection-fraction
`target` (1,) or a scalar) is per sequence and passes through unchanged, except `ed_es`, the whole sequence's
end-diastolic and end-systolic frame numbers, which a clip drops (they may lie outside it; EF is measured in
evaluation, on whole sequences). (A per-sequence vector that happens to have T entries would be cut: give such
values a leading axis of 1.) A clip of
frames start, start + stride, ..., start + (length - 1) * stride needs (length - 1) * stride + 1 frames.

Training draws the start uniformly per example from the host transform's generator (`clip_transform`, wired by
`config.data.clip_length` / `clip_stride`, see `medjax.data.sources.train_transform`), so a resumed run draws the
same clips. Evaluation sees whole sequences (the ConvLSTM models take any number of frames); `clip_starts` and
`take_clip` tile a sequence deterministically where a model needs fixed-length inputs.

A per-sequence target must still hold for the clip: an ejection fraction needs a clip that spans a cardiac
cycle, so clip EF regression only with clips at least one cycle long.
"""

from __future__ import annotations

import numpy as np

from medjax.errors import MedjaxError

FRAME_NUMBER_KEYS = ("ed_es",)  # frame numbers of the whole sequence: meaningless in a clip


def frame_keys(example: dict) -> list[str]:
    """The keys of `example` whose arrays have the image's frames on their leading axis."""
    num_frames = len(example["image"])
    return [k for k, v in example.items()
            if k not in FRAME_NUMBER_KEYS and np.ndim(v) >= 1 and np.shape(v)[0] == num_frames]


def check_clip(length: int, stride: int, num_frames: int | None = None, what: str = "config.data") -> int:
    """Frames one clip spans, (length - 1) * stride + 1; raise if it does not fit `num_frames`."""
    if int(length) < 1 or int(stride) < 1:
        raise MedjaxError(f"{what}.clip_length and clip_stride must be >= 1, got {length} and {stride}")
    span = (int(length) - 1) * int(stride) + 1
    if num_frames is not None and span > num_frames:
        raise MedjaxError(f"{what}: a clip of {length} frames every {stride} spans {span} frames, but the sequence "
                          f"has {num_frames}")
    return span


def clip_starts(num_frames: int, length: int, stride: int, step: int | None = None) -> list[int]:
    """Start frames of consecutive clips every `step` frames (default: one span, no overlap) that fit; the last
    clip is moved back to end at the last usable frame so every frame in range is covered."""
    span = check_clip(length, stride, num_frames)
    step = span if step is None else int(step)
    if step < 1:
        raise MedjaxError(f"clip step must be >= 1, got {step}")
    last = num_frames - span
    starts = list(range(0, last + 1, step))
    if starts[-1] != last:
        starts.append(last)
    return starts


def take_clip(example: dict, start: int, length: int, stride: int) -> dict:
    """The clip of `example` starting at frame `start`: per-frame arrays (`frame_keys`) sliced, per-sequence keys
    unchanged, frame numbers of the whole sequence dropped."""
    frames = slice(int(start), int(start) + (int(length) - 1) * int(stride) + 1, int(stride))
    cut = frame_keys(example)
    return {k: (np.asarray(v)[frames] if k in cut else v) for k, v in example.items() if k not in FRAME_NUMBER_KEYS}


def sample_clip(example: dict, length: int, stride: int, rng: np.random.Generator) -> dict:
    """A clip with a uniformly drawn start (every start that fits is equally likely)."""
    num_frames = len(example["image"])
    span = check_clip(length, stride, num_frames)
    return take_clip(example, int(rng.integers(0, num_frames - span + 1)), length, stride)


def clip_transform(length: int, stride: int = 1):
    """The host transform `(example, rng) -> clip` of a training stream."""
    check_clip(length, stride)

    def transform(example: dict, rng: np.random.Generator) -> dict:
        return sample_clip(example, length, stride, rng)

    return transform
