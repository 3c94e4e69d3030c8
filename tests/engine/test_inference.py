"""Tiling, blending and strip-wise tiled inference, on real H&E crops from GlaS."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from roiseg.engine.inference import predict
from roiseg.engine.models import LoadedModel, ModelCard, load_model, sha256_file
from roiseg.engine.tiling import tile_starts, tile_weights
from roiseg.errors import Cancelled, InvalidInput

GLAS_IMAGE = Path(__file__).resolve().parents[3] / "shared/data/glas-train/images/train_1.png"
CPU = torch.device("cpu")
CLASSES = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def he() -> np.ndarray:
    """A real H&E image, RGB, 522 x 775."""
    return cv2.cvtColor(cv2.imread(str(GLAS_IMAGE)), cv2.COLOR_BGR2RGB)


def _model(directory: Path, module: torch.nn.Module, *, tile: int = 64, overlap: int = 16,
           batch_size: int = 4, classes: int = CLASSES) -> LoadedModel:
    """`module` saved as TorchScript with a card, loaded on the CPU."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module.eval()).save(str(directory / "model.pt"))
    card = {
        "id": directory.name, "name": directory.name, "version": "1", "format": "torchscript",
        "architecture": "", "encoder": "", "checkpoint": "model.pt",
        "sha256": sha256_file(directory / "model.pt"), "mpp": 1.0, "tile_size": tile,
        "overlap": overlap, "batch_size": batch_size,
        "normalization": {"mean": [0.7, 0.5, 0.7], "std": [0.15, 0.2, 0.1]},
        "classes": [{"index": i, "name": f"c{i}", "color": [i, i, i]} for i in range(classes)],
    }
    (directory / "model.json").write_text(json.dumps(card))
    return load_model(ModelCard.from_file(directory / "model.json"), CPU)


