"""One segmentation job: read the ROI, find tissue, run each model, post-process, vectorise.

The gRPC service and the in-process CLI both run jobs through `run`, so a request gives
the same polygons either way.
"""

from __future__ import annotations

import math
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from roiseg.engine import postprocess, vectorize
from roiseg.engine.inference import predict
from roiseg.engine.models import ModelCard, ModelRegistry
from roiseg.errors import Cancelled, InvalidInput, TooLarge, echo
from roiseg.io import classes, qupath_geojson, raster
from roiseg.io.slides import RegionRead, Slide, pixels_region, read_slide_region

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


#: A ROI clipped by more than this fraction of its area is said to be.
CLIPPED_NOTICE = 0.001
#: Longest side of a confidence map; larger ROIs get a coarser map.
CONFIDENCE_MAP_SIDE = 1024
#: Metadata key (and name suffix) of objects flagged for review.
REVIEW_KEY = "roiseg.review"
REVIEW_SUFFIX = " (review)"


@dataclass
class ModelOutput:
    """One model's result; `class_map` and `transform` stay in the process."""

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
    class_map: np.ndarray = field(repr=False)
    transform: raster.RasterTransform = field(repr=False)
    confidence: Confidence | None = field(default=None, repr=False)
    #: What the user should know about the result (e.g. the part of the ROI not segmented).
    notices: tuple[str, ...] = ()

    @property
    def feature_collection(self) -> dict:
        return qupath_geojson.feature_collection(self.features)


@dataclass
class _Raster:
    read: RegionRead
    tissue: np.ndarray
    roi_raster: BaseGeometry
    roi_mask: np.ndarray
    read_s: float
    tissue_s: float


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
        return RoiPixels(_read(image, roi.bounds, source_mpp, card, job.options.allow_upsample),
                         roi, source_mpp)


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
        should_stop: Callable[[], bool] = lambda: False) -> Iterator[ModelOutput]:
    """Runs the job model by model, yielding each model's output when it is done."""
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
                           should_stop)


def _segment(job: Job, card: ModelCard, registry: ModelRegistry, raster: _Raster,
             source_mpp: float, notices: tuple[str, ...], progress: Callable[[Progress], None],
             should_stop: Callable[[], bool]) -> ModelOutput:
    """One model's output; its total time counts the (possibly shared) read and tissue
    stages once."""
    started = time.perf_counter()
    timings = Timings(read_s=raster.read_s, tissue_s=raster.tissue_s)
    options = job.options
    read = raster.read
    mpp_x, mpp_y = read.transform.scale_x * source_mpp, read.transform.scale_y * source_mpp
    mpp = (mpp_x + mpp_y) / 2

    model = registry.load(card)
    tumor = card.tumor_index if options.hysteresis.enabled else None
    progress(Progress(Stage.INFERENCE, card.id, 0, 0, f"running {card.name}"))
    t0 = time.perf_counter()
    prediction = predict(model, read.image, tumor_class=tumor,
                         needed=_needed(card, raster, hysteresis=tumor is not None),
                         progress=lambda done, total: progress(
                             Progress(Stage.INFERENCE, card.id, done, total)),
                         should_stop=should_stop)
    timings.inference_s = time.perf_counter() - t0
    timings.model_s = prediction.model_seconds

    _stop_if(should_stop)
    progress(Progress(Stage.POSTPROCESSING, card.id))
    t0 = time.perf_counter()
    class_map = prediction.class_map
    if tumor is not None and prediction.tumor_probability is not None \
            and prediction.fallback_map is not None:
        tumorous = postprocess.hysteresis_mask(prediction.tumor_probability, raster.tissue, mpp,
                                               options.hysteresis.low, options.hysteresis.high)
        class_map = np.where(tumorous, np.uint8(tumor),
                             np.where(class_map == tumor, prediction.fallback_map, class_map))
    _mark_no_class(class_map, card, raster)
    pixel_um2 = mpp_x * mpp_y
    class_map = postprocess.enforce_min_sizes(class_map, math.sqrt(pixel_um2),
                                              options.min_area_um2, options.min_hole_um2)
    timings.postprocess_s = time.perf_counter() - t0

    _stop_if(should_stop)
    progress(Progress(Stage.VECTORIZING, card.id))
    t0 = time.perf_counter()
    wanted = _wanted_classes(card, options.classes, options.all_classes)
    palette = {spec.index: (options.class_names.get(spec.name, spec.name).strip(), spec.color)
               for spec in card.classes}
    vector_map = class_map
    if options.include_background:
        background = len(card.classes)
        palette[background] = (classes.BACKGROUND_CLASS, classes.BACKGROUND_COLOR)
        wanted = [*wanted, background]
        vector_map = np.where((class_map == postprocess.NO_CLASS) & raster.roi_mask,
                              np.uint8(background), class_map)
    simplify_px = DEFAULT_SIMPLIFY_PX if options.simplify_um is None else options.simplify_um / mpp
    regions = vectorize.class_regions(vector_map, prediction.probability, raster.roi_raster,
                                      simplify_px, wanted)
    metadata = {**qupath_geojson.model_metadata(card.id, card.version, job.run_id),
                qupath_geojson.PIXEL_SIZE_KEY: repr(source_mpp)}
    features: list[dict] = []
    class_areas: dict[str, tuple[float, int]] = {}
    for region in regions:
        name, color = palette[region.class_index]
        area_um2 = region.area_px * pixel_um2
        measurements = {qupath_geojson.AREA_MEASUREMENT: area_um2}
        if region.class_index < len(card.classes):
            measurements[qupath_geojson.PROBABILITY_MEASUREMENT] = region.mean_probability
        geometry = shapely.set_precision(read.transform.geometry_to_full(region.geometry), 1e-3)
        flagged = _for_review(measurements, options.review_below)
        features.append(qupath_geojson.annotation_feature(
            geometry, name, color, measurements,
            {**metadata, REVIEW_KEY: "low confidence"} if flagged else metadata,
            str(uuid.uuid4()), name + REVIEW_SUFFIX if flagged else None))
        total, count = class_areas.get(name, (0.0, 0))
        class_areas[name] = (total + area_um2, count + 1)
    timings.vectorize_s = time.perf_counter() - t0
    timings.total_s = time.perf_counter() - started + raster.read_s + raster.tissue_s

    t = read.transform
    height, width = class_map.shape
    return ModelOutput(
        card=card, features=features, class_areas=class_areas,
        region=(t.origin_x, t.origin_y, width * t.scale_x, height * t.scale_y),
        source_mpp=source_mpp, mpp_x=mpp_x, mpp_y=mpp_y, level=read.level,
        level_downsample=read.level_downsample, upsampled=read.upsampled,
        tiles=prediction.tiles, timings=timings, class_map=vector_map, transform=t,
        confidence=_confidence(prediction.probability, class_map != postprocess.NO_CLASS, t)
        if options.confidence_map else None, notices=notices)


