"""The segmentation job on real tissue: polygons faithful to the class map."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import CMU, CMU_MPP, GLAS
from rasterio.features import rasterize
from roiseg.engine import pipeline, postprocess, vectorize
from roiseg.engine.models import DEFAULT_MODELS_DIR, ModelRegistry, select_device
from roiseg.io import qupath_geojson
from roiseg.io.classes import BACKGROUND_CLASS
from shapely.geometry import Point, Polygon, box, shape


def _run(registry, roi, **options):
    """The default model on a ROI of the CMU slide, every class (its catch-all too) unless
    the options say otherwise."""
    job = pipeline.Job((registry.default_id,), pipeline.SlideSource(CMU), roi,
                       pipeline.Options(**{"all_classes": True, **options}))
    return list(pipeline.run(job, registry, max_roi_pixels=50_000_000, keep_class_map=True))


def _rasterized(output) -> np.ndarray:
    """The returned GeoJSON drawn back onto the model-resolution raster."""
    index = {spec.name: spec.index for spec in output.card.classes}
    index[BACKGROUND_CLASS] = len(output.card.classes)
    regions = [vectorize.Region(index[f["properties"]["classification"]["name"]],
                                output.transform.geometry_to_raster(shape(f["geometry"])), 0, 0)
               for f in output.features]
    return vectorize.rasterize_regions(regions, output.class_map.shape)


@pytest.mark.parametrize("roi", [box(700, 900, 1900, 2500),
                                 Point(1300, 1700).buffer(550, quad_segs=32)],
                         ids=["rectangle", "circle"])
@pytest.mark.parametrize("simplify_um", [None, 1.0])
def test_rasterised_polygons_reproduce_the_class_map(registry, roi, simplify_um):
    (output,) = _run(registry, roi, simplify_um=simplify_um, include_background=True)
    inside = vectorize.roi_mask(output.transform.geometry_to_raster(roi), output.class_map.shape)
    drawn = _rasterized(output)
    agreement = np.mean(drawn[inside] == output.class_map[inside])
    assert agreement >= 0.99, f"{agreement:.4f}"
    # nothing outside the ROI but the odd pixel whose centre lies on the ROI's outline,
    # where the 1e-3 px rounding of the returned coordinates can tip the balance
    outside = np.count_nonzero(drawn[~inside] != postprocess.NO_CLASS)
    assert outside <= 1e-4 * np.count_nonzero(inside), outside
    assert len(np.unique(output.class_map[inside])) >= 3, "expected stroma, glands and glass"


def test_min_sizes_in_square_micrometres(registry):
    roi = box(700, 900, 1900, 2500)
    (plain,) = _run(registry, roi)
    (cleaned,) = _run(registry, roi, min_area_um2=500.0, min_hole_um2=500.0)
    pixel_um2 = cleaned.mpp_x * cleaned.mpp_y
    areas = [f["properties"]["measurements"][qupath_geojson.AREA_MEASUREMENT]
             for f in plain.features]
    assert min(areas) < 500, "the region needs small objects for this test"
    for feature in cleaned.features:
        geometry = shape(feature["geometry"])
        assert geometry.area * CMU_MPP ** 2 >= 500 - 2 * pixel_um2 * geometry.length
        for hole in geometry.interiors:
            assert Polygon(hole).area * CMU_MPP ** 2 >= 500 - 2 * pixel_um2 * hole.length


def test_glass_is_not_tissue(registry):
    """A window of bare glass at the slide's top left yields no tissue class."""
    (output,) = _run(registry, box(0, 0, 600, 600), include_background=True)
    names = {f["properties"]["classification"]["name"] for f in output.features}
    assert names == {BACKGROUND_CLASS}



def test_glass_and_outside_the_roi_never_reach_the_model(registry, monkeypatch):
    """A ROI of two squares at opposite corners of the slide, one on glass, one on tissue:
    the tiles with no tissue inside the ROI are not run, and the result is the one of running
    every tile of the bounding box."""
    roi = box(100, 100, 500, 500).union(box(1600, 2300, 2150, 2900))
    (skipping,) = _run(registry, roi, include_background=True, confidence_map=True)
    monkeypatch.setattr(pipeline, "_needed", lambda *args, **kwargs: None)
    (everything,) = _run(registry, roi, include_background=True, confidence_map=True)
    assert skipping.tiles <= everything.tiles / 2
    assert same(skipping.features) == same(everything.features)
    np.testing.assert_array_equal(skipping.class_map, everything.class_map)
    np.testing.assert_array_equal(skipping.confidence.image, everything.confidence.image)


def same(features) -> list:
    return sorted((f["properties"]["classification"]["name"], shape(f["geometry"]).wkt,
                   f["properties"]["measurements"]) for f in features)


