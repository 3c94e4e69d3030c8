"""`roiseg batch`: pre-annotate a QuPath project or a folder of images, resumably (the
engine: `roiseg.batch.runner.run`)."""

from __future__ import annotations

import argparse
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from roiseg.batch import outputs
from roiseg.cli import options

if TYPE_CHECKING:
    from roiseg.client.connection import ServerAddress

HELP = "pre-annotate a QuPath project or a folder of images"
DESCRIPTION = """\
Pre-annotate every image of a QuPath project (results become child objects of its ROIs) or of
a folder (GeoJSON and overlays in --out). Safe to stop and run again: finished ROIs are skipped
and nothing is written twice; --replace redoes them.

With --submit, send the project's corrected ROIs to the server as training examples instead
(the fast track, docs/fast-track.md): each ROI's classified child annotations, as corrected in
QuPath; the server measures how much was corrected.

examples:
  roiseg batch project/project.qpproj --roi-class Region --server gpu-box:50051
  roiseg batch --images slides/ --out results/
  roiseg batch --images /shared/slides --out /shared/results --ray   # on a Ray cluster
  roiseg batch project/project.qpproj --roi-class Region --submit --server gpu-box:50051"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``roiseg batch`` options to ``parser``."""

    parser.add_argument("project", nargs="?", type=Path,
                        help="QuPath project (project.qpproj or its directory); needs paquo "
                             "and an installed QuPath")
    parser.add_argument("--images", type=Path,
                        help="folder mode: directory of slides or images (SVS, TIFF, OME-TIFF, "
                             "PNG, JPEG), each with optional QuPath GeoJSON ROIs in NAME.geojson "
                             "beside it (default ROI: the whole image)")
    parser.add_argument("--out", type=Path, help="folder mode: output directory")
    parser.add_argument("--image-filter", metavar="REGEX",
                        help="only the images whose name matches this regular expression")
    parser.add_argument("--roi-class", action="append", default=[], metavar="NAME",
                        help="segment the annotations of this class, at any level (repeatable); "
                             "default: the top-level annotations not made by roiseg")
    parser.add_argument("--model", action="append", default=[], dest="model_ids",
                        help="model id (repeatable); default: the server's default model")
    parser.add_argument("--mpp", type=float, default=0.0,
                        help="full-resolution pixel size (µm/px) of images that have none in "
                             "their metadata; without it such images are recorded as errors")
    options.add_server_arguments(parser, "roiseg server (repeatable: the work is spread "
                                          "across them); default: in-process", repeatable=True)
    parser.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                        help="run the jobs on Ray workers, each holding the models on its GPU "
                             "(or CPU cores) and reading the slides itself (same paths on "
                             "every node): the cluster at ADDRESS, or without one the cluster "
                             "RAY_ADDRESS or `ray start` names, else a new local one; needs "
                             "pip install 'roiseg[ray]' (docs/cluster.md)")
    parser.add_argument("--ray-workers", type=options.positive_int, default=0, metavar="N",
                        help="number of Ray workers (default: one per GPU of the cluster; "
                             "without GPUs one per CPU core, one thread each)")
    parser.add_argument("--server-reads-slide", action="store_true",
                        help="let the servers read the image files themselves (they must see "
                             "the same absolute paths under their --slide-root); automatic "
                             "in-process")
    parser.add_argument("--replace", action="store_true",
                        help="redo ROIs already done, replacing roiseg's objects of the models "
                             "run (other objects are kept)")
    parser.add_argument("--submit", action="store_true",
                        help="send each ROI's classified child annotations (as corrected in "
                             "QuPath) to the --server as training examples instead of "
                             "segmenting; the server must run with --dataset-dir")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what would be done; segment and write nothing")
    parser.add_argument("--journal", type=Path,
                        help=f"journal file (default: OUT/{outputs.BATCH_FOLDER_JOURNAL}, or "
                             f"{outputs.BATCH_PROJECT_JOURNAL} next to the project)")
    parser.add_argument("--summary", type=Path,
                        help=f"summary CSV (default: OUT/{outputs.BATCH_FOLDER_SUMMARY}, or "
                             f"{outputs.BATCH_PROJECT_SUMMARY} next to the project)")
    options.add_segment_arguments(parser)
    options.add_model_arguments(parser)  # in-process: --models, --default-model, --device
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Runs the batch; SIGTERM stops it like Ctrl-C, resumably. 0 when every ROI is done, 1
    when some were recorded as errors, 130 when interrupted."""
    from roiseg.batch.options import BatchOptions
    from roiseg.batch.runner import run as run_batch

    batch = BatchOptions(
        project=args.project, images=args.images, out=args.out,
        image_filter=_pattern(args.image_filter), roi_classes=tuple(args.roi_class),
        model_ids=tuple(args.model_ids), mpp=args.mpp or None, servers=_servers(args),
        models=options.model_source(args), ray=args.ray, ray_workers=args.ray_workers,
        server_reads_slide=args.server_reads_slide,
        replace=args.replace, dry_run=args.dry_run, journal=args.journal,
        summary=args.summary, segment=options.segment_options(args))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.submit:
        return _submit(args, batch)
    try:
        result = run_batch(batch)
    except KeyboardInterrupt:
        print("roiseg batch: interrupted", file=sys.stderr)
        return 130
    if result.interrupted:
        print(f"roiseg batch: interrupted; {result.images} image(s) saved this run, "
              f"{result.unfinished} unfinished left untouched. Run the same command again to "
              "resume.", file=sys.stderr)
        return 130
    if not batch.dry_run:
        servers = ", ".join(f"{server} {jobs}" for server, jobs in result.jobs.items())
        print(f"roiseg batch: {result.segmented} ROI(s) segmented, {result.skipped} skipped "
              f"(already done), {result.errors} error(s); jobs per server: {servers}; "
              f"summary {result.summary_csv}")
    return 1 if result.errors else 0


def _submit(args: argparse.Namespace, batch) -> int:
    """--submit: 0 when every ROI with annotations was stored, 1 when some failed."""
    from roiseg.batch.submit import submit

    if args.ray is not None:
        raise ValueError("--submit sends corrections to one --server; it does not run on --ray")
    if args.replace or args.dry_run:
        raise ValueError("--submit replaces an example submitted before by itself; it takes "
                         "neither --replace nor --dry-run")
    try:
        result = submit(batch)
    except KeyboardInterrupt:
        print("roiseg batch: interrupted (the ROIs sent so far are stored)", file=sys.stderr)
        return 130
    print(f"roiseg batch: {result.submitted} ROI(s) submitted ({result.replaced} replaced an "
          f"earlier example), {result.empty} without annotations, {result.errors} error(s)")
    return 1 if result.errors else 0


def _servers(args: argparse.Namespace) -> tuple[ServerAddress, ...]:
    """Each --server once, with how to reach it."""
    addresses = (options.server_address(args, target) for target in dict.fromkeys(args.server))
    return tuple(address for address in addresses if address is not None)


def _pattern(text: str | None) -> re.Pattern[str] | None:
    """--image-filter compiled; ValueError when it is no regular expression."""
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as error:
        raise ValueError(f"--image-filter {text!r}: {error}") from None
