"""Option groups several roiseg subcommands share: models, server, segmentation options and
evaluation classes. Argument parsing only: nothing here imports torch or the engines."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from roiseg.client.connection import ModelSource, ServerAddress
    from roiseg.v1 import segmentation_pb2 as pb


def add_model_arguments(parser: argparse.ArgumentParser, beside_default: bool = False) -> None:
    """--models, --default-model, --device, --runtime, --threads, --reduced-precision: the
    models an in-process run serves and how; with `beside_default`, --models adds to the
    embedded default model instead of replacing it."""
    parser.add_argument("--models", action="append", type=Path, default=[],
                        help="directory of model cards (repeatable); "
                             + ("served beside the embedded default model" if beside_default
                                else "default: the embedded default model"))
    parser.set_defaults(models_beside_default=beside_default)
    parser.add_argument("--default-model", help="id of the default model")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnx"),
                        help="on the CPU: ONNX Runtime (onnx; auto: when installed and a model's "
                             "export matches torch) or torch; CUDA always runs torch")
    parser.add_argument("--threads", type=int,
                        help="CPU threads of one forward pass (default: torch's and ONNX "
                             "Runtime's own choice); 1 is often faster on a busy machine")
    parser.add_argument("--reduced-precision", action="store_true",
                        help="run a model in the lower precision its card records as checked "
                             "on held-out images for this device (e.g. bfloat16 on a CPU: "
                             "about 2x faster; `roiseg precision` checks and records it)")


def add_server_arguments(parser: argparse.ArgumentParser, help_text: str,
                         repeatable: bool = False) -> None:
    """--server (once, or repeatable) and how to reach it: --tls, --tls-ca, --token-file."""
    if repeatable:
        parser.add_argument("--server", action="append", default=[], metavar="HOST:PORT",
                            help=help_text)
    else:
        parser.add_argument("--server", metavar="TARGET",
                            help=f"{help_text}; several servers, balanced: HOST:PORT,HOST:PORT "
                                 "or dns:///NAME:PORT (docs/serving-several.md)")
    parser.add_argument("--tls", action="store_true", help="connect to the server over TLS")
    parser.add_argument("--tls-ca", type=Path, help="PEM certificate(s) to trust for --tls")
    parser.add_argument("--token-file", type=Path,
                        help="file holding the server's bearer token (or ROISEG_TOKEN)")


def add_segment_arguments(parser: argparse.ArgumentParser, classes: bool = True,
                          background: bool = True) -> None:
    """The segmentation options of `roiseg segment` (see `segment_options`)."""
    group = parser.add_argument_group("segmentation options")
    if classes:
        group.add_argument("--classes", nargs="+", default=[],
                           help="class names to return (default: all but a model's catch-all "
                                "class, e.g. the default model's 'Other tissue')")
        group.add_argument("--all-classes", action="store_true",
                           help="return the models' catch-all classes too (the rest of the "
                                "tissue)")
    group.add_argument("--min-area", type=float, help="drop regions below this many µm²")
    group.add_argument("--min-hole", type=float, help="fill holes below this many µm²")
    group.add_argument("--simplify", type=float, metavar="UM",
                       help="outline simplification tolerance in µm, neighbours keeping their "
                            "shared edges (default: one model pixel, which takes the pixel "
                            "staircase out; 0: the pixel edges)")
    group.add_argument("--hysteresis", action="store_true",
                       help="hysteresis thresholding of the tumour class (paper 003)")
    if background:
        group.add_argument("--include-background", action="store_true",
                           help="also return the non-tissue area as 'Background'")
    group.add_argument("--allow-upsample", action="store_true",
                       help="accept images coarser than the model's resolution")
    group.add_argument("--rename", action="append", default=[], metavar='"CLASS=NAME"',
                       help='give a model class another name in the result, e.g. '
                            '"Gland epithelium=Tumor" or one of your QuPath classes (repeatable)')
    group.add_argument("--review-below", type=float, metavar="P",
                       help="flag objects whose mean class probability is below P (0..1) for "
                            "review: metadata roiseg.review and ' (review)' after their name")


def add_evaluation_arguments(parser: argparse.ArgumentParser, reference: str = "truth") -> None:
    """Options shared with ``roiseg compare``: class mapping, positive class, pixel size."""
    parser.add_argument("--map", action="append", default=[], metavar='"CLASS=EVAL"',
                        help='map a class name onto an evaluation class, e.g. "Gland '
                             'epithelium=tumour" (repeatable, both sides; unmapped names keep '
                             'their name; "Background" and unannotated pixels are background)')
    parser.add_argument("--positive", metavar="NAME",
                        help="the evaluation class scored as positive (every other "
                             "non-background class is negative)")
    parser.add_argument("--mask-downsample", type=float, default=1.0,
                        help="full-resolution pixels per mask pixel (default 1)")


def add_area_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """--roi FILE or --region x,y,w,h: where `verb` ("evaluate", "measure") looks."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--roi", type=Path, help=f"{verb} only inside this GeoJSON's polygons")
    where.add_argument("--region", help=f"{verb} only inside x,y,w,h (full-resolution pixels)")


