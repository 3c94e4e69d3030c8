"""Tiled, blended, batched inference of one model on one image (paper 003's scheme).

Tiles overlap by at least the card's `overlap`; each tile's probabilities are weighted by
a ramp falling linearly across its overlaps, with the weights normalised to sum to 1 at
every pixel. Memory is bounded by one batch of tiles and one row of tiles: the weighted
probabilities are accumulated row of tiles by row of tiles, and the rows that no later
tile touches are turned into uint8 outputs before moving on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from roiseg.engine.batching import Pending
from roiseg.engine.models import LoadedModel
from roiseg.engine.tiling import plan_tiles
from roiseg.errors import Cancelled, InvalidInput


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


def predict(model: LoadedModel, image: np.ndarray, *, tumor_class: int | None = None,
            batch_size: int | None = None, needed: np.ndarray | None = None,
            progress: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Prediction:
    """Segment an image with a model, tile by tile.

    Args:
        model: the model; its card gives the tile plan (`tiling.plan_tiles`).
        image: (H, W, 3) uint8 RGB at the model's resolution, any size >= 1x1.
        tumor_class: index of the class to report `tumor_probability` and
            `fallback_map` for, if any.
        batch_size: tiles per forward pass; None: the card's, scaled to the plan's tile
            size (`tiling.plan_tiles`).
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
    card = model.card
    classes = len(card.classes)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidInput("expected an (H, W, 3) uint8 RGB image, got "
                           + (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
                              else type(image).__name__))
    if tumor_class is not None and not 0 <= tumor_class < classes:
        raise InvalidInput(f"tumor class {tumor_class} is not a class of model {card.id!r} "
                           f"(0..{classes - 1})")
    if batch_size is not None and batch_size < 1:
        raise InvalidInput(f"batch size must be >= 1, got {batch_size}")

    height, width = image.shape[:2]
    padded, plan = plan_tiles(image, card, batch_size)
    tile_h, tile_w, ys, xs = plan.tile_h, plan.tile_w, plan.ys, plan.xs
    weights_y, weights_x, batch_size = plan.weights_y, plan.weights_x, plan.batch_size
    tiles = [(j, i) for j in range(len(ys)) for i in range(len(xs))]
    if needed is not None:
        if needed.shape != (height, width):
            raise InvalidInput(f"the needed pixels' mask is {needed.shape}, the image "
                               f"{(height, width)}")
        # (slices past the image's edge stop at it: padding is never needed)
        tiles = [(j, i) for j, i in tiles
                 if needed[ys[j]:ys[j] + tile_h, xs[i]:xs[i] + tile_w].any()]

    outputs = _Outputs(height, width, tumor_class)
    strip = np.zeros((classes, tile_h, padded.shape[1]), np.float32)
    row = 0

    def finish_rows_before(j: int) -> None:
        """Writes the rows of tiles before row j, which no later tile touches."""
        nonlocal row
        while row < j:
            done = ys[row + 1] - ys[row]
            outputs.write(strip[:, :done], ys[row])
            strip[:, :tile_h - done] = strip[:, done:]
            strip[:, tile_h - done:] = 0
            row += 1

    def submit(first: int) -> Pending | None:
        """Queues the batch of tiles from `first` (None past the last)."""
        if first >= len(tiles):
            return None
        return model.submit(np.stack([padded[ys[j]:ys[j] + tile_h, xs[i]:xs[i] + tile_w]
                                      for j, i in tiles[first:first + batch_size]]), request)

    # Each batch is queued while the one before it runs: the device never waits for tiles.
    request = object()
    model_seconds = 0.0
    following = submit(0)
    for first in range(0, len(tiles), batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled("segmentation cancelled")
        pending, following = following, submit(first + batch_size)
        assert pending is not None
        probabilities = model.batches.result(pending).numpy()
        model_seconds += pending.seconds
        batch = tiles[first:first + batch_size]
        for (j, i), tile in zip(batch, probabilities):
            finish_rows_before(j)
            tile *= np.outer(weights_y[j], weights_x[i])
            strip[:, :, xs[i]:xs[i] + tile_w] += tile
        if progress is not None:
            progress(first + len(batch), len(tiles))
    finish_rows_before(len(ys) - 1)
    outputs.write(strip, ys[row])
    return Prediction(class_map=outputs.class_map, probability=outputs.probability,
                      tumor_probability=outputs.tumor_probability,
                      fallback_map=outputs.fallback_map, tiles=len(tiles),
                      model_seconds=model_seconds)


class _Outputs:
    """The uint8 result rasters, filled strip by strip."""

    def __init__(self, height: int, width: int, tumor_class: int | None):
        self.tumor_class = tumor_class
        self.class_map = np.empty((height, width), np.uint8)
        self.probability = np.empty((height, width), np.uint8)
        self.tumor_probability = None if tumor_class is None else np.empty_like(self.class_map)
        self.fallback_map = None if tumor_class is None else np.empty_like(self.class_map)

    def write(self, strip: np.ndarray, top: int) -> None:
        """Store the final (classes, rows, padded width) probabilities of rows from `top`."""
        height, width = self.class_map.shape
        rows = min(strip.shape[1], height - top)
        if rows <= 0:
            return
        blended = strip[:, :rows, :width]
        target = slice(top, top + rows)
        channels = range(len(blended))
        self.class_map[target], best = _best(blended, channels)
        self.probability[target] = _to_uint8(best)
        if self.tumor_probability is not None and self.fallback_map is not None:
            self.tumor_probability[target] = _to_uint8(blended[self.tumor_class])
            self.fallback_map[target] = _best(
                blended, [c for c in channels if c != self.tumor_class])[0]


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
