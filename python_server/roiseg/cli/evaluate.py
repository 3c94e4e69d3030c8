"""`roiseg evaluate`: score predictions against a reference with the papers' metrics (the
engine: `roiseg.evaluation.metrics`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.cli import options

HELP = "score predictions against a reference (papers' metrics)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``roiseg evaluate`` options to ``parser``."""
    parser.add_argument("pred", type=Path, help="prediction: GeoJSON or mask file, or directory")
    parser.add_argument("truth", type=Path,
                        help="reference: GeoJSON or mask file, or directory (paired by stem)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory: metrics.csv and summary.md")
    options.add_evaluation_arguments(parser)
    parser.add_argument("--mpp", type=float, default=0.0,
                        help="full-resolution µm/px (only for the µm² areas)")
    parser.add_argument("--pred-values", help='mask value to class, e.g. '
                                              '0=background,255="Gland epithelium" (default '
                                              'for binary masks: 0 = background, other = '
                                              '--positive)')
    parser.add_argument("--truth-values",
                        help="the same for reference masks (required for a binary reference "
                             "mask: say whether its 0 is background or the rest of the tissue)")
    parser.add_argument("--mask-origin", default="0,0", metavar="X,Y",
                        help="full-resolution position of the masks' top-left corner "
                             "(default 0,0)")
    parser.add_argument("--downsample", type=float, default=1.0,
                        help="full-resolution pixels per grid pixel when both sides are "
                             "GeoJSON (default 1)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--roi", type=Path, help="evaluate only inside this GeoJSON's polygons")
    where.add_argument("--region", help="evaluate only inside x,y,w,h (full-resolution pixels)")


def run(args: argparse.Namespace) -> int:
    from roiseg.evaluation import metrics as evaluate

    return evaluate.run(args)