def add_card_arguments(parser: argparse.ArgumentParser, named_by: str) -> None:
    """--models DIR: where the cards of the models `named_by` names are looked up, to warn
    about images a model was trained on (the embedded default model's card always is)."""
    parser.add_argument("--models", action="append", type=Path, default=[], metavar="DIR",
                        help="directory of model cards (repeatable) in which to look up the "
                             f"model {named_by} names, to warn when it was trained on the "
                             "evaluated images (the embedded default model is always looked "
                             "up)")


def token(args: argparse.Namespace) -> str | None:
    """The bearer token from --token-file or ROISEG_TOKEN; ValueError when either is given but
    holds only blanks (a server would otherwise run with no authentication)."""
    if getattr(args, "token_file", None):
        text, where = args.token_file.read_text(), f"--token-file {args.token_file}"
    elif "ROISEG_TOKEN" in os.environ:
        text, where = os.environ["ROISEG_TOKEN"], "ROISEG_TOKEN"
    else:
        return None
    if not text.strip():
        raise ValueError(f"{where} holds no token (only blanks): write the token into it, or "
                         "leave it out to run without one")
    return text.strip()


def server_address(args: argparse.Namespace, target: str | None = None) -> ServerAddress | None:
    """`target` (default: --server) and how to reach it; None for in-process."""
    from roiseg.client.connection import ServerAddress

    target = target or (args.server if isinstance(args.server, str) else None)
    if not target:
        return None
    return ServerAddress(target, tls=args.tls,
                         root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
                         token=token(args))


def model_source(args: argparse.Namespace) -> ModelSource:
    """The models `add_model_arguments` names."""
    from roiseg.client.connection import ModelSource

    return ModelSource(tuple(args.models), getattr(args, "models_beside_default", False),
                       args.default_model, args.device, args.runtime, args.threads,
                       args.reduced_precision)


def segment_options(args: argparse.Namespace) -> pb.SegmentOptions:
    """The contract's options from `add_segment_arguments`' arguments."""
    from roiseg.evaluation.metrics import parse_map
    from roiseg.v1 import segmentation_pb2 as pb

    renamed = parse_map(args.rename, '--rename needs "MODEL CLASS=NAME"')
    segment = pb.SegmentOptions(classes=getattr(args, "classes", []), class_names=renamed,
                                all_classes=getattr(args, "all_classes", False),
                                include_background=getattr(args, "include_background", False),
                                allow_upsample=args.allow_upsample,
                                hysteresis=pb.Hysteresis(enabled=args.hysteresis))
    for field, value in (("min_area_um2", args.min_area), ("min_hole_um2", args.min_hole),
                         ("simplify_um", args.simplify), ("review_below", args.review_below)):
        if value is not None:
            setattr(segment, field, value)
    return segment


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number from 0 up."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number from 0 up, got {text}")
    return value


def print_report(warnings: Iterable[str], report: str, written: Iterable[Path]) -> None:
    """A command's warnings (stderr), then its report and the files it wrote (stdout)."""
    for warning in warnings:
        print(f"roiseg: {warning}", file=sys.stderr)
    print(report)
    print("wrote " + ", ".join(map(str, written)))
