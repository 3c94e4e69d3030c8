"""One segmentation job: read the ROI, find tissue, run each model, post-process, vectorise.

The gRPC service and the in-process CLI both run jobs through `run`, so a request gives
the same polygons either way. A job streams over bands of rows: the ROI's pixels are read,
classified, post-processed and vectorised band by band, and its tissue mask is kept at
5 µm/px, so memory does not grow with the ROI's area (only hysteresis and minimum region
sizes, which are whole-map operations, hold its class map whole).
"""

from __future__ import annotations

import math
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from roiseg.engine import postprocess, vectorize
from roiseg.engine.inference import PredictionBand, TiledPrediction
from roiseg.engine.models import ModelCard, ModelRegistry
from roiseg.errors import Cancelled, InvalidInput, TooLarge, echo
from roiseg.io import classes, qupath_geojson, raster
from roiseg.io.slides import (
    RegionRead,
    RegionRows,
    Slide,
    linear_taps,
    pixels_region_rows,
    slide_region_rows,
)

#: Paper 003's hysteresis thresholds for the tumour probability.
DEFAULT_HYSTERESIS_LOW = 85 / 255
DEFAULT_HYSTERESIS_HIGH = 229 / 255
#: The pixel sizes, in µm/px, a whole-slide or microscope image can have.
MIN_MPP, MAX_MPP = 0.01, 100.0
#: Default simplification tolerance, in pixels at model resolution: one pixel takes the
#: staircase out of the outlines (half the vertices of the pixel edges on the demo ROI) and
#: keeps 99.9 % of the pixels in their class; 0.5 or less keeps the pixel edges.
DEFAULT_SIMPLIFY_PX = 1.0


class Stage:
    """Progress stages; the values are those of the contract's Stage enum."""

    QUEUED = 1
    READING = 2
    TISSUE = 3
    INFERENCE = 4
    POSTPROCESSING = 5
    VECTORIZING = 6


@dataclass(frozen=True)
class Hysteresis:
    enabled: bool = False
    low: float = DEFAULT_HYSTERESIS_LOW
    high: float = DEFAULT_HYSTERESIS_HIGH


@dataclass(frozen=True)
class Options:
    classes: tuple[str, ...] = ()
    min_area_um2: float = 0.0
    min_hole_um2: float = 0.0
    simplify_um: float | None = None
    hysteresis: Hysteresis = Hysteresis()
    include_background: bool = False
    allow_upsample: bool = False
    confidence_map: bool = False
    review_below: float | None = None
    #: Model class -> the name it gets in the result.
    class_names: Mapping[str, str] = field(default_factory=dict)
    #: With `classes` empty: the models' catch-all classes too (`ClassSpec.catch_all`).
    all_classes: bool = False


@dataclass(frozen=True)
class PixelSource:
    """A region read by the client; `mpp` is the full-resolution µm/px."""

    image: np.ndarray
    origin_x: float
    origin_y: float
    downsample: float
    mpp: float
    image_width: int | None = None
    image_height: int | None = None


@dataclass(frozen=True)
class SlideSource:
    path: Path
    mpp: float | None = None


@dataclass(frozen=True)
class Job:
    model_ids: tuple[str, ...]
    source: PixelSource | SlideSource
    roi: BaseGeometry
    options: Options = Options()
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True)
class Progress:
    stage: int
    model_id: str = ""
    done: int = 0
    total: int = 0
    message: str = ""


@dataclass
class Timings:
    read_s: float = 0.0
    tissue_s: float = 0.0
    inference_s: float = 0.0
    model_s: float = 0.0
    postprocess_s: float = 0.0
    vectorize_s: float = 0.0
    total_s: float = 0.0


@dataclass
class Confidence:
    """Where a model is unsure over the ROI's bounding box: uint8, 0 = sure, 255 = unsure
    (255 - the most probable class's probability), 0 outside the ROI; `transform` maps it to
    full-resolution pixels."""

    image: np.ndarray
    transform: raster.RasterTransform


