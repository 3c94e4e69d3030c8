"""Tests of roiseg.engine.vectorize: class map <-> class polygons."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import shapely
from conftest import GLAS
from roiseg.engine.postprocess import NO_CLASS
from roiseg.engine.vectorize import Region, class_regions, rasterize_regions, roi_mask
from scipy import ndimage as ndi
from shapely.geometry import Point, Polygon, box

GLAS_MASK = GLAS / "masks" / "train_1.png"


def _areas_consistent(regions: list[Region]) -> tuple[float, float]:
    geometries = [r.geometry for r in regions]
    return sum(g.area for g in geometries), shapely.union_all(geometries).area


def _blocky_map() -> np.ndarray:
    """Classes 0..3 in random blocks, NO_CLASS blocks, some 1-px specks."""
    rng = np.random.default_rng(0)
    m = cv2.resize(rng.integers(0, 5, (12, 16)).astype(np.uint8), (64, 48),
                   interpolation=cv2.INTER_NEAREST)
    m[m == 4] = NO_CLASS
    m[rng.integers(0, 48, 40), rng.integers(0, 64, 40)] = rng.integers(0, 4, 40)
    return m


@pytest.fixture(scope="module")
def glas_map() -> np.ndarray:
    """A real gland mask made into 4 classes: stroma 0, glands 1..3 by instance."""
    mask = cv2.imread(str(GLAS_MASK), cv2.IMREAD_UNCHANGED) > 0
    _, instances = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    return np.where(instances > 0, 1 + instances % 3, 0).astype(np.uint8)


def test_exact_polygons_reproduce_the_map():
    m = _blocky_map()
    h, w = m.shape
    regions = class_regions(m, np.zeros_like(m), box(0, 0, w, h), 0.0)
    np.testing.assert_array_equal(rasterize_regions(regions, m.shape), m)
    assert all(r.geometry.is_valid and isinstance(r.geometry, Polygon) for r in regions)
    assert all(r.class_index != NO_CLASS for r in regions)
    # One polygon per 4-connected region; pixel areas exact.
    for c in range(4):
        labels, count = ndi.label(m == c)
        polygons = [r for r in regions if r.class_index == c]
        assert len(polygons) == count
        assert sorted(r.area_px for r in polygons) == sorted(
            np.bincount(labels.ravel())[1:].astype(float))
        assert all(r.area_px == r.geometry.area for r in polygons)


def test_rings_become_polygons_with_holes():
    m = np.full((20, 20), NO_CLASS, np.uint8)
    m[2:18, 2:18] = 1
    m[6:10, 6:10] = 2  # a hole of class 2
    m[12:15, 12:15] = NO_CLASS  # a hole of no class
    regions = class_regions(m, np.zeros_like(m), box(0, 0, 20, 20), 0.0)
    ring = [r for r in regions if r.class_index == 1]
    assert len(ring) == 1
    geometry = ring[0].geometry
    assert len(geometry.interiors) == 2
    holes = sorted((Polygon(i) for i in geometry.interiors), key=lambda p: p.area)
    assert holes[0].equals(box(12, 12, 15, 15)) and holes[1].equals(box(6, 6, 10, 10))
    assert geometry.exterior.equals(box(2, 2, 18, 18).exterior)
    assert ring[0].area_px == 16 * 16 - 16 - 9
    inner = [r for r in regions if r.class_index == 2]
    assert len(inner) == 1 and inner[0].geometry.equals(box(6, 6, 10, 10))


@pytest.mark.parametrize("roi", [Point(32.3, 24.1).buffer(19.7),
                                 Polygon([(3.2, 2.5), (61.7, 10.4), (20.6, 46.1)])],
                         ids=["circle", "triangle"])
@pytest.mark.parametrize("simplify_px", [0.0, 1.0])
def test_clipped_to_a_non_rectangular_roi(roi, simplify_px):
    m = _blocky_map()
    regions = class_regions(m, np.zeros_like(m), roi, simplify_px)
    assert regions
    tolerant = roi.buffer(1e-9)
    for r in regions:
        assert isinstance(r.geometry, Polygon) and r.geometry.is_valid
        assert tolerant.covers(r.geometry)
        assert r.area_px > 0
    inside = roi_mask(roi, m.shape)
    raster = rasterize_regions(regions, m.shape)
    assert (raster[~inside] == NO_CLASS).all()
    agreement = (raster[inside] == m[inside]).mean()
    if simplify_px == 0:
        assert agreement == 1.0
    else:
        assert agreement > 0.9  # blocks and 1-px specks: coarse for a 1 px tolerance
    total, union = _areas_consistent(regions)
    assert total == pytest.approx(union, abs=1e-6)
    covered = (m != NO_CLASS) & inside
    assert union == pytest.approx(covered.sum(), rel=0.05)


@pytest.mark.parametrize("simplify_px", [0.5, 1.0])
def test_simplified_real_mask_keeps_agreement_and_topology(glas_map, simplify_px):
    m = glas_map
    h, w = m.shape
    roi = Point(w / 2, h / 2).buffer(min(h, w) / 2 - 3)
    regions = class_regions(m, np.zeros_like(m), roi, simplify_px)
    inside = roi_mask(roi, m.shape)
    raster = rasterize_regions(regions, m.shape)
    assert (raster[inside] == m[inside]).mean() >= 0.99
    assert all(r.geometry.is_valid for r in regions)
    # Neighbouring classes keep shared edges: no overlaps and no gaps inside the ROI
    # (the map has a class everywhere).
    total, union = _areas_consistent(regions)
    assert total == pytest.approx(union, abs=1e-6)
    assert union == pytest.approx(roi.area, rel=1e-9)
    # Simplification removes vertices (the staircases) but keeps every region.
    exact = class_regions(m, np.zeros_like(m), roi, 0.0)
    assert len(regions) == len(exact)
    vertices = sum(shapely.get_num_coordinates(r.geometry) for r in regions)
    exact_vertices = sum(shapely.get_num_coordinates(r.geometry) for r in exact)
    if simplify_px >= 1:
        assert vertices < 0.7 * exact_vertices


def test_simplification_keeps_a_coverage_where_three_classes_meet():
    """Pixel noise: junctions everywhere; the simplified coverage has no gap or overlap."""
    rng = np.random.default_rng(5)
    m = rng.integers(0, 3, (60, 60)).astype(np.uint8)
    roi = Point(30, 30).buffer(26)
    for tolerance in (1.0, 2.0):
        regions = class_regions(m, np.zeros_like(m), roi, tolerance)
        total, union = _areas_consistent(regions)
        assert total == pytest.approx(roi.area, rel=1e-9)
        assert union == pytest.approx(roi.area, rel=1e-9)
        assert all(r.geometry.is_valid for r in regions)


def test_junction_vertices_make_an_edge_matched_coverage():
    from roiseg.engine import vectorize

    rng = np.random.default_rng(6)
    m = rng.integers(0, 4, (24, 30)).astype(np.uint8)
    m[m == 3] = NO_CLASS
    zeros = np.zeros_like(m)

    def components(junctions: bool) -> np.ndarray:
        builder = vectorize._ComponentBuilder(*m.shape, None, junctions=junctions)
        builder.add(m, zeros)
        return builder.finish().polygons

    plain, matched = components(False), components(True)
    assert not shapely.coverage_is_valid(plain)  # polygonize skips junction corners
    assert shapely.coverage_is_valid(matched)
    assert shapely.equals(plain, matched).all()


def test_tolerance_below_half_pixel_area_changes_nothing(glas_map):
    h, w = glas_map.shape
    exact = class_regions(glas_map, np.zeros_like(glas_map), box(0, 0, w, h), 0.0)
    half = class_regions(glas_map, np.zeros_like(glas_map), box(0, 0, w, h), 0.5)
    assert [r.geometry.wkb for r in exact] == [r.geometry.wkb for r in half]


def test_mean_probability_per_region():
    m = np.full((10, 10), NO_CLASS, np.uint8)
    m[0:2, 0:2] = 1  # region A
    m[5:7, 5:8] = 1  # region B, same class
    m[0:3, 6:10] = 2
    p = np.zeros((10, 10), np.uint8)
    p[0:2, 0:2] = [[255, 0], [51, 102]]
    p[5:7, 5:8] = 204
    p[0:3, 6:10] = 17
    regions = class_regions(m, p, box(0, 0, 10, 10), 0.0)
    by_area = {(r.class_index, r.area_px): r.mean_probability for r in regions}
    assert by_area[(1, 4.0)] == pytest.approx((255 + 0 + 51 + 102) / 4 / 255)
    assert by_area[(1, 6.0)] == pytest.approx(0.8)
    assert by_area[(2, 12.0)] == pytest.approx(17 / 255)
    # Diagonal neighbours are separate regions (4-connectivity) with their own means.
    d = np.full((4, 4), NO_CLASS, np.uint8)
    d[1, 1] = d[2, 2] = 3
    pd = np.zeros((4, 4), np.uint8)
    pd[1, 1], pd[2, 2] = 255, 0
    diagonal = class_regions(d, pd, box(0, 0, 4, 4), 0.0)
    assert sorted(r.mean_probability for r in diagonal) == [0.0, 1.0]
    # Floats are taken as 0..1 already.
    as_float = class_regions(m, p / 255.0, box(0, 0, 10, 10), 0.0)
    assert [r.mean_probability for r in as_float] == pytest.approx(
        [r.mean_probability for r in regions])
    # A region cut in two by the ROI keeps its component's mean in both parts.
    cut = class_regions(m, p, box(0, 0, 10, 10).difference(box(6.9, 0, 7.1, 10)), 0.0)
    parts = [r for r in cut if r.class_index == 1 and r.area_px < 6]
    assert len(parts) == 3 and {round(r.mean_probability, 6) for r in parts} == {
        round(408 / 4 / 255, 6), 0.8}


def test_classes_restrict_output_without_changing_shapes(glas_map):
    h, w = glas_map.shape
    roi = box(0, 0, w, h)
    everything = class_regions(glas_map, np.zeros_like(glas_map), roi, 1.0)
    only = class_regions(glas_map, np.zeros_like(glas_map), roi, 1.0, classes=[2, NO_CLASS])
    assert only and {r.class_index for r in only} == {2}
    assert [r.geometry.wkb for r in only] == [
        r.geometry.wkb for r in everything if r.class_index == 2]
    exact = class_regions(glas_map, np.zeros_like(glas_map), roi, 0.0, classes=[1, 3])
    assert {r.class_index for r in exact} == {1, 3}
    assert [r.geometry.wkb for r in exact] == [
        r.geometry.wkb for r in class_regions(glas_map, np.zeros_like(glas_map), roi, 0.0)
        if r.class_index in (1, 3)]


def test_nothing_for_no_class_or_empty_roi():
    m = np.full((8, 8), NO_CLASS, np.uint8)
    assert class_regions(m, np.zeros_like(m), box(0, 0, 8, 8), 1.0) == []
    m[2:4, 2:4] = 0
    assert class_regions(m, np.zeros_like(m), Polygon(), 0.0) == []
    assert class_regions(m, np.zeros_like(m), box(5, 5, 8, 8), 0.0) == []
    assert len(class_regions(m, np.zeros_like(m), box(0, 0, 8, 8), 0.0)) == 1


def test_rasterize_and_roi_mask_use_pixel_centres():
    roi = box(2.4, 3.6, 5.6, 7.4)
    mask = roi_mask(roi, (10, 10))
    expected = np.zeros((10, 10), bool)
    expected[4:7, 2:6] = True  # centres x 2.5..5.5, y 4.5..6.5
    np.testing.assert_array_equal(mask, expected)
    region = Region(3, roi, roi.area, 0.5)
    raster = rasterize_regions([region], (10, 10))
    np.testing.assert_array_equal(raster == 3, expected)
    assert (raster[~expected] == NO_CLASS).all()
    assert (rasterize_regions([], (4, 5)) == NO_CLASS).all()
    assert not roi_mask(Polygon(), (4, 5)).any()


def test_many_regions():
    """A 1024 x 1024 map with > 10,000 regions, simplified."""
    rng = np.random.default_rng(7)
    m = cv2.resize(rng.integers(0, 4, (128, 128)).astype(np.uint8), (1024, 1024),
                   interpolation=cv2.INTER_NEAREST)
    specks = rng.integers(0, 1022, (12_000, 2))
    m[specks[:, 0], specks[:, 1]] = 4
    count = sum(ndi.label(m == c)[1] for c in range(5))
    assert count > 10_000
    regions = class_regions(m, np.full_like(m, 128), box(0, 0, 1024, 1024), 1.0)
    assert len(regions) == count
    raster = rasterize_regions(regions, m.shape)
    assert (raster == m).mean() > 0.99


def _random_blocks(seed: int) -> np.ndarray:
    """Blocks of 2..5 values (the last one NO_CLASS) with ragged, touching, nested shapes."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 90, 2)
    values = int(rng.integers(2, 6))
    coarse = rng.integers(0, values, (max(1, h // rng.integers(1, 8)),
                                      max(1, w // rng.integers(1, 8)))).astype(np.uint8)
    m = cv2.resize(coarse, (int(w), int(h)), interpolation=cv2.INTER_NEAREST)
    m[m == values - 1] = NO_CLASS
    return m


@pytest.mark.parametrize("seed", range(12))
def test_bands_of_rows_give_the_polygons_of_the_whole_map(monkeypatch, seed, glas_map):
    """Vectorising band by band (memory of one band) gives, vertex for vertex, the polygons
    and means of the whole map at once, whatever the band height: regions crossing seams
    are united without seam vertices, junction corners kept."""
    from roiseg.engine import vectorize

    m = glas_map if seed == 0 else _random_blocks(seed)
    h, w = m.shape
    p = np.random.default_rng(seed).integers(0, 256, m.shape).astype(np.uint8)
    rois = (box(0, 0, w, h), Point(w / 2, h / 2).buffer(min(w, h) / 2.2))
    cases = [(roi, tolerance, wanted) for roi in rois for tolerance in (0.0, 1.0, 2.0)
             for wanted in (None, [1])]
    whole = [class_regions(m, p, *case) for case in cases]
    assert sum(map(len, whole)) > 0
    for rows in (1, 7, 13, h - 1):
        monkeypatch.setattr(vectorize, "_BAND_PIXELS", rows * w)
        for case, expected in zip(cases, whole):
            banded = class_regions(m, p, *case)
            assert [(r.class_index, r.geometry.wkb, r.area_px, r.mean_probability)
                    for r in banded] == [
                (r.class_index, r.geometry.wkb, r.area_px, r.mean_probability)
                for r in expected], (rows, case[1:])


@pytest.mark.parametrize("seed", range(8))
def test_a_map_given_in_bands_of_any_heights_gives_the_polygons_of_the_whole_map(
        monkeypatch, seed, glas_map):
    """What inference hands over band by band (bands of its own heights, unrelated to the
    vectoriser's) gives, vertex for vertex, the polygons and means of the whole map."""
    from roiseg.engine import vectorize

    m = glas_map if seed == 0 else _random_blocks(seed + 100)
    h, w = m.shape
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 256, m.shape).astype(np.uint8)
    roi = Point(w / 2, h / 2).buffer(min(w, h) / 2.2)
    monkeypatch.setattr(vectorize, "_BAND_PIXELS", int(rng.integers(1, max(2, h // 3))) * w)
    for tolerance, wanted in ((0.0, None), (1.0, None), (1.0, [1]), (2.0, [0, 1])):
        expected = class_regions(m, p, roi, tolerance, wanted)
        vectorizer = vectorize.MapVectorizer(h, w, tolerance, wanted)
        top = 0
        while top < h:
            bottom = min(h, top + int(rng.integers(1, 40)))
            vectorizer.add(m[top:bottom], p[top:bottom])
            top = bottom
        got = vectorizer.regions(roi)
        assert len(got) > 0 or not expected
        assert [(r.class_index, r.geometry.wkb, r.area_px, r.mean_probability) for r in got] \
            == [(r.class_index, r.geometry.wkb, r.area_px, r.mean_probability)
                for r in expected], (tolerance, wanted)
    vectorizer = vectorize.MapVectorizer(h, w, 1.0)
    vectorizer.add(m[:h - 1], p[:h - 1])
    with pytest.raises(ValueError, match="rows were added"):
        vectorizer.regions(roi)


def test_vectorising_needs_the_memory_of_a_band_not_of_the_map():
    """Peak traced memory of vectorising a 6000 x 6000 px map is about that of a 2000 x 2000
    px one (9 times smaller): whole-map int32 labels would make it 9 times larger."""
    import tracemalloc

    def peak(side: int) -> int:
        rng = np.random.default_rng(1)
        m = cv2.resize(rng.integers(0, 3, (side // 100, side // 100)).astype(np.uint8),
                       (side, side), interpolation=cv2.INTER_NEAREST)
        p = np.full(m.shape, 200, np.uint8)
        tracemalloc.start()
        try:
            regions = class_regions(m, p, box(0, 0, side, side), 1.0)
            _, used = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert sum(r.area_px for r in regions) == pytest.approx(m.size)
        return used

    small, large = peak(2000), peak(6000)
    assert large < 1.5 * small, f"{small / 2**20:.0f} MiB -> {large / 2**20:.0f} MiB"
