"""`roiseg batch`: pre-annotate a QuPath project or a folder of images, resumably (the
engine: `roiseg.batch.runner`)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from roiseg.batch.outputs import (
    BATCH_FOLDER_JOURNAL,
    BATCH_FOLDER_SUMMARY,
    BATCH_PROJECT_JOURNAL,
    BATCH_PROJECT_SUMMARY,
)
from roiseg.cli import options

HELP = "pre-annotate a QuPath project or a folder of images"


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
    parser.add_argument("--server-reads-slide", action="store_true",
                        help="let the servers read the image files themselves (they must see "
                             "the same absolute paths under their --slide-root); automatic "
                             "in-process")
    parser.add_argument("--replace", action="store_true",
                        help="redo ROIs already done, replacing roiseg's objects of the models "
                             "run (other objects are kept)")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what would be done; segment and write nothing")
    parser.add_argument("--journal", type=Path,
                        help=f"journal file (default: OUT/{BATCH_FOLDER_JOURNAL}, or "
                             f"{BATCH_PROJECT_JOURNAL} next to the project)")
    parser.add_argument("--summary", type=Path,
                        help=f"summary CSV (default: OUT/{BATCH_FOLDER_SUMMARY}, or "
                             f"{BATCH_PROJECT_SUMMARY} next to the project)")
    options.add_segment_arguments(parser)
    options.add_model_arguments(parser)  # in-process: --models, --default-model, --device
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Runs the batch; SIGTERM stops it like Ctrl-C, resumably."""
    from roiseg.batch import runner as batch

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return batch.run(args)
