"""Benchmark (not a test): how outline simplification trades vertices for exactness.

    python benchmarks/outlines.py [--tolerances 0 0.5 0.75 1 1.5 2]

Segments the demo ROI (`make demo`'s) once with the default model, then vectorises its class
map at each simplification tolerance (model pixels) and prints the polygons, their vertices and
the fraction of the ROI's pixels that keep their class when the polygons are drawn back.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import shapely
from roiseg.engine import pipeline, vectorize
from roiseg.engine.models import DEFAULT_MODELS_DIR, ModelRegistry, select_device
from roiseg.io.roi import read_geojson

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerances", type=float, nargs="+",
                        default=[0, 0.5, 0.75, 1, 1.5, 2])
    args = parser.parse_args()
    registry = ModelRegistry([DEFAULT_MODELS_DIR], select_device("cpu"), runtime="auto")
    roi = read_geojson(DATA / "demo_roi.geojson")
    job = pipeline.Job((registry.default_id,), pipeline.SlideSource(DATA / "cmu_small_region.svs"),
                       roi, pipeline.Options())
    (output,) = pipeline.run(job, registry, max_roi_pixels=50_000_000, keep_class_map=True)
    class_map = output.class_map
    roi_raster = output.transform.geometry_to_raster(roi)
    inside = vectorize.roi_mask(roi_raster, class_map.shape)
    probability = np.full(class_map.shape, 200, np.uint8)
    print(f"demo ROI: {class_map.shape[1]} x {class_map.shape[0]} px at model resolution; "
          f"default tolerance {pipeline.DEFAULT_SIMPLIFY_PX:g} px")
    for tolerance in args.tolerances:
        regions = vectorize.class_regions(class_map, probability, roi_raster, tolerance)
        vertices = sum(int(shapely.get_num_coordinates(r.geometry)) for r in regions)
        drawn = vectorize.rasterize_regions(regions, class_map.shape)
        agreement = np.mean(drawn[inside] == class_map[inside])
        print(f"tolerance {tolerance:g} px: {len(regions)} polygons, {vertices} vertices, "
              f"{100 * agreement:.2f} % of the ROI's pixels in their class")


if __name__ == "__main__":
    main()