#: Most pixels of a tissue mask: a ROI larger than this at 5 µm/px (about 20 x 20 mm) finds
#: its tissue at a coarser resolution (paper 003's sizes kept in µm), so memory stays flat.
TISSUE_MAX_PIXELS = 4096 * 4096
#: How far from tissue (µm) a class marked keep_on_glass is kept on glass (a gland's lumen):
#: farther, glass is glass, and tiles holding nothing nearer never reach the model.
KEPT_ON_GLASS_REACH_UM = 250.0
#: A ROI clipped by more than this fraction of its area is said to be.
CLIPPED_NOTICE = 0.001
#: Longest side of a confidence map; larger ROIs get a coarser map.
CONFIDENCE_MAP_SIDE = 1024
#: Metadata key (and name suffix) of objects flagged for review.
REVIEW_KEY = "roiseg.review"
REVIEW_SUFFIX = " (review)"


@dataclass
class ModelOutput:
    """One model's result; `class_map` (only when `run` is asked to keep it) and `transform`
    stay in the process."""

    card: ModelCard
    features: list[dict]
    class_areas: dict[str, tuple[float, int]]
    region: tuple[float, float, float, float]
    source_mpp: float
    mpp_x: float
    mpp_y: float
    level: int
    level_downsample: float
    upsampled: bool
    tiles: int
    timings: Timings
    #: (height, width) of the raster at model resolution.
    shape: tuple[int, int]
    transform: raster.RasterTransform = field(repr=False)
    class_map: np.ndarray | None = field(default=None, repr=False)
    confidence: Confidence | None = field(default=None, repr=False)
    #: What the user should know about the result (e.g. the part of the ROI not segmented).
    notices: tuple[str, ...] = ()

    @property
    def feature_collection(self) -> dict:
        return qupath_geojson.feature_collection(self.features)


