"""`roiseg precision`: check a model's reduced precision on held-out images and record it in
its card (the engine: `roiseg.engine.precision`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.cli import options

HELP = "check a model in reduced precision against full precision, and record it in its card"
DESCRIPTION = """\
Segment images in full precision and in a lower one (bfloat16 autocast: about twice as fast on
a CPU with bf16 instructions) and print the fraction of pixels that keep their class. With
--write the figure goes into the model's card, and servers started with --reduced-precision
then run that model in it. The images are the card's held-out images when it records its
training split and they are in --images, else every image there.

example:
  roiseg precision --models my-model/ --images glas/images --mpp 0.62 --write"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``roiseg precision`` options to ``parser``."""
    options.add_model_arguments(parser)
    parser.add_argument("--model", help="model id (default: the default model)")
    parser.add_argument("--images", type=Path, required=True,
                        help="directory of images (PNG, JPEG, TIFF) to check on")
    parser.add_argument("--mpp", type=float, required=True,
                        help="µm/px of those images (they are resampled to the model's)")
    parser.add_argument("--dtype", default="bfloat16", help="the lower precision: bfloat16")
    parser.add_argument("--write", action="store_true",
                        help="record the check in the model's card (model.json)")


def run(args: argparse.Namespace) -> int:
    import cv2

    from roiseg.engine import precision
    from roiseg.engine.models import DEFAULT_MODELS_DIR, ModelRegistry, select_device

    if not args.mpp > 0:
        raise ValueError(f"--mpp must be > 0, got {args.mpp}")
    registry = ModelRegistry(list(args.models) or [DEFAULT_MODELS_DIR],
                             select_device(args.device), args.default_model)
    card = registry.card(args.model or registry.default_id)
    paths = sorted(p for p in args.images.glob("*")
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"))
    held_out = set(card.training_split.held_out) if card.training_split else set()
    chosen = [p for p in paths if p.stem in held_out]
    folder = f"{args.images.resolve().parent.name}/{args.images.name}"
    what = f"{len(chosen)} held-out images of {folder}"
    if not chosen:
        chosen = paths
        what = f"{len(chosen)} images of {folder} (the card names no held-out image there)"
    if not chosen:
        raise ValueError(f"no PNG, JPEG or TIFF image in {args.images}")
    scale = args.mpp / card.mpp

    def images():
        for path in chosen:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"cannot read {path}")
            yield cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), None, fx=scale, fy=scale,
                             interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)

    checked = precision.check(card, images(), registry.device, args.dtype,
                              f"{what} at {args.mpp:g} µm/px")
    print(f"{card.id}@{card.version} in {checked.dtype} on {checked.device}: "
          f"{100 * checked.pixel_agreement:.2f} % of the pixels keep their class ({what})")
    if args.write:
        precision.record(card, checked)
        print(f"recorded in {card.card_path}")
    return 0
