"""`roiseg train`: train or fine-tune a model (the engine: `roiseg.train.training`)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from roiseg.errors import InvalidInput
from roiseg.train import defaults

if TYPE_CHECKING:
    from roiseg.train.training import TrainOptions

HELP = "train or fine-tune a model"
DESCRIPTION = """\
Train a segmentation model, or fine-tune one, from images with label masks or QuPath
annotations; writes a model directory (model.pt + model.json card) that `roiseg serve --models`
serves. See docs/training.md.

example:
  roiseg train images/ --masks masks/ --mask-values '0="Other tissue",255="Gland epithelium"' \\
      --out my-model"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``roiseg train`` options to ``parser``."""
    data = parser.add_argument_group(
        "data", "--images with either --masks (label masks) or --annotations (QuPath GeoJSON)")
    data.add_argument("--images", type=Path, required=True,
                      help="directory of RGB images (with --annotations also SVS/TIFF slides)")
    labels = data.add_mutually_exclusive_group(required=True)
    labels.add_argument("--masks", type=Path,
                        help="directory of label masks, same file names (stems) as the images")
    labels.add_argument("--annotations", type=Path,
                        help="directory of QuPath GeoJSON exports: NAME.geojson for image "
                             "NAME.EXT, classes by properties.classification.name, "
                             "coordinates in full-resolution pixels of the image")
    data.add_argument("--mask-values", default=None,
                      help='mask value to class, e.g. 0="Other tissue",255="Gland epithelium"; '
                           "classes are numbered in order of appearance. Default: binary "
                           "masks, 0 = Other tissue, any other value = Gland epithelium")
    data.add_argument("--classes", default=None, metavar='"A,B,C"',
                      help="with --annotations: the model's classes, in output order "
                           "(annotations of other classes are left out). Default: the "
                           "fine-tuned model's classes, else the names found, sorted")
    data.add_argument("--unannotated", default=None, metavar="CLASS",
                      help="with --annotations: class of the pixels no annotation covers "
                           "(default: they are ignored by the loss and the metrics)")
    data.add_argument("--margin", type=int, default=64,
                      help="with --annotations: model pixels read around the annotations' "
                           "bounding box (default 64)")
    data.add_argument("--colors", action="append", default=[], metavar='"NAME=R,G,B"',
                      help="class colour (repeatable); default: the fine-tuned model's, "
                           "known names, then a palette")
    data.add_argument("--keep-on-glass", action="append", default=[], metavar="CLASS",
                      help="class whose pixels the server keeps where its tissue mask sees "
                           "blank glass (repeatable), e.g. glands whose lumens the masks "
                           "include; default: the fine-tuned model's, else none")
    data.add_argument("--catch-all", action="append", default=[], metavar="CLASS",
                      help="the model's everything-else class (the rest of the tissue), "
                           "outlined rather than filled in overlays; default: the fine-tuned "
                           "model's, else none")
    data.add_argument("--source-mpp", type=float, default=None,
                      help="µm per pixel of the images (GlaS: about 0.62); required for "
                           "--masks, default the slide's calibration for --annotations")
    data.add_argument("--mpp", type=float, default=None,
                      help="µm per pixel the model works at (default: the fine-tuned "
                           f"model's, else {defaults.NEW_MODEL_MPP:g})")
    data.add_argument("--val-fraction", type=float, default=0.15,
                      help="fraction of images held out for validation, split by image "
                           "(default 0.15; 0 = no validation)")
    data.add_argument("--data-description", default=None,
                      help="one phrase describing the data, for the card's trained_on")

    model = parser.add_argument_group("model")
    model.add_argument("--init-model", default=None, metavar="ID_OR_CARD",
                       help="fine-tune a registered model: its id (in --models or the "
                            "embedded default) or the path of its model.json. Its weights, "
                            "architecture, encoder, mpp, tile size, normalisation and classes "
                            "are the defaults; other classes re-initialise its head")
    model.add_argument("--models", type=Path, action="append", default=[], metavar="DIR",
                       help="models directory to look up --init-model ids in (repeatable)")
    model.add_argument("--ensemble-with", action="append", default=[], metavar="ID_OR_CARD",
                       help="average the trained model's class probabilities with this model's "
                            "(repeatable; same classes, µm/px and normalisation): validation, "
                            "the best epoch and the card's metrics are the ensemble's, and the "
                            "output directory gets its weights as further checkpoints")
    model.add_argument("--architecture", default=None,
                       help="SMP architecture (default Unet, or the fine-tuned model's)")
    model.add_argument("--encoder", default=None,
                       help="SMP encoder (default mobilenet_v2, or the fine-tuned model's)")
    model.add_argument("--no-pretrained", action="store_true",
                       help="random encoder initialisation instead of ImageNet weights")
    model.add_argument("--extra", type=json.loads, default=None,
                       help="JSON object of extra SMP constructor arguments (card 'extra')")

    train = parser.add_argument_group("training")
    train.add_argument("--crop", type=int, default=256, help="crop size in px (default 256)")
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--scale-jitter", type=float, default=0.0, metavar="S",
                       help="random crop scale: tissue up to (1 + S) times larger or smaller "
                            "(default 0: none)")
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--steps-per-epoch", type=int, default=40,
                       help="optimiser steps between validations (default 40)")
    train.add_argument("--max-minutes", type=float, default=None,
                       help="wall-clock budget of the training loop, validation included")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--encoder-lr-scale", type=float, default=1.0, metavar="F",
                       help="the encoder learns at F x --lr (default 1; below 1 keeps more "
                            "of its ImageNet or fine-tuned features)")
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--warmup-steps", type=int, default=30)
    train.add_argument("--ema", type=float, default=0.995, metavar="DECAY",
                       help="validate and export an exponential moving average of the "
                            "weights with this decay per step (default 0.995; 0 = the "
                            "weights as trained)")
    train.add_argument("--patience", type=int, default=10,
                       help="stop after this many epochs without a better validation Dice")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    train.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    train.add_argument("--threads", type=int, default=0,
                       help="CPU threads for torch (default: torch's choice)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True,
                     help="output directory: model.pt + model.json")
    out.add_argument("--model-id", default=None,
                     help="card id (default: the output directory's name)")
    out.add_argument("--model-name", default=None, help="card name")
    out.add_argument("--description", default=None, help="card description")
    out.add_argument("--model-version", default="0.1.0", help="card version (default 0.1.0)")
    out.add_argument("--tile-size", type=int, default=None,
                     help="card tile_size (default: the fine-tuned model's, else "
                          f"{defaults.NEW_MODEL_TILE_SIZE})")
    out.add_argument("--overlap", type=int, default=None,
                     help="card overlap (default: the fine-tuned model's, else "
                          f"{defaults.NEW_MODEL_OVERLAP})")
    out.add_argument("--inference-batch-size", type=int, default=None,
                     help="card batch_size (default: the fine-tuned model's, else "
                          f"{defaults.NEW_MODEL_BATCH_SIZE})")
    out.add_argument("--state", type=Path, default=None,
                     help="resumable training state (default OUT/train_state.pt); written "
                          "every epoch, removed after a completed run unless --keep-state")
    out.add_argument("--resume", action="store_true", help="continue from --state")
    out.add_argument("--keep-state", action="store_true",
                     help="keep the training state after a completed run")


