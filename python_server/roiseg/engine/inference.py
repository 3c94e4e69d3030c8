"""Tiled, blended, batched inference of one model on one image (paper 003's scheme).

Tiles overlap by at least the card's `overlap`; each tile's probabilities are weighted by
a ramp falling linearly across its overlaps, with the weights normalised to sum to 1 at
every pixel. Memory is bounded by one batch of tiles and one row of tiles: the image is read
row of tiles by row of tiles, the weighted probabilities are accumulated likewise, and the
rows that no later tile touches are given out as uint8 bands before moving on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from roiseg.engine.batching import Pending
from roiseg.engine.models import LoadedModel
from roiseg.engine.tiling import pad, plan_tiles
from roiseg.errors import Cancelled, InvalidInput

#: Pixels per band given out at once (bounds the temporaries of turning them into uint8).
_BAND_PIXELS = 1 << 22
#: Bytes a row of tiles should hold at most (its blended float32 probabilities, its RGB rows
#: read, twice while the next are): a very wide image gets lower tiles (`plan_tiles`).
_ROW_BYTES = 160 << 20


@dataclass
class Prediction:
    """Per-pixel results of `predict`, all (H, W) uint8 like the input image."""

    class_map: np.ndarray
    """Index of the most probable class."""
    probability: np.ndarray
    """round(255 * probability of that class)."""
    tumor_probability: np.ndarray | None
    """round(255 * probability of the tumour class), if one was requested."""
    fallback_map: np.ndarray | None
    """Most probable class other than the tumour class, if one was requested."""
    tiles: int
    model_seconds: float
    """Time of the model's forward passes that ran the tiles (copies to and from the device
    included; a pass shared with another request counts whole)."""


class Rows(Protocol):
    """An image given band of rows by band: `rows(top, bottom)` is (bottom - top, width, 3)
    uint8 (e.g. `roiseg.io.slides.RegionRows`)."""

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def rows(self, top: int, bottom: int) -> np.ndarray: ...


@dataclass
class PredictionBand:
    """Rows top .. top + len(class_map) - 1 of `Prediction`'s rasters."""

    top: int
    class_map: np.ndarray
    probability: np.ndarray
    tumor_probability: np.ndarray | None
    fallback_map: np.ndarray | None
    #: False where no tile ran on these rows (all zeros: none of their pixels was needed).
    predicted: bool = True