class _Raster:
    """A ROI's bounding box at a model's resolution: its pixels, read band by band; its tissue
    (and what lies within `KEPT_ON_GLASS_REACH_UM` of it), kept at 5 µm/px as soft masks and
    given at the model's resolution band by band; the ROI in its pixel coordinates."""

    def __init__(self, region: RegionRows, soft_tissue: np.ndarray, near_tissue: np.ndarray,
                 tissue_transform: raster.RasterTransform, roi_raster: BaseGeometry,
                 read_s: float, tissue_s: float) -> None:
        self.region, self.roi_raster = region, roi_raster
        self.read_s, self.tissue_s = read_s, tissue_s
        self.soft_tissue, self.near_tissue = soft_tissue, near_tissue
        t, w = region.transform, tissue_transform
        self._row_taps = linear_taps(region.height, soft_tissue.shape[0],
                                      t.scale_y / w.scale_y, (t.origin_y - w.origin_y) / w.scale_y)
        self._column_taps = linear_taps(region.width, soft_tissue.shape[1],
                                         t.scale_x / w.scale_x,
                                         (t.origin_x - w.origin_x) / w.scale_x)

    def tissue(self, top: int, bottom: int) -> np.ndarray:
        """(bottom - top, W) bool: rows of the tissue mask at the model's resolution."""
        return self._upsampled(self.soft_tissue, top, bottom)

    def near(self, top: int, bottom: int) -> np.ndarray:
        """(bottom - top, W) bool: rows of the pixels within reach of tissue."""
        return self._upsampled(self.near_tissue, top, bottom)

    def roi(self, top: int, bottom: int) -> np.ndarray:
        """(bottom - top, W) bool: rows of the pixels whose centres lie inside the ROI."""
        return vectorize.roi_mask(shapely.affinity.translate(self.roi_raster, 0, -top),
                                  (bottom - top, self.region.width))

    def _upsampled(self, soft: np.ndarray, top: int, bottom: int) -> np.ndarray:
        """Rows of a soft work-resolution mask resized bilinearly to the model's resolution
        and thresholded at half, made `_BAND_PIXELS` at a time."""
        out = np.empty((bottom - top, self.region.width), bool)
        columns, column_weights = self._column_taps
        step = max(1, _BAND_PIXELS // max(1, self.region.width))
        for start in range(top, bottom, step):
            stop = min(bottom, start + step)
            taps, weights = self._row_taps[0][start:stop], self._row_taps[1][start:stop]
            first, last = int(taps.min()), int(taps.max()) + 1
            rows = soft[first:last]
            narrowed = (rows[:, columns[:, 0]] * column_weights[:, 0]
                        + rows[:, columns[:, 1]] * column_weights[:, 1])
            out[start - top:stop - top] = (narrowed[taps[:, 0] - first] * weights[:, :1]
                                           + narrowed[taps[:, 1] - first] * weights[:, 1:]
                                           ) >= postprocess.SOFT_HALF
        return out


@dataclass
class RoiPixels:
    """The pixels of a ROI's bounding box at a model's resolution, as `run` reads them for it:
    `roi` is the ROI clipped to the image, `source_mpp` the full-resolution µm/px."""

    read: RegionRead
    roi: BaseGeometry
    source_mpp: float


def read_roi(job: Job, card: ModelCard, *, max_roi_pixels: int) -> RoiPixels:
    """The job's ROI read for `card` exactly as `run` reads it (pixel size, clipping, size
    limit, pyramid level and resampling), without segmenting it."""
    with _opened(job) as (image, source_mpp, roi, _):
        _check_size(roi, source_mpp, card, max_roi_pixels)
        return RoiPixels(_region(image, roi.bounds, source_mpp, card.mpp,
                                 job.options.allow_upsample).read(), roi, source_mpp)


@contextmanager
def _opened(job: Job) -> Iterator[tuple[Slide | PixelSource, float, BaseGeometry,
                                         tuple[str, ...]]]:
    """The job's image (a slide opened for the block), its full-resolution µm/px, the ROI
    clipped to it and what the clipping left out, in words."""
    with ExitStack() as stack:
        image = stack.enter_context(Slide.open(job.source.path)) \
            if isinstance(job.source, SlideSource) else job.source
        yield image, _source_mpp(job.source, image), *_clip_to_image(job.roi, image)


def run(job: Job, registry: ModelRegistry, *, max_roi_pixels: int,
        progress: Callable[[Progress], None] = lambda p: None,
        should_stop: Callable[[], bool] = lambda: False,
        keep_class_map: bool = False) -> Iterator[ModelOutput]:
    """Runs the job model by model, yielding each model's output when it is done; with
    `keep_class_map` each output holds its whole class map (memory grows with the ROI)."""
    cards = [registry.card(model_id) for model_id in job.model_ids]
    _check_options(job.options, cards)
    with _opened(job) as (image, source_mpp, roi, notices):
        rasters: dict[float, _Raster] = {}
        for card in cards:
            _check_size(roi, source_mpp, card, max_roi_pixels)
            if card.mpp not in rasters:
                rasters[card.mpp] = _raster(job, image, roi, source_mpp, card, progress,
                                            should_stop)
            yield _segment(job, card, registry, rasters[card.mpp], source_mpp, notices, progress,
                           should_stop, keep_class_map)


def _segment(job: Job, card: ModelCard, registry: ModelRegistry, raster: _Raster,
             source_mpp: float, notices: tuple[str, ...], progress: Callable[[Progress], None],
             should_stop: Callable[[], bool], keep_class_map: bool) -> ModelOutput:
    """One model's output, made band of rows by band; its total time counts the (possibly
    shared) read and tissue stages once."""
    started = time.perf_counter()
    options = job.options
    region = raster.region
    t = region.transform
    height, width = region.height, region.width
    mpp_x, mpp_y = t.scale_x * source_mpp, t.scale_y * source_mpp
    mpp = (mpp_x + mpp_y) / 2

    model = registry.load(card)
    tumor = card.tumor_index if options.hysteresis.enabled else None
    progress(Progress(Stage.INFERENCE, card.id, 0, 0, f"running {card.name}"))
    tiled = TiledPrediction(model, region, tumor_class=tumor,
                            needed=_needed(card, raster, hysteresis=tumor is not None))
    bands = tiled.bands(lambda done, total: progress(Progress(Stage.INFERENCE, card.id, done,
                                                              total)), should_stop)
    steps = _Steps(card, raster, options, mpp)
    classified = steps.whole_map(bands, tumor) if steps.needs_whole_map(tumor) \
        else steps.banded(bands)

    wanted = _wanted_classes(card, options.classes, options.all_classes)
    palette = {spec.index: (options.class_names.get(spec.name, spec.name).strip(), spec.color)
               for spec in card.classes}
    background = len(card.classes) if options.include_background else None
    if background is not None:
        palette[background] = (classes.BACKGROUND_CLASS, classes.BACKGROUND_COLOR)
        wanted = [*wanted, background]
    simplify_px = DEFAULT_SIMPLIFY_PX if options.simplify_um is None else options.simplify_um / mpp
    vectorizer = vectorize.MapVectorizer(height, width, simplify_px, wanted)
    unsure = _UnsureMap(height, width, t) if options.confidence_map else None
    class_map = np.empty((height, width), np.uint8) if keep_class_map else None
    vectorize_s = 0.0
    for top, class_rows, probability in classified:
        bottom = top + len(class_rows)
        t0 = time.perf_counter()
        if unsure is not None:
            unsure.add(np.where(class_rows != postprocess.NO_CLASS, 255 - probability, 0))
        if background is not None:
            class_rows = np.where((class_rows == postprocess.NO_CLASS) & raster.roi(top, bottom),
                                  np.uint8(background), class_rows)
        vectorizer.add(class_rows, probability)
        if class_map is not None:
            class_map[top:bottom] = class_rows
        vectorize_s += time.perf_counter() - t0
    _stop_if(should_stop)

    progress(Progress(Stage.VECTORIZING, card.id))
    t0 = time.perf_counter()
    regions = vectorizer.regions(raster.roi_raster)
    metadata = {**qupath_geojson.model_metadata(card.id, card.version, job.run_id),
                qupath_geojson.PIXEL_SIZE_KEY: repr(source_mpp)}
    pixel_um2 = mpp_x * mpp_y
    features: list[dict] = []
    class_areas: dict[str, tuple[float, int]] = {}
    for found in regions:
        name, color = palette[found.class_index]
        area_um2 = found.area_px * pixel_um2
        measurements = {qupath_geojson.AREA_MEASUREMENT: area_um2}
        if found.class_index < len(card.classes):
            measurements[qupath_geojson.PROBABILITY_MEASUREMENT] = found.mean_probability
        geometry = shapely.set_precision(t.geometry_to_full(found.geometry), 1e-3)
        flagged = _for_review(measurements, options.review_below)
        features.append(qupath_geojson.annotation_feature(
            geometry, name, color, measurements,
            {**metadata, REVIEW_KEY: "low confidence"} if flagged else metadata,
            str(uuid.uuid4()), name + REVIEW_SUFFIX if flagged else None))
        total, count = class_areas.get(name, (0.0, 0))
        class_areas[name] = (total + area_um2, count + 1)
    vectorize_s += time.perf_counter() - t0
    elapsed = time.perf_counter() - started
    timings = Timings(
        read_s=raster.read_s + tiled.read_seconds, tissue_s=raster.tissue_s,
        inference_s=elapsed - vectorize_s - steps.seconds, model_s=tiled.model_seconds,
        postprocess_s=steps.seconds, vectorize_s=vectorize_s,
        total_s=elapsed + raster.read_s + raster.tissue_s)
    return ModelOutput(
        card=card, features=features, class_areas=class_areas,
        region=(t.origin_x, t.origin_y, width * t.scale_x, height * t.scale_y),
        source_mpp=source_mpp, mpp_x=mpp_x, mpp_y=mpp_y, level=region.level,
        level_downsample=region.level_downsample, upsampled=region.upsampled,
        tiles=tiled.tiles, timings=timings, shape=(height, width), transform=t,
        class_map=class_map, confidence=None if unsure is None else unsure.result(),
        notices=notices)


#: Pixels per band of rows of the whole-map steps' output and of tissue rows made at once.
_BAND_PIXELS = 1 << 22

_Classified = Iterator[tuple[int, np.ndarray, np.ndarray]]


class _Steps:
    """Post-processing of a prediction's bands: NO_CLASS where a pixel gets no class (outside
    the ROI, on glass unless its class is kept on glass, the card's background class), and,
    when asked for, tumour hysteresis and minimum region sizes (on the whole map). Yields
    (top, class rows, probability rows); `seconds` counts its own time."""

    def __init__(self, card: ModelCard, raster: _Raster, options: Options, mpp: float) -> None:
        self.card, self.raster, self.options, self.mpp = card, raster, options, mpp
        self.seconds = 0.0

    def needs_whole_map(self, tumor: int | None) -> bool:
        return tumor is not None or self.options.min_area_um2 > 0 \
            or self.options.min_hole_um2 > 0

    def banded(self, bands: Iterator[PredictionBand]) -> _Classified:
        for band in bands:
            t0 = time.perf_counter()
            if band.predicted:
                self._mark_no_class(band.class_map, band.top)
            else:  # no tile ran on these rows: none of their pixels is in tissue in the ROI
                band.class_map[:] = postprocess.NO_CLASS
            self.seconds += time.perf_counter() - t0
            yield band.top, band.class_map, band.probability

    def whole_map(self, bands: Iterator[PredictionBand], tumor: int | None) -> _Classified:
        raster, options = self.raster, self.options
        height, width = raster.region.height, raster.region.width
        class_map = np.empty((height, width), np.uint8)
        probability = np.empty((height, width), np.uint8)
        tumor_probability = np.empty((height, width), np.uint8) if tumor is not None else None
        fallback_map = np.empty((height, width), np.uint8) if tumor is not None else None
        for band in bands:
            at = slice(band.top, band.top + len(band.class_map))
            class_map[at], probability[at] = band.class_map, band.probability
            if band.tumor_probability is not None and band.fallback_map is not None \
                    and tumor_probability is not None and fallback_map is not None:
                tumor_probability[at] = band.tumor_probability
                fallback_map[at] = band.fallback_map
        t0 = time.perf_counter()
        if tumor is not None and tumor_probability is not None and fallback_map is not None:
            tumorous = postprocess.hysteresis_mask(tumor_probability, raster.tissue(0, height),
                                                   self.mpp, options.hysteresis.low,
                                                   options.hysteresis.high)
            class_map = np.where(tumorous, np.uint8(tumor),
                                 np.where(class_map == tumor, fallback_map, class_map))
        rows = max(1, _BAND_PIXELS // max(1, width))
        for top in range(0, height, rows):
            self._mark_no_class(class_map[top:top + rows], top)
        class_map = postprocess.enforce_min_sizes(class_map, self.mpp, options.min_area_um2,
                                                  options.min_hole_um2)
        self.seconds += time.perf_counter() - t0
        for top in range(0, height, rows):
            yield top, class_map[top:top + rows], probability[top:top + rows]

    def _mark_no_class(self, band: np.ndarray, top: int) -> None:
        """Sets NO_CLASS, in place, in the class map's rows from `top`."""
        card, raster = self.card, self.raster
        bottom = top + len(band)
        no_class = ~raster.tissue(top, bottom)
        if card.kept_on_glass:
            no_class &= ~(np.isin(band, card.kept_on_glass) & raster.near(top, bottom))
        no_class |= ~raster.roi(top, bottom)
        if card.background_index is not None:
            no_class |= band == card.background_index
        band[no_class] = postprocess.NO_CLASS


class _UnsureMap:
    """The confidence map, made band by band: 255 - the class probability where a class is
    returned, 0 elsewhere, averaged over blocks of f x f pixels so that its longest side is at
    most `CONFIDENCE_MAP_SIDE` (the blocks at the right and bottom edges may be partial)."""

    def __init__(self, height: int, width: int, transform: raster.RasterTransform) -> None:
        self.factor = f = max(1, math.ceil(max(height, width) / CONFIDENCE_MAP_SIDE))
        self.height, self.transform = height, transform
        self.image = np.zeros((math.ceil(height / f), math.ceil(width / f)), np.uint8)
        self.columns = np.arange(0, width, f)
        self.column_counts = np.diff(np.append(self.columns, width))
        self.pending = np.zeros((0, width), np.uint32)
        self.row = 0

    def add(self, unsure_rows: np.ndarray) -> None:
        """The next rows, top to bottom, of 255 - probability (0 where no class)."""
        f = self.factor
        rows = np.concatenate([self.pending, unsure_rows.astype(np.uint32)])
        last = self.row * f + len(rows) == self.height
        blocks = len(rows) // f + int(last and len(rows) % f > 0)
        for k in range(blocks):
            block = rows[k * f:(k + 1) * f]
            sums = np.add.reduceat(block.sum(axis=0), self.columns)
            self.image[self.row] = np.rint(sums / (len(block) * self.column_counts))
            self.row += 1
        self.pending = rows[blocks * f:]

    def result(self) -> Confidence:
        f, t = self.factor, self.transform
        return Confidence(self.image, raster.RasterTransform(t.origin_x, t.origin_y,
                                                             t.scale_x * f, t.scale_y * f))


def _for_review(measurements: dict[str, float], review_below: float | None) -> bool:
    probability = measurements.get(qupath_geojson.PROBABILITY_MEASUREMENT)
    return review_below is not None and probability is not None and probability < review_below


def _needed(card: ModelCard, raster: _Raster, hysteresis: bool
            ) -> Callable[[int, int], np.ndarray]:
    """Rows of the pixels whose predictions a job uses: tissue (within reach of tissue, for a
    model with classes kept on glass) inside the ROI; anywhere in the region for hysteresis
    (its tumour regions grow across the ROI's edge)."""
    found = raster.near if card.kept_on_glass else raster.tissue
    if hysteresis:
        return found
    return lambda top, bottom: found(top, bottom) & raster.roi(top, bottom)


def _raster(job: Job, image: Slide | PixelSource, roi: BaseGeometry, source_mpp: float,
            card: ModelCard, progress: Callable[[Progress], None],
            should_stop: Callable[[], bool]) -> _Raster:
    """Plans reading the ROI's bounding box at the card's resolution and finds its tissue at
    5 µm/px (at the card's resolution if coarser; coarser too past `TISSUE_MAX_PIXELS`),
    read apart."""
    progress(Progress(Stage.READING, card.id, message=f"reading the region at {card.mpp} µm/px"))
    t0 = time.perf_counter()
    allow_upsample = job.options.allow_upsample
    region = _region(image, roi.bounds, source_mpp, card.mpp, allow_upsample)
    raster_mpp = (region.transform.scale_x + region.transform.scale_y) / 2 * source_mpp
    x0, y0, x1, y1 = roi.bounds
    tissue_mpp = max(postprocess.WORK_MPP,
                     source_mpp * math.sqrt((x1 - x0) * (y1 - y0) / TISSUE_MAX_PIXELS))
    work = region if raster_mpp >= tissue_mpp else \
        _region(image, roi.bounds, source_mpp, tissue_mpp, allow_upsample)
    pixels = work.read().image
    read_s = time.perf_counter() - t0
    _stop_if(should_stop)

    progress(Progress(Stage.TISSUE, card.id, message="finding tissue"))
    t0 = time.perf_counter()
    work_mpp = (work.transform.scale_x + work.transform.scale_y) / 2 * source_mpp
    soft = postprocess.soft_tissue_mask(pixels, work_mpp, blur=work is not region)
    del pixels
    near = postprocess.near_tissue(soft, KEPT_ON_GLASS_REACH_UM / work_mpp)
    return _Raster(region, soft, near, work.transform, region.transform.geometry_to_raster(roi),
                   read_s, time.perf_counter() - t0)


def _region(image: Slide | PixelSource, bbox: tuple[float, float, float, float],
            source_mpp: float, mpp: float, allow_upsample: bool) -> RegionRows:
    if isinstance(image, Slide):
        return slide_region_rows(image, bbox, source_mpp, mpp, allow_upsample)
    return pixels_region_rows(image.image, image.origin_x, image.origin_y, image.downsample,
                              bbox, source_mpp, mpp, allow_upsample)


def _source_mpp(source: PixelSource | SlideSource, image: Slide | PixelSource) -> float:
    """The full-resolution µm/px: stated by the client, else the slide file's; InvalidInput
    when missing or outside what a microscope image can have (wrong units)."""
    mpp = source.mpp or (image.mpp if isinstance(image, Slide) else None)
    if not mpp:
        what = "the image" if isinstance(source, PixelSource) else source.path.name
        raise InvalidInput(f"the pixel size is missing: {what} has none; send the "
                           "full-resolution pixel size in µm/px (pixel_size_um; --mpp on the "
                           "command line)")
    if not MIN_MPP <= mpp <= MAX_MPP:
        raise InvalidInput(f"a pixel size of {mpp:g} µm/px is not a microscope image's "
                           f"(expected {MIN_MPP:g} to {MAX_MPP:g} µm/px): is it in other units?")
    return mpp


def _clip_to_image(roi: BaseGeometry, image: Slide | PixelSource
                   ) -> tuple[BaseGeometry, tuple[str, ...]]:
    """The ROI clipped to the image and, for client pixels, to the pixels sent, and a notice
    for each clipping that leaves out more than `CLIPPED_NOTICE` of the ROI."""
    extents = []
    if isinstance(image, Slide):
        extents.append((box(0, 0, image.width, image.height),
                        f"the image ({image.width} x {image.height} px)"))
    else:
        source = image
        if source.image_width and source.image_height:
            extents.append((box(0, 0, source.image_width, source.image_height),
                            f"the image ({source.image_width} x {source.image_height} px)"))
        h, w = source.image.shape[:2]
        sent = box(source.origin_x, source.origin_y, source.origin_x + w * source.downsample,
                   source.origin_y + h * source.downsample)
        extents.append((sent, "the pixels sent ({:g},{:g} to {:g},{:g})".format(*sent.bounds)))
    notices = []
    drawn = roi.area
    for extent, what in extents:
        clipped = roi.intersection(extent)
        if clipped.is_empty or clipped.area <= 0:
            x0, y0, x1, y1 = roi.bounds
            raise InvalidInput(f"the ROI ({x0:g},{y0:g} to {x1:g},{y1:g}) lies outside {what}")
        outside = (roi.area - clipped.area) / drawn
        if outside > CLIPPED_NOTICE:
            notices.append(f"{100 * outside:.1f} % of the ROI lies outside {what} and was not "
                           "segmented")
        roi = clipped
    return roi, tuple(notices)


def _check_size(roi: BaseGeometry, source_mpp: float, card: ModelCard, limit: int) -> None:
    x0, y0, x1, y1 = roi.bounds
    scale = source_mpp / card.mpp
    pixels = math.ceil((x1 - x0) * scale) * math.ceil((y1 - y0) * scale)
    if pixels > limit:
        side = int(math.sqrt(limit))
        raise TooLarge(f"the ROI is {pixels / 1e6:.0f} megapixels at {card.mpp} µm/px; this "
                       f"server segments at most {limit / 1e6:.0f} megapixels (about {side} x "
                       f"{side} px) per request: split the ROI or draw a smaller one")


def _check_options(options: Options, cards: Sequence[ModelCard]) -> None:
    known = {spec.name for card in cards for spec in card.classes}
    unknown = [name for name in options.classes if name not in known]
    if unknown:
        raise InvalidInput(f"unknown class(es) {', '.join(echo(n) for n in unknown[:20])}; the "
                           f"models have: {', '.join(sorted(known))}")
    unknown = [name for name in options.class_names if name not in known]
    if unknown:
        raise InvalidInput(f"class_names renames unknown class(es) "
                           f"{', '.join(echo(n) for n in unknown[:20])}; the models have: "
                           f"{', '.join(sorted(known))}")
    blank = [name for name, new in options.class_names.items() if not new.strip()]
    if blank:
        raise InvalidInput(f"class_names gives {', '.join(echo(n) for n in blank[:20])} an "
                           "empty name")
    if options.review_below is not None and not 0 <= options.review_below <= 1:
        raise InvalidInput(f"review_below is a class probability from 0 to 1, got "
                           f"{options.review_below}")
    for name, value in (("min_area_um2", options.min_area_um2),
                        ("min_hole_um2", options.min_hole_um2)):
        if not (value >= 0 and math.isfinite(value)):
            raise InvalidInput(f"{name} must be a non-negative number of µm², got {value}")
    if options.simplify_um is not None and not (options.simplify_um >= 0
                                                and math.isfinite(options.simplify_um)):
        raise InvalidInput(f"simplify_um must be a non-negative number, got {options.simplify_um}")
    h = options.hysteresis
    if h.enabled:
        if not (0 <= h.low <= h.high <= 1):
            raise InvalidInput(f"hysteresis thresholds need 0 <= low <= high <= 1, got "
                               f"low={h.low}, high={h.high}")
        if all(card.tumor_index is None for card in cards):
            raise InvalidInput("hysteresis needs a model with a tumour class; "
                               + ", ".join(card.id for card in cards) + " has none")


def _wanted_classes(card: ModelCard, names: Sequence[str], all_classes: bool = False
                    ) -> list[int]:
    """Output channels to return: those `names` names, else all but the catch-all classes
    (all of them with `all_classes`)."""
    if not names:
        return [spec.index for spec in card.classes if all_classes or not spec.catch_all]
    return [spec.index for spec in card.classes if spec.name in names]


def _stop_if(should_stop: Callable[[], bool]) -> None:
    if should_stop():
        raise Cancelled("segmentation cancelled")
