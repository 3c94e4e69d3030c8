"""`roiseg effort`: how much a pathologist corrected roiseg's pre-annotations — pixel Dice and
IoU, µm² added and removed, objects kept, edited, deleted and added, per image and class (the
engine: `roiseg.evaluation.effort.effort`; see docs/effort.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.cli import options

HELP = "measure how much a pathologist corrected roiseg's pre-annotations"
DESCRIPTION = """\
Measure how much a pathologist corrected roiseg's pre-annotations: per image and class, pixel
Dice and IoU between prediction and correction, µm² added and removed, objects kept, edited,
deleted and added. See docs/effort.md.

example:
  roiseg effort predicted/ corrected/ --out effort/"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``roiseg effort`` options to ``parser``."""
    parser.add_argument("pred", type=Path, metavar="PRED",
                        help="roiseg's prediction: QuPath GeoJSON file, or directory of them")
    parser.add_argument("corrected", type=Path, metavar="CORRECTED",
                        help="the same region exported from QuPath after correction: GeoJSON "
                             "file, or directory (paired with PRED by file name)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory: effort.csv and summary.md")
    numbers = {
        "--mpp": (0.0, "MPP", "full-resolution µm/px; required unless the files carry it "
                              "(metadata roiseg.pixel_size_um)"),
        "--downsample": (0.0, "N", "full-resolution pixels per pixel of the Dice/IoU raster "
                                   "(default: 1, coarser in powers of two above 32 "
                                   "megapixels)"),
        "--tolerance": (1.0, "PX", "an outline moved by more than this many full-resolution "
                                   "pixels (Hausdorff distance) counts as edited (default 1)"),
    }
    for flag, (default, metavar, text) in numbers.items():
        parser.add_argument(flag, type=float, default=default, metavar=metavar, help=text)
    parser.add_argument("--roi-class", action="append", default=[], metavar="NAME",
                        help="objects of this class are ROIs, not results (repeatable); an "
                             "annotation without roiseg metadata that contains every other "
                             "object is one anyway")
    options.add_area_arguments(parser, "measure")
    options.add_card_arguments(parser, "PRED")


def run(args: argparse.Namespace) -> int:
    """Measures as `args` says; prints the warnings (stderr) and a short summary."""
    from roiseg.evaluation.effort import EffortOptions, effort
    from roiseg.evaluation.metrics import parse_rectangle
    from roiseg.evaluation.training_data import EMBEDDED_MODELS_DIR

    result = effort(EffortOptions(
        pred=args.pred, corrected=args.corrected, out=args.out, mpp=args.mpp or None,
        downsample=args.downsample or None, tolerance=args.tolerance,
        roi_classes=tuple(args.roi_class), roi=args.roi,
        region=parse_rectangle(args.region) if args.region else None,
        model_dirs=(EMBEDDED_MODELS_DIR, *args.models)))
    options.print_report(result.warnings, result.text, result.written)
    return 0
