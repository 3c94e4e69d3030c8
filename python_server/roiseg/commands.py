"""Argument groups and helpers the roiseg subcommands share: model and server options,
segmentation options, connecting (in-process or to a server), client-side region reading
and the progress bar."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from roiseg.client import Client, InProcessClient, encode_png
from roiseg.models import DEFAULT_MODELS_DIR, ModelRegistry, select_device
from roiseg.service import Limits, SegmentationService
from roiseg.slides import Slide, choose_level, resample
from roiseg.v1 import segmentation_pb2 as pb

#: Longest side of an overlay picture, in pixels.
OVERLAY_SIDE = 1600


def add_model_arguments(parser: argparse.ArgumentParser, beside_default: bool = False) -> None:
    """--models, --default-model, --device: the models an in-process run serves; with
    `beside_default`, --models adds to the embedded default model instead of replacing it."""
    parser.add_argument("--models", action="append", type=Path, default=[],
                        help="directory of model cards (repeatable); "
                             + ("served beside the embedded default model" if beside_default
                                else "default: the embedded default model"))
    parser.set_defaults(models_beside_default=beside_default)
    parser.add_argument("--default-model", help="id of the default model")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def add_server_arguments(parser: argparse.ArgumentParser, help_text: str,
                         repeatable: bool = False) -> None:
    """--server (once, or repeatable) and how to reach it: --tls, --tls-ca, --token-file."""
    if repeatable:
        parser.add_argument("--server", action="append", default=[], metavar="HOST:PORT",
                            help=help_text)
    else:
        parser.add_argument("--server", metavar="HOST:PORT", help=help_text)
    parser.add_argument("--tls", action="store_true", help="connect to the server over TLS")
    parser.add_argument("--tls-ca", type=Path, help="PEM certificate(s) to trust for --tls")
    parser.add_argument("--token-file", type=Path,
                        help="file holding the server's bearer token (or ROISEG_TOKEN)")


def add_segment_arguments(parser: argparse.ArgumentParser, classes: bool = True,
                          background: bool = True) -> None:
    """The segmentation options of `roiseg segment` (see `segment_options`)."""
    group = parser.add_argument_group("segmentation options")
    if classes:
        group.add_argument("--classes", nargs="+", default=[], help="class names to return")
    group.add_argument("--min-area", type=float, help="drop regions below this many µm²")
    group.add_argument("--min-hole", type=float, help="fill holes below this many µm²")
    group.add_argument("--simplify", type=float, help="simplification tolerance in µm")
    group.add_argument("--hysteresis", action="store_true",
                       help="hysteresis thresholding of the tumour class (paper 003)")
    if background:
        group.add_argument("--include-background", action="store_true",
                           help="also return the non-tissue area as 'Background'")
    group.add_argument("--allow-upsample", action="store_true",
                       help="accept images coarser than the model's resolution")


def segment_options(args: argparse.Namespace) -> pb.SegmentOptions:
    """The contract's options from `add_segment_arguments`' arguments."""
    options = pb.SegmentOptions(classes=getattr(args, "classes", []),
                                include_background=getattr(args, "include_background", False),
                                allow_upsample=args.allow_upsample,
                                hysteresis=pb.Hysteresis(enabled=args.hysteresis))
    for field, value in (("min_area_um2", args.min_area), ("min_hole_um2", args.min_hole),
                         ("simplify_um", args.simplify)):
        if value is not None:
            setattr(options, field, value)
    return options


def service(args: argparse.Namespace, slide_roots: Sequence[Path] = (),
            limits: Limits = Limits()) -> SegmentationService:
    """A service over the models `add_model_arguments` names."""
    beside = [DEFAULT_MODELS_DIR] if args.models and getattr(args, "models_beside_default", False) \
        else []
    registry = ModelRegistry(args.models or [DEFAULT_MODELS_DIR], select_device(args.device),
                             args.default_model, beside)
    return SegmentationService(registry, slide_roots, limits)


def token(args: argparse.Namespace) -> str | None:
    """The bearer token from --token-file or ROISEG_TOKEN."""
    if getattr(args, "token_file", None):
        return args.token_file.read_text().strip()
    return os.environ.get("ROISEG_TOKEN") or None


def connect(args: argparse.Namespace, server: str | None = None) -> Client | InProcessClient:
    """A client of `server` (default: --server), or of an in-process service."""
    server = server or (args.server if isinstance(args.server, str) else None)
    if server:
        return Client(server, tls=args.tls,
                      root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
                      token=token(args))
    return InProcessClient(service(args))


def read_region(slide: Slide, geometry: BaseGeometry,
                downsample: float) -> tuple[np.ndarray, tuple[float, float], float]:
    """The slide pixels covering the ROI's bounding box at `downsample` (read from the
    level that suits it, then shrunk), with their full-resolution origin and downsample."""
    level = choose_level(slide.levels, downsample)
    extent = box(0, 0, slide.width, slide.height)
    x0, y0, x1, y1 = geometry.intersection(extent).bounds \
        if geometry.intersects(extent) else (0, 0, 1, 1)
    lx0, ly0 = math.floor(x0 / level.downsample_x), math.floor(y0 / level.downsample_y)
    lx1 = min(level.width, math.ceil(x1 / level.downsample_x))
    ly1 = min(level.height, math.ceil(y1 / level.downsample_y))
    pixels = slide.read_level_region(level.index, lx0, ly0, max(1, lx1 - lx0), max(1, ly1 - ly0))
    origin = (lx0 * level.downsample_x, ly0 * level.downsample_y)
    shrink = level.downsample_x / downsample
    if shrink < 1 - 1e-3:
        height, width = pixels.shape[:2]
        size = max(1, round(width * shrink)), max(1, round(height * shrink))
        pixels = resample(pixels, *size)
        return pixels, origin, level.downsample_x * width / size[0]
    return pixels, origin, level.downsample_x


def region_source(client: Client | InProcessClient, slide: Slide, geometry: BaseGeometry,
                  mpp: float, target_mpp: float) -> pb.ImageSource:
    """The ROI's pixels read here, near `target_mpp`, as the request's image (uploaded
    first when they are too large for one message)."""
    pixels, origin, downsample = read_region(slide, geometry, target_mpp / mpp)
    return client.pixels_source(encode_png(pixels), downsample=downsample, origin_x=origin[0],
                                origin_y=origin[1], pixel_size_um=mpp, image_width=slide.width,
                                image_height=slide.height)


def overlay_view(slide: Slide, geometry: BaseGeometry):
    """The ROI's pixels at a downsample that fits an overlay picture."""
    x0, y0, x1, y1 = geometry.bounds
    return read_region(slide, geometry, max(1.0, max(x1 - x0, y1 - y0) / OVERLAY_SIDE))


class ProgressBar:
    """A tqdm bar over tiles, labelled with the stage."""

    _STAGES = {v.number: v.name.removeprefix("STAGE_").lower()
               for v in pb.Stage.DESCRIPTOR.values}

    def __enter__(self) -> "ProgressBar":
        self._bar = tqdm(total=0, unit="tile", file=sys.stderr, leave=False,
                         disable=not sys.stderr.isatty())
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def update(self, progress: pb.Progress) -> None:
        self._bar.set_description(f"{progress.model_id} {self._STAGES.get(progress.stage, '')}")
        if progress.tiles_total:
            self._bar.total = progress.tiles_total
            self._bar.n = progress.tiles_done
        self._bar.refresh()


