"""Forward passes of one model shared by concurrent requests.

Several pathologists segmenting at once send their tiles to the same model. Each request
queues its batches (the next one while the current one runs, so that the device never waits
for tiles to be cut); one thread per model runs the passes, taking the oldest queued batch of
each request, in arrival order, up to `max_tiles` tiles in one pass (tiles larger than the
model's count for their pixels), and hands every request its own probabilities. On a GPU one
large pass costs little more than one small one, so requests served together finish sooner
than in turn, and each gets its share of the device; a lone request runs its batches one pass
each, as without sharing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Pending", "SharedBatches"]

#: Seconds the pass thread waits for work before it ends.
IDLE_S = 5.0


@dataclass(eq=False)
class Pending:
    """A batch queued by `SharedBatches.submit`; `SharedBatches.result` waits for it."""

    tiles: np.ndarray
    owner: Hashable
    result: torch.Tensor | None = None
    error: BaseException | None = None
    #: Duration of the forward pass it ran in.
    seconds: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


class SharedBatches:
    """Runs `forward` (a batch of tiles in, a tensor of per-tile results out) on the batches
    of concurrent requests, several requests' batches in one pass, on one thread."""

    def __init__(self, forward: Callable[[np.ndarray], torch.Tensor], max_tiles: int,
                 tile_pixels: int | None = None):
        """`max_tiles`: the most tiles in one pass; a tile of more than `tile_pixels` pixels
        (when given) counts as that many pixels' worth of tiles."""
        if max_tiles < 1:
            raise ValueError(f"max_tiles must be 1 or more, got {max_tiles}")
        self._forward = forward
        self.max_tiles = max_tiles
        self.tile_pixels = tile_pixels
        self._queue: deque[Pending] = deque()
        self._changed = threading.Condition()
        self._worker: threading.Thread | None = None
        #: Forward passes run, and those that served more than one request.
        self.passes = 0
        self.shared_passes = 0

    def submit(self, tiles: np.ndarray, owner: Hashable) -> Pending:
        """Queues a batch of `owner` (one request: its batches run in order, one a pass)."""
        pending = Pending(tiles, owner)
        with self._changed:
            self._queue.append(pending)
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="roiseg-batches",
                                                daemon=True)
                self._worker.start()
            self._changed.notify()
        return pending

    def result(self, pending: Pending) -> torch.Tensor:
        """The forward pass's output for a submitted batch (its error, raised here)."""
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def run(self, tiles: np.ndarray) -> torch.Tensor:
        """`forward(tiles)`, possibly computed in one pass with other requests' tiles."""
        return self.result(self.submit(tiles, object()))

    def _serve(self) -> None:
        """Runs passes while batches are queued; ends after `IDLE_S` without any (so that a
        model no longer used can be freed), `submit` starts it again."""
        while True:
            with self._changed:
                if not self._queue:
                    self._changed.wait(IDLE_S)
                if not self._queue:
                    self._worker = None
                    return
                taken = self._take()
            self._run(taken)

    def _take(self) -> list[Pending]:
        """The next pass: the oldest queued batch, then the oldest batch of each other
        request, in arrival order, while they fit in `max_tiles` with the same tile shape."""
        first = self._queue.popleft()
        taken, owners, count = [first], {first.owner}, self._count(first.tiles)
        for pending in list(self._queue):
            if pending.owner in owners or pending.tiles.shape[1:] != first.tiles.shape[1:]:
                continue
            if count + self._count(pending.tiles) > self.max_tiles:
                break
            self._queue.remove(pending)
            taken.append(pending)
            owners.add(pending.owner)
            count += self._count(pending.tiles)
        return taken

    def _count(self, tiles: np.ndarray) -> float:
        """What a batch counts for against `max_tiles`."""
        if self.tile_pixels is None:
            return len(tiles)
        return len(tiles) * max(1.0, tiles.shape[1] * tiles.shape[2] / self.tile_pixels)

    def _run(self, taken: list[Pending]) -> None:
        """One forward pass over the taken batches; each gets its slice, or the error."""
        self.passes += 1
        self.shared_passes += len(taken) > 1
        started = time.perf_counter()
        try:
            tiles = taken[0].tiles if len(taken) == 1 else np.concatenate(
                [pending.tiles for pending in taken])
            output = self._forward(tiles)
        except BaseException as error:  # handed to every request in the pass
            for pending in taken:
                pending.error = error
                pending.done.set()
            return
        seconds = time.perf_counter() - started
        start = 0
        for pending in taken:
            pending.seconds = seconds
            pending.result = output[start:start + len(pending.tiles)]
            start += len(pending.tiles)
            pending.done.set()
