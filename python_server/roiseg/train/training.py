"""Train or fine-tune an SMP segmentation model and write a roiseg model card.

Mounted by the CLI as ``roiseg train`` (`add_arguments` + `run`); also runnable as
``python -m roiseg.train``. Output directory: ``model.pt`` (a float16 state_dict; the
loader casts it back to float32) and ``model.json`` (see docs/model-cards.md and
docs/training.md).

Input (`roiseg.train.data`): images with label masks (``--masks``), or images and slides
with QuPath GeoJSON annotations (``--annotations``; unannotated pixels are ignored unless
``--unannotated`` names their class), all at the model's resolution. The images are split
into training and validation sets by image (seeded); the model is trained on class-balanced
random crops with flips, 90° rotations and colour jitter, with cross-entropy + Dice loss,
AdamW and a cosine schedule that ends with the budget (``--epochs`` or ``--max-minutes``,
whichever comes first). ``--init-model`` starts from a registered model's weights and
settings (its head re-initialised when the classes differ) instead of an ImageNet encoder.

Validation runs the model exactly as the server does (`roiseg.engine.inference.predict` on whole
held-out images, the training model wrapped in a `LoadedModel` with an in-memory card); the
best epoch by validation Dice is exported, training stops early when it no longer improves
(``--patience``), and the final metrics are those of the written card and checkpoint
loaded by the server's `load_model`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from roiseg.engine.inference import predict
from roiseg.engine.models import (
    DEFAULT_MODELS_DIR,
    ClassSpec,
    Ensemble,
    EnsembleMember,
    LoadedModel,
    ModelCard,
    ModelRegistry,
    build_smp_model,
    check_sha256,
    load_model,
    read_state_dict,
    sha256_file,
)
from roiseg.engine.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SUPPORTED_ENCODERS,
    imagenet_normalization,
    load_imagenet_encoder,
)
from roiseg.evaluation.metrics import class_dice
from roiseg.io.classes import class_colors
from roiseg.io.files import atomic_path, write_atomic
from roiseg.train.data import (
    IGNORE_INDEX,
    CropSampler,
    MaskMapping,
    Sample,
    annotation_class_names,
    find_annotated,
    find_pairs,
    load_annotated_sample,
    load_sample,
    parse_mask_values,
    split_by_image,
)
from roiseg.train.defaults import (
    NEW_MODEL_BATCH_SIZE,
    NEW_MODEL_MPP,
    NEW_MODEL_OVERLAP,
    NEW_MODEL_TILE_SIZE,
)

_STATE_VERSION = 3
#: Defaults of the card's inference settings when no model is fine-tuned.
_DEFAULT_MPP, _DEFAULT_TILE, _DEFAULT_OVERLAP, _DEFAULT_INFERENCE_BATCH = (
    NEW_MODEL_MPP, NEW_MODEL_TILE_SIZE, NEW_MODEL_OVERLAP, NEW_MODEL_BATCH_SIZE)
#: Prefix of the SMP segmentation head's parameters (re-initialised for other classes).
_HEAD_PREFIX = "segmentation_head."


# --------------------------------------------------------------------------- data


def class_specs(names: Sequence[str], colors: Mapping[str, Sequence[int]] | None = None,
                keep_on_glass: Sequence[str] = ()) -> list[ClassSpec]:
    """Classes with colours (`roiseg.io.classes.class_colors`); the classes named in
    `keep_on_glass` are marked so."""
    rgb = class_colors(names, colors)
    return [ClassSpec(index, name, rgb[name], keep_on_glass=name in keep_on_glass)
            for index, name in enumerate(names)]


# --------------------------------------------------------------------------- model


def build_model(architecture: str, encoder: str, num_classes: int, pretrained: bool = False,
                extra: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """An SMP model exactly as the server builds it from a card, optionally ImageNet-initialised."""
    model = build_smp_model(architecture, encoder, num_classes, extra)
    if pretrained:
        load_imagenet_encoder(model, encoder)
    return model


def resolve_card(spec: str, model_dirs: Sequence[Path] = (),
                 option: str = "--init-model") -> ModelCard:
    """The card of ``spec``: a path to a model.json (or its directory), else a model id
    registered in ``model_dirs`` (searched in order) or in the embedded default.

    Raises:
        ValueError: no such card or id; the message names ``option`` and lists the ids found.
    """
    path = Path(spec)
    if path.suffix == ".json" or path.is_file() or (path / "model.json").is_file():
        card_path = path / "model.json" if path.is_dir() else path
        if not card_path.is_file():
            raise ValueError(f"{option}: no model card {card_path}")
        return ModelCard.from_file(card_path)
    found: list[str] = []
    for directory in [*model_dirs, DEFAULT_MODELS_DIR]:
        registry = ModelRegistry([directory], torch.device("cpu"))
        ids = [card.id for card in registry.cards()]
        if spec in ids:
            return registry.card(spec)
        found += ids
    raise ValueError(f"{option} {spec!r}: no such model card or id; registered ids: "
                     + ", ".join(dict.fromkeys(found)))


def init_from_card(model: torch.nn.Module, card: ModelCard,
                   classes: Sequence[str]) -> bool:
    """Load a card's checkpoint into ``model`` (same architecture and encoder); of an
    ensemble card, the card's own checkpoint (its other members are not loaded).

    When ``classes`` differ from the card's (names or order), the segmentation head keeps
    ``model``'s fresh initialisation and only the encoder and decoder weights are loaded.
    The checkpoint's SHA-256 is checked as the server checks it.

    Returns:
        True when the head was re-initialised.

    Raises:
        ValueError: a checkpoint that does not match the card or does not fit ``model``.
    """
    if card.format != "state_dict":
        raise ValueError(f"--init-model {card.id}: only state_dict models can be fine-tuned, "
                         f"not {card.format}")
    check_sha256(card.checkpoint, card.sha256, card.card_path)
    state = read_state_dict(card.checkpoint)
    reinit = list(classes) != [c.name for c in card.classes]
    if reinit:
        state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIX)}
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (reinit and k.startswith(_HEAD_PREFIX))]
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    unexpected = [k for k in state if k not in own]
    if missing or mismatched or unexpected:
        raise ValueError(f"{card.checkpoint} does not fit {card.architecture}/{card.encoder}: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}, "
                         f"other shapes {mismatched[:3]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    return reinit


def to_input(images: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
             std: Sequence[float] = IMAGENET_STD,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, H, W, 3) or (H, W, 3) uint8 RGB -> normalised float (B, 3, H, W), channels-last."""
    if images.ndim == 3:
        images = images[None]
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1) * 255.0
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + (1 - soft Dice averaged over classes); IGNORE_INDEX pixels excluded."""
    logits = logits.float()
    valid = (target != IGNORE_INDEX).unsqueeze(1).float()
    # Cross-entropy of a batch without any labelled pixel would be 0/0.
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX) if valid.any() \
        else logits.sum() * 0.0
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1])
    onehot = onehot.permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + 1.0) / (denominator + 1.0)
    return ce + (1.0 - dice.mean())


def in_memory_card(classes: Sequence[ClassSpec], *, architecture: str = "Unet",
                   encoder: str = "mobilenet_v2", mpp: float = _DEFAULT_MPP,
                   tile_size: int = _DEFAULT_TILE, overlap: int = _DEFAULT_OVERLAP,
                   batch_size: int = _DEFAULT_INFERENCE_BATCH,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   model_id: str = "in-training",
                   extra: Mapping[str, Any] | None = None) -> ModelCard:
    """A card for a model that has no files yet, to run it with
    `roiseg.engine.inference.predict`."""
    return ModelCard(id=model_id, name=model_id, description="", version="0", format="state_dict",
                     architecture=architecture, encoder=encoder, checkpoint=Path(),
                     sha256="", mpp=mpp, tile_size=tile_size, overlap=overlap,
                     batch_size=batch_size, mean=tuple(mean), std=tuple(std),
                     classes=tuple(classes), background_class=None, tumor_class=None,
                     trained_on="", metrics={}, extra=dict(extra or {}), card_path=Path())


def evaluate(model: LoadedModel, samples: Sequence[Sample]) -> dict[str, Any]:
    """Dice per class on whole images, predicted as the server predicts them.

    ``model`` runs through `roiseg.engine.inference.predict` (the server's tiling, padding and
    blending, with the card's tile size and overlap); wrap a module in training with
    ``LoadedModel(in_memory_card(...), module, device)``. Pixels labelled `IGNORE_INDEX`
    are left out.

    Returns ``{"dice": [...], "dice_image_mean": [...], "score": float}``: ``dice`` pools
    all pixels of all images, ``dice_image_mean`` averages per-image Dice over the images
    where the class is present (in prediction or reference), ``score`` is the mean pooled
    Dice of the classes after the first (the early-stopping criterion). Dice is
    `roiseg.evaluation.metrics.class_dice`'s: NaN for a class absent from both sides, as
    ``roiseg evaluate`` reports it.
    """
    num_classes = len(model.card.classes)
    was_training = model.module.training
    model.module.eval()
    pooled = np.zeros((num_classes, num_classes), np.int64)
    per_image: list[np.ndarray] = []
    try:
        for sample in samples:
            prediction = predict(model, sample.image).class_map
            valid = sample.labels != IGNORE_INDEX
            confusion = np.bincount(sample.labels[valid].astype(np.int64) * num_classes
                                    + prediction[valid], minlength=num_classes ** 2
                                    ).reshape(num_classes, num_classes)
            pooled += confusion
            per_image.append(class_dice(confusion))
    finally:
        model.module.train(was_training)
    dice = class_dice(pooled)
    image_mean = np.array([_finite_mean(column) for column in np.array(per_image).T]) \
        if per_image else np.full(num_classes, np.nan)
    # no class present anywhere: no evidence, scored 0 rather than NaN (which never improves)
    score = float(np.nan_to_num(_finite_mean(dice[1:] if num_classes > 1 else dice)))
    return {"dice": [float(d) for d in dice], "dice_image_mean": [float(d) for d in image_mean],
            "score": score}


def _finite_mean(values: np.ndarray) -> float:
    """The mean of the finite values; NaN when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


# --------------------------------------------------------------------------- export


def half_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict with floating tensors in float16 (integers unchanged), on CPU."""
    return {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point()
                else v.detach().cpu()).clone()
            for k, v in model.state_dict().items()}


def load_float_state_dict(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load a (possibly float16) state_dict file into ``model``, cast to the model's dtypes."""
    state = read_state_dict(path)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in state.items()})
    return model


