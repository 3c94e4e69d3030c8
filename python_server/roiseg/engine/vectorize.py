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
import scipy.sparse
import scipy.sparse.csgraph
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
#: Pixels per band of rows labelled and polygonised at once: memory stays that of one band
#: (int32 labels and a few masks) whatever the map's size.
_BAND_PIXELS = 1 << 22


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

    wanted = np.ones(256, dtype=bool)
    if classes is not None:
        wanted[:] = False
        wanted[[int(c) for c in classes if 0 <= int(c) < 256]] = True
    wanted[NO_CLASS] = False

    # Pixel-corner vertices have integer coordinates, so every vertex triangle but a
    # collinear one has an area >= 0.5 px²: below this tolerance simplification cannot
    # change a shape and is skipped.
    simplify = simplify_px * simplify_px >= _MIN_TRIANGLE_AREA
    # Simplified: the whole coverage (every class), so that shared edges stay shared and
    # shapes do not depend on `classes`.
    components = _components(class_map, probability, None if simplify else wanted,
                             junctions=simplify)
    if components.ids.size == 0:
        return []
    ids, polygons = components.ids, components.polygons
    if simplify:
        polygons = shapely.coverage_simplify(polygons, simplify_px, simplify_boundary=True)
        keep = wanted[components.classes]
        ids, polygons = ids[keep], polygons[keep]
        label_class, mean = components.classes[keep], components.means[keep]
    else:
        label_class, mean = components.classes, components.means

    polygons = _make_valid(polygons)
    polygons = _clip(polygons, roi)
    regions = []
    for index, geometry in enumerate(polygons):
        for part in _polygon_parts(geometry):
            area = part.area
            if area > _MIN_PART_AREA:
                regions.append(Region(int(label_class[index]), part, float(area),
                                      float(mean[index])))
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


@dataclass(frozen=True)
class _Components:
    """The 4-connected regions of a class map, one polygon each, ordered by class, then by
    the raster scan position of their first pixel."""

    ids: np.ndarray
    polygons: np.ndarray
    classes: np.ndarray
    #: Mean probability (0..1) of each region's pixels.
    means: np.ndarray


