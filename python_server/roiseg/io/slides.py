"""Whole-slide and plain images: metadata, pyramid levels, region reads and resampling.

Coordinates are pixels. "Full resolution" means level 0 of the slide; a region read at a
coarser resolution comes with the `RasterTransform` that maps its pixels back to level 0.
"""

from __future__ import annotations

import io
import logging
import math
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Sequence

import cv2
import numpy as np
import tifffile
from PIL import Image
from tifffile.tifffile import svs_description_metadata

from roiseg.errors import InvalidInput, NotFound, RoisegError, TooLarge
from roiseg.io.raster import RasterTransform

# Callers bound image sizes themselves (decode_image's max_pixels); Pillow's own guard would
# refuse the 16,000 x 16,000 px regions roiseg must accept.
Image.MAX_IMAGE_PIXELS = None

#: Source bytes read and resampled at once by `slide_region_rows` and `pixels_region_rows`.
DEFAULT_STRIP_BYTES = 16 << 20

#: Relative tolerance under which a level's downsample still counts as "not above" a target,
#: and a zoom above 1 still counts as no upsampling.
_LEVEL_TOLERANCE = 1e-3

#: Plausible pixel sizes for microscopy, µm/px; TIFF resolution tags outside it are ignored.
_PLAUSIBLE_MPP = (0.05, 50.0)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

_UM_PER_RESOLUTION_UNIT = {tifffile.RESUNIT.INCH: 25400.0, tifffile.RESUNIT.CENTIMETER: 10000.0}

_UM_PER_OME_UNIT = {
    "m": 1e6, "dm": 1e5, "cm": 1e4, "mm": 1e3, "µm": 1.0, "μm": 1.0, "um": 1.0,
    "nm": 1e-3, "pm": 1e-6, "Å": 1e-4,
}

_JPEG_COMPRESSIONS = {6, 7, 33007, 34892}

#: Photometric interpretations whose decoded samples are RGB(A) or grey.
_SUPPORTED_PHOTOMETRIC = {tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB,
                          tifffile.PHOTOMETRIC.YCBCR}

#: Pillow modes holding more than 8 bits per sample, which RGB conversion would clip.
_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

#: tifffile axes of single 2D images: grey, interleaved samples, separate sample planes.
_SUPPORTED_AXES = ("YX", "YXS", "SYX")

#: tifffile logs each oddity of a damaged file as a warning; the refusal says what went wrong.
logging.getLogger("tifffile").setLevel(logging.ERROR)
#: Python object reprs ("<_io.BytesIO object at 0x...>") that decoders put in their messages.
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class PyramidLevel:
    """One resolution of a slide; downsamples are level-0 pixels per level pixel."""

    index: int
    width: int
    height: int
    downsample_x: float
    downsample_y: float

    @property
    def downsample(self) -> float:
        """Mean of the two axes' downsamples."""
        return (self.downsample_x + self.downsample_y) / 2


@dataclass(frozen=True)
class RegionRead:
    """A region resampled to a target resolution, with its raster -> full-res transform."""

    image: np.ndarray
    transform: RasterTransform
    level: int
    level_downsample: float
    upsampled: bool


