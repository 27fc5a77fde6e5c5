"""Device prefetch: the next global batch's host-to-device transfer is issued before the current step runs.

JAX dispatches transfers and steps asynchronously, so putting batch k+1 on the devices right after batch k is
taken lets the copy overlap step k on an accelerator (on a CPU "device" it is a host copy either way). The
stream position reported for checkpoints is the one after the batches the loop has *taken*, never after the
prefetched one, so a resume continues exactly where training stopped.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any


class DevicePrefetch:
    """Wraps a host stream (`next / get_state / set_state`) into device batches, `depth` of them ahead."""

    def __init__(self, stream: Any, strategy: Any, batch_size: int, depth: int = 1):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self._stream, self._strategy, self._batch_size, self.depth = stream, strategy, batch_size, depth
        self._queue: collections.deque = collections.deque()  # (stream state before the batch, device batch)

    def _fill(self, count: int) -> None:
        while len(self._queue) < count:
            before = self._stream.get_state()
            self._queue.append((before, self._strategy.put_batch(next(self._stream), self._batch_size)))

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self) -> Any:
        self._fill(1)
        _, batch = self._queue.popleft()
        self._fill(self.depth)  # issue the next transfers before the caller dispatches its step
        return batch

    def get_state(self) -> dict:
        """The host stream's position after the batches taken so far (prefetched ones are not counted)."""
        return self._queue[0][0] if self._queue else self._stream.get_state()

    def set_state(self, state: Mapping) -> None:
        self._queue.clear()
        self._stream.set_state(state)
