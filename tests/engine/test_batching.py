"""Forward passes shared by concurrent requests (roiseg.engine.batching)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from conftest import CMU_MPP, same_segmentation
from roiseg.client.connection import Client, encode_png, pixels_source, segment_request
from roiseg.engine.batching import SharedBatches
from roiseg.server.service import Limits, SegmentationService, create_server
from roiseg.v1 import segmentation_pb2 as pb
from shapely.geometry import box

#: Two tissue-rich windows of the CMU slide (x, y, width, height in full-resolution px): 2 x 2
#: tiles of 576 x 512 px each at the model's resolution, two batches (3 + 1).
WINDOWS = ((0, 0, 1600, 2000), (600, 900, 1600, 2000))


def test_concurrent_requests_share_forward_passes_and_get_their_serial_results(
        registry, cmu_level0, one_torch_thread):
    """Two pathologists' requests at once, on a server running two jobs together: their tiles
    run in common forward passes, and each gets exactly the polygons it gets alone."""
    model = registry.load(registry.card(registry.default_id))
    service = SegmentationService(registry, limits=Limits(concurrent_jobs=2,
                                                          max_message_bytes=32 << 20))
    server, port = create_server(service, "127.0.0.1:0")
    server.start()
    sharing, forward = model.batches.max_tiles, model.batches._forward
    model.batches.max_tiles = 2 * model.card.batch_size
    try:
        with Client(f"127.0.0.1:{port}", timeout_s=600, max_message_bytes=32 << 20) as client:
            def segment(window: tuple[int, int, int, int]) -> dict:
                x, y, width, height = window
                source = pixels_source(
                    encoded=encode_png(cmu_level0[y:y + height, x:x + width]), downsample=1,
                    origin_x=x, origin_y=y, pixel_size_um=CMU_MPP)
                result = client.segment(segment_request(box(x, y, x + width, y + height),
                                                        source, (), pb.SegmentOptions()))
                return same_segmentation(next(iter(result.feature_collections.values())))

            alone = [segment(window) for window in WINDOWS]
            shared_before = model.batches.shared_passes
            # The first pass waits (up to a minute) until both requests have tiles queued, as
            # they do behind a busy GPU.
            model.batches._forward = _waiting_for_a_queue(model.batches, forward)
            together: list[dict | None] = [None, None]
            start = threading.Barrier(2)

            def run(k: int) -> None:
                start.wait()
                together[k] = segment(WINDOWS[k])

            threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        model.batches.max_tiles, model.batches._forward = sharing, forward
        server.stop(None)
    assert model.batches.shared_passes > shared_before
    assert all(collection["features"] for collection in alone)
    assert together == alone


def _waiting_for_a_queue(batches: SharedBatches, forward):
    first = threading.Event()

    def waiting(tiles: np.ndarray) -> torch.Tensor:
        if not first.is_set():
            first.set()
            deadline = time.monotonic() + 60
            while len({pending.owner for pending in batches._queue}) < 2 \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
        return forward(tiles)

    return waiting


def _slow_sum(release: threading.Event):
    """A forward pass that waits for `release` on its first call, so that other batches
    queue meanwhile; each tile's result is its sum."""
    calls: list[int] = []

    def forward(tiles: np.ndarray) -> torch.Tensor:
        calls.append(len(tiles))
        if len(calls) == 1:
            release.wait(10)
        return torch.from_numpy(tiles.reshape(len(tiles), -1).sum(axis=1))

    return forward, calls


def _in_threads(batches: SharedBatches, inputs: list[np.ndarray]) -> list[object]:
    results: list[object] = [None] * len(inputs)

    def run(k: int) -> None:
        try:
            results[k] = batches.run(inputs[k])
        except Exception as error:  # noqa: BLE001 - the test looks at it
            results[k] = error

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(inputs))]
    for thread in threads:
        thread.start()
        thread.join(0.2)  # the first one is in its pass before the others queue
    return results, threads


def test_queued_batches_run_together_in_arrival_order_within_the_limit():
    release = threading.Event()
    forward, calls = _slow_sum(release)
    batches = SharedBatches(forward, max_tiles=5)
    inputs = [np.full((n, 2, 2, 1), k, np.int64) for k, n in enumerate((1, 2, 2, 3, 1))]
    results, threads = _in_threads(batches, inputs)
    release.set()
    for thread in threads:
        thread.join()
    # The first alone (it found the model free), then 2 + 2 (3 more would pass 5), then 3 + 1.
    assert calls == [1, 4, 4]
    assert batches.passes == 3 and batches.shared_passes == 2
    for k, tiles in enumerate(inputs):
        assert torch.equal(results[k], torch.full((len(tiles),), 4 * k, dtype=torch.int64))


def test_larger_tiles_count_for_their_pixels():
    """A pass holds at most the pixels of `max_tiles` tiles of `tile_pixels`: batches of one
    tile of 4 x those pixels share no pass; smaller tiles count as one each."""
    release = threading.Event()
    forward, calls = _slow_sum(release)
    batches = SharedBatches(forward, max_tiles=4, tile_pixels=4 * 4)
    inputs = [np.ones((n, side, side, 1), np.int64)
              for n, side in ((1, 8), (1, 8), (1, 8), (2, 2), (2, 2))]
    results, threads = _in_threads(batches, inputs)
    release.set()
    for thread in threads:
        thread.join()
    assert calls == [1, 1, 1, 4]
    for tiles, result in zip(inputs, results):
        assert torch.equal(result, torch.full((len(tiles),), tiles[0].size))


def test_a_failed_pass_fails_the_requests_in_it_and_the_next_ones_still_run():
    release = threading.Event()
    seen: list[int] = []

    def forward(tiles: np.ndarray) -> torch.Tensor:
        seen.append(len(tiles))
        if len(seen) == 1:
            release.wait(10)
        if len(seen) == 2:
            raise RuntimeError("CUDA out of memory")
        return torch.zeros(len(tiles))

    batches = SharedBatches(forward, max_tiles=4)
    inputs = [np.zeros((n, 1)) for n in (1, 2, 2, 3)]
    results, threads = _in_threads(batches, inputs)
    release.set()
    for thread in threads:
        thread.join()
    assert seen == [1, 4, 3]
    assert torch.equal(results[0], torch.zeros(1))
    assert all(isinstance(results[k], RuntimeError) for k in (1, 2))
    assert torch.equal(results[3], torch.zeros(3))


def test_a_limit_below_one_tile_is_refused():
    with pytest.raises(ValueError, match="max_tiles"):
        SharedBatches(lambda tiles: torch.zeros(len(tiles)), max_tiles=0)


def test_the_pass_thread_ends_when_idle_and_comes_back(monkeypatch):
    """An idle model keeps no thread (which would keep a retired model in memory)."""
    from roiseg.engine import batching

    monkeypatch.setattr(batching, "IDLE_S", 0.05)
    batches = SharedBatches(lambda tiles: torch.from_numpy(tiles.sum(axis=1)), max_tiles=4)
    assert torch.equal(batches.run(np.ones((2, 3))), torch.tensor([3.0, 3.0]))
    worker = batches._worker
    assert worker is not None
    worker.join(5)
    assert not worker.is_alive() and batches._worker is None
    assert torch.equal(batches.run(np.ones((1, 2))), torch.tensor([2.0]))
