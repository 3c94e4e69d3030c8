"""Class map to class polygons (and back), in raster pixel-corner coordinates."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import rasterio.errors
import rasterio.features
import shapely
from affine import Affine
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from roiseg.engine.postprocess import NO_CLASS, present_values

__all__ = ["Region", "class_regions", "rasterize_regions", "roi_mask"]

_IDENTITY = Affine.identity()
#: Parts with an area (px²) at or below this are dropped as degenerate.
_MIN_PART_AREA = 1e-9
#: Smallest area (px²) of a triangle of three non-collinear pixel corners.
_MIN_TRIANGLE_AREA = 0.5
#: Rows per band when looking for junctions (bounds temporary memory).
_JUNCTION_BAND = 2048


@dataclass(frozen=True)
class Region:
    """One connected region of one class."""

    class_index: int
    #: Raster pixel-corner coordinates; valid, inside the ROI.
    geometry: Polygon
    #: Area of `geometry` in raster pixels.
    area_px: float
    #: Mean probability (0..1) over the pixels of the connected component it comes from.
    mean_probability: float


def class_regions(class_map: np.ndarray, probability: np.ndarray, roi: BaseGeometry,
                  simplify_px: float, classes: Sequence[int] | None = None) -> list[Region]:
    """Polygons, with holes, of the 4-connected regions of each class.

    Boundaries follow pixel edges, then are simplified with tolerance `simplify_px`
    (0 = none) over the whole coverage so that neighbouring regions keep shared edges;
    the result is clipped to `roi`. NO_CLASS yields nothing.

    Args:
        class_map: (H, W) uint8 class indices, NO_CLASS where no class.
        probability: (H, W) probability of each pixel's class, uint8 0..255 or float 0..1.
        roi: region of interest in raster coordinates.
        simplify_px: simplification tolerance in raster pixels.
        classes: classes to return; None for all.

    Returns:
        Regions ordered by class, then by position of the component they come from.
    """
    class_map = np.asarray(class_map)
    if class_map.ndim != 2 or class_map.dtype != np.uint8:
        raise ValueError(f"class map must be (H, W) uint8, got {class_map.shape} "
                         f"{class_map.dtype}")
    probability = np.asarray(probability)
    if probability.shape != class_map.shape:
        raise ValueError(f"probability {probability.shape} and class map {class_map.shape} "
                         "differ in shape")
    if not (simplify_px >= 0):
        raise ValueError(f"simplify_px must be >= 0, got {simplify_px}")
    if class_map.size == 0 or roi is None or roi.is_empty:
        return []

    labels, label_class = _label_classes(class_map)
    if label_class.size <= 1:
        return []
    mean = _label_means(labels, probability, label_class.size)

    wanted = np.ones(256, dtype=bool)
    if classes is not None:
        wanted[:] = False
        wanted[[int(c) for c in classes if 0 <= int(c) < 256]] = True
    wanted[NO_CLASS] = False
    wanted_label = wanted[label_class]

    # Pixel-corner vertices have integer coordinates, so every vertex triangle but a
    # collinear one has an area >= 0.5 px²: below this tolerance simplification cannot
    # change a shape and is skipped.
    simplify = simplify_px * simplify_px >= _MIN_TRIANGLE_AREA
    if simplify:
        # The whole coverage (every class), so that shared edges stay shared and shapes
        # do not depend on `classes`.
        ids, polygons = _polygons(labels, labels > 0, class_map)
        polygons = shapely.coverage_simplify(polygons, simplify_px, simplify_boundary=True)
    else:
        ids, polygons = _polygons(labels, wanted_label[labels])
    keep = wanted_label[ids]
    ids, polygons = ids[keep], polygons[keep]

    polygons = _make_valid(polygons)
    polygons = _clip(polygons, roi)
    order = np.argsort(ids, kind="stable")
    regions = []
    for label, geometry in zip(ids[order], polygons[order]):
        for part in _polygon_parts(geometry):
            area = part.area
            if area > _MIN_PART_AREA:
                regions.append(Region(int(label_class[label]), part, float(area),
                                      float(mean[label])))
    return regions


def rasterize_regions(regions: Sequence[Region], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 class map of `regions` (pixel centres decide), NO_CLASS elsewhere."""
    shape = (int(shape[0]), int(shape[1]))
    shapes = [(r.geometry, r.class_index) for r in regions if not r.geometry.is_empty]
    if not shapes or shape[0] == 0 or shape[1] == 0:
        return np.full(shape, NO_CLASS, dtype=np.uint8)
    with _quiet():
        return rasterio.features.rasterize(shapes, out_shape=shape, fill=NO_CLASS,
                                           transform=_IDENTITY, dtype="uint8")


