"""`roiseg submit`: store a ROI's corrected annotations as a training example of a model (the
fast track, docs/fast-track.md), or list or remove the stored examples.

    roiseg submit SLIDE --roi ROI.geojson --corrections CORRECTED.geojson --server HOST:PORT
    roiseg submit --list --server HOST:PORT [--model ID]
    roiseg submit --remove EXAMPLE_ID --server HOST:PORT [--model ID]

Without --server the examples are kept in --dataset-dir by an in-process server.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.cli import options

HELP = "submit corrected annotations as a training example (or list / remove examples)"
DESCRIPTION = """\
Store a ROI's corrected annotations as a training example of a model (the fast track,
docs/fast-track.md), or list or remove the stored examples.

example:
  roiseg submit slide.svs --roi roi.geojson --corrections corrected.geojson \\
      --server gpu-box:50051"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, nargs="?",
                        help="slide (SVS, TIFF, OME-TIFF) or PNG/JPEG/TIFF the ROI lies in")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--roi", type=Path, help="GeoJSON file with the ROI polygon(s)")
    where.add_argument("--region", help="rectangle x,y,w,h in full-resolution pixels")
    parser.add_argument("--corrections", type=Path,
                        help="QuPath GeoJSON of the corrected annotations (full-resolution "
                             "pixels; classified polygons are the labels)")
    parser.add_argument("--predicted", type=Path,
                        help="roiseg's GeoJSON that was corrected, to measure the correction "
                             "effort against (default: the server's record of the run)")
    parser.add_argument("--rename", action="append", default=[], metavar='"CLASS=NAME"',
                        help="the --rename given to roiseg segment: corrections in those names "
                             "count as the model's classes (repeatable)")
    parser.add_argument("--model", dest="model_id", default="",
                        help="model id whose examples these are; default: the server's default")
    parser.add_argument("--mpp", type=float, default=0.0,
                        help="full-resolution pixel size in µm/px (supplies or overrides "
                             "the file's)")
    for flag, meaning in (
            ("--image-id", "the image's identity (default: the image file's absolute path)"),
            ("--roi-key", "the ROI's identity within the image (default: its outline); the "
                          "same image and ROI key replace an earlier example"),
            ("--predicted-by", "id@version of the model whose pre-annotations were corrected "
                               "(default: from the corrections' roiseg metadata)")):
        parser.add_argument(flag, default="", help=meaning)
    parser.add_argument("--allow-upsample", action="store_true",
                        help="accept images coarser than the model's resolution")
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--list", action="store_true", help="list the model's examples")
    actions.add_argument("--remove", metavar="EXAMPLE_ID", help="remove an example")
    options.add_server_arguments(parser, "HOST:PORT of a roiseg server; default: in-process "
                                         "with --dataset-dir")
    parser.add_argument("--server-reads-slide", action="store_true",
                        help="let the server read the slide file itself (it must see the "
                             "same path under one of its --slide-root directories)")
    parser.add_argument("--dataset-dir", type=Path,
                        help="without --server: the directory the examples are kept in")
    options.add_model_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    from roiseg.client.connection import connect

    server = options.server_address(args)
    if server is None and args.dataset_dir is None:
        raise ValueError("give --server HOST:PORT, or --dataset-dir DIR to keep the examples "
                         "in-process")
    if args.list or args.remove:
        with connect(server, options.model_source(args), args.dataset_dir) as client:
            if args.list:
                examples = client.list_examples(args.model_id)
                for example in examples:
                    print(_describe(example))
                print(f"{len(examples)} example(s)")
            else:
                print("removed " + _describe(client.remove_example(args.remove, args.model_id)))
        return 0
    if args.image is None or args.corrections is None:
        raise ValueError("give the IMAGE and --corrections GEOJSON to submit (or --list, "
                         "--remove EXAMPLE_ID)")
    return _submit(args, server)


def _submit(args: argparse.Namespace, server) -> int:
    from roiseg.cli.segment import roi_of
    from roiseg.evaluation.metrics import parse_map
    from roiseg.io.slides import Slide

    with Slide.open(args.image) as slide:  # a wrong path is told before torch is imported
        geometry = roi_of(args, slide)
        geojson = args.corrections.read_text(encoding="utf-8")
        predicted = args.predicted.read_text(encoding="utf-8") if args.predicted else ""
        from roiseg.client import requests
        from roiseg.client.connection import connect, corrections_request, slide_source

        mpp = args.mpp if args.server_reads_slide else \
            requests.pixel_size(args.image.name, slide.mpp, args.mpp)
        with connect(server, options.model_source(args), args.dataset_dir) as client:
            if args.server_reads_slide:
                source = slide_source(str(args.image.resolve()), mpp)
            else:
                models = {m.id: m for m in client.list_models()}
                model_id = args.model_id.partition("@")[0] or client.server_info().default_model_id
                target_mpp = models[model_id].mpp if model_id in models else 1.0
                source = requests.region_source(client, slide, geometry, mpp, target_mpp)
            response = client.submit_corrections(corrections_request(
                geometry, source, geojson, model_id=args.model_id,
                image_id=args.image_id or str(args.image.resolve()), roi_key=args.roi_key,
                predicted_by=args.predicted_by, allow_upsample=args.allow_upsample,
                predicted_geojson=predicted,
                class_names=parse_map(args.rename, '--rename needs "MODEL CLASS=NAME"')))
    print(("replaced " if response.replaced else "stored ") + _describe(response.example))
    print(requests.effort_text(response.example.effort))
    return 0


def _describe(example) -> str:
    areas = ", ".join(f"{a.name} {a.area_um2 / 1e6:.4f} mm² ({a.features})"
                      for a in example.class_areas)
    return (f"{example.example_id}  {example.model_id}  {example.image_id}  ROI "
            f"{example.roi_key}  {example.raster_width}x{example.raster_height} px at "
            f"{example.mpp:g} µm/px  {example.submitted_at}  {areas}")