def _components(class_map: np.ndarray, probability: np.ndarray, wanted: np.ndarray | None,
                junctions: bool) -> _Components:
    """Exact pixel-edge polygons of the 4-connected regions of every class (of `wanted`
    classes only: a (256,) bool table), made band of rows by band of rows so that memory
    stays that of one band whatever the map's size.

    A region crossing the bands' seams is the union of its bands' pieces, with the vertices
    the seams added taken out again: the polygons are those of the whole map at once. With
    `junctions`, every ring also gets a vertex at each pixel corner where three or more
    values meet, so that the polygons form an edge-matched coverage (polygonize leaves such
    corners out of a ring that runs straight through them).
    """
    height, width = class_map.shape
    rows = max(1, _BAND_PIXELS // max(1, width))
    corners = _junctions(class_map, rows) if junctions else None
    label_class = [np.array([NO_CLASS], dtype=np.uint8)]
    sums, sizes = [np.zeros(1)], [np.zeros(1, dtype=np.int64)]
    ids: list[np.ndarray] = []
    polygons: list[np.ndarray] = []
    links: list[np.ndarray] = []
    offset = 0
    above: tuple[np.ndarray, np.ndarray] | None = None
    for top in range(0, height, rows):
        band = class_map[top:top + rows]
        labels, band_class = _label_band(band, offset)
        count = band_class.size
        label_class.append(band_class)
        band_sums, band_sizes = _label_sums(labels, probability[top:top + rows], offset, count)
        sums.append(band_sums)
        sizes.append(band_sizes)
        if above is not None:
            links.append(_seam_links(*above, labels[0], band[0]))
        above = (labels[-1].copy(), band[-1])
        if count:
            mask = labels > 0 if wanted is None else wanted[band]
            band_ids, band_polygons = _polygons(labels, mask, top, corners)
            ids.append(band_ids)
            polygons.append(band_polygons)
        offset += count
        del labels
    if not ids:
        return _Components(*(np.zeros(0, dtype=t) for t in (np.int64, object, np.uint8,
                                                           np.float64)))
    classes = np.concatenate(label_class)
    total = np.concatenate(sums)
    pixels = np.concatenate(sizes)
    piece_ids, piece_polygons = np.concatenate(ids), np.concatenate(polygons)
    group = _groups(offset + 1, links)
    region_sums: np.ndarray = np.bincount(group, weights=total)
    if probability.dtype == np.uint8:
        region_sums = region_sums / 255.0
    region_sizes = np.bincount(group, weights=pixels)
    means = region_sums / np.maximum(region_sizes, 1)
    merged_ids, merged = _merge_pieces(piece_ids, piece_polygons, group, rows, height, corners)
    order = np.lexsort((merged_ids, classes[merged_ids]))
    merged_ids, merged = merged_ids[order], merged[order]
    return _Components(merged_ids, merged, classes[merged_ids], means[merged_ids])


def _label_band(band: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Int32 labels (from offset + 1; 0 on NO_CLASS) of the 4-connected regions of every
    class in a band, numbered class by class, and the class of each label."""
    labels = np.zeros(band.shape, dtype=np.int32)
    label_class = []
    for value in present_values(band):
        if value == NO_CLASS:
            continue
        mask = band == value
        count, lab = cv2.connectedComponents(mask.view(np.uint8), connectivity=4,
                                             ltype=cv2.CV_32S)
        count -= 1
        lab += offset  # in place, then copied where the class is: no full-size temporaries
        np.copyto(labels, lab, where=mask)
        label_class.append(np.full(count, value, dtype=np.uint8))
        offset += count
    return labels, (np.concatenate(label_class) if label_class
                    else np.zeros(0, dtype=np.uint8))


def _label_sums(labels: np.ndarray, probability: np.ndarray, offset: int, count: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Sum of `probability` and pixel count of labels offset + 1 .. offset + count."""
    flat = labels.ravel()
    sums = np.bincount(flat, weights=probability.ravel(), minlength=offset + count + 1)
    sizes = np.bincount(flat, minlength=offset + count + 1)
    return sums[offset + 1:], sizes[offset + 1:]


def _seam_links(labels_above: np.ndarray, classes_above: np.ndarray,
                labels_below: np.ndarray, classes_below: np.ndarray) -> np.ndarray:
    """(n, 2) pairs of labels on both sides of a seam that belong to one region."""
    joined = (classes_above == classes_below) & (classes_above != NO_CLASS)
    pairs = np.stack([labels_above[joined], labels_below[joined]], axis=1).astype(np.int64)
    return np.unique(pairs, axis=0)


def _groups(count: int, links: list[np.ndarray]) -> np.ndarray:
    """The region of each of `count` labels: the smallest label linked to it."""
    if not links or not sum(link.shape[0] for link in links):
        return np.arange(count)
    pairs = np.concatenate(links)
    graph = scipy.sparse.coo_matrix((np.ones(len(pairs), dtype=np.int8),
                                     (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    first = np.full(component.max() + 1, count, dtype=np.int64)
    np.minimum.at(first, component, np.arange(count))
    return first[component]


def _merge_pieces(ids: np.ndarray, polygons: np.ndarray, group: np.ndarray, rows: int,
                  height: int, corners: _Corners | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One polygon per region: pieces of a region cut by seams united, with the ring
    vertices the seams made removed and the rings started and turned as polygonize does."""
    regions = group[ids]
    order = np.argsort(regions, kind="stable")
    regions, polygons = regions[order], polygons[order]
    unique, first, counts = np.unique(regions, return_index=True, return_counts=True)
    merged = polygons[first].copy()
    seams = np.arange(rows, height, rows)
    for index in np.flatnonzero(counts > 1):
        pieces = polygons[first[index]:first[index] + counts[index]]
        merged[index] = _as_polygonized(shapely.union_all(pieces), seams, corners)
    return unique, merged


def _as_polygonized(polygon: BaseGeometry, seams: np.ndarray,
                    corners: _Corners | None) -> BaseGeometry:
    """A united region as polygonize gives it: no vertex on a seam row where the ring runs
    straight on (unless it is a junction corner), exterior rings from their top-left vertex
    downwards, holes from their top-left vertex rightwards."""
    if not isinstance(polygon, Polygon):
        return polygon
    shell = _polygonized_ring(np.asarray(polygon.exterior.coords), seams, corners, down=True)
    holes = sorted((_polygonized_ring(np.asarray(ring.coords), seams, corners, down=False)
                    for ring in polygon.interiors), key=lambda ring: (ring[0, 1], ring[0, 0]))
    return Polygon(shell, holes)


def _polygonized_ring(ring: np.ndarray, seams: np.ndarray,
                      corners: _Corners | None, down: bool) -> np.ndarray:
    points = ring[:-1]
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    straight = ((before[:, 0] - points[:, 0]) * (after[:, 1] - points[:, 1])
                == (before[:, 1] - points[:, 1]) * (after[:, 0] - points[:, 0]))
    drop = straight & np.isin(points[:, 1], seams)
    if corners is not None and drop.any():
        keys = points[:, 1].astype(np.int64) * (corners.width + 1) + points[:, 0].astype(np.int64)
        drop &= ~np.isin(keys, corners.by_row)
    points = points[~drop]
    start = np.lexsort((points[:, 0], points[:, 1]))[0]
    points = np.roll(points, -start, axis=0)
    goes_down = points[1, 0] == points[0, 0] if len(points) > 1 else True
    if goes_down != down:
        points = np.concatenate([points[:1], points[:0:-1]])
    return np.concatenate([points, points[:1]])


def _polygons(labels: np.ndarray, mask: np.ndarray, top: int = 0,
              corners: _Corners | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Exact pixel-edge polygons of the labels under `mask` (one per 4-connected label
    region) of a band whose first row is row `top` of the map; with `corners` (from
    `_junctions`), junction corners are inserted into the rings."""
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
    xy[:, 1] += top
    sizes = np.asarray(ring_sizes, dtype=np.int64)
    if corners is not None:
        xy, sizes = _insert_junctions(xy, sizes, corners)
    # Build all rings and polygons in bulk: far faster than one shapely object at a time.
    rings = shapely.linearrings(xy, indices=np.repeat(np.arange(sizes.size), sizes))
    polygons = shapely.polygons(rings, indices=np.repeat(np.arange(len(ids)), polygon_rings))
    return np.asarray(ids, dtype=np.int64), polygons


@dataclass(frozen=True)
class _Corners:
    """Pixel corners where >= 3 values meet, as sorted keys y * (W + 1) + x (row-major) and
    x * (H + 1) + y (column-major) of an (H, W) map."""

    by_row: np.ndarray
    by_column: np.ndarray
    width: int
    height: int


def _junctions(class_map: np.ndarray, rows: int) -> _Corners:
    """The junction corners of a map (outside it counts as NO_CLASS), found band of `rows`
    rows by band."""
    height, width = class_map.shape
    found = []
    for top in range(0, height + 1, rows):
        bottom = min(top + rows, height + 1)  # corner rows top .. bottom - 1
        band = class_map[max(top - 1, 0):min(bottom, height)]
        band = np.pad(band, ((int(top == 0), int(bottom == height + 1)), (1, 1)),
                      constant_values=NO_CLASS)
        a, b = band[:-1, :-1], band[:-1, 1:]
        c, d = band[1:, :-1], band[1:, 1:]
        distinct = ((a != b).astype(np.uint8) + ((c != a) & (c != b))
                    + ((d != a) & (d != b) & (d != c)))
        ys, xs = np.nonzero(distinct >= 2)
        found.append((ys + top).astype(np.int64) * (width + 1) + xs)
    by_row = np.concatenate(found)
    ys, xs = np.divmod(by_row, width + 1)
    return _Corners(by_row, np.sort(xs * (height + 1) + ys), width, height)


def _insert_junctions(xy: np.ndarray, sizes: np.ndarray, corners: _Corners
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Adds the junction corners lying inside ring segments (all axis-aligned) to rings."""
    by_row, by_column = corners.by_row, corners.by_column
    if by_row.size == 0:
        return xy, sizes
    height, width = corners.height, corners.width
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
