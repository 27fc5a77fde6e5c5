"""Device prefetch: the same batches in the same order as the host stream, one batch ahead, and a position for
checkpoints that counts only the batches taken (so a resume is exact)."""

import numpy as np

from medjax.data.prefetch import DevicePrefetch
from medjax.data.stream import TrainStream
from medjax.train.parallel import make_strategy


def _stream():
    arrays = {"image": np.arange(10 * 2, dtype=np.float32).reshape(10, 2), "label": np.arange(10, dtype=np.int32)}
    strategy = make_strategy("sharding")
    return TrainStream(arrays, 4, strategy.local_rows(4), seed=3), strategy


class _Counting:
    def __init__(self, stream):
        self.stream, self.taken = stream, 0

    def __next__(self):
        self.taken += 1
        return next(self.stream)

    def get_state(self):
        return self.stream.get_state()

    def set_state(self, state):
        self.stream.set_state(state)


def test_prefetch_yields_the_host_streams_batches_one_ahead():
    plain, strategy = _stream()
    expected = [next(plain)["label"] for _ in range(5)]
    host, _ = _stream()
    counting = _Counting(host)
    batches = DevicePrefetch(counting, strategy, 4)
    first = next(batches)
    assert counting.taken == 2  # the next batch's transfer was issued before the first is used
    got = [np.asarray(first["label"])] + [np.asarray(next(batches)["label"]) for _ in range(4)]
    np.testing.assert_array_equal(np.stack(got), np.stack(expected))


def test_prefetch_position_counts_only_taken_batches_and_resumes_exactly():
    host, strategy = _stream()
    batches = DevicePrefetch(host, strategy, 4)
    for _ in range(3):
        next(batches)
    state = batches.get_state()
    after = [np.asarray(next(batches)["label"]) for _ in range(2)]
    resumed_host, _ = _stream()
    resumed = DevicePrefetch(resumed_host, strategy, 4)
    resumed.set_state(state)
    np.testing.assert_array_equal(np.stack([np.asarray(next(resumed)["label"]) for _ in range(2)]), np.stack(after))
    plain, _ = _stream()
    for _ in range(3):
        next(plain)
    assert state == plain.get_state()
