"""Train or fine-tune an SMP segmentation model and write a roiseg model card.

`train` (`TrainOptions`) is ``roiseg train`` (`roiseg.cli.train` parses its options; also
runnable as ``python -m roiseg.train``). Output directory: ``model.pt`` (a float16
state_dict; the loader casts it back to float32) and ``model.json`` (see
docs/model-cards.md and docs/training.md).

Input (`roiseg.train.data`): images with label masks (``--masks``), or images and slides
with QuPath GeoJSON annotations (``--annotations``; unannotated pixels are ignored unless
``--unannotated`` names their class), all at the model's resolution. The images are split
into training and validation sets by image (seeded; the card's ``training_split`` names
them); the model is trained on class-balanced
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

import copy
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from roiseg.engine.inference import predict
from roiseg.engine.models import (
    CARD_FILE,
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
    write_card,
)
from roiseg.engine.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SUPPORTED_ENCODERS,
    imagenet_normalization,
    load_imagenet_encoder,
)
from roiseg.engine.training_split import TrainingSplit
from roiseg.errors import Cancelled, InvalidInput, NotFound
from roiseg.evaluation.metrics import class_dice
from roiseg.io.classes import class_colors
from roiseg.io.files import atomic_path
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
                keep_on_glass: Sequence[str] = (), catch_all: Sequence[str] = ()
                ) -> list[ClassSpec]:
    """Classes with colours (`roiseg.io.classes.class_colors`); the classes named in
    `keep_on_glass` and `catch_all` are marked so."""
    rgb = class_colors(names, colors)
    return [ClassSpec(index, name, rgb[name], keep_on_glass=name in keep_on_glass,
                      catch_all=name in catch_all)
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
        NotFound: no such card or id; the message names ``option`` and lists the ids found.
        ValueError: an invalid card (`ModelCard.from_file`).
    """
    path = Path(spec)
    if path.suffix == ".json" or path.is_file() or (path / CARD_FILE).is_file():
        card_path = path / CARD_FILE if path.is_dir() else path
        if not card_path.is_file():
            raise NotFound(f"{option}: no model card {card_path}")
        return ModelCard.from_file(card_path)
    found: list[str] = []
    for directory in [*model_dirs, DEFAULT_MODELS_DIR]:
        registry = ModelRegistry([directory], torch.device("cpu"))
        ids = [card.id for card in registry.cards()]
        if spec in ids:
            return registry.card(spec)
        found += ids
    raise NotFound(f"{option} {spec!r}: no such model card or id; registered ids: "
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
        InvalidInput: a checkpoint that does not match the card or does not fit ``model``.
        ValueError: the checkpoint's SHA-256 is not the card's.
    """
    if card.format != "state_dict":
        raise InvalidInput(f"--init-model {card.id}: only state_dict models can be "
                           f"fine-tuned, not {card.format}")
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
        raise InvalidInput(f"{card.checkpoint} does not fit {card.architecture}/{card.encoder}: "
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
                   max_tile_size: int | None = None,
                   mean: tuple[float, float, float] = IMAGENET_MEAN,
                   std: tuple[float, float, float] = IMAGENET_STD,
                   model_id: str = "in-training",
                   extra: Mapping[str, Any] | None = None) -> ModelCard:
    """A card for a model that has no files yet, to run it with
    `roiseg.engine.inference.predict`."""
    return ModelCard(id=model_id, name=model_id, description="", version="0", format="state_dict",
                     architecture=architecture, encoder=encoder, checkpoint=Path(),
                     sha256="", mpp=mpp, tile_size=tile_size, overlap=overlap,
                     batch_size=batch_size, max_tile_size=max_tile_size, mean=mean, std=std,
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


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class TrainOptions:
    """What `train` trains on, how, and what it writes: the options of ``roiseg train``, a
    field per option of the same name (the errors name the options). None where a setting
    has a default: the fine-tuned model's (``init_model``), else a new model's."""

    images: Path  #: images (with ``annotations`` also slides)
    out: Path  #: the model directory written: model.pt + model.json
    # -- data: exactly one of ``masks`` and ``annotations``
    masks: Path | None = None  #: label masks, named as the images
    annotations: Path | None = None  #: QuPath GeoJSON exports, NAME.geojson for image NAME.EXT
    mask_values: MaskMapping | None = None  #: with ``masks``; None: binary masks
    classes: tuple[str, ...] | None = None  #: with ``annotations``: the classes, in order
    unannotated: str | None = None  #: with ``annotations``: the class of unannotated pixels
    margin: int = 64  #: with ``annotations``: model pixels read around them
    colors: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    keep_on_glass: tuple[str, ...] | None = None
    catch_all: tuple[str, ...] | None = None  #: the model's "everything else" class(es)
    source_mpp: float | None = None  #: µm/px of the images; None: the slides' own
    mpp: float | None = None
    val_fraction: float = 0.15
    data_description: str | None = None
    # -- model
    init_model: str | None = None  #: id or model.json of the model to fine-tune
    models: tuple[Path, ...] = ()  #: model directories to look ids up in
    ensemble_with: tuple[str, ...] = ()
    architecture: str | None = None
    encoder: str | None = None
    pretrained: bool = True  #: ImageNet weights for a new model's encoder
    extra: Mapping[str, Any] | None = None
    # -- training
    crop: int = 256
    batch_size: int = 8
    scale_jitter: float = 0.0
    epochs: int = 100
    steps_per_epoch: int = 40
    max_minutes: float | None = None
    lr: float = 1e-3
    encoder_lr_scale: float = 1.0
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    ema: float = 0.995
    patience: int = 10
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  #: mixed precision on CUDA
    threads: int = 0  #: CPU threads for torch; 0: torch's choice
    progress_bar: bool = True
    # -- output
    model_id: str | None = None  #: None: the output directory's name
    model_name: str | None = None
    description: str | None = None
    model_version: str = "0.1.0"
    tile_size: int | None = None
    overlap: int | None = None
    inference_batch_size: int | None = None
    state: Path | None = None  #: the resumable training state; None: OUT/train_state.pt
    resume: bool = False
    keep_state: bool = False
    command_line: str = ""  #: the command that reproduces the run, for the card

    @property
    def state_path(self) -> Path:
        """Where the training state is kept between epochs."""
        return self.state or self.out / "train_state.pt"


@dataclass(frozen=True)
class TrainProgress:
    """Where `train` is, for a caller that shows it (the server's FineTune): after each step
    ("training"), after each epoch ("validated", with the validation score when there is a
    validation set) and before the export ("exporting")."""

    stage: Literal["training", "validated", "exporting"]
    epoch: int  #: epochs done
    epochs: int
    step: int  #: steps done
    total_steps: int
    loss: float  #: the step's, or the epoch's mean
    val_score: float | None = None  #: mean validation Dice of the classes after the first
    best_score: float | None = None


def train(options: TrainOptions, *, on_progress: Callable[[TrainProgress], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> ModelCard:
    """Train as ``options`` say and write the model directory ``options.out``; the card as
    written. Progress goes to stderr, and to ``on_progress``; ``should_stop`` is asked before
    every step and before the export (Cancelled when it says so).

    An interrupted run (KeyboardInterrupt) leaves the last epoch's state at
    ``options.state_path``, from where ``resume`` continues it.

    Raises:
        InvalidInput: options that contradict each other, the data or the fine-tuned model;
            unusable data; a budget too small for one step.
        NotFound: missing images, masks or annotations, an unknown model, no state to resume.
    """
    config = _Config.from_options(options)
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    trainer = _Trainer(config)
    if on_progress is not None:
        trainer.on_progress = on_progress
    if should_stop is not None:
        trainer.should_stop = should_stop
    return trainer.run()


# --------------------------------------------------------------------------- training


@dataclass
class _Config:
    """The options resolved: defaults of the fine-tuned model filled in, classes fixed."""

    options: TrainOptions
    card: ModelCard  # of the model trained, in memory: classes, SMP set-up, inference settings
    mapping: MaskMapping | None  # --masks
    pairs: list[tuple[Path, Path]]  # (image, mask) or, with --annotations, (image, GeoJSON)
    unannotated: int | None
    init_card: ModelCard | None
    partners: tuple[ModelCard, ...]  # --ensemble-with
    device: torch.device
    amp: bool

    @classmethod
    def from_options(cls, options: TrainOptions) -> _Config:
        _check_recipe(options)
        card = resolve_card(options.init_model, options.models) if options.init_model else None
        extra = dict(options.extra) if options.extra is not None else None
        for option, value, own in (("--architecture", options.architecture, "architecture"),
                                   ("--encoder", options.encoder, "encoder"),
                                   ("--extra", extra, "extra")):
            if card is not None and value is not None and value != getattr(card, own):
                raise InvalidInput(f"{option} {value} differs from the {own} of --init-model "
                                   f"{card.id} ({getattr(card, own)}); its weights would not "
                                   "fit")

        mapping = None
        unannotated = None
        if options.masks is not None and options.annotations is None:
            if options.classes is not None or options.unannotated is not None:
                raise InvalidInput("--classes and --unannotated go with --annotations; with "
                                   "--masks the classes come from --mask-values")
            if options.source_mpp is None:
                raise InvalidInput("--masks needs --source-mpp (µm per pixel of the images)")
            mapping = options.mask_values or parse_mask_values(None)
            names = list(mapping.names)
            pairs = find_pairs(options.images, options.masks)
        elif options.annotations is not None and options.masks is None:
            if options.mask_values is not None:
                raise InvalidInput("--mask-values goes with --masks")
            pairs = find_annotated(options.images, options.annotations)
            names = _annotation_classes(options, card, pairs)
            if options.unannotated is not None:
                if options.unannotated not in names:
                    raise InvalidInput(f"--unannotated {options.unannotated!r} is not one of "
                                       f"the classes {', '.join(names)}")
                unannotated = names.index(options.unannotated)
        else:
            raise InvalidInput("--images goes with either --masks or --annotations")
        if len(names) < 2:
            raise InvalidInput(f"a segmentation model needs at least two classes, got {names}")
        if len(names) >= IGNORE_INDEX:
            raise InvalidInput(f"at most {IGNORE_INDEX - 1} classes")

        colors: dict[str, Sequence[int]] = {c.name: c.color for c in card.classes} if card \
            else {}
        _check_named("--colors", options.colors, names)
        colors.update(options.colors)
        keep_on_glass = _marked("--keep-on-glass", options.keep_on_glass, names, card,
                                lambda c: c.keep_on_glass)
        catch_all = _marked("--catch-all", options.catch_all, names, card, lambda c: c.catch_all)

        if options.device == "cuda" and not torch.cuda.is_available():
            raise InvalidInput("--device cuda: no CUDA device available")
        use_cuda = options.device == "cuda" or (options.device == "auto"
                                                and torch.cuda.is_available())

        def pick(value: Any, own: str, default: Any) -> Any:
            return value if value is not None else getattr(card, own) if card else default

        encoder = pick(options.encoder, "encoder", "mobilenet_v2")
        mean, std = ((card.mean, card.std) if card
                     else imagenet_normalization(encoder) if encoder in SUPPORTED_ENCODERS
                     else (IMAGENET_MEAN, IMAGENET_STD))
        mpp = pick(options.mpp, "mpp", _DEFAULT_MPP)
        partners = tuple(resolve_card(spec, options.models, "--ensemble-with")
                         for spec in options.ensemble_with)
        for partner in partners:
            _check_partner(partner, names, mpp, (mean, std))
        trained = in_memory_card(
            class_specs(names, colors, keep_on_glass, catch_all),
            architecture=pick(options.architecture, "architecture", "Unet"), encoder=encoder,
            mpp=mpp, tile_size=pick(options.tile_size, "tile_size", _DEFAULT_TILE),
            overlap=pick(options.overlap, "overlap", _DEFAULT_OVERLAP),
            batch_size=pick(options.inference_batch_size, "batch_size",
                            _DEFAULT_INFERENCE_BATCH),
            # the tile plan checked for the model it starts from, unless the tiles change
            max_tile_size=card.max_tile_size if card and options.tile_size is None else None,
            mean=mean, std=std, extra=pick(extra, "extra", None))
        return cls(options=options, card=trained, mapping=mapping, pairs=pairs,
                   unannotated=unannotated, init_card=card, partners=partners,
                   device=torch.device("cuda" if use_cuda else "cpu"),
                   amp=use_cuda and options.amp)


def _check_recipe(options: TrainOptions) -> None:
    """The training settings are each usable on their own."""
    if options.crop < 32 or options.crop % 32:
        raise InvalidInput("--crop must be a multiple of 32")
    if options.batch_size < 1 or options.epochs < 1 or options.steps_per_epoch < 1:
        raise InvalidInput("--batch-size, --epochs and --steps-per-epoch must be >= 1")
    if not 0 <= options.scale_jitter <= 1:
        raise InvalidInput(f"--scale-jitter must be in [0, 1], got {options.scale_jitter}")
    if not 0 < options.encoder_lr_scale <= 1:
        raise InvalidInput(f"--encoder-lr-scale must be in (0, 1], got "
                           f"{options.encoder_lr_scale}")
    if not 0 <= options.ema < 1:
        raise InvalidInput(f"--ema must be 0 (off) or a decay in (0, 1), got {options.ema}")
    if any(v is not None and v <= 0 for v in (options.source_mpp, options.mpp)):
        raise InvalidInput("--source-mpp and --mpp must be positive")


def _check_named(option: str, named: Iterable[str], names: Sequence[str]) -> None:
    """``option`` names only classes among ``names``."""
    unknown = set(named) - set(names)
    if unknown:
        raise InvalidInput(f"{option} names unknown classes: {', '.join(sorted(unknown))}")


def _marked(option: str, named: Sequence[str] | None, names: Sequence[str],
            card: ModelCard | None, flag: Callable[[ClassSpec], bool]) -> Sequence[str]:
    """The classes an option marks (`keep_on_glass`, `catch_all`), checked against `names`;
    unset: those the fine-tuned model's card marks."""
    if named is not None:
        _check_named(option, named, names)
        return named
    return [c.name for c in card.classes if flag(c)] if card else []


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
        raise InvalidInput(f"--ensemble-with {card.id}: " + "; ".join(problems))


def _annotation_classes(options: TrainOptions, card: ModelCard | None,
                        annotated: Sequence[tuple[Path, Path]]) -> list[str]:
    """--classes, else the fine-tuned model's classes, else the annotated names sorted (with
    --unannotated's class)."""
    if options.classes is not None:
        if len(set(options.classes)) != len(options.classes):
            raise InvalidInput(f"--classes names a class twice: {','.join(options.classes)}")
        return list(options.classes)
    found = annotation_class_names(p for _, p in annotated)
    if card is not None:
        own = [c.name for c in card.classes]
        other = sorted(set(found) - set(own))
        if other:
            raise InvalidInput(f"the annotations use classes that {card.id} does not have "
                               f"({', '.join(other)}); pass --classes to train a new "
                               "segmentation head for the classes you want")
        return own
    if options.unannotated and options.unannotated not in found:
        found = sorted([*found, options.unannotated])
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
    encoder = {id(p) for p in model.get_submodule("encoder").parameters()}
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


def _report(message: str) -> None:
    """One line of progress for the user, on stderr."""
    print(f"roiseg train: {message}", file=sys.stderr)


class _Trainer:
    def __init__(self, config: _Config,
                 on_progress: Callable[[TrainProgress], None] = lambda p: None,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.options = config.options
        self.num_classes = len(config.card.classes)
        # --ensemble-with, one entry per model (an ensemble's members one by one).
        self.partners: list[tuple[torch.nn.Module, EnsembleMember]] = []

    def _load_partners(self) -> None:
        for card in self.config.partners:
            module = load_model(card, self.config.device).module
            modules = list(module.members) if isinstance(module, Ensemble) else [module]
            self.partners += zip(modules, card.members)
            _report(f"ensemble with {card.id}@{card.version} ({card.sha256})")

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
        options, config = self.options, self.config
        if config.mapping is not None:
            assert options.source_mpp is not None  # required with --masks (_Config)
            scale = options.source_mpp / config.card.mpp
            samples = [load_sample(i, m, config.mapping, scale) for i, m in config.pairs]
        else:
            names = [c.name for c in config.card.classes]
            samples = [load_annotated_sample(i, g, names, config.card.mpp, options.source_mpp,
                                             config.unannotated, options.margin)
                       for i, g in config.pairs]
        train_idx, val_idx = split_by_image([s.name for s in samples], options.val_fraction,
                                            options.seed)
        return [samples[i] for i in train_idx], [samples[i] for i in val_idx]

    def _fingerprint(self, train: Sequence[Sample], val: Sequence[Sample]) -> dict[str, Any]:
        o, c = self.options, self.config
        return {"architecture": c.card.architecture, "encoder": c.card.encoder,
                "extra": c.card.extra or None, "classes": [s.name for s in c.card.classes],
                "mpp": c.card.mpp,
                "source_mpp": o.source_mpp, "crop": o.crop, "batch_size": o.batch_size,
                "steps_per_epoch": o.steps_per_epoch, "seed": o.seed, "ema": o.ema,
                "scale_jitter": o.scale_jitter,
                "init": c.init_card.sha256 if c.init_card else None,
                "ensemble_with": [p.sha256 for p in c.partners],
                "unannotated": c.unannotated,
                "train": [s.name for s in train], "val": [s.name for s in val]}

    def _model(self) -> torch.nn.Module:
        """The model to train: the fine-tuned model's weights, else an ImageNet encoder."""
        options, config = self.options, self.config
        card = config.init_card
        model = build_model(config.card.architecture, config.card.encoder, self.num_classes,
                            pretrained=card is None and options.pretrained,
                            extra=config.card.extra)
        if card is not None:
            names = [c.name for c in config.card.classes]
            if init_from_card(model, card, names):
                _report(f"the classes differ from {card.id}'s "
                        f"({', '.join(c.name for c in card.classes)} -> {', '.join(names)}): "
                        f"its segmentation head is re-initialised for {len(names)} classes, "
                        "the encoder and decoder weights are kept")
            _report(f"fine-tuning {self.fine_tuned_from}")
            if card.ensemble:
                _report(f"{card.id} is an ensemble of {len(card.ensemble) + 1} models; its "
                        f"own {card.architecture}/{card.encoder} is fine-tuned and the other "
                        "members are left out (--ensemble-with adds models back)")
        return model

    @property
    def fine_tuned_from(self) -> str | None:
        card = self.config.init_card
        return f"{card.id}@{card.version} ({card.sha256})" if card else None

    def _loaded(self, module: torch.nn.Module) -> LoadedModel:
        """``module`` (with the --ensemble-with models) as the server would run it, with the
        card being trained."""
        if self.partners:
            module = Ensemble([module, *(m for m, _ in self.partners)]).train(module.training)
        return LoadedModel(self.config.card, module, self.config.device)

    def _lr_factor(self, progress: _Progress, total_steps: int, budget_s: float | None) -> float:
        """Linear warm-up, then cosine to 1 % over the budget (steps or time, whichever ends
        first)."""
        warmup = self.options.warmup_steps
        if progress.step < warmup:
            return (progress.step + 1) / warmup
        fraction = (progress.step - warmup) / max(1, total_steps - warmup)
        if budget_s:
            fraction = max(fraction, progress.elapsed_s / budget_s)
        fraction = min(1.0, fraction)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * fraction))

    # -- main loop
    def run(self) -> ModelCard:
        """Train, then export the best epoch; the card as written."""
        from tqdm import tqdm

        options, config = self.options, self.config
        if options.resume and not options.state_path.is_file():
            raise NotFound(f"--resume: no state at {options.state_path}")
        torch.manual_seed(options.seed)
        t_load = time.monotonic()
        train_set, val_set = self._load_data()
        _report(f"{len(train_set)} training and {len(val_set)} validation images "
                f"at {config.card.mpp:g} µm/px ({time.monotonic() - t_load:.1f} s to load); "
                f"device {config.device}{' + AMP' if config.amp else ''}")
        fingerprint = self._fingerprint(train_set, val_set)

        model = self._model()
        model = model.to(config.device).to(memory_format=torch.channels_last)
        self._load_partners()
        optimizer = torch.optim.AdamW(
            _parameter_groups(model, options.lr, options.encoder_lr_scale), lr=options.lr,
            weight_decay=options.weight_decay)
        averaged = _averaged(model, options.ema)
        scaler = torch.amp.GradScaler("cuda", enabled=config.amp)
        rng = np.random.default_rng(options.seed)
        progress = _Progress()
        best_state: dict[str, torch.Tensor] | None = None

        if options.resume:
            state = torch.load(options.state_path, map_location="cpu", weights_only=True)
            if state.get("version") != _STATE_VERSION or state["fingerprint"] != fingerprint:
                raise InvalidInput("--resume: the saved state was made with other data or "
                                   "settings (model, classes, resolution, crop, batch, seed or "
                                   "split)")
            model.load_state_dict(state["model"])
            if averaged is not None:
                averaged.load_state_dict(state["averaged"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            progress = _Progress(**state["progress"])
            best_state = state["best"]
            _report(f"resumed at epoch {progress.epoch}, step {progress.step}, "
                    f"{progress.elapsed_s / 60:.1f} min spent")

        sampler = CropSampler(train_set, options.crop, self.num_classes, rng,
                              scale_jitter=options.scale_jitter)
        total_steps = options.epochs * options.steps_per_epoch
        budget_s = options.max_minutes * 60 if options.max_minutes else None
        stop_reason = "epochs done"
        bar = tqdm(total=total_steps, initial=progress.step, unit="step", dynamic_ncols=True,
                   disable=not options.progress_bar,
                   mininterval=1 if sys.stderr.isatty() else 15)
        clock = time.monotonic() - progress.elapsed_s
        while progress.epoch < options.epochs:
            if val_set and progress.bad_epochs >= options.patience:
                stop_reason = "early stopping"
                break
            model.train()
            out_of_time = False
            losses: list[float] = []
            step_s = 0.0
            for _ in range(options.steps_per_epoch):
                self._stop_if_asked()
                progress.elapsed_s = time.monotonic() - clock
                # Stop early enough for one more step and the final validation to fit.
                if budget_s and progress.elapsed_s + step_s + 1.5 * progress.last_val_s \
                        >= budget_s:
                    out_of_time = True
                    break
                factor = self._lr_factor(progress, total_steps, budget_s)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                images, labels = sampler.batch(options.batch_size)
                inputs = to_input(images, config.card.mean, config.card.std, config.device)
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
                                lr=f"{options.lr * factor:.1e}",
                                best=_best_text(progress, bool(val_set)), refresh=False)
                self.on_progress(TrainProgress("training", progress.epoch, options.epochs,
                                               progress.step, total_steps, losses[-1]))
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
            self.on_progress(TrainProgress(
                "validated", progress.epoch, options.epochs, progress.step, total_steps,
                record["loss"], record.get("val_score"),
                progress.best_score if val_set else None))
            bar.set_postfix(epoch=progress.epoch, loss=f"{record['loss']:.3f}",
                            best=_best_text(progress, bool(val_set)))
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
            if val_set and progress.bad_epochs >= options.patience:
                stop_reason = "early stopping"
        bar.close()
        if best_state is None:
            raise InvalidInput("no training step was run (budget too small?)")
        self._stop_if_asked()
        self.on_progress(TrainProgress("exporting", progress.epoch, options.epochs,
                                       progress.step, total_steps,
                                       progress.history[-1]["loss"] if progress.history
                                       else float("nan"),
                                       best_score=progress.best_score if val_set else None))
        return self._finish(best_state, train_set, val_set, progress, stop_reason)

    def _stop_if_asked(self) -> None:
        if self.should_stop():
            raise Cancelled("training cancelled")

    def _save_state(self, model: torch.nn.Module, averaged: AveragedModel | None,
                    optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, rng: np.random.Generator, progress: _Progress,
                    best_state: dict[str, torch.Tensor] | None,
                    fingerprint: dict[str, Any]) -> None:
        path = self.options.state_path
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
                val_set: Sequence[Sample], progress: _Progress, stop_reason: str) -> ModelCard:
        """Export ``best_state`` with its card, measured as the server will run it."""
        options, config = self.options, self.config
        model = build_model(config.card.architecture, config.card.encoder, self.num_classes,
                            extra=config.card.extra)
        model.load_state_dict(best_state)
        out_dir = options.out
        out_dir.mkdir(parents=True, exist_ok=True)
        ensemble = self._export_partners(out_dir)
        written = export_model(model, out_dir, self._card(train_set, val_set, progress,
                                                          stop_reason, {}, ensemble))
        # Metrics of the model exactly as the server will run it: the card and float16
        # checkpoint just written, loaded by the server's loader, whole held-out images at
        # the model's resolution through the server's tiled inference.
        metrics: dict[str, float | str] = {}
        if val_set:
            exported = load_model(ModelCard.from_file(out_dir / CARD_FILE), config.device)
            result = evaluate(exported, val_set)
            keys = _metric_keys(config.card.classes)
            for key, spec in zip(keys, config.card.classes):
                metrics[key] = round(float(result['dice'][spec.index]), 4)
            for key, spec in zip(keys, config.card.classes):
                metrics[f"{key}_image_mean"] = round(float(result['dice_image_mean'][spec.index]),
                                                     4)
            metrics["val_images"] = len(val_set)
        card = self._card(train_set, val_set, progress, stop_reason, metrics, ensemble)
        write_card(out_dir, {**card, "checkpoint": written["checkpoint"],
                             "sha256": written["sha256"]})
        size_mb = (out_dir / written["checkpoint"]).stat().st_size / 1e6
        _report(f"{stop_reason} after {progress.epoch} epochs, "
                f"{progress.step} steps, {progress.elapsed_s / 60:.1f} min; best epoch "
                f"{progress.best_epoch}; wrote {out_dir / CARD_FILE} and "
                f"{written['checkpoint']} ({size_mb:.1f} MB); metrics {metrics}")
        if options.state_path.exists() and not options.keep_state:
            options.state_path.unlink()
        return ModelCard.from_file(out_dir / CARD_FILE)

    def _card(self, train_set: Sequence[Sample], val_set: Sequence[Sample],
              progress: _Progress, stop_reason: str, metrics: dict[str, float | str],
              ensemble: Sequence[dict[str, Any]]) -> dict[str, Any]:
        options, config, trained = self.options, self.config, self.config.card
        model_id = options.model_id or re.sub(r"[^a-z0-9._-]+", "-",
                                              options.out.resolve().name.lower())
        names = [c.name for c in trained.classes]
        n_images = len(train_set) + len(val_set)
        if config.mapping is not None:
            data = options.data_description or f"image/mask pairs from {options.images}"
            images = (f"{n_images} images resampled from {options.source_mpp:g} to "
                      f"{trained.mpp:g} µm/px")
        else:
            data = options.data_description or (
                f"images from {options.images} with QuPath GeoJSON annotations from "
                f"{options.annotations}")
            unlabelled = (f"unannotated pixels = {options.unannotated}"
                          if config.unannotated is not None else "unannotated pixels ignored")
            images = (f"{n_images} annotated images (their annotations' bounding box) at "
                      f"{trained.mpp:g} µm/px, {unlabelled}")
        if config.init_card is not None:
            init = f"weights fine-tuned from {config.init_card.id}"
        elif not options.pretrained:
            init = "a randomly initialised encoder"
        else:
            init = "an ImageNet-initialised encoder (pretrained.py)"
        trained_on = (
            f"{data}: {images}; {len(train_set)} for training, "
            f"{len(val_set)} held out for validation (split by image, seed {options.seed}). "
            f"{trained.architecture}/{trained.encoder} with {init}, trained on "
            f"{options.crop}x{options.crop} px class-balanced random crops "
            f"(batch {options.batch_size}; "
            + (f"scale jitter ±{options.scale_jitter:g}, " if options.scale_jitter else "")
            + "flips, 90° rotations, HSV/brightness/contrast jitter), cross-entropy + Dice "
            f"loss, AdamW lr {options.lr:g}"
            + (f" (encoder x {options.encoder_lr_scale:g})"
               if options.encoder_lr_scale != 1 else "")
            + " with a cosine schedule"
            + (f", weights averaged (EMA, decay {options.ema:g})" if options.ema else "")
            + f"; {progress.step} steps / "
            f"{progress.epoch} epochs in {progress.elapsed_s / 60:.1f} min on "
            f"{self._device_name()} ({stop_reason}); best validation epoch "
            f"{progress.best_epoch} exported in float16. "
            + (f"fine_tuned_from: {self.fine_tuned_from}. " if config.init_card else "")
            + "".join(f"Class probabilities averaged with {p.id}@{p.version} ({p.sha256}), "
                      "chosen and measured as an ensemble. " for p in config.partners)
            + (f"Command: {options.command_line}" if options.command_line else "")).strip()
        init_card = config.init_card
        card: dict[str, Any] = {
            "id": model_id,
            "name": options.model_name or f"{model_id} ({trained.architecture} / "
                                          f"{trained.encoder})",
            "description": options.description or (
                f"{trained.architecture}/{trained.encoder} segmentation of {', '.join(names)} "
                f"at {trained.mpp:g} µm/px."),
            "version": options.model_version,
            "format": "state_dict",
            "architecture": trained.architecture,
            "encoder": trained.encoder,
            "mpp": trained.mpp,
            "tile_size": trained.tile_size,
            **({"max_tile_size": trained.max_tile_size} if trained.max_tile_size else {}),
            "overlap": trained.overlap,
            "batch_size": trained.batch_size,
            "normalization": {"mean": list(trained.mean), "std": list(trained.std)},
            "classes": [{"index": c.index, "name": c.name, "color": list(c.color),
                         **({"keep_on_glass": True} if c.keep_on_glass else {}),
                         **({"catch_all": True} if c.catch_all else {})}
                        for c in trained.classes],
            # The fine-tuned model's background/tumour roles carry over to same-named classes.
            "background_class": _kept(init_card.background_class if init_card else None, names),
            "tumor_class": _kept(init_card.tumor_class if init_card else None, names),
            "trained_on": trained_on,
            "training_split": TrainingSplit.of((s.name for s in train_set),
                                               (s.name for s in val_set)).to_json(),
            "metrics": metrics,
        }
        if trained.extra:
            card["extra"] = trained.extra
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


def _best_text(progress: _Progress, validated: bool) -> str:
    """The progress bar's best validation Dice: "n/a" before the first validation (or without
    a validation set), never a 0 that was not measured."""
    if not validated or progress.best_epoch < 0:
        return "n/a"
    return f"{progress.best_score:.3f}"