@dataclass(frozen=True)
class RegionRows:
    """A region at a target resolution whose rows are read when asked for, band by band: a
    region of any size is read in the memory of one band. Valid while its image is open."""

    width: int
    height: int
    transform: RasterTransform
    level: int
    level_downsample: float
    upsampled: bool
    _read: Callable[[int, int], np.ndarray] = field(repr=False)

    def rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows top .. bottom - 1 of the region, (bottom - top, width, 3) uint8."""
        if not 0 <= top < bottom <= self.height:
            raise ValueError(f"rows {top}..{bottom} are not inside the region's "
                             f"{self.height} rows")
        return self._read(top, bottom)

    def read(self) -> RegionRead:
        """The whole region at once."""
        return RegionRead(self.rows(0, self.height), self.transform, self.level,
                          self.level_downsample, self.upsampled)


class Slide:
    """An open slide or plain image: level-0 size, pixel size, pyramid and region reads.

    TIFF-based files (SVS, pyramidal TIFF, OME-TIFF, plain TIFF) read only the tiles or
    strips a region needs; PNG and JPEG files are decoded whole when opened.
    """

    path: Path
    width: int
    height: int
    mpp: float | None
    levels: list[PyramidLevel]

    def __init__(self, path: Path, mpp: float | None, levels: list[PyramidLevel],
                 tiff: tifffile.TiffFile | None, pages: list[tifffile.TiffPage],
                 pixels: np.ndarray | None) -> None:
        """Use `Slide.open`."""
        self.path = path
        self.width = levels[0].width
        self.height = levels[0].height
        self.mpp = mpp
        self.levels = levels
        self._tiff = tiff
        self._pages = pages
        self._pixels = pixels

    @classmethod
    def open(cls, path: str | Path) -> Slide:
        """Opens an SVS, pyramidal TIFF, OME-TIFF, plain TIFF, PNG or JPEG file."""
        path = Path(path)
        if not path.exists():
            raise NotFound(f"Slide file {path} does not exist; check the path.")
        if not path.is_file():
            raise InvalidInput(f"{path} is not a file; give the path of a slide file.")
        try:
            with path.open("rb") as file:
                head = file.read(8)
        except OSError as exc:
            raise InvalidInput(f"Slide file {path} could not be read: {exc}.") from exc
        if head.startswith(_TIFF_MAGIC):
            return cls._open_tiff(path)
        if head.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
            pixels = _decode_pillow(path.read_bytes(), f"Slide file {path}")
            height, width = pixels.shape[:2]
            return cls(path, None, [PyramidLevel(0, width, height, 1.0, 1.0)], None, [], pixels)
        raise InvalidInput(f"Slide file {path} is not in a supported format "
                           "(SVS, TIFF, OME-TIFF, PNG or JPEG).")

    @classmethod
    def _open_tiff(cls, path: Path) -> Slide:
        with _decoding(f"Slide file {path} could not be read as TIFF"):
            tiff = tifffile.TiffFile(path)
        try:
            with _decoding(f"Slide file {path} could not be read as TIFF"):
                if not tiff.series:
                    raise InvalidInput(f"Slide file {path} could not be read as TIFF: "
                                       "it holds no image.")
                series = tiff.series[0]
                pages = sorted((_level_page(level, path) for level in series.levels),
                               key=lambda page: page.imagewidth * page.imagelength, reverse=True)
                width, height = pages[0].imagewidth, pages[0].imagelength
                levels = [PyramidLevel(i, page.imagewidth, page.imagelength,
                                       width / page.imagewidth, height / page.imagelength)
                          for i, page in enumerate(pages)]
                mpp = _tiff_mpp(tiff, pages[0])
        except BaseException:
            tiff.close()
            raise
        return cls(path, mpp, levels, tiff, pages, None)

    def close(self) -> None:
        """Releases the file; the slide cannot be read afterwards."""
        if self._tiff is not None:
            self._tiff.close()
        self._pixels = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def read_level_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The (h, w, 3) uint8 RGB pixels at (x, y) of a level, in that level's pixels.

        The window must lie inside the level. Only the tiles or strips it overlaps are decoded.
        """
        if not 0 <= level < len(self.levels):
            raise InvalidInput(f"Pyramid level {level} does not exist; {self.path.name} has "
                               f"levels 0 to {len(self.levels) - 1}.")
        info = self.levels[level]
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > info.width or y + h > info.height:
            raise InvalidInput(
                f"Region x={x}, y={y}, width={w}, height={h} does not lie inside level {level} "
                f"of {self.path.name} ({info.width} x {info.height} pixels).")
        if self._pixels is not None:
            return self._pixels[y:y + h, x:x + w].copy()
        return _to_rgb(_read_tiff_window(self._pages[level], x, y, w, h, self.path))



#: What a user can do about pixels coarser than a model's resolution, in every client's words.
UPSAMPLE_HINT = ("use a scan of higher resolution, or accept upsampling (less exact): "
                 "roiseg --allow-upsample; in QuPath, Extensions > roiseg > Choose model… > "
                 "Allow images coarser than the model; in a request, "
                 "SegmentOptions.allow_upsample")

