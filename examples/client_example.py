"""A Python client of a running roiseg server: list its models, segment a region of a
slide, print the class areas and save the polygons as QuPath GeoJSON.

    roiseg serve &                                   # 127.0.0.1:50051
    python examples/client_example.py [--server HOST:PORT] [--region x,y,w,h]
                                      [--model ID] [--out regions.geojson]

The client reads the pixels itself at the model's resolution and sends them, so the
server needs no access to the file. (If it can see the file under its --slide-root, send
`slide_source(path)` instead and skip the reading.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from roiseg.client.connection import Client, encode_png, segment_request
from roiseg.io.roi import rectangle
from roiseg.io.slides import Slide, read_slide_region

SLIDE = Path(__file__).resolve().parent / "data" / "cmu_small_region.svs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--slide", type=Path, default=SLIDE)
    parser.add_argument("--region", default="880,1080,1000,1000",
                        help="x,y,w,h in full-resolution pixels")
    parser.add_argument("--model", help="model id (default: the server's default model)")
    parser.add_argument("--out", type=Path, help="write the polygons here (QuPath GeoJSON)")
    args = parser.parse_args()

    with Client(args.server, timeout_s=600) as client:
        info = client.server_info()
        models = {m.id: m for m in client.list_models()}
        print(f"roiseg {info.server_version} on {info.device}; models:")
        for m in models.values():
            print(f"  {m.id} v{m.version}: {m.name} at {m.mpp:g} µm/px, classes "
                  + ", ".join(c.name for c in m.classes))
        model = models[args.model or info.default_model_id]

        roi = rectangle(*(float(v) for v in args.region.split(",")))
        with Slide.open(args.slide) as slide:
            # The ROI's pixels at the model's resolution, and where they lie on level 0.
            read = read_slide_region(slide, roi.bounds, slide.mpp, model.mpp)
            source = client.pixels_source(
                encode_png(read.image), downsample=read.transform.scale_x,
                origin_x=read.transform.origin_x, origin_y=read.transform.origin_y,
                pixel_size_um=slide.mpp, image_width=slide.width, image_height=slide.height)
        result = client.segment(segment_request(roi, source, [model.id]))

    for model_id, model_result in result.results.items():
        print(f"{model_id} v{model_result.model_version}: {model_result.feature_count} polygons")
        for area in model_result.class_areas:
            print(f"  {area.name}: {area.area_um2:,.0f} µm² in {area.features} polygon(s)")
    if args.out:
        args.out.write_text(json.dumps(result.feature_collections[model.id]))
        print(f"wrote {args.out} (QuPath: File > Import objects from file)")


if __name__ == "__main__":
    main()
