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

__all__ = ["MapVectorizer", "Region", "class_regions", "rasterize_regions", "roi_mask"]

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
    """Polygons, with holes, of the 4-connected regions of each class (see `MapVectorizer`,
    to which the whole map is given at once).

    Args:
        class_map: (H, W) uint8 class indices, NO_CLASS where no class.
        probability: (H, W) probability of each pixel's class, uint8 0..255 or float 0..1.
        roi: region of interest in raster coordinates.
        simplify_px: simplification tolerance in raster pixels.
        classes: classes to return; None for all.
    """
    class_map = np.asarray(class_map)
    if class_map.ndim != 2 or class_map.dtype != np.uint8:
        raise ValueError(f"class map must be (H, W) uint8, got {class_map.shape} "
                         f"{class_map.dtype}")
    height, width = class_map.shape
    vectorizer = MapVectorizer(height, width, simplify_px, classes)
    vectorizer.add(class_map, np.asarray(probability))
    return vectorizer.regions(roi)


class MapVectorizer:
    """Polygons, with holes, of the 4-connected regions of each class of a class map given
    band of rows by band (`add`, bands of any heights, top to bottom): memory stays that of
    one band (int32 labels and a few masks) and the polygons found, whatever the map's size.

    Boundaries follow pixel edges, then are simplified with tolerance `simplify_px`
    (0 = none) over the whole coverage so that neighbouring regions keep shared edges;
    the result is clipped to the ROI. NO_CLASS yields nothing. The polygons do not depend on
    how the map was cut into bands.
    """

    def __init__(self, height: int, width: int, simplify_px: float,
                 classes: Sequence[int] | None = None) -> None:
        if not (simplify_px >= 0):
            raise ValueError(f"simplify_px must be >= 0, got {simplify_px}")
        self.height, self.width, self.simplify_px = height, width, simplify_px
        self.wanted = np.ones(256, dtype=bool)
        if classes is not None:
            self.wanted[:] = False
            self.wanted[[int(c) for c in classes if 0 <= int(c) < 256]] = True
        self.wanted[NO_CLASS] = False
        # Pixel-corner vertices have integer coordinates, so every vertex triangle but a
        # collinear one has an area >= 0.5 px²: below this tolerance simplification cannot
        # change a shape and is skipped.
        self.simplify = simplify_px * simplify_px >= _MIN_TRIANGLE_AREA
        # Simplified: the whole coverage (every class), so that shared edges stay shared and
        # shapes do not depend on `classes`.
        self._components = _ComponentBuilder(height, width,
                                             None if self.simplify else self.wanted,
                                             junctions=self.simplify)
        self._added = 0

    def add(self, class_rows: np.ndarray, probability_rows: np.ndarray) -> None:
        """The map's next rows: (n, W) uint8 classes and the probability of each pixel's class,
        uint8 0..255 or float 0..1 (one dtype for the whole map)."""
        if class_rows.ndim != 2 or class_rows.dtype != np.uint8 \
                or class_rows.shape[1] != self.width:
            raise ValueError(f"class map rows must be (n, {self.width}) uint8, got "
                             f"{class_rows.shape} {class_rows.dtype}")
        if probability_rows.shape != class_rows.shape:
            raise ValueError(f"probability {probability_rows.shape} and class map "
                             f"{class_rows.shape} differ in shape")
        if self._added + len(class_rows) > self.height:
            raise ValueError(f"more than the map's {self.height} rows were added")
        self._added += len(class_rows)
        self._components.add(class_rows, probability_rows)

    def regions(self, roi: BaseGeometry) -> list[Region]:
        """The regions, ordered by class, then by position of the component they come from,
        clipped to `roi` (raster coordinates); call once, after every row was added."""
        if self._added != self.height:
            raise ValueError(f"{self._added} of the map's {self.height} rows were added")
        components = self._components.finish()
        if components.ids.size == 0 or roi is None or roi.is_empty:
            return []
        ids, polygons = components.ids, components.polygons
        if self.simplify:
            polygons = shapely.coverage_simplify(polygons, self.simplify_px,
                                                 simplify_boundary=True)
            keep = self.wanted[components.classes]
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


