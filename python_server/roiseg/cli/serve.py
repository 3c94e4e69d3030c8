"""`roiseg serve`: the gRPC server (the engine: `roiseg.server.service`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.cli import options

HELP = "run the gRPC server"
DESCRIPTION = """\
Serve roiseg's models over gRPC to QuPath, scripts and batch jobs.

example:
  roiseg serve --host 0.0.0.0 --port 50051 --device cuda --slide-root /data/slides"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=50051, help="port (0: any free port)")
    options.add_model_arguments(parser)
    parser.add_argument("--slide-root", action="append", type=Path, default=[],
                        help="directory whose slide files clients may ask the server to read "
                             "(repeatable; default: none)")
    parser.add_argument("--dataset-dir", type=Path,
                        help="directory where submitted corrections are kept as training "
                             "examples and fine-tuned versions are written (the fast track, "
                             "docs/fast-track.md; default: none, those calls are refused)")
    limits = parser.add_argument_group(
        "limits", "what one request may ask and how much work the server takes on at once; "
        "requests beyond them are refused with a status that says which limit")
    limits.add_argument("--max-roi-megapixels", type=options.positive_float, default=400,
                        help="largest ROI bounding box at model resolution (default 400)")
    limits.add_argument("--max-upload-mb", type=options.positive_float, default=1024,
                        help="largest uploaded image (default 1024); uploads held and being "
                             "received may take twice this in all")
    limits.add_argument("--concurrent-jobs", type=options.positive_int, default=1,
                        help="segmentations run at once (default 1; each holds a model's "
                             "activations and one ROI's rasters)")
    limits.add_argument("--queued-jobs", type=options.positive_int, default=8,
                        help="segmentations that may wait for a free slot (default 8); more are "
                             "refused as busy (RESOURCE_EXHAUSTED)")
    limits.add_argument("--concurrent-uploads", type=options.positive_int, default=4,
                        help="uploads received at once (default 4); more are refused")
    limits.add_argument("--upload-idle-seconds", type=options.positive_float, default=30,
                        help="end an upload that sends nothing for this long (default 30)")
    limits.add_argument("--upload-total-seconds", type=options.positive_float, default=600,
                        help="end an upload not done after this long (default 600)")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve over TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--token-file", type=Path,
                        help="file holding a bearer token that clients must send "
                             "(also read from the ROISEG_TOKEN environment variable)")
    parser.add_argument("--drain-seconds", type=options.non_negative_float, default=1.0,
                        help="on SIGTERM or Ctrl-C, report NOT_SERVING to health checks this "
                             "long while still answering calls, so balancing clients move to "
                             "other servers, then stop (calls under way get 5 s more; "
                             "default 1)")
    parser.add_argument("--ready-file", type=Path,
                        help="write HOST:PORT here once the server listens")
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading
    import time

    from roiseg import __version__
    from roiseg.client.connection import in_process_service
    from roiseg.server.health import Health
    from roiseg.server.service import SERVICE_NAME, Limits, create_server

    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20),
                    upload_capacity_bytes=int(2 * args.max_upload_mb * 2**20),
                    max_roi_pixels=int(args.max_roi_megapixels * 1e6),
                    concurrent_jobs=args.concurrent_jobs, queued_jobs=args.queued_jobs,
                    concurrent_uploads=args.concurrent_uploads,
                    upload_idle_s=args.upload_idle_seconds,
                    upload_total_s=args.upload_total_seconds)
    service = in_process_service(options.model_source(args), args.slide_root, limits,
                                 args.dataset_dir)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = (args.tls_cert.read_bytes(), args.tls_key.read_bytes()) if args.tls_cert else None
    token = options.token(args)
    logging.getLogger("roiseg.access").setLevel(logging.INFO)  # a line per call, always
    health = Health((SERVICE_NAME,))
    server, port = create_server(service, f"{args.host}:{args.port}", tls=tls, token=token,
                                 health=health)
    server.start()
    address = f"{args.host}:{port}"
    if args.ready_file:
        args.ready_file.write_text(address)
    print(f"roiseg {__version__} serving {len(service.registry.cards())} model(s) on {address} "
          f"({service.registry.device_name}{', TLS' if tls else ''}"
          f"{', token required' if token else ''}"
          f"{f', examples in {args.dataset_dir}' if args.dataset_dir else ''})", flush=True)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    done.wait()
    health.drain()
    if args.drain_seconds:
        print(f"draining: NOT_SERVING for {args.drain_seconds:g} s, then stopping", flush=True)
        time.sleep(args.drain_seconds)
    server.stop(grace=5).wait()
    return 0