def export_model(model: torch.nn.Module, out_dir: Path, card: Mapping[str, Any],
                 checkpoint: str = "model.pt") -> dict[str, Any]:
    """Write ``checkpoint`` (float16 state_dict) and ``model.json`` to ``out_dir``.

    ``card`` holds the card's fields (docs/model-cards.md); ``format``, ``checkpoint`` and
    ``sha256`` are filled in here. Returns the card as written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_card(out_dir, {**card, "format": "state_dict", "checkpoint": checkpoint,
                                "sha256": _save_half(model, out_dir / checkpoint)})


def _save_half(model: torch.nn.Module, path: Path) -> str:
    """Write ``model``'s float16 state_dict to ``path`` atomically; its SHA-256."""
    with atomic_path(path) as partial:
        torch.save(half_state_dict(model), partial)
    return sha256_file(path)


def write_card(out_dir: Path, card: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``model.json`` (fields in the order of docs/model-cards.md); returns it."""
    written = _ordered_card(card)
    write_atomic(Path(out_dir) / "model.json",
                 json.dumps(written, indent=2, ensure_ascii=False) + "\n")
    return written


_CARD_ORDER = ("id", "name", "description", "version", "format", "architecture", "encoder",
               "checkpoint", "sha256", "mpp", "tile_size", "overlap", "batch_size",
               "normalization", "classes", "background_class", "tumor_class", "trained_on",
               "metrics", "extra", "ensemble")


def _ordered_card(card: Mapping[str, Any]) -> dict[str, Any]:
    ordered = {k: card[k] for k in _CARD_ORDER if k in card}
    ordered.update({k: v for k, v in card.items() if k not in ordered})
    return ordered


def _metric_keys(classes: Sequence[ClassSpec]) -> list[str]:
    """``val_<first word>_dice`` per class ("Gland epithelium" -> val_gland_dice)."""
    keys: list[str] = []
    for spec in classes:
        words = re.findall(r"[a-z0-9]+", spec.name.lower()) or [str(spec.index)]
        key = f"val_{words[0]}_dice"
        if key in keys:
            key = f"val_{'_'.join(words)}_dice"
        if key in keys:
            key = f"val_class{spec.index}_dice"
        keys.append(key)
    return keys


# --------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` says and write the model directory; returns the exit status."""
    try:
        config = _Config.from_args(args)
    except ValueError as exc:
        print(f"roiseg train: {exc}", file=sys.stderr)
        return 2
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        return _Trainer(config).train()
    except KeyboardInterrupt:
        print("roiseg train: interrupted; the last epoch's state is in "
              f"{config.state_path} (--resume)", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------- training


@dataclass
class _Config:
    """The options resolved: defaults of the fine-tuned model filled in, classes fixed."""

    args: argparse.Namespace
    classes: list[ClassSpec]
    mapping: MaskMapping | None  # --masks
    annotated: list[tuple[Path, Path]]  # --annotations: (image, GeoJSON) pairs
    unannotated: int | None
    init_card: ModelCard | None
    partners: tuple[ModelCard, ...]  # --ensemble-with
    architecture: str
    encoder: str
    extra: dict[str, Any] | None
    mpp: float
    tile_size: int
    overlap: int
    inference_batch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    state_path: Path
    device: torch.device
    amp: bool
    threads: int
    command: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Config:
        if args.crop < 32 or args.crop % 32:
            raise ValueError("--crop must be a multiple of 32")
        if args.batch_size < 1 or args.epochs < 1 or args.steps_per_epoch < 1:
            raise ValueError("--batch-size, --epochs and --steps-per-epoch must be >= 1")
        if not 0 <= args.scale_jitter <= 1:
            raise ValueError(f"--scale-jitter must be in [0, 1], got {args.scale_jitter}")
        if not 0 < args.encoder_lr_scale <= 1:
            raise ValueError(f"--encoder-lr-scale must be in (0, 1], got {args.encoder_lr_scale}")
        if not 0 <= args.ema < 1:
            raise ValueError(f"--ema must be 0 (off) or a decay in (0, 1), got {args.ema}")
        if any(v is not None and v <= 0 for v in (args.source_mpp, args.mpp)):
            raise ValueError("--source-mpp and --mpp must be positive")
        card = resolve_card(args.init_model, args.models) if args.init_model else None
        for option, value, own in (("--architecture", args.architecture, "architecture"),
                                   ("--encoder", args.encoder, "encoder"),
                                   ("--extra", args.extra, "extra")):
            if card is not None and value is not None and value != getattr(card, own):
                raise ValueError(f"{option} {value} differs from the {own} of --init-model "
                                 f"{card.id} ({getattr(card, own)}); its weights would not fit")

        annotated: list[tuple[Path, Path]] = []
        mapping = None
        unannotated = None
        if args.masks is not None:
            if args.classes or args.unannotated:
                raise ValueError("--classes and --unannotated go with --annotations; with "
                                 "--masks the classes come from --mask-values")
            if args.source_mpp is None:
                raise ValueError("--masks needs --source-mpp (µm per pixel of the images)")
            mapping = parse_mask_values(args.mask_values)
            names = list(mapping.names)
        else:
            if args.mask_values:
                raise ValueError("--mask-values goes with --masks")
            annotated = find_annotated(args.images, args.annotations)
            names = _annotation_classes(args, card, annotated)
            if args.unannotated is not None:
                if args.unannotated not in names:
                    raise ValueError(f"--unannotated {args.unannotated!r} is not one of the "
                                     f"classes {', '.join(names)}")
                unannotated = names.index(args.unannotated)
        if len(names) < 2:
            raise ValueError(f"a segmentation model needs at least two classes, got {names}")
        if len(names) >= IGNORE_INDEX:
            raise ValueError(f"at most {IGNORE_INDEX - 1} classes")

        colors: dict[str, Sequence[int]] = {c.name: c.color for c in card.classes} if card \
            else {}
        given: dict[str, list[int]] = {}
        for item in args.colors:
            name, _, rgb = item.rpartition("=")
            try:
                given[name.strip().strip("\"'")] = [int(v) for v in rgb.split(",")]
            except ValueError:
                raise ValueError(f"--colors {item!r}: expected NAME=R,G,B") from None
        unknown = set(given) - set(names)
        if unknown:
            raise ValueError(f"--colors names unknown classes: {', '.join(sorted(unknown))}")
        colors.update(given)

        keep_on_glass = [n.strip().strip("\"'") for n in args.keep_on_glass]
        if not args.keep_on_glass and card is not None:
            keep_on_glass = [c.name for c in card.classes if c.keep_on_glass]
        unknown = set(keep_on_glass) - set(names) if args.keep_on_glass else set()
        if unknown:
            raise ValueError(f"--keep-on-glass names unknown classes: "
                             f"{', '.join(sorted(unknown))}")

        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device available")
        use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())

        def pick(value: Any, own: str, default: Any) -> Any:
            return value if value is not None else getattr(card, own) if card else default

        encoder = pick(args.encoder, "encoder", "mobilenet_v2")
        mean, std = ((tuple(card.mean), tuple(card.std)) if card
                     else imagenet_normalization(encoder) if encoder in SUPPORTED_ENCODERS
                     else (IMAGENET_MEAN, IMAGENET_STD))
        mpp = pick(args.mpp, "mpp", _DEFAULT_MPP)
        partners = tuple(resolve_card(spec, args.models, "--ensemble-with")
                         for spec in args.ensemble_with)
        for partner in partners:
            _check_partner(partner, names, mpp, (tuple(mean), tuple(std)))
        return cls(args=args, classes=class_specs(names, colors, keep_on_glass),
                   mapping=mapping,
                   annotated=annotated, unannotated=unannotated, init_card=card,
                   partners=partners,
                   architecture=pick(args.architecture, "architecture", "Unet"),
                   encoder=encoder,
                   extra=pick(args.extra, "extra", None) or None,
                   mpp=mpp,
                   tile_size=pick(args.tile_size, "tile_size", _DEFAULT_TILE),
                   overlap=pick(args.overlap, "overlap", _DEFAULT_OVERLAP),
                   inference_batch_size=pick(args.inference_batch_size, "batch_size",
                                             _DEFAULT_INFERENCE_BATCH),
                   mean=mean, std=std,
                   state_path=args.state or Path(args.out) / "train_state.pt",
                   device=torch.device("cuda" if use_cuda else "cpu"),
                   amp=use_cuda and not args.no_amp, threads=args.threads,
                   command=getattr(args, "command_line", ""))


def _check_partner(card: ModelCard, names: Sequence[str], mpp: float,
                   normalization: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    """An --ensemble-with model must see the same input and predict the same classes."""
    problems = []
    if card.format != "state_dict":
        problems.append(f"it is a {card.format} model, not a state_dict")
    if [c.name for c in card.classes] != list(names):
        problems.append(f"its classes are {', '.join(c.name for c in card.classes)}, "
                        f"not {', '.join(names)}")
    if card.mpp != mpp:
        problems.append(f"it runs at {card.mpp:g} µm/px, not {mpp:g}")
    if (tuple(card.mean), tuple(card.std)) != normalization:
        problems.append(f"its normalisation (mean {list(card.mean)}, std {list(card.std)}) "
                        f"differs from {[list(v) for v in normalization]}")
    if problems:
        raise ValueError(f"--ensemble-with {card.id}: " + "; ".join(problems))


def _annotation_classes(args: argparse.Namespace, card: ModelCard | None,
                        annotated: Sequence[tuple[Path, Path]]) -> list[str]:
    """--classes, else the fine-tuned model's classes, else the annotated names sorted (with
    --unannotated's class)."""
    if args.classes:
        names = [n.strip().strip("\"'") for n in args.classes.split(",") if n.strip()]
        if len(set(names)) != len(names):
            raise ValueError(f"--classes names a class twice: {args.classes}")
        return names
    found = annotation_class_names(p for _, p in annotated)
    if card is not None:
        own = [c.name for c in card.classes]
        other = sorted(set(found) - set(own))
        if other:
            raise ValueError(f"the annotations use classes that {card.id} does not have "
                             f"({', '.join(other)}); pass --classes to train a new "
                             "segmentation head for the classes you want")
        return own
    if args.unannotated and args.unannotated not in found:
        found = sorted([*found, args.unannotated])
    return found


@dataclass
class _Progress:
    step: int = 0
    epoch: int = 0
    elapsed_s: float = 0.0
    best_score: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    last_val_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def _parameter_groups(model: torch.nn.Module, lr: float,
                      encoder_scale: float) -> list[dict[str, Any]]:
    """The encoder's parameters at ``lr x encoder_scale``, the others at ``lr``."""
    encoder = {id(p) for p in model.encoder.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) in encoder],
             "base_lr": lr * encoder_scale},
            {"params": [p for p in model.parameters() if id(p) not in encoder],
             "base_lr": lr}]