def _pointwise(classes: int = CLASSES) -> torch.nn.Module:
    """Each pixel's logits depend on that pixel only."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, classes, 1)
    with torch.no_grad():
        conv.weight.mul_(4)
    return conv


class _WithContext(torch.nn.Module):
    """A pointwise model plus each tile's mean colour: tiles disagree in their overlaps."""

    def __init__(self):
        super().__init__()
        self.pixel = _pointwise()
        self.context = torch.nn.Linear(3, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel(x) + 5 * self.context(x.mean(dim=(2, 3)))[:, :, None, None]


def _normalised(model: LoadedModel, image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    card = model.card
    return (x - torch.tensor(card.mean).view(1, 3, 1, 1)) / torch.tensor(card.std).view(1, 3, 1, 1)


def _probabilities(model: LoadedModel, image: np.ndarray) -> np.ndarray:
    """(C, H, W) probabilities of one forward pass over the whole image, any size."""
    with torch.no_grad():
        return model.module(_normalised(model, image)).softmax(dim=1)[0].numpy()


def _assert_matches(prediction, probabilities: np.ndarray, tumor: int | None = None) -> None:
    """The prediction's uint8 outputs agree with (C, H, W) reference probabilities."""
    ordered = np.sort(probabilities, axis=0)
    clear = ordered[-1] - ordered[-2] > 1e-4  # argmax is stable to fp noise here
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(prediction.class_map[clear], probabilities.argmax(0)[clear])
    expected = np.rint(probabilities.max(0) * 255)
    assert np.abs(prediction.probability.astype(int) - expected).max() <= 1
    if tumor is None:
        assert prediction.tumor_probability is None and prediction.fallback_map is None
        return
    expected = np.rint(probabilities[tumor] * 255)
    assert np.abs(prediction.tumor_probability.astype(int) - expected).max() <= 1
    others = probabilities.copy()
    others[tumor] = -1
    ordered = np.sort(others, axis=0)
    clear = ordered[-1] - ordered[-2] > 1e-4
    np.testing.assert_array_equal(prediction.fallback_map[clear], others.argmax(0)[clear])
    assert not (prediction.fallback_map == tumor).any()


@pytest.mark.parametrize("length, tile, overlap", [
    (100, 64, 16), (1000, 256, 64), (449, 256, 64), (775, 512, 128), (7680 * 3 + 5, 7680, 1024),
    (300, 256, 0), (65, 64, 31), (513, 256, 64),
])
def test_tile_starts_cover_with_equal_overlaps(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == length - tile
    assert all(a < b for a, b in zip(starts, starts[1:]))
    overlaps = [a + tile - b for a, b in zip(starts, starts[1:])]
    assert all(o >= overlap for o in overlaps)
    assert set(overlaps[:-1]) <= {overlap}
    # The fewest tiles: one tile fewer could not cover the length with such overlaps.
    assert (len(starts) - 2) * (tile - overlap) + tile < length


def test_tile_starts_edge_cases():
    assert tile_starts(10, 64, 16) == [0]
    assert tile_starts(64, 64, 16) == [0]
    assert tile_starts(65, 64, 16) == [0, 1]
    assert tile_starts(112, 64, 16) == [0, 48]
    assert tile_starts(113, 64, 16) == [0, 48, 49]


@pytest.mark.parametrize("height, width, tile, overlap", [
    (100, 100, 64, 28), (522, 775, 256, 64), (449, 300, 256, 64), (64, 1000, 64, 16),
    (300, 513, 256, 0),
])
def test_blending_weights_sum_to_one(height, width, tile, overlap):
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    wy, wx = tile_weights(ys, tile, height), tile_weights(xs, tile, width)
    total = np.zeros((height, width))
    for y, weight_y in zip(ys, wy):
        for x, weight_x in zip(xs, wx):
            weight = np.outer(weight_y, weight_x)
            assert weight.min() > 0 and weight.max() <= 1 + 1e-6
            total[y:y + tile, x:x + tile] += weight
    np.testing.assert_allclose(total, 1, atol=1e-6)


def test_blending_weights_fall_linearly_across_overlaps():
    # Tiles [0, 64) and [36, 100): one overlap [36, 64) of width = 28 pixels.
    first, second = tile_weights([0, 36], 64, 100)
    width = 28
    assert first[:36].tolist() == [1] * 36 and second[28:].tolist() == [1] * 36
    for d in (1, 2, 14, 28):  # d from the overlap's inner border of each tile
        assert first[36 + d - 1] == pytest.approx(1 - d / (width + 1))
        assert second[width - d] == pytest.approx(1 - d / (width + 1))
    assert tile_weights([0], 64, 64)[0].tolist() == [1] * 64


@pytest.mark.parametrize("crop, tile, overlap", [
    ((slice(10, 210), slice(20, 170)), 64, 16),  # 200 x 150: 4 x 3 tiles
    ((slice(0, 522), slice(0, 775)), 256, 64),  # the whole image: 3 x 4 tiles
    ((slice(300, 345), slice(400, 437)), 64, 16),  # 45 x 37: smaller than a tile, reflected
    ((slice(0, 20), slice(0, 5)), 64, 16),  # 20 x 5: too small to reflect, constant padding
    ((slice(0, 64), slice(100, 400)), 64, 16),  # exactly one tile high
    ((slice(50, 51), slice(50, 51)), 64, 16),  # one pixel
])
def test_pointwise_model_tiled_equals_whole_image(tmp_path, he, crop, tile, overlap):
    image = np.ascontiguousarray(he[crop])
    model = _model(tmp_path / "pointwise", _pointwise(), tile=tile, overlap=overlap)
    prediction = predict(model, image, tumor_class=1)
    assert prediction.class_map.shape == image.shape[:2] and prediction.class_map.dtype == np.uint8
    h, w = image.shape[:2]
    expected_tiles = len(tile_starts(max(h, tile), tile, overlap)) * len(
        tile_starts(max(w, tile), tile, overlap))
    assert prediction.tiles == expected_tiles and prediction.model_seconds > 0
    _assert_matches(prediction, _probabilities(model, image), tumor=1)


def test_overlapping_tiles_are_blended_with_the_paper_weights(tmp_path, he):
    """f = Σ w_i g_i over the tiles, for a model whose tiles disagree in their overlaps."""
    image = np.ascontiguousarray(he[:230, :170])
    model = _model(tmp_path / "context", _WithContext(), tile=64, overlap=16)
    prediction = predict(model, image, batch_size=5)

    ys, xs = tile_starts(230, 64, 16), tile_starts(170, 64, 16)
    wy, wx = tile_weights(ys, 64, 230), tile_weights(xs, 64, 170)
    expected = np.zeros((CLASSES, 230, 170))
    for y, weight_y in zip(ys, wy):
        for x, weight_x in zip(xs, wx):
            tile = _probabilities(model, image[y:y + 64, x:x + 64])
            expected[:, y:y + 64, x:x + 64] += tile * np.outer(weight_y, weight_x)
    _assert_matches(prediction, expected)
    # The tiles do disagree: a whole-image pass gives another result.
    whole = _probabilities(model, image)
    assert np.abs(whole - expected).max() > 0.05


def test_smp_model_on_an_image_smaller_than_a_tile(tmp_path, he):
    """A single padded tile gives the same result as the model on the reflected image."""
    torch.manual_seed(0)
    unet = smp.Unet("mobilenet_v2", encoder_weights=None, encoder_depth=3,
                    decoder_channels=[16, 8, 4], classes=CLASSES)
    with torch.no_grad():  # confident outputs, so that argmax is well defined
        unet.segmentation_head[0].weight.mul_(50)
    model = _model(tmp_path / "unet", unet, tile=128, overlap=32)
    image = np.ascontiguousarray(he[100:190, 200:270])  # 90 x 70 -> padded to 96 x 96
    prediction = predict(model, image)
    padded = np.pad(image, ((0, 6), (0, 26), (0, 0)), mode="reflect")
    _assert_matches(prediction, _probabilities(model, padded)[:, :90, :70])


def test_batch_size_does_not_change_the_result(tmp_path, he):
    image = np.ascontiguousarray(he[:300, :200])
    model = _model(tmp_path / "context", _WithContext(), tile=64, overlap=16)
    one, seven = (predict(model, image, batch_size=b, tumor_class=2) for b in (1, 7))
    for name in ("class_map", "probability", "tumor_probability", "fallback_map"):
        np.testing.assert_array_equal(getattr(one, name), getattr(seven, name))


@pytest.mark.parametrize("batch_size", [1, 4])
def test_tiles_without_needed_pixels_are_not_run_and_needed_pixels_are_unchanged(tmp_path, he,
                                                                                batch_size):
    """Only the tiles holding a needed pixel (tissue in the ROI) reach the model; every needed
    pixel gets the same blend as when all tiles run, the others class 0 with probability 0."""
    image = np.ascontiguousarray(he[:300, :260])
    model = _model(tmp_path / "context", _WithContext(), tile=64, overlap=16)
    needed = np.zeros(image.shape[:2], bool)
    needed[10:40, 20:90] = True     # top left
    needed[250:256, 200:203] = True  # a speck near the far corner
    seen = []
    submit = model.submit
    model.submit = lambda batch, owner: (seen.append(len(batch)), submit(batch, owner))[1]
    full = predict(model, image, tumor_class=2, batch_size=batch_size)
    run_all = sum(seen)
    seen.clear()
    part = predict(model, image, tumor_class=2, batch_size=batch_size, needed=needed)
    ys, xs = tile_starts(300, 64, 16), tile_starts(260, 64, 16)
    touching = sum(needed[y:y + 64, x:x + 64].any() for y in ys for x in xs)
    assert run_all == full.tiles == len(ys) * len(xs)
    assert sum(seen) == part.tiles == touching < run_all / 3
    for name in ("class_map", "probability", "tumor_probability", "fallback_map"):
        np.testing.assert_array_equal(getattr(part, name)[needed], getattr(full, name)[needed])
    far = np.ones(needed.shape, bool)
    for y in ys:
        for x in xs:
            if needed[y:y + 64, x:x + 64].any():
                far[y:y + 64, x:x + 64] = False
    assert far.any() and not part.probability[far].any() and not part.class_map[far].any()
    nothing = predict(model, image, needed=np.zeros_like(needed))
    assert nothing.tiles == 0 and not nothing.probability.any()
    with pytest.raises(InvalidInput, match="mask"):
        predict(model, image, needed=needed[:10])


def test_accumulation_is_strip_wise(tmp_path, he):
    """No float array of the image's size is allocated: peak numpy memory stays below one
    float32 channel of the image on top of the uint8 outputs."""
    image = np.ascontiguousarray(np.tile(he[:500, :300], (8, 1, 1)))  # 4000 x 300
    model = _model(tmp_path / "pointwise", _pointwise(), tile=128, overlap=32, batch_size=8)
    pixels = image.shape[0] * image.shape[1]
    tracemalloc.start()
    try:
        prediction = predict(model, image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = prediction.class_map.nbytes + prediction.probability.nbytes
    assert peak < outputs + pixels * 4 // 2, f"peak {peak / 1e6:.1f} MB"
    assert prediction.tiles == len(tile_starts(4000, 128, 32)) * len(tile_starts(300, 128, 32))


def test_progress_and_cancel(tmp_path, he):
    image = np.ascontiguousarray(he[:200, :200])
    model = _model(tmp_path / "pointwise", _pointwise(), tile=64, overlap=16, batch_size=4)
    calls = []
    prediction = predict(model, image, progress=lambda done, total: calls.append((done, total)))
    assert prediction.tiles == 16
    assert calls == [(4, 16), (8, 16), (12, 16), (16, 16)]

    calls.clear()
    checks = []

    def stop() -> bool:
        checks.append(1)
        return len(checks) > 1

    with pytest.raises(Cancelled, match="segmentation cancelled"):
        predict(model, image, batch_size=3,
                progress=lambda done, total: calls.append((done, total)), should_stop=stop)
    assert calls == [(3, 16)]


@pytest.mark.parametrize("image, options", [
    (np.zeros((10, 10, 3), np.float32), {}),
    (np.zeros((10, 10), np.uint8), {}),
    (np.zeros((0, 10, 3), np.uint8), {}),
    (np.zeros((10, 10, 4), np.uint8), {}),
    (np.zeros((10, 10, 3), np.uint8), {"tumor_class": 3}),
    (np.zeros((10, 10, 3), np.uint8), {"batch_size": 0}),
])
def test_bad_input(tmp_path, image, options):
    model = _model(tmp_path / "pointwise", _pointwise())
    with pytest.raises(InvalidInput):
        predict(model, image, **options)