def test_keep_on_glass_keeps_a_glands_lumen(tmp_path):
    """GlaS train_24: a gland's lumen, open to the image's edge, is blank glass to the tissue
    mask. With the gland class marked keep_on_glass the glands keep it (as GlaS's
    reference does); unmarked, they end at the tissue's edge. The rest of the tissue ("Other
    tissue") never covers glass."""
    rgb = cv2.cvtColor(cv2.imread(str(GLAS / "images" / "train_24.png")), cv2.COLOR_BGR2RGB)
    reference = cv2.imread(str(GLAS / "masks" / "train_24.png"), cv2.IMREAD_GRAYSCALE) == 255
    height, width = reference.shape
    outputs = {}
    for keep in (False, True):
        directory = tmp_path / str(keep)
        shutil.copytree(DEFAULT_MODELS_DIR, directory)
        card = json.loads((directory / "model.json").read_text())
        for spec in card["classes"]:
            spec["keep_on_glass"] = keep and spec["name"] == "Gland epithelium"
        (directory / "model.json").write_text(json.dumps(card))
        registry = ModelRegistry([directory], select_device("cpu"), card["id"])
        job = pipeline.Job((card["id"],), pipeline.PixelSource(rgb, 0, 0, 1.0, 0.62),
                           box(0, 0, width, height))
        (outputs[keep],) = pipeline.run(job, registry, max_roi_pixels=10_000_000,
                                        keep_class_map=True)
    gland = outputs[False].card.class_named("Gland epithelium").index
    stroma = outputs[False].card.class_named("Other tissue").index
    unmarked, marked = outputs[False].class_map, outputs[True].class_map
    assert np.array_equal(unmarked == stroma, marked == stroma)
    assert np.all(marked[unmarked == gland] == gland)
    lumen = (marked == gland) & (unmarked == postprocess.NO_CLASS)
    assert lumen.mean() > 0.02, f"{lumen.mean():.4f}"

    def gland_dice(output) -> float:
        drawn = rasterize([(shape(f["geometry"]), 1) for f in output.features
                           if f["properties"]["classification"]["name"] == "Gland epithelium"],
                          out_shape=reference.shape, fill=0, dtype="uint8").astype(bool)
        return 2 * np.count_nonzero(drawn & reference) / (drawn.sum() + reference.sum())

    assert gland_dice(outputs[True]) > gland_dice(outputs[False]) + 0.02


def test_outlines_lose_the_pixel_staircase_by_default_and_keep_the_class_map(registry):
    """Default simplification (one model pixel): far fewer vertices than the pixel edges
    (simplify 0), the pixels drawn back still in their class, neighbours sharing edges."""
    roi = box(700, 900, 1900, 2500)
    (smooth,) = _run(registry, roi)
    (stairs,) = _run(registry, roi, simplify_um=0.0)
    vertices = [sum(len(shape(f["geometry"]).exterior.coords) for f in output.features
                    if shape(f["geometry"]).geom_type == "Polygon")
                for output in (smooth, stairs)]
    assert vertices[0] < 0.6 * vertices[1], vertices
    inside = vectorize.roi_mask(smooth.transform.geometry_to_raster(roi), smooth.class_map.shape)
    drawn = _rasterized(smooth)
    assert np.mean(drawn[inside] == smooth.class_map[inside]) >= 0.998
    polygons = [shape(f["geometry"]) for f in smooth.features]
    overlap = sum(a.intersection(b).area for i, a in enumerate(polygons)
                  for b in polygons[i + 1:])
    assert overlap < 1e-3 * sum(p.area for p in polygons)


def test_memory_does_not_grow_with_the_roi(registry, tmp_path):
    """A job streams over bands of rows: a ROI four times taller, holding the same tissue (one
    island of real H&E on glass), peaks at the same traced memory (within 15 %), where holding
    its rasters whole (RGB, class and probability maps, tissue and ROI masks) would take 4
    times more. The island's polygons are the same in both."""
    import tracemalloc

    import tifffile

    level0 = tifffile.imread(CMU, series=0, level=0)[900:2100, 700:1900]
    island = cv2.resize(level0, None, fx=CMU_MPP, fy=CMU_MPP, interpolation=cv2.INTER_AREA)
    slide = np.full((24_000, 2000, 3), 242, np.uint8)
    slide[100:100 + island.shape[0], 700:700 + island.shape[1]] = island
    path = tmp_path / "tall.tif"
    tifffile.imwrite(path, slide, tile=(512, 512), compression="zlib", photometric="rgb")
    del slide
    registry.load(registry.card(registry.default_id))

    def peak(height: int) -> tuple[int, pipeline.ModelOutput]:
        job = pipeline.Job((registry.default_id,), pipeline.SlideSource(path, 1.0),
                           box(0, 0, 2000, height))
        tracemalloc.start()
        try:
            (output,) = pipeline.run(job, registry, max_roi_pixels=50_000_000)
            _, used = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return used, output

    # (tiles near the island and the 5 µm/px tissue grid are the same in both)
    short, short_output = peak(6000)
    tall, tall_output = peak(24_000)
    assert short_output.tiles == tall_output.tiles and short_output.features
    assert same(short_output.features) == same(tall_output.features)
    assert tall < 1.15 * short, f"{short / 2**20:.0f} MiB -> {tall / 2**20:.0f} MiB"
