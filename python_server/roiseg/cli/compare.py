"""`roiseg compare`: several models on the same regions, side by side, scored against a
reference (the engine: `roiseg.evaluation.compare.compare`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from roiseg.cli import options

HELP = "run several models on the same ROIs side by side"
DESCRIPTION = """\
Run several models on the same regions and show them side by side; with a reference,
score each.

example:
  roiseg compare slide.svs --roi roi.geojson --model a --model b --models my-models/ --out cmp/"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``roiseg compare`` options to ``parser``."""
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE",
                        help="slides (SVS, TIFF, OME-TIFF) or PNG/JPEG/TIFF images")
    parser.add_argument("--model", action="append", default=[], dest="model_ids",
                        metavar="ID", help="model id (repeatable); default: every model")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--roi", type=Path,
                       help="GeoJSON ROI for every image (default: IMAGE.geojson beside "
                            "the image when present, else the whole image)")
    where.add_argument("--region", help="rectangle x,y,w,h in full-resolution pixels")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--mpp", type=float, default=0.0,
                        help="full-resolution pixel size in µm/px (supplies or overrides "
                             "the file's)")
    reference = parser.add_argument_group("reference and metrics")
    reference.add_argument("--reference", type=Path,
                           help="reference GeoJSON or mask: a file (one image) or a "
                                "directory of files named like the images (<stem>.geojson, "
                                ".json, .png, .tif)")
    reference.add_argument("--reference-values",
                           help='mask value to class, e.g. 0="Other tissue",255="Gland epithelium" '
                                "(required for a binary mask: say whether its 0 is background "
                                "or the rest of the tissue)")
    options.add_evaluation_arguments(reference)  # type: ignore[arg-type]  # a group is enough
    reference.add_argument("--downsample", type=float, default=0.0,
                           help="full-resolution pixels per evaluation pixel for GeoJSON "
                                "references (default: the finest model's resolution)")
    options.add_segment_arguments(parser, classes=False, background=False)
    options.add_server_arguments(parser, "HOST:PORT of a roiseg server; default: in-process")
    options.add_model_arguments(parser, beside_default=True)
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Compares as `args` says; prints the report (when scored) and its warnings (stderr)."""
    from roiseg.evaluation.compare import CompareOptions, compare
    from roiseg.evaluation.metrics import parse_map, parse_rectangle
    from roiseg.io.masks import parse_values

    comparison = compare(CompareOptions(
        images=tuple(args.images), out=args.out, model_ids=tuple(args.model_ids), roi=args.roi,
        region=parse_rectangle(args.region) if args.region else None, mpp=args.mpp or None,
        reference=args.reference, reference_values=parse_values(args.reference_values),
        class_map=parse_map(args.map), positive=args.positive,
        mask_downsample=args.mask_downsample, downsample=args.downsample or None,
        segment=options.segment_options(args), server=options.server_address(args),
        models=options.model_source(args)))
    for warning in comparison.warnings:
        print(f"roiseg: {warning}", file=sys.stderr)
    if comparison.report:
        print(comparison.report)
    print("wrote " + ", ".join(map(str, comparison.written)))
    return 0