def _averaged(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics."""
    if decay == 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _kept(name: str | None, names: Sequence[str]) -> str | None:
    return name if name in names else None


class _Trainer:
    def __init__(self, config: _Config) -> None:
        self.config = config
        self.args = config.args
        self.num_classes = len(config.classes)
        # --ensemble-with, one entry per model (an ensemble's members one by one).
        self.partners: list[tuple[torch.nn.Module, EnsembleMember]] = []

    def _load_partners(self) -> None:
        for card in self.config.partners:
            module = load_model(card, self.config.device).module
            modules = list(module.members) if isinstance(module, Ensemble) else [module]
            self.partners += zip(modules, card.members)
            print(f"roiseg train: ensemble with {card.id}@{card.version} ({card.sha256})",
                  file=sys.stderr)

    def _export_partners(self, out_dir: Path) -> list[dict[str, Any]]:
        """Write the --ensemble-with weights next to the trained model; the card's entries."""
        entries = []
        for i, (module, member) in enumerate(self.partners, 1):
            name = f"model.member{i}.pt"
            entries.append({"architecture": member.architecture, "encoder": member.encoder,
                            "checkpoint": name,
                            "sha256": _save_half(module, Path(out_dir) / name),
                            **({"extra": member.extra} if member.extra else {})})
        return entries

    # -- setup
    def _load_data(self) -> tuple[list[Sample], list[Sample]]:
        args, config = self.args, self.config
        if config.mapping is not None:
            scale = args.source_mpp / config.mpp
            samples = [load_sample(i, m, config.mapping, scale)
                       for i, m in find_pairs(args.images, args.masks)]
        else:
            names = [c.name for c in config.classes]
            samples = [load_annotated_sample(i, g, names, config.mpp, args.source_mpp,
                                             config.unannotated, args.margin)
                       for i, g in config.annotated]
        train_idx, val_idx = split_by_image([s.name for s in samples], args.val_fraction,
                                            args.seed)
        return [samples[i] for i in train_idx], [samples[i] for i in val_idx]

    def _fingerprint(self, train: Sequence[Sample], val: Sequence[Sample]) -> dict[str, Any]:
        a, c = self.args, self.config
        return {"architecture": c.architecture, "encoder": c.encoder, "extra": c.extra,
                "classes": [s.name for s in c.classes], "mpp": c.mpp,
                "source_mpp": a.source_mpp, "crop": a.crop, "batch_size": a.batch_size,
                "steps_per_epoch": a.steps_per_epoch, "seed": a.seed, "ema": a.ema,
                "scale_jitter": a.scale_jitter,
                "init": c.init_card.sha256 if c.init_card else None,
                "ensemble_with": [p.sha256 for p in c.partners],
                "unannotated": c.unannotated,
                "train": [s.name for s in train], "val": [s.name for s in val]}

    def _model(self) -> torch.nn.Module:
        """The model to train: the fine-tuned model's weights, else an ImageNet encoder."""
        args, config = self.args, self.config
        card = config.init_card
        model = build_model(config.architecture, config.encoder, self.num_classes,
                            pretrained=card is None and not args.no_pretrained,
                            extra=config.extra)
        if card is not None:
            names = [c.name for c in config.classes]
            if init_from_card(model, card, names):
                print(f"roiseg train: the classes differ from {card.id}'s "
                      f"({', '.join(c.name for c in card.classes)} -> {', '.join(names)}): "
                      f"its segmentation head is re-initialised for {len(names)} classes, "
                      "the encoder and decoder weights are kept", file=sys.stderr)
            print(f"roiseg train: fine-tuning {self.fine_tuned_from}", file=sys.stderr)
            if card.ensemble:
                print(f"roiseg train: {card.id} is an ensemble of {len(card.ensemble) + 1} "
                      f"models; its own {card.architecture}/{card.encoder} is fine-tuned and "
                      "the other members are left out (--ensemble-with adds models back)",
                      file=sys.stderr)
        return model

    @property
    def fine_tuned_from(self) -> str | None:
        card = self.config.init_card
        return f"{card.id}@{card.version} ({card.sha256})" if card else None

    def _loaded(self, module: torch.nn.Module) -> LoadedModel:
        """``module`` (with the --ensemble-with models) as the server would run it, with the
        card being trained."""
        c = self.config
        if self.partners:
            module = Ensemble([module, *(m for m, _ in self.partners)]).train(module.training)
        return LoadedModel(in_memory_card(
            c.classes, architecture=c.architecture, encoder=c.encoder, mpp=c.mpp,
            tile_size=c.tile_size, overlap=c.overlap, batch_size=c.inference_batch_size,
            mean=c.mean, std=c.std, extra=c.extra), module, c.device)

    def _lr_factor(self, progress: _Progress, total_steps: int, budget_s: float | None) -> float:
        """Linear warm-up, then cosine to 1 % over the budget (steps or time, whichever ends
        first)."""
        warmup = self.args.warmup_steps
        if progress.step < warmup:
            return (progress.step + 1) / warmup
        fraction = (progress.step - warmup) / max(1, total_steps - warmup)
        if budget_s:
            fraction = max(fraction, progress.elapsed_s / budget_s)
        fraction = min(1.0, fraction)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * fraction))

    # -- main loop
    def train(self) -> int:
        from tqdm import tqdm

        args, config = self.args, self.config
        if args.resume and not config.state_path.is_file():
            print(f"roiseg train: --resume: no state at {config.state_path}", file=sys.stderr)
            return 2
        torch.manual_seed(args.seed)
        t_load = time.monotonic()
        train_set, val_set = self._load_data()
        print(f"roiseg train: {len(train_set)} training and {len(val_set)} validation images "
              f"at {config.mpp:g} µm/px ({time.monotonic() - t_load:.1f} s to load); "
              f"device {config.device}{' + AMP' if config.amp else ''}", file=sys.stderr)
        fingerprint = self._fingerprint(train_set, val_set)

        model = self._model()
        model = model.to(config.device).to(memory_format=torch.channels_last)
        self._load_partners()
        optimizer = torch.optim.AdamW(_parameter_groups(model, args.lr, args.encoder_lr_scale),
                                      lr=args.lr, weight_decay=args.weight_decay)
        averaged = _averaged(model, args.ema)
        scaler = torch.amp.GradScaler("cuda", enabled=config.amp)
        rng = np.random.default_rng(args.seed)
        progress = _Progress()
        best_state: dict[str, torch.Tensor] | None = None

        if args.resume:
            state = torch.load(config.state_path, map_location="cpu", weights_only=True)
            if state.get("version") != _STATE_VERSION or state["fingerprint"] != fingerprint:
                print("roiseg train: --resume: the saved state was made with other data or "
                      "settings (model, classes, resolution, crop, batch, seed or split)",
                      file=sys.stderr)
                return 2
            model.load_state_dict(state["model"])
            if averaged is not None:
                averaged.load_state_dict(state["averaged"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            progress = _Progress(**state["progress"])
            best_state = state["best"]
            print(f"roiseg train: resumed at epoch {progress.epoch}, step {progress.step}, "
                  f"{progress.elapsed_s / 60:.1f} min spent", file=sys.stderr)

        sampler = CropSampler(train_set, args.crop, self.num_classes, rng,
                              scale_jitter=args.scale_jitter)
        total_steps = args.epochs * args.steps_per_epoch
        budget_s = args.max_minutes * 60 if args.max_minutes else None
        stop_reason = "epochs done"
        bar = tqdm(total=total_steps, initial=progress.step, unit="step", dynamic_ncols=True,
                   disable=args.no_progress, mininterval=1 if sys.stderr.isatty() else 15)
        clock = time.monotonic() - progress.elapsed_s
        while progress.epoch < args.epochs:
            if val_set and progress.bad_epochs >= args.patience:
                stop_reason = "early stopping"
                break
            model.train()
            out_of_time = False
            losses: list[float] = []
            step_s = 0.0
            for _ in range(args.steps_per_epoch):
                progress.elapsed_s = time.monotonic() - clock
                # Stop early enough for one more step and the final validation to fit.
                if budget_s and progress.elapsed_s + step_s + 1.5 * progress.last_val_s \
                        >= budget_s:
                    out_of_time = True
                    break
                factor = self._lr_factor(progress, total_steps, budget_s)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                images, labels = sampler.batch(args.batch_size)
                inputs = to_input(images, config.mean, config.std, config.device)
                target = torch.from_numpy(labels).to(config.device).long()
                with torch.autocast("cuda", dtype=torch.float16, enabled=config.amp):
                    logits = model(inputs)
                loss = segmentation_loss(logits, target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if averaged is not None:
                    averaged.update_parameters(model)
                losses.append(float(loss.detach()))
                progress.step += 1
                step_s = time.monotonic() - clock - progress.elapsed_s
                bar.update(1)
                bar.set_postfix(epoch=progress.epoch + 1, loss=f"{losses[-1]:.3f}",
                                lr=f"{args.lr * factor:.1e}",
                                best=f"{max(progress.best_score, 0):.3f}", refresh=False)
            if not losses:
                stop_reason = "time budget"
                break
            progress.epoch += 1
            record: dict[str, float] = {"epoch": progress.epoch, "step": progress.step,
                                        "loss": float(np.mean(losses))}
            weights = model if averaged is None else averaged.module
            if val_set:
                t_val = time.monotonic()
                result = evaluate(self._loaded(weights), val_set)
                progress.last_val_s = time.monotonic() - t_val
                record["val_score"] = result["score"]
                if result["score"] > progress.best_score + 1e-4:
                    progress.best_score, progress.best_epoch = result["score"], progress.epoch
                    progress.bad_epochs = 0
                    best_state = {k: v.detach().cpu().clone()
                                  for k, v in weights.state_dict().items()}
                else:
                    progress.bad_epochs += 1
            else:
                best_state = {k: v.detach().cpu().clone() for k, v in weights.state_dict().items()}
                progress.best_epoch = progress.epoch
            progress.elapsed_s = time.monotonic() - clock
            record["minutes"] = progress.elapsed_s / 60
            progress.history.append(record)
            bar.write(f"epoch {progress.epoch}: loss {record['loss']:.4f}"
                      + (f", val Dice {record['val_score']:.4f} (best {progress.best_score:.4f}"
                         f" @ {progress.best_epoch})" if "val_score" in record else "")
                      + f", {record['minutes']:.1f} min", file=sys.stderr)
            self._save_state(model, averaged, optimizer, scaler, rng, progress, best_state,
                             fingerprint)
            if out_of_time:
                stop_reason = "time budget"
                break
        else:
            if val_set and progress.bad_epochs >= args.patience:
                stop_reason = "early stopping"
        bar.close()
        if best_state is None:
            print("roiseg train: no training step was run (budget too small?)", file=sys.stderr)
            return 1
        return self._finish(best_state, train_set, val_set, progress, stop_reason)

    def _save_state(self, model: torch.nn.Module, averaged: AveragedModel | None,
                    optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, rng: np.random.Generator, progress: _Progress,
                    best_state: dict[str, torch.Tensor] | None,
                    fingerprint: dict[str, Any]) -> None:
        path = self.config.state_path
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"version": _STATE_VERSION, "fingerprint": fingerprint,
                 "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "averaged": None if averaged is None else averaged.state_dict(),
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                 "progress": copy.deepcopy(progress.__dict__), "best": best_state}
        with atomic_path(path) as partial:
            torch.save(state, partial)

    def _finish(self, best_state: dict[str, torch.Tensor], train_set: Sequence[Sample],
                val_set: Sequence[Sample], progress: _Progress, stop_reason: str) -> int:
        args, config = self.args, self.config
        model = build_model(config.architecture, config.encoder, self.num_classes,
                            extra=config.extra)
        model.load_state_dict(best_state)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        ensemble = self._export_partners(out_dir)
        written = export_model(model, out_dir, self._card(train_set, val_set, progress,
                                                          stop_reason, {}, ensemble))
        # Metrics of the model exactly as the server will run it: the card and float16
        # checkpoint just written, loaded by the server's loader, whole held-out images at
        # the model's resolution through the server's tiled inference.
        metrics: dict[str, str] = {}
        if val_set:
            exported = load_model(ModelCard.from_file(out_dir / "model.json"), config.device)
            result = evaluate(exported, val_set)
            keys = _metric_keys(config.classes)
            for key, spec in zip(keys, config.classes):
                metrics[key] = f"{result['dice'][spec.index]:.3f}"
            for key, spec in zip(keys, config.classes):
                metrics[f"{key}_image_mean"] = f"{result['dice_image_mean'][spec.index]:.3f}"
            metrics["val_images"] = str(len(val_set))
        card = self._card(train_set, val_set, progress, stop_reason, metrics, ensemble)
        write_card(out_dir, {**card, "checkpoint": written["checkpoint"],
                             "sha256": written["sha256"]})
        size_mb = (out_dir / written["checkpoint"]).stat().st_size / 1e6
        print(f"roiseg train: {stop_reason} after {progress.epoch} epochs, "
              f"{progress.step} steps, {progress.elapsed_s / 60:.1f} min; best epoch "
              f"{progress.best_epoch}; wrote {out_dir / 'model.json'} and "
              f"{written['checkpoint']} ({size_mb:.1f} MB); metrics {metrics}", file=sys.stderr)
        if config.state_path.exists() and not args.keep_state:
            config.state_path.unlink()
        return 0

    def _card(self, train_set: Sequence[Sample], val_set: Sequence[Sample],
              progress: _Progress, stop_reason: str, metrics: dict[str, str],
              ensemble: Sequence[dict[str, Any]]) -> dict[str, Any]:
        args, config = self.args, self.config
        model_id = args.model_id or re.sub(r"[^a-z0-9._-]+", "-",
                                           Path(args.out).resolve().name.lower())
        names = [c.name for c in config.classes]
        n_images = len(train_set) + len(val_set)
        if config.mapping is not None:
            data = args.data_description or f"image/mask pairs from {args.images}"
            images = (f"{n_images} images resampled from {args.source_mpp:g} to "
                      f"{config.mpp:g} µm/px")
        else:
            data = args.data_description or (f"images from {args.images} with QuPath "
                                             f"GeoJSON annotations from {args.annotations}")
            unlabelled = (f"unannotated pixels = {args.unannotated}"
                          if config.unannotated is not None else "unannotated pixels ignored")
            images = (f"{n_images} annotated images (their annotations' bounding box) at "
                      f"{config.mpp:g} µm/px, {unlabelled}")
        if config.init_card is not None:
            init = f"weights fine-tuned from {config.init_card.id}"
        elif args.no_pretrained:
            init = "a randomly initialised encoder"
        else:
            init = "an ImageNet-initialised encoder (pretrained.py)"
        trained_on = (
            f"{data}: {images}; {len(train_set)} for training, "
            f"{len(val_set)} held out for validation (split by image, seed {args.seed}). "
            f"{config.architecture}/{config.encoder} with {init}, trained on "
            f"{args.crop}x{args.crop} px class-balanced random crops (batch {args.batch_size}; "
            + (f"scale jitter ±{args.scale_jitter:g}, " if args.scale_jitter else "")
            + "flips, 90° rotations, HSV/brightness/contrast jitter), cross-entropy + Dice "
            f"loss, AdamW lr {args.lr:g}"
            + (f" (encoder x {args.encoder_lr_scale:g})" if args.encoder_lr_scale != 1 else "")
            + " with a cosine schedule"
            + (f", weights averaged (EMA, decay {args.ema:g})" if args.ema else "")
            + f"; {progress.step} steps / "
            f"{progress.epoch} epochs in {progress.elapsed_s / 60:.1f} min on "
            f"{self._device_name()} ({stop_reason}); best validation epoch "
            f"{progress.best_epoch} exported in float16. "
            + (f"fine_tuned_from: {self.fine_tuned_from}. " if config.init_card else "")
            + "".join(f"Class probabilities averaged with {p.id}@{p.version} ({p.sha256}), "
                      "chosen and measured as an ensemble. " for p in config.partners)
            + (f"Command: {config.command}" if config.command else "")).strip()
        init_card = config.init_card
        card: dict[str, Any] = {
            "id": model_id,
            "name": args.model_name or f"{model_id} ({config.architecture} / {config.encoder})",
            "description": args.description or (
                f"{config.architecture}/{config.encoder} segmentation of {', '.join(names)} "
                f"at {config.mpp:g} µm/px."),
            "version": args.model_version,
            "format": "state_dict",
            "architecture": config.architecture,
            "encoder": config.encoder,
            "mpp": config.mpp,
            "tile_size": config.tile_size,
            "overlap": config.overlap,
            "batch_size": config.inference_batch_size,
            "normalization": {"mean": list(config.mean), "std": list(config.std)},
            "classes": [{"index": c.index, "name": c.name, "color": list(c.color),
                         **({"keep_on_glass": True} if c.keep_on_glass else {})}
                        for c in config.classes],
            # The fine-tuned model's background/tumour roles carry over to same-named classes.
            "background_class": _kept(init_card.background_class if init_card else None, names),
            "tumor_class": _kept(init_card.tumor_class if init_card else None, names),
            "trained_on": trained_on,
            "metrics": metrics,
        }
        if config.extra:
            card["extra"] = config.extra
        if ensemble:
            card["ensemble"] = list(ensemble)
        return card

    def _device_name(self) -> str:
        device = self.config.device
        if device.type == "cuda":
            return f"{torch.cuda.get_device_name(device)} (AMP)" if self.config.amp \
                else torch.cuda.get_device_name(device)
        threads = torch.get_num_threads()
        return f"CPU, {threads} thread{'s' if threads != 1 else ''}"