#: Pixels per band of rows when marking pixels of no class (bounds the temporary masks).
_BAND_PIXELS = 1 << 22


def _mark_no_class(class_map: np.ndarray, card: ModelCard, raster: _Raster) -> None:
    """Sets NO_CLASS, in place and band of rows by band, where a pixel gets no class: outside
    the ROI, on glass (unless its class is kept on glass), the card's background class."""
    rows = max(1, _BAND_PIXELS // max(1, class_map.shape[1]))
    for top in range(0, class_map.shape[0], rows):
        band = class_map[top:top + rows]
        no_class = ~raster.tissue[top:top + rows]
        if card.kept_on_glass:
            no_class &= ~np.isin(band, card.kept_on_glass)
        no_class |= ~raster.roi_mask[top:top + rows]
        if card.background_index is not None:
            no_class |= band == card.background_index
        band[no_class] = postprocess.NO_CLASS


def _for_review(measurements: dict[str, float], review_below: float | None) -> bool:
    probability = measurements.get(qupath_geojson.PROBABILITY_MEASUREMENT)
    return review_below is not None and probability is not None and probability < review_below


def _needed(card: ModelCard, raster: _Raster, hysteresis: bool) -> np.ndarray | None:
    """The pixels whose predictions a job uses: tissue inside the ROI; tissue anywhere in the
    region for hysteresis (its tumour regions grow across the ROI's edge); the whole ROI for a
    model whose classes are kept on glass (None: all, both)."""
    if card.kept_on_glass:
        return None if hysteresis else raster.roi_mask
    return raster.tissue if hysteresis else raster.tissue & raster.roi_mask


def _confidence(probability: np.ndarray, classified: np.ndarray,
                transform: raster.RasterTransform) -> Confidence:
    """255 - `probability` where a class is returned (`classified`: not outside the ROI, not
    glass), averaged down to at most `CONFIDENCE_MAP_SIDE`."""
    unsure: np.ndarray = np.where(classified, 255 - probability, 0).astype(np.uint8)
    height, width = unsure.shape
    factor = max(1, math.ceil(max(height, width) / CONFIDENCE_MAP_SIDE))
    if factor > 1:
        size = (math.ceil(width / factor), math.ceil(height / factor))
        unsure = cv2.resize(unsure, size, interpolation=cv2.INTER_AREA)
    scale_x = transform.scale_x * width / unsure.shape[1]
    scale_y = transform.scale_y * height / unsure.shape[0]
    return Confidence(unsure, raster.RasterTransform(transform.origin_x, transform.origin_y,
                                                     scale_x, scale_y))


def _raster(job: Job, image: Slide | PixelSource, roi: BaseGeometry, source_mpp: float,
            card: ModelCard, progress: Callable[[Progress], None],
            should_stop: Callable[[], bool]) -> _Raster:
    """Reads the ROI's bounding box at the card's resolution and finds its tissue."""
    progress(Progress(Stage.READING, card.id, message=f"reading the region at {card.mpp} µm/px"))
    t0 = time.perf_counter()
    read = _read(image, roi.bounds, source_mpp, card, job.options.allow_upsample)
    read_s = time.perf_counter() - t0
    _stop_if(should_stop)

    progress(Progress(Stage.TISSUE, card.id, message="finding tissue"))
    t0 = time.perf_counter()
    raster_mpp = (read.transform.scale_x + read.transform.scale_y) / 2 * source_mpp
    tissue = postprocess.tissue_mask(read.image, raster_mpp)
    roi_raster = read.transform.geometry_to_raster(roi)
    roi_mask = vectorize.roi_mask(roi_raster, read.image.shape[:2])
    return _Raster(read, tissue, roi_raster, roi_mask, read_s, time.perf_counter() - t0)


def _read(image: Slide | PixelSource, bbox: tuple[float, float, float, float],
          source_mpp: float, card: ModelCard, allow_upsample: bool) -> RegionRead:
    if isinstance(image, Slide):
        return read_slide_region(image, bbox, source_mpp, card.mpp, allow_upsample)
    return pixels_region(image.image, image.origin_x, image.origin_y, image.downsample, bbox,
                         source_mpp, card.mpp, allow_upsample)


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