def decode_image(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Encoded PNG, JPEG or TIFF bytes as an (H, W, 3) uint8 RGB array; TooLarge if the
    image has more than `max_pixels` pixels (checked before decoding)."""
    if data.startswith(_TIFF_MAGIC):
        with _decoding("The image could not be decoded as PNG, JPEG or TIFF"), \
                tifffile.TiffFile(io.BytesIO(data)) as tiff:
            if not tiff.series:
                raise InvalidInput("The image could not be decoded as PNG, JPEG or TIFF: "
                                   "the TIFF holds no image.")
            series = tiff.series[0]
            _check_tiff_pixels(series.keyframe, series.axes, "The image")
            _check_pixel_count(series.keyframe.imagewidth, series.keyframe.imagelength,
                               max_pixels)
            pixels = series.asarray()
            if series.axes == "SYX":
                pixels = np.moveaxis(pixels, 0, -1)
            return _to_rgb(pixels)
    if data.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
        return _decode_pillow(data, "The image", max_pixels)
    raise InvalidInput("The image could not be decoded as PNG, JPEG or TIFF; send the pixels "
                       "in one of these formats.")


def image_size(data: bytes) -> tuple[int, int]:
    """The (width, height) encoded PNG, JPEG or TIFF bytes declare, read from their header
    without decoding; InvalidInput if they are none of these."""
    with _decoding("The image could not be decoded as PNG, JPEG or TIFF"):
        if data.startswith(_TIFF_MAGIC):
            with tifffile.TiffFile(io.BytesIO(data)) as tiff:
                if tiff.series:
                    page = tiff.series[0].keyframe
                    return int(page.imagewidth), int(page.imagelength)
        elif data.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
            with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
                return image.width, image.height
    raise InvalidInput("The image could not be decoded as PNG, JPEG or TIFF; send the pixels "
                       "in one of these formats.")


def choose_level(levels: Sequence[PyramidLevel], target_downsample: float) -> PyramidLevel:
    """The level with the largest downsample not above the target, else level 0.

    A downsample within a relative 1e-3 of the target counts as not above it.
    """
    _check_positive("target_downsample", target_downsample)
    limit = target_downsample * (1 + _LEVEL_TOLERANCE)
    fitting = [level for level in levels if level.downsample <= limit]
    return max(fitting, key=lambda level: level.downsample) if fitting else levels[0]


def resample(image: np.ndarray, width: int, height: int,
             allow_upsample: bool = False) -> np.ndarray:
    """`image` resized to exactly width x height (area averaging when shrinking).

    Growing either axis is refused unless `allow_upsample` (then bilinear). An image already
    of that size is returned as is.
    """
    if width < 1 or height < 1:
        raise InvalidInput(f"Cannot resample to {width} x {height} pixels; both must be >= 1.")
    in_height, in_width = image.shape[:2]
    if (width, height) == (in_width, in_height):
        return image
    grows = width > in_width or height > in_height
    if grows and not allow_upsample:
        raise InvalidInput(
            f"Reaching the target resolution needs upsampling the pixels ({in_width} x "
            f"{in_height} -> {width} x {height}); {UPSAMPLE_HINT}")
    interpolation = cv2.INTER_LINEAR if grows else cv2.INTER_AREA
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=interpolation)


def read_slide_region(slide: Slide, bbox: tuple[float, float, float, float], mpp: float,
                      target_mpp: float, allow_upsample: bool = False, *,
                      strip_bytes: int = DEFAULT_STRIP_BYTES) -> RegionRead:
    """The part of `bbox` (full-res pixels) inside the slide, at `target_mpp` µm/px, read
    whole (see `slide_region_rows`)."""
    return slide_region_rows(slide, bbox, mpp, target_mpp, allow_upsample,
                             strip_bytes=strip_bytes).read()


def slide_region_rows(slide: Slide, bbox: tuple[float, float, float, float], mpp: float,
                      target_mpp: float, allow_upsample: bool = False, *,
                      strip_bytes: int = DEFAULT_STRIP_BYTES) -> RegionRows:
    """The part of `bbox` (full-res pixels) inside the slide, at `target_mpp` µm/px, read
    when its rows are asked for.

    `mpp` is the slide's full-resolution pixel size. Reads the coarsest level not coarser
    than the target, covering the bbox with whole level pixels, and resamples them as
    `resample` does, so that the transform is exact for those pixels.

    The level pixels are read in horizontal strips of about `strip_bytes` and resampled
    separably (rows by OpenCV, columns by explicit area or bilinear weights), so memory is
    about the rows asked for plus a strip, and strips join without seams: the result matches
    a one-shot `resample` within 1 grey level, whatever rows are asked for at a time.
    """
    _check_positive("mpp", mpp)
    _check_positive("target_mpp", target_mpp)
    level = choose_level(slide.levels, target_mpp / mpp)
    plan = _plan_region(bbox, level.width, level.height, 0.0, 0.0, level.downsample_x,
                        level.downsample_y, mpp, target_mpp, allow_upsample)

    def window(x: int, y: int, w: int, h: int) -> np.ndarray:
        return slide.read_level_region(level.index, x, y, w, h)

    return _region_rows(window, plan, level.index, level.downsample, strip_bytes)


def pixels_region(image: np.ndarray, origin_x: float, origin_y: float, downsample: float,
                  bbox: tuple[float, float, float, float], mpp: float, target_mpp: float,
                  allow_upsample: bool = False) -> RegionRead:
    """The part of `bbox` inside client-sent pixels, at `target_mpp` µm/px, whole (see
    `pixels_region_rows`)."""
    return pixels_region_rows(image, origin_x, origin_y, downsample, bbox, mpp, target_mpp,
                              allow_upsample).read()


def pixels_region_rows(image: np.ndarray, origin_x: float, origin_y: float, downsample: float,
                       bbox: tuple[float, float, float, float], mpp: float, target_mpp: float,
                       allow_upsample: bool = False, *,
                       strip_bytes: int = DEFAULT_STRIP_BYTES) -> RegionRows:
    """The part of `bbox` inside client-sent pixels, at `target_mpp` µm/px, resampled when
    its rows are asked for (as `slide_region_rows` does; rows at the pixels' own resolution
    are views of them).

    `image` was read at `downsample` with its top-left corner at full-res
    (origin_x, origin_y); `mpp` is the full-resolution pixel size.
    """
    _check_positive("downsample", downsample)
    _check_positive("mpp", mpp)
    _check_positive("target_mpp", target_mpp)
    if not (math.isfinite(origin_x) and math.isfinite(origin_y)):
        raise InvalidInput(f"The image origin ({origin_x}, {origin_y}) must be finite numbers.")
    height, width = image.shape[:2]
    plan = _plan_region(bbox, width, height, origin_x, origin_y, downsample, downsample, mpp,
                        target_mpp, allow_upsample)

    def window(x: int, y: int, w: int, h: int) -> np.ndarray:
        return image[y:y + h, x:x + w]

    return _region_rows(window, plan, -1, downsample, strip_bytes)


@dataclass(frozen=True)
class _RegionPlan:
    """Source pixels covering a bbox, the output size and the output's transform."""

    source_x: int
    source_y: int
    source_w: int
    source_h: int
    out_w: int
    out_h: int
    transform: RasterTransform
    upsampled: bool


def _plan_region(bbox: tuple[float, float, float, float], grid_w: int, grid_h: int,
                 origin_x: float, origin_y: float, ds_x: float, ds_y: float, mpp: float,
                 target_mpp: float, allow_upsample: bool) -> _RegionPlan:
    """Plans reading `bbox` from a pixel grid whose pixel (i, j) covers full-res
    [origin_x + i*ds_x, origin_x + (i+1)*ds_x) x [origin_y + j*ds_y, ...)."""
    x0, y0, x1, y1 = _check_bbox(bbox)
    u0 = max(0, _floor((x0 - origin_x) / ds_x))
    v0 = max(0, _floor((y0 - origin_y) / ds_y))
    u1 = min(grid_w, _ceil((x1 - origin_x) / ds_x))
    v1 = min(grid_h, _ceil((y1 - origin_y) / ds_y))
    if u1 <= u0 or v1 <= v0:
        raise InvalidInput(f"ROI lies outside the image: bbox ({x0}, {y0}, {x1}, {y1}) does not "
                           f"overlap the image ({origin_x}, {origin_y}, "
                           f"{origin_x + grid_w * ds_x}, {origin_y + grid_h * ds_y}).")
    source_w, source_h = u1 - u0, v1 - v0
    out_w = _output_size(source_w, ds_x * mpp / target_mpp)
    out_h = _output_size(source_h, ds_y * mpp / target_mpp)
    upsampled = out_w > source_w or out_h > source_h
    if upsampled and not allow_upsample:
        raise InvalidInput(
            f"The target resolution {target_mpp} µm/px is finer than the available pixels "
            f"({ds_x * mpp:.4g} µm/px); {UPSAMPLE_HINT}")
    transform = RasterTransform(origin_x + u0 * ds_x, origin_y + v0 * ds_y,
                                source_w * ds_x / out_w, source_h * ds_y / out_h)
    return _RegionPlan(u0, v0, source_w, source_h, out_w, out_h, transform, upsampled)


def _output_size(n_source: int, zoom: float) -> int:
    """Output pixels for `n_source` pixels scaled by `zoom`; a zoom within the level
    tolerance above 1 keeps the size instead of upsampling by a pixel or two."""
    size = max(1, round(n_source * zoom))
    return min(size, n_source) if zoom <= 1 + _LEVEL_TOLERANCE else size


def _region_rows(window: Callable[[int, int, int, int], np.ndarray], plan: _RegionPlan,
                 level: int, level_downsample: float, strip_bytes: int) -> RegionRows:
    """The planned region's rows from `window(x, y, w, h)` (source pixels): a view of them at
    the source's resolution, else resampled strip by strip (`_resampled_rows`), so that a
    pixel's value depends neither on the rows read with it nor on the region's size."""
    read: Callable[[int, int], np.ndarray]
    if (plan.out_w, plan.out_h) == (plan.source_w, plan.source_h):
        def read(top: int, bottom: int) -> np.ndarray:
            return window(plan.source_x, plan.source_y + top, plan.source_w, bottom - top)
    else:
        taps, weights = _row_taps(plan.source_h, plan.out_h, plan.upsampled)

        def read(top: int, bottom: int) -> np.ndarray:
            return _resampled_rows(window, plan, taps, weights, top, bottom, strip_bytes)
    return RegionRows(plan.out_w, plan.out_h, plan.transform, level, level_downsample,
                      plan.upsampled, read)


def _resampled_rows(window: Callable[[int, int, int, int], np.ndarray], plan: _RegionPlan,
                    taps: np.ndarray, weights: np.ndarray, top: int, bottom: int,
                    strip_bytes: int) -> np.ndarray:
    """Output rows top .. bottom - 1 of a planned region, read and resampled strip by strip
    of about `strip_bytes` source bytes: rows by OpenCV, columns by `_row_taps`' weights, so a
    row is the same whatever rows are read with it."""
    interpolation = cv2.INTER_LINEAR if plan.upsampled else cv2.INTER_AREA
    source_rows = max(1, strip_bytes // (plan.source_w * 3))
    out_rows = max(1, source_rows * plan.out_h // plan.source_h)
    image = np.empty((bottom - top, plan.out_w, 3), np.uint8)
    for out0 in range(top, bottom, out_rows):
        out1 = min(bottom, out0 + out_rows)
        strip_taps = taps[out0:out1]
        src0, src1 = int(strip_taps.min()), int(strip_taps.max()) + 1
        strip = window(plan.source_x, plan.source_y + src0, plan.source_w, src1 - src0)
        narrowed = cv2.resize(strip, (plan.out_w, src1 - src0),
                              interpolation=interpolation).astype(np.float32)
        rows = np.zeros((out1 - out0, plan.out_w, 3), np.float32)
        for tap in range(taps.shape[1]):
            rows += weights[out0:out1, tap, None, None] * narrowed[strip_taps[:, tap] - src0]
        image[out0 - top:out1 - top] = np.clip(np.rint(rows), 0, 255)
    return image


def _row_taps(n_source: int, n_out: int, linear: bool) -> tuple[np.ndarray, np.ndarray]:
    """Source rows and weights of each output row, as OpenCV's INTER_AREA (shrinking) or
    INTER_LINEAR resizes compute them; both (n_out, taps)."""
    scale = n_source / n_out
    if linear:
        return linear_taps(n_out, n_source, scale, 0.0)
    out = np.arange(n_out, dtype=np.float64)[:, None]
    first = np.floor(out * scale + 1e-9)
    taps = first + np.arange(math.ceil(scale) + 1)
    overlap = np.minimum(taps + 1, (out + 1) * scale) - np.maximum(taps, out * scale)
    weights = np.clip(overlap, 0, None) / scale
    return np.clip(taps, 0, n_source - 1).astype(np.intp), weights.astype(np.float32)


def linear_taps(n_out: int, n_source: int, scale: float, offset: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear interpolation (as OpenCV's, edges clamped) along an axis whose pixel i covers
    source pixels [offset + i * scale, offset + (i + 1) * scale): (n_out, 2) source pixels and
    their (n_out, 2) float32 weights."""
    centre = offset + (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    first = np.floor(centre)
    fraction = (centre - first)[:, None]
    taps = np.clip(first[:, None] + np.arange(2), 0, n_source - 1).astype(np.intp)
    return taps, np.hstack([1 - fraction, fraction]).astype(np.float32)


def _check_bbox(bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    if len(bbox) != 4 or not all(math.isfinite(value) for value in bbox):
        raise InvalidInput(f"The ROI bounding box {bbox} must be four finite numbers "
                           "(x0, y0, x1, y1).")
    x0, y0, x1, y1 = (float(value) for value in bbox)
    if x1 <= x0 or y1 <= y0:
        raise InvalidInput(f"The ROI bounding box ({x0}, {y0}, {x1}, {y1}) is empty; x1 must "
                           "exceed x0 and y1 exceed y0.")
    return x0, y0, x1, y1


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise InvalidInput(f"{name} must be a positive finite number, got {value}.")


def _floor(value: float) -> int:
    """Floor that ignores floating-point noise just below an integer."""
    return math.floor(value + 1e-9)


def _ceil(value: float) -> int:
    """Ceiling that ignores floating-point noise just above an integer."""
    return math.ceil(value - 1e-9)


def _level_page(level: tifffile.TiffPageSeries, path: Path) -> tifffile.TiffPage:
    """The page holding a pyramid level's pixels, checked to be readable as RGB or grey."""
    page = level.keyframe
    _check_tiff_pixels(page, level.axes, f"Slide file {path}")
    return page


def _check_tiff_pixels(page: tifffile.TiffPage, axes: str, what: str) -> None:
    if axes not in _SUPPORTED_AXES:
        raise InvalidInput(f"{what} holds a {axes} image stack; only single 2D brightfield "
                           "images (RGB or grey) are supported.")
    if page.dtype != np.uint8:
        raise InvalidInput(f"{what} has {page.dtype} pixels; only 8-bit RGB or grey images "
                           "are supported.")
    if page.photometric not in _SUPPORTED_PHOTOMETRIC or page.samplesperpixel > 4:
        photometric = tifffile.PHOTOMETRIC(page.photometric).name
        raise InvalidInput(f"{what} stores {page.samplesperpixel}-sample {photometric} pixels; "
                           "only RGB or grey images are supported.")


def _read_tiff_window(page: tifffile.TiffPage, x: int, y: int, w: int, h: int,
                      path: Path) -> np.ndarray:
    """Decodes the tiles or strips overlapping a window of a page; (h, w, samples)."""
    samples = page.samplesperpixel
    if page.is_tiled:
        segment_h, segment_w = page.tilelength, page.tilewidth
    else:
        segment_h, segment_w = page.rowsperstrip, page.imagewidth
    rows = math.ceil(page.imagelength / segment_h)
    cols = math.ceil(page.imagewidth / segment_w)
    planes = samples if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE else 1
    indices = [plane * rows * cols + row * cols + col
               for plane in range(planes)
               for row in range(y // segment_h, (y + h - 1) // segment_h + 1)
               for col in range(x // segment_w, (x + w - 1) // segment_w + 1)]
    out = np.zeros((h, w, samples), np.uint8)
    fh = page.parent.filehandle
    decode_args = ({"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}
                   if page.compression in _JPEG_COMPRESSIONS else {})
    with _decoding(f"Slide file {path} has tiles that could not be decoded (corrupt file or "
                   "unsupported compression)"):
        for data, index in fh.read_segments([page.dataoffsets[i] for i in indices],
                                            [page.databytecounts[i] for i in indices],
                                            indices=indices):
            decoded, (plane, _, top, left, _), _ = page.decode(data, index, **decode_args)
            if decoded is None:
                continue
            segment: np.ndarray = decoded.reshape(decoded.shape[-3:])
            sy0, sx0 = max(y, top), max(x, left)
            sy1 = min(y + h, top + segment.shape[0])
            sx1 = min(x + w, left + segment.shape[1])
            out[sy0 - y:sy1 - y, sx0 - x:sx1 - x, plane:plane + segment.shape[2]] = \
                segment[sy0 - top:sy1 - top, sx0 - left:sx1 - left]
    return out


def _to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Grey, grey+alpha, RGB or RGBA uint8 pixels as (H, W, 3) RGB; alpha is dropped."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    if pixels.shape[2] in (1, 2):
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


def _check_pixel_count(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise TooLarge(f"The image is {width} x {height} px; this server decodes at most "
                       f"{max_pixels / 1e6:.0f} megapixels: send the region at the model's "
                       "resolution or split the ROI.")


def _decode_pillow(data: bytes, what: str, max_pixels: int | None = None) -> np.ndarray:
    """PNG or JPEG bytes as (H, W, 3) uint8 RGB."""
    with _decoding(f"{what} could not be decoded as PNG, JPEG or TIFF"), \
            Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
        _check_pixel_count(image.width, image.height, max_pixels)
        if image.mode in _HIGH_BIT_MODES:
            raise InvalidInput(f"{what} has {image.mode} pixels of more than 8 bits; only "
                               "8-bit RGB or grey images are supported.")
        return np.array(image.convert("RGB"))


def _tiff_mpp(tiff: tifffile.TiffFile, page: tifffile.TiffPage) -> float | None:
    """µm per level-0 pixel from Aperio, OME or (plausible) TIFF resolution metadata."""
    for source in (_aperio_mpp, _ome_mpp):
        mpp = source(tiff)
        if mpp is not None:
            return mpp
    um_per_unit = _UM_PER_RESOLUTION_UNIT.get(tifffile.RESUNIT(page.resolutionunit))
    pixels_per_unit = page.resolution[0]
    if um_per_unit is None or not pixels_per_unit > 0:
        return None
    mpp = um_per_unit / pixels_per_unit
    return mpp if _PLAUSIBLE_MPP[0] <= mpp <= _PLAUSIBLE_MPP[1] else None


def _aperio_mpp(tiff: tifffile.TiffFile) -> float | None:
    if not tiff.is_svs:
        return None
    value = svs_description_metadata(tiff.pages.first.description).get("MPP")
    return _positive_or_none(value)


def _ome_mpp(tiff: tifffile.TiffFile) -> float | None:
    """PhysicalSizeX of the first OME image, in µm."""
    if not tiff.is_ome or tiff.ome_metadata is None:
        return None
    try:
        root = ElementTree.fromstring(tiff.ome_metadata)
    except ElementTree.ParseError:
        return None
    pixels = next((element for element in root.iter() if element.tag.endswith("}Pixels")),
                  None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    um_per_unit = _UM_PER_OME_UNIT.get(pixels.get("PhysicalSizeXUnit", "µm"))
    if um_per_unit is None:
        return None
    try:
        size = float(pixels.attrib["PhysicalSizeX"])
    except ValueError:
        return None
    return _positive_or_none(size * um_per_unit)


def _positive_or_none(value: object) -> float | None:
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    return None


@contextmanager
def _decoding(failure: str) -> Iterator[None]:
    """Turns whatever a decoder raises on bad bytes into InvalidInput("`failure`: reason")."""
    try:
        yield
    except RoisegError:
        raise
    except Exception as error:  # noqa: BLE001 - decoders of hostile bytes raise anything
        raise InvalidInput(f"{failure}: {_reason(error)}.") from error


def _reason(error: Exception) -> str:
    """A decoder's error message without Python object reprs, cut to a readable length."""
    return _OBJECT_REPR.sub("", str(error))[:200] or type(error).__name__