def run(args: argparse.Namespace) -> int:
    """Trains as `args` says; the card records the command that reproduces the run. An
    interrupted run says where its state is kept (exit status 130)."""
    from roiseg.train.training import train

    options = train_options(args)
    try:
        train(options)
    except KeyboardInterrupt:
        print("roiseg train: interrupted; the last epoch's state is in "
              f"{options.state_path} (--resume)", file=sys.stderr)
        return 130
    return 0


def train_options(args: argparse.Namespace) -> TrainOptions:
    """The library's options for `args`, with the command line that reproduces them."""
    from roiseg.train.data import parse_mask_values
    from roiseg.train.training import TrainOptions

    return TrainOptions(
        images=args.images, out=args.out, masks=args.masks, annotations=args.annotations,
        mask_values=parse_mask_values(args.mask_values) if args.mask_values else None,
        classes=_class_list(args.classes),
        unannotated=args.unannotated, margin=args.margin, colors=_colors(args.colors),
        keep_on_glass=tuple(_class_name(n) for n in args.keep_on_glass) or None,
        catch_all=tuple(_class_name(n) for n in args.catch_all) or None,
        source_mpp=args.source_mpp, mpp=args.mpp, val_fraction=args.val_fraction,
        data_description=args.data_description,
        init_model=args.init_model, models=tuple(args.models),
        ensemble_with=tuple(args.ensemble_with), architecture=args.architecture,
        encoder=args.encoder, pretrained=not args.no_pretrained, extra=args.extra,
        crop=args.crop, batch_size=args.batch_size, scale_jitter=args.scale_jitter,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, max_minutes=args.max_minutes,
        lr=args.lr, encoder_lr_scale=args.encoder_lr_scale, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, ema=args.ema, patience=args.patience, seed=args.seed,
        device=args.device, amp=not args.no_amp, threads=args.threads,
        progress_bar=not args.no_progress,
        model_id=args.model_id, model_name=args.model_name, description=args.description,
        model_version=args.model_version, tile_size=args.tile_size, overlap=args.overlap,
        inference_batch_size=args.inference_batch_size, state=args.state, resume=args.resume,
        keep_state=args.keep_state, command_line=command_line(args))


def _class_list(text: str | None) -> tuple[str, ...] | None:
    """``--classes "A,B,C"`` as class names; None when not given."""
    return tuple(_class_name(name) for name in text.split(",") if name.strip()) if text \
        else None


def _class_name(text: str) -> str:
    """A class name as given on the command line, without spaces or quotes around it."""
    return text.strip().strip("\"'")


def _colors(items: list[str]) -> dict[str, tuple[int, int, int]]:
    """``--colors NAME=R,G,B`` options as a mapping of class names to colours."""
    colors: dict[str, tuple[int, int, int]] = {}
    for item in items:
        name, _, rgb = item.rpartition("=")
        try:
            red, green, blue = (int(value) for value in rgb.split(","))
        except ValueError:
            raise InvalidInput(f"--colors {item!r}: expected NAME=R,G,B") from None
        colors[_class_name(name)] = (red, green, blue)
    return colors


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces ``args``: the process's own command line when it parses
    to the same options, else an equivalent ``roiseg train`` command rebuilt from them;
    ``--resume`` left out (an interrupted run resumed gives the same result)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    argv = list(sys.argv)
    prog = os.path.basename(argv[0]) if argv else ""
    head = ["python", "-m", "roiseg.train"] if prog in ("", "-m", "train.py", "__main__.py") \
        else [prog]
    tail = argv[1:]
    if tail and tail[0] == "train":
        head, tail = head + ["train"], tail[1:]
    tail = [a for a in tail if a != "--resume"]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parsed = parser.parse_args(tail)
        if all(getattr(args, k, None) == v for k, v in vars(parsed).items() if k != "resume"):
            return shlex.join(head + tail)
    except SystemExit:
        pass
    rebuilt = ["roiseg", "train"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or action.dest == "resume":
            continue
        option = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            rebuilt.append(option)
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                rebuilt += [option, str(item)]
        else:
            rebuilt += [option, json.dumps(value) if isinstance(value, dict) else str(value)]
    return shlex.join(rebuilt)