class _ComponentBuilder:
    """Exact pixel-edge polygons of the 4-connected regions of every class (of `wanted`
    classes only: a (256,) bool table) of a map given in bands, made band of `_BAND_PIXELS`
    by band so that memory stays that of one band whatever the map's size.

    A region crossing the bands' seams is the union of its bands' pieces, with the vertices
    the seams added taken out again: the polygons are those of the whole map at once. With
    `junctions`, every ring also gets a vertex at each pixel corner where three or more
    values meet, so that the polygons form an edge-matched coverage (polygonize leaves such
    corners out of a ring that runs straight through them). A band is polygonised once the
    row below it is known (its bottom corners depend on it).
    """

    def __init__(self, height: int, width: int, wanted: np.ndarray | None,
                 junctions: bool) -> None:
        self.height, self.width, self.wanted, self.junctions = height, width, wanted, junctions
        self.rows = max(1, _BAND_PIXELS // max(1, width))
        self.top = 0
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_rows = 0
        self.row_above: np.ndarray | None = None
        self.labels_above: np.ndarray | None = None
        self.uint8 = True
        self.label_class = [np.array([NO_CLASS], dtype=np.uint8)]
        self.sums, self.sizes = [np.zeros(1)], [np.zeros(1, dtype=np.int64)]
        self.ids: list[np.ndarray] = []
        self.polygons: list[np.ndarray] = []
        self.links: list[np.ndarray] = []
        self.corner_keys: list[np.ndarray] = []
        self.offset = 0

    def add(self, class_rows: np.ndarray, probability_rows: np.ndarray) -> None:
        self.uint8 = probability_rows.dtype == np.uint8
        self.pending.append((class_rows, probability_rows))
        self.pending_rows += len(class_rows)
        while self.pending_rows > self.rows:  # a band and the row below it
            self._band(self.rows)

    def _take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `count` pending rows (classes, probabilities)."""
        classes, probabilities, taken = [], [], 0
        while taken < count:
            class_rows, probability_rows = self.pending[0]
            n = min(count - taken, len(class_rows))
            classes.append(class_rows[:n])
            probabilities.append(probability_rows[:n])
            if n == len(class_rows):
                self.pending.pop(0)
            else:
                self.pending[0] = (class_rows[n:], probability_rows[n:])
            taken += n
        self.pending_rows -= count
        return ((classes[0], probabilities[0]) if len(classes) == 1
                else (np.concatenate(classes), np.concatenate(probabilities)))

    def _band(self, rows: int) -> None:
        """Labels and polygonises the next `rows` rows."""
        band, probability = self._take(rows)
        top = self.top
        below = self.pending[0][0][:1] if self.pending else None
        corners = self._corners(band, below) if self.junctions else None
        labels, band_class = _label_band(band, self.offset)
        count = band_class.size
        self.label_class.append(band_class)
        band_sums, band_sizes = _label_sums(labels, probability, self.offset, count)
        self.sums.append(band_sums)
        self.sizes.append(band_sizes)
        if self.labels_above is not None and self.row_above is not None:
            self.links.append(_seam_links(self.labels_above, self.row_above, labels[0], band[0]))
        self.labels_above, self.row_above = labels[-1].copy(), band[-1].copy()
        if count:
            mask = labels > 0 if self.wanted is None else self.wanted[band]
            band_ids, band_polygons = _polygons(labels, mask, top, corners)
            self.ids.append(band_ids)
            self.polygons.append(band_polygons)
        self.offset += count
        self.top += len(band)

    def _corners(self, band: np.ndarray, below: np.ndarray | None) -> _Corners:
        """The junction corners on the band's rows of pixel corners (its top and bottom edges
        included); outside the map counts as NO_CLASS."""
        width = self.width
        edge = np.full((1, width), NO_CLASS, np.uint8)
        rows = np.concatenate([edge if self.row_above is None else self.row_above[None], band,
                               edge if below is None else below])
        rows = np.pad(rows, ((0, 0), (1, 1)), constant_values=NO_CLASS)
        a, b = rows[:-1, :-1], rows[:-1, 1:]
        c, d = rows[1:, :-1], rows[1:, 1:]
        distinct = ((a != b).astype(np.uint8) + ((c != a) & (c != b))
                    + ((d != a) & (d != b) & (d != c)))
        ys, xs = np.nonzero(distinct >= 2)
        by_row = (ys + self.top).astype(np.int64) * (width + 1) + xs
        self.corner_keys.append(by_row)
        return _Corners(by_row, np.sort(xs * (self.height + 1) + ys + self.top), width,
                        self.height)

    def finish(self) -> _Components:
        """The regions, once every row was added."""
        if self.pending_rows and self.width:
            self._band(self.pending_rows)
        if not self.ids:
            return _Components(*(np.zeros(0, dtype=t) for t in (np.int64, object, np.uint8,
                                                               np.float64)))
        classes = np.concatenate(self.label_class)
        total = np.concatenate(self.sums)
        pixels = np.concatenate(self.sizes)
        piece_ids, piece_polygons = np.concatenate(self.ids), np.concatenate(self.polygons)
        group = _groups(self.offset + 1, self.links)
        region_sums: np.ndarray = np.bincount(group, weights=total)
        if self.uint8:
            region_sums = region_sums / 255.0
        region_sizes = np.bincount(group, weights=pixels)
        means = region_sums / np.maximum(region_sizes, 1)
        corners = (_Corners(np.unique(np.concatenate(self.corner_keys)), np.zeros(0, np.int64),
                            self.width, self.height) if self.junctions else None)
        merged_ids, merged = _merge_pieces(piece_ids, piece_polygons, group, self.rows,
                                           self.height, corners)
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
    if count == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
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
    `_ComponentBuilder._corners`), junction corners are inserted into the rings."""
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