def roi_mask(roi: BaseGeometry, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels whose centres lie inside `roi` (raster coordinates)."""
    shape = (int(shape[0]), int(shape[1]))
    if roi is None or roi.is_empty or shape[0] == 0 or shape[1] == 0:
        return np.zeros(shape, dtype=bool)
    with _quiet():
        return rasterio.features.geometry_mask([roi], out_shape=shape, transform=_IDENTITY,
                                               invert=True)


# --------------------------------------------------------------------------- helpers


@contextmanager
def _quiet() -> Iterator[None]:
    """Silences rasterio's warning about the (intended) identity transform."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        yield


#: Pixels per block when averaging probabilities per label.
_MEANS_BLOCK_PIXELS = 1 << 22


def _label_classes(class_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Int32 labels of the 4-connected regions of every class (0 on NO_CLASS), numbered
    class by class, and the class of each label (index 0 unused)."""
    labels = np.zeros(class_map.shape, dtype=np.int32)
    label_class = [np.array([NO_CLASS], dtype=np.uint8)]
    offset = 0
    present = present_values(class_map)
    for value in present:
        if value == NO_CLASS:
            continue
        mask = class_map == value
        count, lab = cv2.connectedComponents(mask.view(np.uint8), connectivity=4,
                                             ltype=cv2.CV_32S)
        count -= 1
        lab += offset  # in place, then copied where the class is: no full-size temporaries
        np.copyto(labels, lab, where=mask)
        label_class.append(np.full(count, value, dtype=np.uint8))
        offset += count
    return labels, np.concatenate(label_class)


def _label_means(labels: np.ndarray, probability: np.ndarray, count: int) -> np.ndarray:
    """Mean probability (0..1) of each label, summed in row blocks so that no full-size
    float array is made."""
    sums = np.zeros(count, dtype=np.float64)
    sizes = np.zeros(count, dtype=np.int64)
    rows = max(1, _MEANS_BLOCK_PIXELS // max(1, labels.shape[1]))
    for top in range(0, labels.shape[0], rows):
        block = labels[top:top + rows].ravel()
        sums += np.bincount(block, weights=probability[top:top + rows].ravel(), minlength=count)
        sizes += np.bincount(block, minlength=count)
    if probability.dtype == np.uint8:
        sums /= 255.0
    return sums / np.maximum(sizes, 1)


def _polygons(labels: np.ndarray, mask: np.ndarray, class_map: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Exact pixel-edge polygons of the labels under `mask` (one per 4-connected label
    region).

    With `class_map`, every ring also gets a vertex at each pixel corner where three or
    more values meet, so that the polygons form an edge-matched coverage (polygonize
    leaves such corners out of a ring that runs straight through them).
    """
    ids: list[int] = []
    ring_coords: list[np.ndarray] = []  # arrays, not Python tuples: 16 bytes a vertex
    ring_sizes: list[int] = []
    polygon_rings: list[int] = []
    with _quiet():
        for geojson, value in rasterio.features.shapes(labels, mask=mask,
                                                       connectivity=4, transform=_IDENTITY):
            rings = geojson["coordinates"]
            ids.append(int(value))
            polygon_rings.append(len(rings))
            for ring in rings:
                ring_coords.append(np.asarray(ring, dtype=np.float64))
                ring_sizes.append(len(ring))
    if not ids:
        return np.zeros(0, dtype=np.int64), np.empty(0, dtype=object)
    xy = np.concatenate(ring_coords)
    sizes = np.asarray(ring_sizes, dtype=np.int64)
    if class_map is not None:
        xy, sizes = _insert_junctions(xy, sizes, class_map)
    # Build all rings and polygons in bulk: far faster than one shapely object at a time.
    rings = shapely.linearrings(xy, indices=np.repeat(np.arange(sizes.size), sizes))
    polygons = shapely.polygons(rings, indices=np.repeat(np.arange(len(ids)), polygon_rings))
    return np.asarray(ids, dtype=np.int64), polygons


def _junctions(class_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel corners where >= 3 values meet (outside the map counts as NO_CLASS), as sorted
    keys y * (W + 1) + x (row-major) and x * (H + 1) + y (column-major)."""
    height, width = class_map.shape
    padded = np.pad(class_map, 1, constant_values=NO_CLASS)
    rows = []
    for top in range(0, height + 1, _JUNCTION_BAND):
        band = padded[top:min(top + _JUNCTION_BAND, height + 1) + 1]
        a, b = band[:-1, :-1], band[:-1, 1:]
        c, d = band[1:, :-1], band[1:, 1:]
        distinct = ((a != b).astype(np.uint8) + ((c != a) & (c != b))
                    + ((d != a) & (d != b) & (d != c)))
        ys, xs = np.nonzero(distinct >= 2)
        rows.append((ys + top).astype(np.int64) * (width + 1) + xs)
    by_row = np.concatenate(rows)
    ys, xs = np.divmod(by_row, width + 1)
    by_column = np.sort(xs * (height + 1) + ys)
    return by_row, by_column


def _insert_junctions(xy: np.ndarray, sizes: np.ndarray, class_map: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Adds the junction corners lying inside ring segments (all axis-aligned) to rings."""
    by_row, by_column = _junctions(class_map)
    if by_row.size == 0:
        return xy, sizes
    height, width = class_map.shape
    ixy = np.rint(xy).astype(np.int64)
    x0, y0 = ixy[:-1, 0], ixy[:-1, 1]
    x1, y1 = ixy[1:, 0], ixy[1:, 1]
    ring_end = np.cumsum(sizes) - 1  # index of each ring's closing point
    segment = np.ones(xy.shape[0] - 1, dtype=bool)
    segment[ring_end[:-1]] = False  # no segment from one ring's end to the next's start
    horizontal = segment & (y0 == y1)
    vertical = segment & (x0 == x1) & ~horizontal
    # Keys strictly between the segment's ends: contiguous runs of the sorted keys.
    lo = np.where(horizontal, y0 * (width + 1) + np.minimum(x0, x1),
                  x0 * (height + 1) + np.minimum(y0, y1))
    hi = np.where(horizontal, y0 * (width + 1) + np.maximum(x0, x1),
                  x0 * (height + 1) + np.maximum(y0, y1))
    start = np.where(horizontal, np.searchsorted(by_row, lo, "right"),
                     np.searchsorted(by_column, lo, "right"))
    stop = np.where(horizontal, np.searchsorted(by_row, hi, "left"),
                    np.searchsorted(by_column, hi, "left"))
    count = np.where(horizontal | vertical, np.maximum(stop - start, 0), 0)
    total = int(count.sum())
    if total == 0:
        return xy, sizes

    # Each point is followed by the corners inserted into the segment it starts.
    count_per_point = np.append(count, 0)
    position = np.arange(xy.shape[0]) + np.concatenate(([0], np.cumsum(count_per_point)[:-1]))
    out = np.empty((xy.shape[0] + total, 2), dtype=np.float64)
    out[position] = xy
    seg = np.repeat(np.arange(count.size), count)
    k = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    ascending = np.where(horizontal[seg], x1[seg] > x0[seg], y1[seg] > y0[seg])
    index = np.where(ascending, start[seg] + k, stop[seg] - 1 - k)
    key = np.where(horizontal[seg], by_row[np.minimum(index, by_row.size - 1)],
                   by_column[np.minimum(index, by_column.size - 1)])
    major, minor = np.divmod(key, np.where(horizontal[seg], width + 1, height + 1))
    out[position[seg] + 1 + k] = np.where(horizontal[seg][:, None],
                                          np.stack([minor, major], axis=1),
                                          np.stack([major, minor], axis=1))
    ring = np.repeat(np.arange(sizes.size), sizes)[:-1]
    return out, sizes + np.bincount(ring, weights=count, minlength=sizes.size).astype(np.int64)


def _make_valid(polygons: np.ndarray) -> np.ndarray:
    invalid = ~shapely.is_valid(polygons)
    if invalid.any():
        polygons = polygons.copy()
        polygons[invalid] = shapely.make_valid(polygons[invalid])
    return polygons


def _clip(polygons: np.ndarray, roi: BaseGeometry) -> np.ndarray:
    roi = shapely.make_valid(roi) if not roi.is_valid else roi
    shapely.prepare(roi)
    inside = shapely.contains_properly(roi, polygons)
    outside = ~shapely.intersects(roi, polygons)
    partial = ~inside & ~outside
    polygons = polygons.copy()
    polygons[outside] = shapely.Polygon()
    if partial.any():
        polygons[partial] = shapely.intersection(polygons[partial], roi)
    return polygons


def _polygon_parts(geometry: BaseGeometry) -> Iterator[Polygon]:
    """The single polygons in `geometry`, at any depth of collections."""
    if geometry.is_empty:
        return
    if isinstance(geometry, Polygon):
        yield geometry
    elif hasattr(geometry, "geoms"):
        for part in geometry.geoms:
            yield from _polygon_parts(part)
