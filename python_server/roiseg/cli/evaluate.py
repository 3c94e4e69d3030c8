"""`roiseg evaluate`: score predictions against a reference with the papers' metrics (the
engine: `roiseg.evaluation.metrics.evaluate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.cli import options

HELP = "score predictions against a reference (papers' metrics)"
DESCRIPTION = """\
Score predictions (roiseg GeoJSON or masks) against references with the papers' metrics:
Dice, sensitivity, specificity, precision, MCC and more, per image with 95 % intervals.

example:
  roiseg evaluate predictions/ masks/ --truth-values '0="Other tissue",255="Gland epithelium"' \
      --positive "Gland epithelium" --mpp 0.62 --out scores/"""


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
    options.add_area_arguments(parser, "evaluate")
    options.add_card_arguments(parser, "a prediction GeoJSON")


def run(args: argparse.Namespace) -> int:
    """Evaluates as `args` says; prints the warnings (stderr) and the summary."""
    from roiseg.evaluation.metrics import (
        EvaluateOptions,
        evaluate,
        parse_map,
        parse_point,
        parse_rectangle,
    )
    from roiseg.evaluation.training_data import EMBEDDED_MODELS_DIR
    from roiseg.io.masks import parse_values

    evaluation = evaluate(EvaluateOptions(
        pred=args.pred, truth=args.truth, out=args.out, positive=args.positive,
        class_map=parse_map(args.map), pred_values=parse_values(args.pred_values),
        truth_values=parse_values(args.truth_values), mask_downsample=args.mask_downsample,
        mask_origin=parse_point(args.mask_origin, "--mask-origin"), downsample=args.downsample,
        mpp=args.mpp or None, roi=args.roi,
        region=parse_rectangle(args.region) if args.region else None,
        model_dirs=(EMBEDDED_MODELS_DIR, *args.models)))
    options.print_report(evaluation.warnings, evaluation.summary, evaluation.written)
    return 0