def predict(model: LoadedModel, image: np.ndarray, *, tumor_class: int | None = None,
            batch_size: int | None = None, needed: np.ndarray | None = None,
            progress: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Prediction:
    """Segment an image with a model, tile by tile.

    Args:
        model: the model; its card gives tile size, overlap and default batch size.
        image: (H, W, 3) uint8 RGB at the model's resolution, any size >= 1x1.
        tumor_class: index of the class to report `tumor_probability` and
            `fallback_map` for, if any.
        batch_size: tiles per forward pass; the card's if None.
        needed: (H, W) bool, the pixels whose results are used (tissue inside the ROI); tiles
            holding none of them are not run, and their pixels come out as class 0 with
            probability 0. Every needed pixel gets exactly the blend of all its tiles, as without
            `needed`. None: every tile runs.
        progress: called with (tiles done, tiles in all) after each batch.
        should_stop: checked before each batch.

    Raises:
        InvalidInput: a malformed image, tumor_class or batch_size.
        Cancelled: `should_stop` returned True.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidInput("expected an (H, W, 3) uint8 RGB image, got "
                           + (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
                              else type(image).__name__))
    height, width = image.shape[:2]
    if needed is not None and needed.shape != (height, width):
        raise InvalidInput(f"the needed pixels' mask is {needed.shape}, the image "
                           f"{(height, width)}")
    tiled = TiledPrediction(model, _ArrayRows(image), tumor_class=tumor_class,
                            batch_size=batch_size,
                            needed=None if needed is None else lambda top, bottom:
                            needed[top:bottom])
    outputs = _Outputs(height, width, tumor_class)
    for band in tiled.bands(progress, should_stop):
        outputs.write(band)
    return Prediction(class_map=outputs.class_map, probability=outputs.probability,
                      tumor_probability=outputs.tumor_probability,
                      fallback_map=outputs.fallback_map, tiles=tiled.tiles,
                      model_seconds=tiled.model_seconds)


class TiledPrediction:
    """A model's tiled prediction of an image given band of rows by band, yielded band by band:
    memory is bounded by one batch of tiles and a row of tiles whatever the image's size.

    `needed(top, bottom)` gives rows of the (H, W) bool mask of the pixels whose results are
    used (see `predict`); the tiles that run are chosen when the prediction is made (`tiles`).
    `model_seconds` and `read_seconds` (reading the image's rows) grow as bands are made.
    """

    def __init__(self, model: LoadedModel, image: Rows, *, tumor_class: int | None = None,
                 batch_size: int | None = None,
                 needed: Callable[[int, int], np.ndarray] | None = None) -> None:
        card = model.card
        if tumor_class is not None and not 0 <= tumor_class < len(card.classes):
            raise InvalidInput(f"tumor class {tumor_class} is not a class of model {card.id!r} "
                               f"(0..{len(card.classes) - 1})")
        if batch_size is not None and batch_size < 1:
            raise InvalidInput(f"batch size must be >= 1, got {batch_size}")
        self.model, self.tumor_class = model, tumor_class
        self.height, self.width = image.height, image.width
        if min(self.height, self.width) < card.tile_size:
            # small enough to read whole: padded to sides the network takes
            image = _ArrayRows(pad(image.rows(0, self.height), card.tile_size))
        self.image = image
        plan = plan_tiles(image.height, image.width, card, batch_size,
                          max_tile_height=_ROW_BYTES // (image.width * (4 * len(card.classes) + 6)))
        self.tile_h, self.tile_w, self.ys, self.xs = plan.tile_h, plan.tile_w, plan.ys, plan.xs
        self.weights_y, self.weights_x = plan.weights_y, plan.weights_x
        self.batch_size = plan.batch_size
        self.tile_list = [(j, i) for j in range(len(self.ys)) for i in range(len(self.xs))] \
            if needed is None else self._needed_tiles(needed)
        self.tiles = len(self.tile_list)
        self.model_seconds = 0.0
        self.read_seconds = 0.0

    def _needed_tiles(self, needed: Callable[[int, int], np.ndarray]) -> list[tuple[int, int]]:
        """The tiles holding a needed pixel (padding is never needed), row of tiles by row."""
        tiles = []
        for j, top in enumerate(self.ys):
            columns = needed(top, min(top + self.tile_h, self.height)).any(axis=0)
            counts = np.concatenate(([0], np.cumsum(columns)))
            tiles += [(j, i) for i, left in enumerate(self.xs)
                      if counts[min(left + self.tile_w, self.width)]
                      > counts[min(left, self.width)]]
        return tiles

    def bands(self, progress: Callable[[int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> Iterator[PredictionBand]:
        """The prediction's bands of rows, top to bottom, covering the image.

        Raises:
            Cancelled: `should_stop` returned True (checked before each batch).
        """
        model, tiles, batch_size = self.model, self.tile_list, self.batch_size
        ys, xs, tile_h, tile_w = self.ys, self.xs, self.tile_h, self.tile_w
        classes = len(model.card.classes)
        strip = np.zeros((classes, tile_h, self.image.width), np.float32)
        touched = np.zeros(tile_h, bool)  # the strip's rows some tile was added to
        window = _RowWindow(self.image)
        row = 0

        def finish_rows_before(j: int) -> Iterator[PredictionBand]:
            """The rows of tiles before row j, which no later tile touches."""
            nonlocal row
            while row < j:
                done = ys[row + 1] - ys[row]
                yield from self._band(strip[:, :done], ys[row], bool(touched[:done].any()))
                strip[:, :tile_h - done] = strip[:, done:]
                strip[:, tile_h - done:] = 0
                touched[:tile_h - done] = touched[done:]
                touched[tile_h - done:] = False
                row += 1

        def submit(first: int) -> Pending | None:
            """Queues the batch of tiles from `first` (None past the last); the rows of tiles
            it spans are read one after the other."""
            if first >= len(tiles):
                return None
            t0 = time.perf_counter()
            pixels = [window.get(ys[j], ys[j] + tile_h)[:, xs[i]:xs[i] + tile_w]
                      for j, i in tiles[first:first + batch_size]]
            self.read_seconds += time.perf_counter() - t0
            return model.submit(np.stack(pixels), request)

        # Each batch is queued while the one before it runs: the device never waits for tiles.
        request = object()
        following = submit(0)
        for first in range(0, len(tiles), batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled("segmentation cancelled")
            pending, following = following, submit(first + batch_size)
            assert pending is not None
            probabilities = model.batches.result(pending).numpy()
            self.model_seconds += pending.seconds
            batch = tiles[first:first + batch_size]
            for (j, i), tile in zip(batch, probabilities):
                yield from finish_rows_before(j)
                tile *= np.outer(self.weights_y[j], self.weights_x[i])
                strip[:, :, xs[i]:xs[i] + tile_w] += tile
                touched[:] = True
            if progress is not None:
                progress(first + len(batch), len(tiles))
        yield from finish_rows_before(len(ys) - 1)
        yield from self._band(strip, ys[row], bool(touched.any()))

    def _band(self, strip: np.ndarray, top: int, predicted: bool) -> Iterator[PredictionBand]:
        """The uint8 results of the final (classes, rows, padded width) probabilities of rows
        from `top` (none past the image), `_BAND_PIXELS` at a time; zeros where no tile ran."""
        rows = min(strip.shape[1], self.height - top)
        step = max(1, _BAND_PIXELS // self.width)
        channels = range(len(strip))
        tumor = self.tumor_class
        for start in range(0, rows, step):
            blended = strip[:, start:min(rows, start + step), :self.width]
            if not predicted:
                zeros = np.zeros(blended.shape[1:], np.uint8)
                yield PredictionBand(top + start, zeros, zeros.copy(),
                                     None if tumor is None else zeros.copy(),
                                     None if tumor is None else zeros.copy(), predicted=False)
                continue
            class_map, best = _best(blended, channels)
            yield PredictionBand(
                top + start, class_map, _to_uint8(best),
                None if tumor is None else _to_uint8(blended[tumor]),
                None if tumor is None
                else _best(blended, [c for c in channels if c != tumor])[0])


class _ArrayRows:
    """An in-memory image as `Rows`."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.height, self.width = image.shape[:2]

    def rows(self, top: int, bottom: int) -> np.ndarray:
        return self.image[top:bottom]


class _RowWindow:
    """The rows of a row of tiles, read once each as the tiles move down (rows are asked for
    in increasing order; the overlap with the row before is kept, not read again)."""

    def __init__(self, image: Rows) -> None:
        self.image = image
        self.top = self.bottom = 0
        self.rows = np.zeros((0, image.width, 3), np.uint8)

    def get(self, top: int, bottom: int) -> np.ndarray:
        """Rows top .. bottom - 1 (bottom clipped to the image)."""
        bottom = min(bottom, self.image.height)
        if (top, bottom) != (self.top, self.bottom):
            kept = (self.rows[top - self.top:bottom - self.top] if self.top <= top < self.bottom
                    else self.rows[:0])
            if top + len(kept) < bottom:
                fresh = self.image.rows(top + len(kept), bottom)
                kept = np.concatenate([kept, fresh]) if len(kept) else fresh
            self.rows, self.top, self.bottom = kept, top, bottom
        return self.rows


class _Outputs:
    """The uint8 result rasters, filled band by band."""

    def __init__(self, height: int, width: int, tumor_class: int | None):
        self.class_map = np.empty((height, width), np.uint8)
        self.probability = np.empty((height, width), np.uint8)
        self.tumor_probability = None if tumor_class is None else np.empty_like(self.class_map)
        self.fallback_map = None if tumor_class is None else np.empty_like(self.class_map)

    def write(self, band: PredictionBand) -> None:
        target = slice(band.top, band.top + len(band.class_map))
        self.class_map[target] = band.class_map
        self.probability[target] = band.probability
        if self.tumor_probability is not None and band.tumor_probability is not None:
            self.tumor_probability[target] = band.tumor_probability
        if self.fallback_map is not None and band.fallback_map is not None:
            self.fallback_map[target] = band.fallback_map


def _best(probabilities: np.ndarray, channels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the first of `channels` with the highest probability, and that probability.

    (A loop over channels: numpy's argmax across the first axis is several times slower.)
    """
    first, *rest = channels
    index = np.full(probabilities.shape[1:], first, np.uint8)
    best = probabilities[first].copy()
    for channel in rest:
        better = probabilities[channel] > best
        index[better] = channel
        np.maximum(best, probabilities[channel], out=best)
    return index, best


def _to_uint8(probability: np.ndarray) -> np.ndarray:
    return np.rint(probability * 255).astype(np.uint8)
