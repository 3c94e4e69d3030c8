"""Tile plans: where the tiles of an image go, how large they are, how they are blended and
how many run in one forward pass (paper 003's overlapping tiles, sized per image).

A card without `max_tile_size` cuts tiles of `tile_size` at a stride of tile_size - overlap,
the last one aligned to the border (`tile_starts`). With `max_tile_size`, each axis gets the
fewest tiles of one side between tile_size and max_tile_size (a multiple of 32, the smallest
that works) that cover it with overlaps of at least the card's, spread evenly; a tile is
capped at the pixels of one of the card's batches, and batches hold as many tiles as fit in
those pixels. Fewer, larger tiles compute fewer pixels twice: 2048 x 1536 px is 20 tiles of
512 (5.2 Mpx computed) at 512/128, 4 tiles of 1088 x 832 (3.6 Mpx) with max_tile_size 1152.
The fewest tiles of an axis are also about its fewest pixels (a further tile adds at least
an overlap, rounding sides to 32 less than 32 px a tile) and the fewest forward passes; on
the CPU a larger tile costs ONNX Runtime about as much per pixel (benchmarks/tile_plans.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from roiseg.engine.models import ModelCard

#: Networks need inputs whose sides are multiples of this.
SIZE_MULTIPLE = 32
#: Value of the constant padding where reflecting is impossible: white, like bare glass.
PAD_VALUE = 255


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one padded image: all `tile_h` x `tile_w`, at rows `ys` and columns `xs`,
    blended with the weights of each row (`weights_y`) and column (`weights_x`) of tiles,
    `batch_size` tiles a forward pass."""

    tile_h: int
    tile_w: int
    ys: list[int]
    xs: list[int]
    weights_y: list[np.ndarray]
    weights_x: list[np.ndarray]
    batch_size: int

    @property
    def computed_pixels(self) -> int:
        """Pixels the forward passes compute when every tile runs."""
        return len(self.ys) * len(self.xs) * self.tile_h * self.tile_w


