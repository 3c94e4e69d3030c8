"""Tile plans (roiseg.engine.tiling): their geometry, and real inference with larger tiles."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from conftest import CMU_MPP
from roiseg.engine import postprocess
from roiseg.engine.inference import predict
from roiseg.engine.models import (
    DEFAULT_MODELS_DIR,
    LoadedModel,
    ModelCard,
    ModelRegistry,
    load_model,
    select_device,
)
from roiseg.engine.tiling import axis_tiles, pad, plan_tiles, tile_starts, tile_weights

CPU = select_device("cpu")
#: (tile_size, overlap, max_tile_size) of the plans checked over many lengths.
PLANS = [(512, 128, 512), (512, 128, 768), (512, 128, 1152), (512, 128, 4096), (64, 16, 256),
         (256, 0, 1024), (96, 47, 160)]


def _plan(shape, card, batch_size=None):
    """An image of `shape` padded for the card, and its tile plan."""
    padded = pad(np.zeros((*shape, 3), np.uint8), card.tile_size)
    return padded, plan_tiles(*padded.shape[:2], card, batch_size)


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return ModelCard.from_file(DEFAULT_MODELS_DIR / "model.json")


@pytest.mark.parametrize("tile_size, overlap, longest", PLANS)
def test_axis_plans_are_the_fewest_smallest_tiles_that_cover_with_the_overlap(
        tile_size, overlap, longest):
    for length in range(tile_size + 1, 6000, 7):
        side, starts = axis_tiles(length, tile_size, longest, overlap)
        count = len(starts)
        assert side % 32 == 0 and tile_size <= side <= min(longest, length), (length, side)
        assert starts[0] == 0 and starts[-1] + side == length
        assert all(b > a and a + side - b >= overlap for a, b in zip(starts, starts[1:]))
        widest = min(longest, length - length % 32)
        # one tile fewer of the widest side does not cover; a side 32 px smaller does not
        assert count == 1 or (count - 1) * widest - (count - 2) * overlap < length
        assert side == tile_size or count * (side - 32) - (count - 1) * overlap < length
        # evenly spread: the strides differ by at most 1 px
        strides = np.diff(starts)
        assert strides.size == 0 or strides.max() - strides.min() <= 1
        weights = tile_weights(starts, side, length)
        total = np.zeros(length)
        for start, weight in zip(starts, weights):
            total[start:start + side] += weight
        np.testing.assert_allclose(total, 1, atol=1e-6)


def test_a_length_up_to_a_tile_is_one_tile_of_that_length():
    assert axis_tiles(480, 512, 1152, 128) == (480, [0])
    assert axis_tiles(512, 512, 1152, 128) == (512, [0])
    assert axis_tiles(1152, 512, 1152, 128) == (1152, [0])
    # not a multiple of 32: two tiles
    assert axis_tiles(1000, 512, 1152, 128) == (576, [0, 424])


def test_the_issue_region_is_four_tiles_in_a_single_batch_each(card):
    _, plan = _plan((1536, 2048), replace(card, max_tile_size=1152))
    assert (plan.tile_h, plan.tile_w, plan.ys, plan.xs) == (832, 1088, [0, 704], [0, 960])
    assert plan.batch_size == 1 and plan.computed_pixels == 4 * 832 * 1088
    _, today = _plan((1536, 2048), replace(card, max_tile_size=None))
    assert today.computed_pixels == 20 * 512 * 512


@pytest.mark.parametrize("shape", [(1536, 2048), (100, 3000), (517, 700), (40, 30),
                                   (2176, 2176), (5000, 612)])
@pytest.mark.parametrize("longest", [None, 512])
def test_without_max_tile_size_the_plan_is_todays(card, shape, longest):
    """Tiles of tile_size (or a shorter side padded to a multiple of 32) at `tile_starts`,
    the card's batch size."""
    padded, plan = _plan(shape,
                              replace(card, max_tile_size=longest))
    height, width = padded.shape[:2]
    tile_h, tile_w = min(512, height), min(512, width)
    assert (plan.tile_h, plan.tile_w) == (tile_h, tile_w)
    assert plan.ys == tile_starts(height, tile_h, 128)
    assert plan.xs == tile_starts(width, tile_w, 128)
    assert plan.batch_size == card.batch_size
    assert _plan(shape, card, batch_size=7)[1].batch_size == 7


