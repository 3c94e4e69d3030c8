"""`roiseg segment`: segment a region of a slide or image, in-process or through a server,
into QuPath GeoJSON and an overlay."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from roiseg.cli import options
from roiseg.io.files import write_atomic

HELP = "segment a region of a slide or image"
DESCRIPTION = """\
Segment a region of a slide or image into tissue-class polygons: QuPath GeoJSON to import
(File > Import objects from file), optionally an overlay picture and a map of where the model is
unsure. Runs in this process, or on a server with --server.

example:
  roiseg segment slide.svs --roi roi.geojson -o out.geojson --overlay out.png"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="slide (SVS, TIFF, OME-TIFF) or PNG/JPEG/TIFF")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--roi", type=Path, help="GeoJSON file with the ROI polygon(s)")
    where.add_argument("--region", help="rectangle x,y,w,h in full-resolution pixels")
    parser.add_argument("--model", action="append", default=[], dest="model_ids",
                        help="model id (repeatable: side-by-side results); default: the "
                             "server's default")
    parser.add_argument("--mpp", type=float, default=0.0,
                        help="full-resolution pixel size in µm/px (supplies or overrides "
                             "the file's)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="GeoJSON to write")
    parser.add_argument("--overlay", type=Path, help="PNG overlay to write")
    parser.add_argument("--confidence", type=Path,
                        help="PNG to write: where each model is unsure (1 - its most probable "
                             "class's probability), as a heat map over the region")
    options.add_server_arguments(parser, "HOST:PORT of a roiseg server; default: in-process")
    parser.add_argument("--server-reads-slide", action="store_true",
                        help="let the server read the slide file itself (it must see the "
                             "same path under one of its --slide-root directories)")
    options.add_segment_arguments(parser)
    options.add_model_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    from roiseg.io.slides import Slide

    with Slide.open(args.image) as slide:  # a wrong path is told before torch is imported
        geometry = roi_of(args, slide)
        from roiseg.client import requests
        from roiseg.client.connection import connect
        from roiseg.io import overlay

        # a server that reads the slide reads its calibration too
        mpp = args.mpp if args.server_reads_slide else \
            requests.pixel_size(args.image.name, slide.mpp, args.mpp)
        with connect(options.server_address(args), options.model_source(args)) as client:
            models = {m.id: m for m in client.list_models()}
            info = client.server_info()
            chosen = args.model_ids or [info.default_model_id]
            target_mpp = min((models[m].mpp for m in chosen if m in models), default=1.0)
            segment_options = options.segment_options(args)
            segment_options.confidence_map = bool(args.confidence)
            request = requests.roi_request(client, args.image, geometry, mpp, chosen,
                                           segment_options, target_mpp, args.server_reads_slide)
            with requests.ProgressBar() as bar:
                result = client.segment(request, bar.update)
            catch_all = requests.catch_all_names((models[m] for m in chosen if m in models),
                                                 segment_options.class_names)
        written = _write(args.output, result.feature_collections)
        if args.overlay:
            pixels, origin, downsample = requests.overlay_view(slide, geometry)
            overlay.save_png(args.overlay, overlay.render(
                pixels, origin, downsample, result.feature_collections, geometry, mpp=mpp,
                outlined=catch_all))
            written.append(args.overlay)
        if args.confidence:
            pixels, origin, downsample = requests.overlay_view(slide, geometry)
            overlay.save_png(args.confidence, overlay.render_confidence(
                pixels, origin, downsample,
                {m: requests.confidence_raster(r.confidence) for m, r in result.results.items()},
                mpp=mpp))
            written.append(args.confidence)
    for model_id, model_result in result.results.items():
        areas = ", ".join(f"{a.name} {a.area_um2 / 1e6:.3f} mm² ({a.features})"
                          for a in model_result.class_areas)
        e = model_result.execution
        print(f"{model_id}: {model_result.feature_count} polygons at {e.mpp_used:.3f} µm/px "
              f"in {e.timings.total_s:.1f} s — {areas or 'nothing found'}")
        for notice in model_result.notices:
            print(f"roiseg segment: note: {model_id}: {notice}", file=sys.stderr)
    print("wrote " + ", ".join(map(str, written)))
    return 0


def roi_of(args: argparse.Namespace, slide):
    """The ROI that --roi or --region names; the whole image without either."""
    from shapely.geometry import box

    from roiseg.io import roi

    if args.roi:
        return roi.read_geojson(args.roi)
    if args.region:
        try:
            x, y, w, h = (float(v) for v in args.region.split(","))
        except ValueError:
            raise ValueError(f"--region needs x,y,w,h, got {args.region!r}") from None
        return roi.rectangle(x, y, w, h)
    return box(0, 0, slide.width, slide.height)


def _write(output: Path, collections: dict[str, dict]) -> list[Path]:
    """One GeoJSON per model: OUTPUT itself for one model, OUTPUT.<model id>.geojson else."""
    paths = []
    for model_id, collection in collections.items():
        path = output if len(collections) == 1 else \
            output.with_name(f"{output.stem}.{model_id}{output.suffix or '.geojson'}")
        paths.append(write_atomic(path, json.dumps(collection)))
    return paths
