"""The `roiseg` command: serve, models, segment, train, evaluate, compare, batch."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from google.protobuf.json_format import MessageToDict
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from roiseg import __version__, batch, commands, compare, evaluate, overlay, roi, train
from roiseg.client import SegmentationError, segment_request, slide_source
from roiseg.errors import RoisegError
from roiseg.files import write_atomic
from roiseg.models import DEFAULT_MODELS_DIR  # noqa: F401 - re-exported for scripts
from roiseg.service import Limits, create_server
from roiseg.slides import Slide


log = logging.getLogger("roiseg")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (SegmentationError, RoisegError, ValueError) as error:
        print(f"roiseg: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roiseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"roiseg {__version__}")
    subcommands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = subcommands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=50051, help="port (0: any free port)")
    commands.add_model_arguments(serve)
    serve.add_argument("--slide-root", action="append", type=Path, default=[],
                       help="directory whose slide files clients may ask the server to read "
                            "(repeatable; default: none)")
    serve.add_argument("--max-roi-megapixels", type=float, default=400,
                       help="largest ROI bounding box at model resolution (default 400)")
    serve.add_argument("--max-upload-mb", type=float, default=1024,
                       help="largest uploaded image (default 1024)")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve over TLS")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument("--token-file", type=Path,
                       help="file holding a bearer token that clients must send "
                            "(also read from the ROISEG_TOKEN environment variable)")
    serve.add_argument("--ready-file", type=Path,
                       help="write HOST:PORT here once the server listens")
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(run=_serve)

    models = subcommands.add_parser("models", help="list the models")
    commands.add_model_arguments(models)
    commands.add_server_arguments(models, "ask this server (HOST:PORT) instead")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(run=_models)

    segment = subcommands.add_parser("segment", help="segment a region of a slide or image")
    segment.add_argument("image", type=Path, help="slide (SVS, TIFF, OME-TIFF) or PNG/JPEG/TIFF")
    where = segment.add_mutually_exclusive_group()
    where.add_argument("--roi", type=Path, help="GeoJSON file with the ROI polygon(s)")
    where.add_argument("--region", help="rectangle x,y,w,h in full-resolution pixels")
    segment.add_argument("--model", action="append", default=[], dest="model_ids",
                         help="model id (repeatable: side-by-side results); default: the "
                              "server's default")
    segment.add_argument("--mpp", type=float, default=0.0,
                         help="full-resolution pixel size in µm/px (supplies or overrides "
                              "the file's)")
    segment.add_argument("-o", "--output", type=Path, required=True, help="GeoJSON to write")
    segment.add_argument("--overlay", type=Path, help="PNG overlay to write")
    commands.add_server_arguments(segment, "HOST:PORT of a roiseg server; default: in-process")
    segment.add_argument("--server-reads-slide", action="store_true",
                         help="let the server read the slide file itself (it must see the "
                              "same path under one of its --slide-root directories)")
    commands.add_segment_arguments(segment)
    commands.add_model_arguments(segment)
    segment.add_argument("-v", "--verbose", action="store_true")
    segment.set_defaults(run=_segment)

    for name, module, help_text in (
            ("train", train, "train or fine-tune a model"),
            ("evaluate", evaluate, "score predictions against a reference (papers' metrics)"),
            ("compare", compare, "run several models on the same ROIs side by side"),
            ("batch", batch, "pre-annotate a QuPath project or a folder of images")):
        command = subcommands.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def _serve(args: argparse.Namespace) -> int:
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20),
                    upload_capacity_bytes=int(2 * args.max_upload_mb * 2**20),
                    max_roi_pixels=int(args.max_roi_megapixels * 1e6))
    service = commands.service(args, args.slide_root, limits)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = (args.tls_cert.read_bytes(), args.tls_key.read_bytes()) if args.tls_cert else None
    token = args.token_file.read_text().strip() if args.token_file else \
        os.environ.get("ROISEG_TOKEN") or None
    server, port = create_server(service, f"{args.host}:{args.port}", tls=tls, token=token)
    server.start()
    address = f"{args.host}:{port}"
    if args.ready_file:
        args.ready_file.write_text(address)
    print(f"roiseg {__version__} serving {len(service.registry.cards())} model(s) on {address} "
          f"({service.registry.device_name}{', TLS' if tls else ''}"
          f"{', token required' if token else ''})", flush=True)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    done.wait()
    server.stop(grace=5).wait()
    return 0


def _models(args: argparse.Namespace) -> int:
    with commands.connect(args) as client:
        models = client.list_models()
    if args.json:
        print(json.dumps([MessageToDict(m) for m in models], indent=2))
        return 0
    for m in models:
        classes = ", ".join(c.name for c in m.classes)
        print(f"{m.id}  v{m.version}  {m.architecture}/{m.encoder}  {m.mpp:g} µm/px  "
              f"tile {m.tile_size}+{m.overlap}\n    {m.name}: {classes}")
    return 0


def _segment(args: argparse.Namespace) -> int:
    with Slide.open(args.image) as slide:
        geometry = _roi(args, slide)
        mpp = args.mpp or slide.mpp or 0.0
        if not mpp and not args.server_reads_slide:
            raise ValueError(f"{args.image.name} has no pixel size in its metadata: pass it "
                             "with --mpp (µm per full-resolution pixel)")
        with commands.connect(args) as client:
            models = {m.id: m for m in client.list_models()}
            info = client.server_info()
            chosen = args.model_ids or [info.default_model_id]
            target_mpp = min((models[m].mpp for m in chosen if m in models), default=1.0)
            if args.server_reads_slide:
                source = slide_source(str(args.image.resolve()), args.mpp)
            else:
                source = commands.region_source(client, slide, geometry, mpp, target_mpp)
            request = segment_request(geometry, source, chosen, commands.segment_options(args))
            with commands.ProgressBar() as bar:
                result = client.segment(request, bar.update)
        written = _write(args.output, result.feature_collections)
        if args.overlay:
            pixels, origin, downsample = commands.overlay_view(slide, geometry)
            overlay.save_png(args.overlay, overlay.render(pixels, origin, downsample,
                                                          result.feature_collections, geometry))
            written.append(args.overlay)
    for model_id, model_result in result.results.items():
        areas = ", ".join(f"{a.name} {a.area_um2 / 1e6:.3f} mm² ({a.features})"
                          for a in model_result.class_areas)
        e = model_result.execution
        print(f"{model_id}: {model_result.feature_count} polygons at {e.mpp_used:.3f} µm/px "
              f"in {e.timings.total_s:.1f} s — {areas or 'nothing found'}")
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _roi(args: argparse.Namespace, slide: Slide) -> BaseGeometry:
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


if __name__ == "__main__":
    sys.exit(main())