@pytest.mark.parametrize("longest", [768, 1152, 1536, 4096])
def test_larger_tiles_hold_at_most_a_batch_of_pixels_and_their_weights_sum_to_1(card, longest):
    planned = replace(card, max_tile_size=longest)
    budget = card.batch_size * card.tile_size ** 2
    for shape in [(1536, 2048), (2176, 2176), (970, 2403), (300, 5000), (4000, 4000),
                  (1108, 1480), (40, 3000), (513, 513)]:
        padded, plan = _plan(shape, planned)
        pixels = plan.tile_h * plan.tile_w
        assert pixels <= budget and plan.tile_h % 32 == 0 and plan.tile_w % 32 == 0
        assert plan.batch_size == max(1, budget // pixels)
        total = np.zeros(padded.shape[:2])
        for y, weight_y in zip(plan.ys, plan.weights_y):
            for x, weight_x in zip(plan.xs, plan.weights_x):
                total[y:y + plan.tile_h, x:x + plan.tile_w] += np.outer(weight_y, weight_x)
        np.testing.assert_allclose(total, 1, atol=1e-5)
    # a tile of 1152 x 1152 would hold more pixels than 4 of 512 x 512: three rows of 832
    _, plan = _plan((2176, 2176), replace(card, max_tile_size=1152))
    assert (plan.tile_h, len(plan.ys), plan.tile_w, len(plan.xs)) == (832, 3, 1152, 2)


def test_larger_tiles_segment_real_tissue_as_512_px_tiles_do_on_torch_and_onnx(
        card, cmu_level0, tmp_path, monkeypatch, one_torch_thread):
    """The CMU demo slide at the model's 1 µm/px (1480 x 1108 px): the card's larger tiles
    compute a third fewer pixels and give 98 % or more of the tissue the class that
    512 px tiles give it; ONNX Runtime runs them as torch does."""
    longest = card.max_tile_size
    assert longest is not None and longest > card.tile_size
    image = cv2.resize(cmu_level0, None, fx=CMU_MPP / card.mpp, fy=CMU_MPP / card.mpp,
                       interpolation=cv2.INTER_AREA)
    tissue = postprocess.tissue_mask(image, card.mpp)
    base = load_model(card, CPU)
    maps, pixels = {}, {}
    for maximum in (None, longest):
        planned = replace(card, max_tile_size=maximum)
        maps[maximum] = predict(LoadedModel(planned, base.module, CPU), image).class_map
        pixels[maximum] = _plan(image.shape[:2], planned)[1].computed_pixels
    assert pixels[longest] < 0.75 * pixels[None]
    assert (maps[longest] == maps[None])[tissue].mean() >= 0.98

    monkeypatch.setenv("ROISEG_CACHE_DIR", str(tmp_path / "cache"))
    registry = ModelRegistry([DEFAULT_MODELS_DIR], CPU, runtime="onnx", threads=1)
    onnx = registry.get(registry.default_id)
    assert onnx.onnx is not None and onnx.card.max_tile_size == longest
    assert (predict(onnx, image).class_map == maps[longest]).mean() >= 0.9999


def test_a_very_wide_image_gets_lower_tiles(card):
    """A row of tiles of a 40,000 px wide image holds its blended probabilities and RGB rows
    across the whole width: `max_tile_height` keeps its tiles as low as tile_size there, and
    changes nothing where the tiles are lower anyway."""
    planned = replace(card, max_tile_size=1152)
    free = plan_tiles(4000, 40_000, planned)
    low = plan_tiles(4000, 40_000, planned, max_tile_height=479)
    assert free.tile_h > 512 and low.tile_h == 512 and low.tile_w >= 512
    assert all(b - a <= 512 - 128 for a, b in zip(low.ys, low.ys[1:]))
    same = plan_tiles(1536, 2048, planned, max_tile_height=1200)
    assert (same.tile_h, same.tile_w, same.ys, same.xs) == (832, 1088, [0, 704], [0, 960])
    assert plan_tiles(1536, 2048, planned, max_tile_height=100).tile_h == 512