def plan_tiles(height: int, width: int, card: ModelCard, batch_size: int | None = None,
               max_tile_height: int | None = None) -> TilePlan:
    """The tile plan under the card of an image of height x width px, padded (`pad`).

    Without max_tile_size (or with max_tile_size = tile_size) the tiles are of tile_size (of
    a padded side shorter than it: that side) at `tile_starts`, `batch_size` a pass, as cards
    always did; with it, the tiles of `axis_tiles` (a tile's pixels capped at those of a batch
    of tile_size tiles) and batches of as many of them as fit in those pixels, at least 1.

    Args:
        height, width: the padded image's size.
        card: its tile_size, max_tile_size, overlap and batch_size.
        batch_size: tiles per forward pass; None: the card's (see above).
        max_tile_height: the tiles' height under max_tile_size is at most this (never below
            tile_size): a row of tiles of a wide image holds less.
    """
    longest = card.max_tile_size
    if longest is None or longest == card.tile_size:
        tile_h, tile_w = min(card.tile_size, height), min(card.tile_size, width)
        ys = tile_starts(height, tile_h, card.overlap)
        xs = tile_starts(width, tile_w, card.overlap)
        batch = card.batch_size
    else:
        tallest = longest if max_tile_height is None else max(
            card.tile_size, min(longest, max_tile_height // SIZE_MULTIPLE * SIZE_MULTIPLE))
        (tile_h, ys), (tile_w, xs) = _fewest_tiles(height, width, card, (tallest, longest))
        batch = max(1, card.batch_size * card.tile_size ** 2 // (tile_h * tile_w))
    batch_size = batch if batch_size is None else batch_size
    return TilePlan(tile_h, tile_w, ys, xs, tile_weights(ys, tile_h, height),
                    tile_weights(xs, tile_w, width), batch_size)


def axis_tiles(length: int, tile_size: int, max_tile_size: int, overlap: int
               ) -> tuple[int, list[int]]:
    """Side and starts of the fewest tiles covering [0, length) with overlaps of at least
    `overlap`: the smallest side T (a multiple of 32, tile_size <= T <= min(max_tile_size,
    length)) that n tiles need (n*T - (n-1)*overlap >= length), starts spread evenly
    (round(k*(length-T)/(n-1)), halves up). A length <= tile_size is one tile of that length.
    """
    if length <= tile_size:
        return length, [0]
    longest = min(max_tile_size, length - length % SIZE_MULTIPLE)
    count = 1
    while True:
        side = max(tile_size, _round_up(-(-(length + (count - 1) * overlap) // count)))
        if side <= longest:
            break
        count += 1
    if count == 1:
        return side, [0]
    span = length - side
    return side, [(2 * k * span + count - 1) // (2 * (count - 1)) for k in range(count)]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start coordinates of tiles covering [0, length).

    Consecutive tiles overlap by exactly `overlap` pixels except the last one, which is
    aligned to the far border and may overlap its neighbour more; a length <= tile gives
    a single tile at 0.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = -(-(length - tile) // stride) + 1
    return [k * stride for k in range(count - 1)] + [length - tile]


def tile_weights(starts: Sequence[int], tile: int, length: int) -> list[np.ndarray]:
    """Blending weights along one axis, one (tile,) float32 array per tile in `starts`.

    Within an overlap of length l a tile's weight is v = 1 - d/(l+1), d counting from 1 at
    the overlap's first pixel next to the tile's inner part to l at the tile's edge; sides
    without a neighbouring tile (the image borders) have weight 1. The weights are then
    divided by their sum, so they add up to 1 at every pixel of [0, length). The weight of
    the tile at row starts[j], column starts[i] is the outer product of the two axes'
    weights; its sum over tiles is the product of the axes' sums, hence 1 as well.
    """
    raw = []
    for k, start in enumerate(starts):
        weight = np.ones(tile, np.float64)
        if k > 0:
            left = starts[k - 1] + tile - start
            weight[:left] *= 1 - np.arange(left, 0, -1) / (left + 1)
        if k + 1 < len(starts):
            right = start + tile - starts[k + 1]
            weight[tile - right:] *= 1 - np.arange(1, right + 1) / (right + 1)
        raw.append(weight)
    total = np.zeros(length, np.float64)
    for start, weight in zip(starts, raw):
        total[start:start + tile] += weight
    return [(weight / total[start:start + tile]).astype(np.float32)
            for start, weight in zip(starts, raw)]


def pad(image: np.ndarray, tile: int) -> np.ndarray:
    """The image with each side shorter than a tile padded to a multiple of 32 (below and
    to the right; reflected where the image is long enough, else constant)."""
    for axis in (0, 1):
        side = image.shape[axis]
        amount = 0 if side >= tile else -side % SIZE_MULTIPLE
        if amount:
            widths = [(0, 0)] * 3
            widths[axis] = (0, amount)
            image = (np.pad(image, widths, mode="reflect") if amount < side
                     else np.pad(image, widths, constant_values=PAD_VALUE))
    return image


def _fewest_tiles(height: int, width: int, card: ModelCard, max_sides: tuple[int, int]
                  ) -> tuple[tuple[int, list[int]], tuple[int, list[int]]]:
    """`axis_tiles` of both axes (at most `max_sides` (height, width)), the longer tile side
    lowered (by more tiles on its axis) while a tile holds more pixels than a batch of the
    card's tiles."""
    lengths = (height, width)
    axes = [axis_tiles(length, card.tile_size, longest, card.overlap)
            for length, longest in zip(lengths, max_sides)]
    while axes[0][0] * axes[1][0] > card.batch_size * card.tile_size ** 2:
        longer = int(axes[1][0] > axes[0][0])
        axes[longer] = axis_tiles(lengths[longer], card.tile_size,
                                  axes[longer][0] - SIZE_MULTIPLE, card.overlap)
    return axes[0], axes[1]


def _round_up(length: int) -> int:
    """The multiple of 32 at or above `length`."""
    return -(-length // SIZE_MULTIPLE) * SIZE_MULTIPLE
