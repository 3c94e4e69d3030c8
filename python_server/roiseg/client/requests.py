"""Segment requests as the command line sends them: the ROI's pixels read here (or the slide's
path for a server that reads it), the pixel-size rule, overlay views and the progress bar."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import cv2
import numpy as np
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from roiseg.client.connection import (
    encode_png,
    segment_request,
    slide_source,
)
from roiseg.errors import InvalidInput
from roiseg.io.slides import Slide, choose_level, resample
from roiseg.v1 import segmentation_pb2 as pb

#: Longest side of an overlay picture, in pixels.
OVERLAY_SIDE = 1600


class PixelsSink(Protocol):
    """Whatever takes a request's pixels (`Client`, `InProcessClient`, a batch's Ray worker):
    inline, or uploaded first."""

    def pixels_source(self, encoded: bytes, **fields: Any) -> pb.ImageSource: ...


def read_region(slide: Slide, geometry: BaseGeometry, downsample: float,
                margin: bool = True) -> tuple[np.ndarray, tuple[float, float], float]:
    """The slide pixels covering the ROI's bounding box at `downsample` (read from the
    level that suits it, then shrunk), with their full-resolution origin and downsample.
    With `margin`, a pixel more is read each side (within the image), so that the pixels
    cover the whole box although shrinking rounds their extent: what a request needs."""
    level = choose_level(slide.levels, downsample)
    extent = box(0, 0, slide.width, slide.height)
    x0, y0, x1, y1 = geometry.intersection(extent).bounds \
        if geometry.intersects(extent) else (0, 0, 1, 1)
    if margin:
        x0, y0 = max(0.0, x0 - downsample), max(0.0, y0 - downsample)
        x1, y1 = min(slide.width, x1 + downsample), min(slide.height, y1 + downsample)
    lx0, ly0 = math.floor(x0 / level.downsample_x), math.floor(y0 / level.downsample_y)
    lx1 = min(level.width, math.ceil(x1 / level.downsample_x))
    ly1 = min(level.height, math.ceil(y1 / level.downsample_y))
    pixels = slide.read_level_region(level.index, lx0, ly0, max(1, lx1 - lx0), max(1, ly1 - ly0))
    origin = (lx0 * level.downsample_x, ly0 * level.downsample_y)
    shrink = level.downsample_x / downsample
    if shrink < 1 - 1e-3:
        height, width = pixels.shape[:2]
        size = max(1, round(width * shrink)), max(1, round(height * shrink))
        pixels = resample(pixels, *size)
        return pixels, origin, level.downsample_x * width / size[0]
    return pixels, origin, level.downsample_x


def region_source(client: PixelsSink, slide: Slide, geometry: BaseGeometry,
                  mpp: float, target_mpp: float) -> pb.ImageSource:
    """The ROI's pixels read here, near `target_mpp`, as the request's image (uploaded
    first when they are too large for one message)."""
    pixels, origin, downsample = read_region(slide, geometry, target_mpp / mpp)
    return client.pixels_source(encode_png(pixels), downsample=downsample, origin_x=origin[0],
                                origin_y=origin[1], pixel_size_um=mpp, image_width=slide.width,
                                image_height=slide.height)


def pixel_size(name: str, file_mpp: float | None, given: float | None = None) -> float:
    """An image's full-resolution µm/px: `given` (--mpp), else its file's; InvalidInput saying
    to pass --mpp when it has neither (roiseg never guesses a pixel size)."""
    mpp = given or file_mpp or 0.0
    if not mpp > 0:
        raise InvalidInput(f"{name} has no pixel size in its metadata: pass it with --mpp "
                         "(µm per full-resolution pixel)")
    return mpp


def roi_request(client: PixelsSink, image: Path, geometry: BaseGeometry,
                mpp: float, model_ids: Sequence[str], options: pb.SegmentOptions,
                target_mpp: float, server_reads_slide: bool = False) -> pb.SegmentRequest:
    """The Segment request for one ROI of an image: the image's path when the server reads
    the file itself, else the ROI's pixels read here near `target_mpp`."""
    if server_reads_slide:
        source = slide_source(str(Path(image).resolve()), mpp)
    else:
        with Slide.open(image) as slide:
            source = region_source(client, slide, geometry, mpp, target_mpp)
    return segment_request(geometry, source, list(model_ids), options)


def overlay_view(slide: Slide, geometry: BaseGeometry):
    """The ROI's pixels (its bounding box, no margin) at a downsample that fits an overlay
    picture."""
    x0, y0, x1, y1 = geometry.bounds
    return read_region(slide, geometry, max(1.0, max(x1 - x0, y1 - y0) / OVERLAY_SIDE),
                       margin=False)


def confidence_raster(confidence: pb.ConfidenceMap
                      ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A model's ConfidenceMap as a uint8 raster (255 = unsure) and its placement (origin x,
    origin y, downsample x, downsample y in full-resolution pixels)."""
    raster = cv2.imdecode(np.frombuffer(confidence.png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if raster is None:
        raise InvalidInput("the server sent no confidence map")
    return raster, (confidence.origin_x, confidence.origin_y, confidence.downsample_x,
                    confidence.downsample_y)


class ProgressBar:
    """A tqdm bar over tiles, labelled with the stage."""

    _STAGES = {v.number: v.name.removeprefix("STAGE_").lower()
               for v in pb.Stage.DESCRIPTOR.values}

    def __enter__(self) -> "ProgressBar":
        self._bar = tqdm(total=0, unit="tile", file=sys.stderr, leave=False,
                         disable=not sys.stderr.isatty())
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def update(self, progress: pb.Progress) -> None:
        self._bar.set_description(f"{progress.model_id} {self._STAGES.get(progress.stage, '')}")
        if progress.tiles_total:
            self._bar.total = progress.tiles_total
            self._bar.n = progress.tiles_done
        self._bar.refresh()


def effort_text(effort: pb.CorrectionEffort) -> str:
    """A submitted correction's effort in a few lines: all classes, then each class."""
    if not effort.measured:
        return f"correction effort not measured: {effort.not_measured_why}"
    lines = [f"correction effort (objects matched by {effort.matched_by}):"]
    for c in (*effort.classes[-1:], *effort.classes[:-1]):
        dice = f"{c.dice:.3f}" if c.HasField("dice") else "n/a"
        lines.append(f"  {'all classes' if c.name == '(all)' else c.name}: Dice {dice}; "
                     f"{c.added_um2:,.0f} µm² added, {c.removed_um2:,.0f} µm² removed; "
                     f"{c.predicted_objects} predicted: {c.kept} kept, {c.edited} edited, "
                     f"{c.deleted} deleted; {c.added} added")
    return "\n".join(lines)


def catch_all_names(models: Iterable[pb.ModelInfo], class_names: Mapping[str, str]
                    ) -> frozenset[str]:
    """The names, as `class_names` renames them, of the models' catch-all classes (the rest of
    the tissue): overlays draw them as outlines, not over the stain."""
    return frozenset(class_names.get(c.name, c.name) for model in models
                     for c in model.classes if c.catch_all)
