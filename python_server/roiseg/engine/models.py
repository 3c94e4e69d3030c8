"""Model cards (`model.json`), checkpoint loading and the registry of servable models.

The card format is described in docs/model-cards.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch

from roiseg.engine.batching import Pending, SharedBatches
from roiseg.engine.training_split import TrainingSplit
from roiseg.errors import FailedPrecondition, InvalidInput, NotFound, echo
from roiseg.io.classes import confusable_builtin_class
from roiseg.io.files import write_atomic

log = logging.getLogger(__name__)

CARD_FILE = "model.json"
FORMATS = ("state_dict", "torchscript")

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_REQUIRED_FIELDS = ("id", "name", "version", "format", "architecture", "encoder", "checkpoint",
                    "sha256", "mpp", "tile_size", "overlap", "batch_size", "normalization",
                    "classes")
_OPTIONAL_FIELDS = ("description", "max_tile_size", "background_class", "tumor_class",
                    "trained_on", "training_split", "metrics", "extra", "ensemble",
                    "fine_tuned_from", "reduced_precision")
_MEMBER_FIELDS = ("architecture", "encoder", "checkpoint", "sha256")
#: The order `write_card` writes the fields in (docs/model-cards.md's); others follow.
_FIELD_ORDER = ("id", "name", "description", "version", "format", "architecture", "encoder",
                "checkpoint", "sha256", "mpp", "tile_size", "max_tile_size", "overlap",
                "batch_size", "normalization", "classes", "background_class", "tumor_class",
                "trained_on", "training_split", "metrics", "extra", "ensemble",
                "fine_tuned_from", "reduced_precision")
#: Lower precisions a card may record as checked (`ReducedPrecision`), by name.
REDUCED_DTYPES = {"bfloat16": torch.bfloat16}
#: Keys under which training scripts nest the state dict, outermost first.
_STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")
#: Prefixes that DataParallel / Lightning-style wrappers put before every key.
_KEY_PREFIXES = ("module.", "model.")
#: SMP constructor arguments the card sets itself, not through `extra`.
_RESERVED_EXTRA = ("encoder_name", "encoder_weights", "in_channels", "classes")
#: The embedded default model.
DEFAULT_MODELS_DIR = Path(__file__).parents[1] / "default_model"
#: Class maps are uint8 and 255 is reserved for "no class".
_MAX_CLASSES = 254
#: Longest key-mismatch report quoted in an error.
_MAX_DETAILS = 2000
#: Side of the blank image a freshly loaded model is checked with.
_PROBE_SIZE = 64


#: The optional true/false fields of a card's class (`ClassSpec`).
_CLASS_FLAGS = ("keep_on_glass", "catch_all")


@dataclass(frozen=True)
class ClassSpec:
    """One output class: its channel index, name and display colour (RGB).

    `keep_on_glass`: the class's pixels are kept where the tissue mask sees blank glass
    (a gland's lumen belongs to the gland); other classes end at the tissue's edge.
    `catch_all`: the class is the model's "everything else" (what it was trained to call all
    that is not one of its target classes): overlays outline it rather than fill it.
    """

    index: int
    name: str
    color: tuple[int, int, int]
    keep_on_glass: bool = False
    catch_all: bool = False


@dataclass(frozen=True)
class EnsembleMember:
    """A further model of an ensemble card: its SMP set-up and its checkpoint."""

    architecture: str
    encoder: str
    checkpoint: Path
    sha256: str
    extra: dict[str, Any]


@dataclass(frozen=True)
class ReducedPrecision:
    """A lower-precision forward pass a card records as checked against full precision: the
    autocast dtype, the device type it was checked on, the fraction of held-out pixels that
    kept their class, and on what (`roiseg precision` writes it)."""

    dtype: str
    device: str
    pixel_agreement: float
    checked_on: str

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "device": self.device,
                "pixel_agreement": self.pixel_agreement, "checked_on": self.checked_on}


@dataclass(frozen=True)
class ModelCard:
    """A validated `model.json`: what a model is, how to run it and what it outputs."""

    id: str
    name: str
    description: str
    version: str
    format: str
    architecture: str
    encoder: str
    checkpoint: Path
    sha256: str
    mpp: float
    tile_size: int
    overlap: int
    batch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: tuple[ClassSpec, ...]
    background_class: str | None
    tumor_class: str | None
    trained_on: str
    #: Validation figures: numbers (Dice, image counts) or, in older cards, their text.
    metrics: dict[str, float | str]
    extra: dict[str, Any]
    card_path: Path
    ensemble: tuple[EnsembleMember, ...] = ()
    """Further models whose class probabilities are averaged with this card's own model."""
    training_split: TrainingSplit | None = None
    """The images the model was trained on and held out, when the card records them."""
    fine_tuned_from: str = ""
    """`id@version (sha256)` of the model this one was fine-tuned from (the fast track); the
    card's `fine_tuned_from` object also records the examples."""
    reduced_precision: ReducedPrecision | None = None
    """A checked lower precision, which servers started with `--reduced-precision` use."""
    max_tile_size: int | None = None
    """The longest tile side a region's tile plan may use (`roiseg.engine.tiling`); None:
    tiles of tile_size."""

    @classmethod
    def from_file(cls, path: Path) -> ModelCard:
        """Read and validate a card.

        Raises:
            ValueError: the card is unreadable or a field is missing or invalid; the
                message names the file and the field.
        """
        path = Path(path).resolve()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the model card: {exc}") from exc
        return _CardReader(path, data).card()

    def class_named(self, name: str) -> ClassSpec:
        """The class called `name`.

        Raises:
            InvalidInput: the model has no such class; the message lists its classes.
        """
        for spec in self.classes:
            if spec.name == name:
                return spec
        raise InvalidInput(f"model {self.id!r} has no class {name!r}; its classes: "
                           + ", ".join(repr(spec.name) for spec in self.classes))

    @property
    def background_index(self) -> int | None:
        """Output channel of `background_class`, if the card names one."""
        return None if self.background_class is None else self.class_named(
            self.background_class).index

    @property
    def members(self) -> tuple[EnsembleMember, ...]:
        """The card's own model, then its `ensemble`."""
        own = EnsembleMember(self.architecture, self.encoder, self.checkpoint, self.sha256,
                             self.extra)
        return (own, *self.ensemble)

    @property
    def kept_on_glass(self) -> tuple[int, ...]:
        """Output channels of the classes marked `keep_on_glass`."""
        return tuple(spec.index for spec in self.classes if spec.keep_on_glass)

    @property
    def catch_all_classes(self) -> tuple[str, ...]:
        """Names of the classes marked `catch_all`."""
        return tuple(spec.name for spec in self.classes if spec.catch_all)

    @property
    def tumor_index(self) -> int | None:
        """Output channel of `tumor_class`, if the card names one."""
        return None if self.tumor_class is None else self.class_named(self.tumor_class).index


class _CardReader:
    """Validates the JSON of one card, naming the file and field in every error."""

    def __init__(self, path: Path, data: Any):
        self.path = path
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a model card must be a JSON object")
        self.data = data

    def error(self, field: str, message: str) -> ValueError:
        return ValueError(f"{self.path}: field '{field}': {message}")

    def card(self) -> ModelCard:
        data = self.data
        missing = [f for f in _REQUIRED_FIELDS if f not in data]
        if missing:
            raise ValueError(f"{self.path}: missing required field(s): " + ", ".join(
                f"'{f}'" for f in missing))
        unknown = sorted(set(data) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS))
        if unknown:
            raise ValueError(f"{self.path}: unknown field(s): " + ", ".join(
                f"'{f}'" for f in unknown) + "; see docs/model-cards.md")

        model_id = self.text("id", data["id"])
        if not _ID_PATTERN.fullmatch(model_id):
            raise self.error("id", f"{model_id!r} must be 1-64 letters, digits, '.', '_' or "
                                   "'-', starting with a letter or digit")
        model_format = self.text("format", data["format"])
        if model_format not in FORMATS:
            raise self.error("format", f"{model_format!r} is not one of {', '.join(FORMATS)}")
        informative = model_format == "torchscript"
        architecture = self.text("architecture", data["architecture"], allow_empty=informative)
        encoder = self.text("encoder", data["encoder"], allow_empty=informative)
        if not informative:
            self.check_smp_names(architecture, encoder)

        checkpoint = self.checkpoint("checkpoint", data["checkpoint"])
        sha256 = self.sha256("sha256", data["sha256"])
        ensemble = self.ensemble(data.get("ensemble", []), model_format)

        mpp = self.number("mpp", data["mpp"])
        if not mpp > 0:
            raise self.error("mpp", f"must be > 0, got {mpp}")
        tile_size = self.integer("tile_size", data["tile_size"], minimum=32)
        if tile_size % 32:
            raise self.error("tile_size", f"must be a multiple of 32, got {tile_size}")
        overlap = self.integer("overlap", data["overlap"], minimum=0)
        if tile_size <= 2 * overlap:
            raise self.error("overlap", f"must be less than half of tile_size ({tile_size}), "
                                        f"got {overlap}")
        max_tile_size = data.get("max_tile_size")
        if max_tile_size is not None:
            max_tile_size = self.integer("max_tile_size", max_tile_size, minimum=tile_size)
            if max_tile_size % 32:
                raise self.error("max_tile_size", f"must be a multiple of 32, got "
                                                  f"{max_tile_size}")
        mean, std = self.normalization(data["normalization"])
        classes = self.classes(data["classes"])
        names = [spec.name for spec in classes]
        background_class = self.class_name("background_class", data.get("background_class"),
                                           names)
        tumor_class = self.class_name("tumor_class", data.get("tumor_class"), names)
        if background_class is not None and background_class == tumor_class:
            raise self.error("tumor_class", "must differ from background_class")

        return ModelCard(
            id=model_id, name=self.text("name", data["name"]),
            description=self.text("description", data.get("description", ""),
                                  allow_empty=True),
            version=self.text("version", data["version"]), format=model_format,
            architecture=architecture, encoder=encoder, checkpoint=checkpoint, sha256=sha256,
            mpp=mpp, tile_size=tile_size, overlap=overlap,
            batch_size=self.integer("batch_size", data["batch_size"], minimum=1),
            mean=mean, std=std, classes=classes, background_class=background_class,
            tumor_class=tumor_class,
            trained_on=self.text("trained_on", data.get("trained_on", ""), allow_empty=True),
            metrics=self.metrics(data.get("metrics", {})),
            extra=self.extra("extra", data.get("extra", {})), card_path=self.path,
            ensemble=ensemble, training_split=self.training_split(data.get("training_split")),
            fine_tuned_from=self.fine_tuned_from(data.get("fine_tuned_from")),
            reduced_precision=self.reduced_precision(data.get("reduced_precision")),
            max_tile_size=max_tile_size)

    def reduced_precision(self, value: Any) -> ReducedPrecision | None:
        if value is None:
            return None
        field = "reduced_precision"
        if not isinstance(value, dict) or set(value) != {"dtype", "device", "pixel_agreement",
                                                         "checked_on"}:
            raise self.error(field, 'must be {"dtype", "device", "pixel_agreement", '
                                    '"checked_on"} (roiseg precision writes it)')
        dtype = self.text(field, value["dtype"])
        if dtype not in REDUCED_DTYPES:
            raise self.error(field, f"dtype {dtype!r} is not one of {', '.join(REDUCED_DTYPES)}")
        agreement = self.number(field, value["pixel_agreement"])
        if not 0 <= agreement <= 1:
            raise self.error(field, f"pixel_agreement must be 0..1, got {agreement}")
        return ReducedPrecision(dtype, self.text(field, value["device"]), agreement,
                                self.text(field, value["checked_on"]))

    def fine_tuned_from(self, value: Any) -> str:
        if value is None:
            return ""
        if not isinstance(value, dict) or not isinstance(value.get("model"), str) \
                or not isinstance(value.get("sha256"), str):
            raise self.error("fine_tuned_from", 'must be {"model": "id@version", "sha256": ...} '
                                                "with optional details of the data")
        return f"{value['model']} ({value['sha256']})"

    def training_split(self, value: Any) -> TrainingSplit | None:
        if value is None:
            return None
        try:
            return TrainingSplit.from_json(value)
        except ValueError as exc:
            raise self.error("training_split", str(exc)) from None

    def text(self, field: str, value: Any, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(field, f"must be a string, got {value!r}")
        if not allow_empty and not value.strip():
            raise self.error(field, "must not be empty")
        return value

    def number(self, field: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise self.error(field, f"must be a finite number, got {value!r}")
        return float(value)

    def integer(self, field: str, value: Any, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(field, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self.error(field, f"must be >= {minimum}, got {value}")
        return value

    def object(self, field: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(field, f"must be a JSON object, got {value!r}")
        return value

    def checkpoint(self, field: str, value: Any) -> Path:
        checkpoint = (self.path.parent / self.text(field, value)).resolve()
        if not checkpoint.is_file():
            raise self.error(field, f"file {checkpoint} does not exist")
        return checkpoint

    def sha256(self, field: str, value: Any) -> str:
        sha256 = self.text(field, value).lower()
        if not _SHA256_PATTERN.fullmatch(sha256):
            raise self.error(field, "must be 64 hexadecimal digits")
        return sha256

    def extra(self, field: str, value: Any) -> dict[str, Any]:
        reserved = sorted(set(self.object(field, value)) & set(_RESERVED_EXTRA))
        if reserved:
            raise self.error(field, "must not set " + ", ".join(reserved)
                             + "; they come from the card's other fields")
        return value

    def ensemble(self, value: Any, model_format: str) -> tuple[EnsembleMember, ...]:
        if not isinstance(value, list):
            raise self.error("ensemble", f"must be a list of models, got {value!r}")
        if value and model_format != "state_dict":
            raise self.error("ensemble", "only state_dict models can form an ensemble")
        members = []
        for i, item in enumerate(value):
            field = f"ensemble[{i}]"
            if not isinstance(item, dict) or not set(_MEMBER_FIELDS) <= set(item) \
                    or not set(item) <= {*_MEMBER_FIELDS, "extra"}:
                raise self.error(field, "must be {" + ", ".join(f'"{f}": ...'
                                                                for f in _MEMBER_FIELDS)
                                 + '} with an optional "extra": {...}')
            architecture = self.text(f"{field}.architecture", item["architecture"])
            encoder = self.text(f"{field}.encoder", item["encoder"])
            self.check_smp_names(architecture, encoder, field=f"{field}.")
            members.append(EnsembleMember(
                architecture=architecture, encoder=encoder,
                checkpoint=self.checkpoint(f"{field}.checkpoint", item["checkpoint"]),
                sha256=self.sha256(f"{field}.sha256", item["sha256"]),
                extra=self.extra(f"{field}.extra", item.get("extra", {}))))
        return tuple(members)

    def check_smp_names(self, architecture: str, encoder: str, field: str = "") -> None:
        architectures = smp.MODEL_ARCHITECTURES_MAPPING
        if architecture.lower() not in architectures:
            raise self.error(f"{field}architecture", f"{architecture!r} is not a "
                             "segmentation_models_pytorch architecture ("
                             + ", ".join(architectures) + ")")
        if not encoder.startswith("tu-") and encoder not in smp.encoders.get_encoder_names():
            raise self.error(f"{field}encoder", f"{encoder!r} is not a segmentation_models_pytorch "
                                                "encoder (nor a timm encoder written 'tu-NAME')")

    def normalization(self, value: Any) -> tuple[tuple[float, float, float],
                                                 tuple[float, float, float]]:
        if not isinstance(value, dict) or set(value) != {"mean", "std"}:
            raise self.error("normalization", 'must be {"mean": [r, g, b], "std": [r, g, b]}')
        mean = self.triple("normalization.mean", value["mean"])
        std = self.triple("normalization.std", value["std"])
        if min(std) <= 0:
            raise self.error("normalization.std", f"must be > 0, got {list(std)}")
        return mean, std

    def triple(self, field: str, value: Any) -> tuple[float, float, float]:
        if not isinstance(value, list) or len(value) != 3:
            raise self.error(field, f"must be a list of 3 numbers, got {value!r}")
        a, b, c = (self.number(field, v) for v in value)
        return a, b, c

    def classes(self, value: Any) -> tuple[ClassSpec, ...]:
        if not isinstance(value, list) or not 2 <= len(value) <= _MAX_CLASSES:
            raise self.error("classes", f"must be a list of 2 to {_MAX_CLASSES} classes")
        specs = []
        for i, item in enumerate(value):
            field = f"classes[{i}]"
            if not isinstance(item, dict) or not {"index", "name", "color"} <= set(item) \
                    or not set(item) <= {"index", "name", "color", *_CLASS_FLAGS}:
                raise self.error(field, 'must be {"index": i, "name": "...", "color": [r, g, b]}'
                                        ' with optional "keep_on_glass" and "catch_all": '
                                        'true/false')
            flags = {flag: item.get(flag, False) for flag in _CLASS_FLAGS}
            for flag, set_ in flags.items():
                if not isinstance(set_, bool):
                    raise self.error(f"{field}.{flag}", f"must be true or false, got {set_!r}")
            color = item["color"]
            if not isinstance(color, list) or len(color) != 3 or any(
                    isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255
                    for c in color):
                raise self.error(f"{field}.color", f"must be 3 integers 0..255, got {color!r}")
            specs.append(ClassSpec(index=self.integer(f"{field}.index", item["index"], minimum=0),
                                   name=self.text(f"{field}.name", item["name"]),
                                   color=(color[0], color[1], color[2]),
                                   **flags))
        specs.sort(key=lambda spec: spec.index)
        indexes = [spec.index for spec in specs]
        if indexes != list(range(len(specs))):
            raise self.error("classes", f"indexes must be 0..{len(specs) - 1}, each once; "
                                        f"got {indexes}")
        for spec in specs:
            builtin = confusable_builtin_class(spec.name, spec.color)
            if builtin is not None:
                log.warning("model card %s: the colour %s of class %r is close to that of QuPath's "
                            "built-in class %r; choose a colour no one takes for it", self.path,
                            list(spec.color), spec.name, builtin)
        names = [spec.name for spec in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise self.error("classes", "duplicate class name(s): "
                             + ", ".join(repr(n) for n in duplicates))
        return tuple(specs)

    def class_name(self, field: str, value: Any, names: list[str]) -> str | None:
        if value is None:
            return None
        if value not in names:
            raise self.error(field, f"{value!r} is not one of the classes: "
                             + ", ".join(repr(n) for n in names))
        return value

    def metrics(self, value: Any) -> dict[str, float | str]:
        for key, item in self.object("metrics", value).items():
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise self.error(f"metrics.{key}", f"must be a string or number, got {item!r}")
        return dict(value)


def write_card(directory: Path, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``directory/model.json`` atomically, the fields in the documented order (any
    others after them), as `ModelCard.from_file` reads it; returns the card as written."""
    ordered = {key: fields[key] for key in _FIELD_ORDER if key in fields}
    ordered.update({key: value for key, value in fields.items() if key not in ordered})
    write_atomic(Path(directory) / CARD_FILE, json.dumps(ordered, indent=2, ensure_ascii=False)
                 + "\n")
    return ordered


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def select_device(name: str = "auto") -> torch.device:
    """The torch device for `name`: "auto" (CUDA if available, else CPU), "cpu", "cuda"
    or "cuda:N".

    Raises:
        ValueError: an unknown name or an unavailable device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} "
                         "CUDA device(s) exist")
    return torch.device("cuda", index)


#: On a GPU, the most batches of concurrent requests run in one forward pass.
SHARED_BATCHES = 4


class LoadedModel:
    """A model ready for inference on one device.

    On CUDA the forward pass runs under fp16 autocast; on the CPU in fp32, through ONNX
    Runtime when `onnx` is set (`roiseg.engine.onnx_runtime`), else torch, or under the
    card's checked reduced precision (`autocast`).
    """

    def __init__(self, card: ModelCard, module: torch.nn.Module, device: torch.device):
        self.card = card
        self.module = module
        self.device = device
        #: The forward pass's autocast dtype: fp16 on CUDA, a card's checked reduced precision
        #: where the registry allows it (`ModelRegistry`), else None (fp32).
        self.autocast: torch.dtype | None = torch.float16 if device.type == "cuda" else None
        #: An `onnx_runtime.OnnxSession` that runs the forward pass instead of torch.
        self.onnx: Any = None
        self._mean = torch.tensor(card.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(card.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        #: Concurrent requests' tiles run through here, one pass at a time: on a GPU up to
        #: `SHARED_BATCHES` of the card's batches (in pixels) in one pass, on the CPU one batch
        #: (a larger batch costs more per tile there).
        self.batches = SharedBatches(self._forward, card.batch_size * (
            SHARED_BATCHES if device.type == "cuda" else 1), tile_pixels=card.tile_size ** 2)

    def probabilities(self, batch: np.ndarray) -> torch.Tensor:
        """Class probabilities for a batch of tiles (see `submit`)."""
        return self.batches.result(self.submit(batch, object()))

    def submit(self, batch: np.ndarray, owner: Hashable) -> Pending:
        """Queues a batch of tiles of one request (`owner`) for its class probabilities,
        computed in one forward pass with other requests' tiles when they come at the same
        time; `batches.result` waits for them.

        Args:
            batch: (N, H, W, 3) uint8 RGB, H and W multiples of 32.

        Returns:
            the queued batch, whose result is (N, C, H, W) float32 softmax probabilities on
            the CPU (copying them back synchronises the device), C = len(card.classes).

        Raises:
            InvalidInput: a malformed batch.
            ValueError (from `batches.result`): the model outputs another number of channels
                than the card's classes.
        """
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3 \
                or batch.shape[1] % 32 or batch.shape[2] % 32:
            raise InvalidInput(f"expected an (N, H, W, 3) uint8 batch with H and W multiples "
                               f"of 32, got {batch.dtype} {batch.shape}")
        return self.batches.submit(batch, owner)

    def _forward(self, batch: np.ndarray) -> torch.Tensor:
        if self.onnx is not None:
            return torch.from_numpy(self.onnx.probabilities(batch))
        pixels = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        with torch.inference_mode():
            x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            x = (x / 255 - self._mean) / self._std
            with torch.autocast(device_type=self.device.type,
                                dtype=self.autocast or torch.float16,
                                enabled=self.autocast is not None):
                logits = self.module(x)
            if logits.ndim != 4 or logits.shape[1] != len(self.card.classes) \
                    or logits.shape[2:] != x.shape[2:]:
                raise ValueError(f"model {self.card.id!r} outputs shape {tuple(logits.shape)} "
                                 f"for input {tuple(x.shape)}; expected "
                                 f"{len(self.card.classes)} channels (its classes) at the "
                                 "input's size")
            return logits.float().softmax(dim=1).cpu()


class Ensemble(torch.nn.Module):
    """Models whose softmax probabilities are averaged.

    Returns the logarithm of the mean probabilities, so that a softmax of the output (as
    `LoadedModel.probabilities` takes) is the mean probability of each class.
    """

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([m(x).float().softmax(dim=1) for m in self.members]).mean(dim=0)
        return mean.clamp_min(torch.finfo(torch.float32).tiny).log()


def load_model(card: ModelCard, device: torch.device) -> LoadedModel:
    """Load a card's checkpoint (and its ensemble's) onto `device` and check them against
    the card.

    Raises:
        ValueError: a checkpoint's SHA-256 differs from the card's, it does not fit its
            architecture / encoder / classes, or the output has the wrong shape.
    """
    for each in card.members:
        check_sha256(each.checkpoint, each.sha256, card.card_path)
    if card.format == "torchscript":
        try:
            module = torch.jit.load(str(card.checkpoint), map_location=device)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{card.checkpoint}: not a TorchScript model: {exc}") from exc
    elif card.ensemble:
        module = Ensemble([_smp_model(each, card) for each in card.members])
    else:
        module = _smp_model(card.members[0], card)
    model = LoadedModel(card, module.to(device).eval(), device)
    model.probabilities(np.zeros((1, _PROBE_SIZE, _PROBE_SIZE, 3), np.uint8))
    return model


def check_sha256(path: Path, expected: str, card_path: Path) -> None:
    """Refuses (ValueError) a checkpoint whose SHA-256 is not the one its card names."""
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(f"{path}: sha256 is {actual}, but the card {card_path} expects "
                         f"{expected}; refusing the model")


def build_smp_model(architecture: str, encoder: str, num_classes: int,
                    extra: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """The SMP model a card describes, with random weights (RGB in, `num_classes` out)."""
    return smp.create_model(architecture, encoder_name=encoder, encoder_weights=None,
                            in_channels=3, classes=num_classes, **dict(extra or {}))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file, read without unpickling code, with its
    wrappers (``state_dict``, ``model``, ...) and key prefixes (``module.``) removed."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable / unsafe pickles
        raise ValueError(f"{path}: cannot read the checkpoint as a state dict "
                         f"(only tensors and plain containers are accepted): {exc}") from exc
    return _state_dict(checkpoint, path)


def _smp_model(member: EnsembleMember, card: ModelCard) -> torch.nn.Module:
    """``member``'s SMP model with its checkpoint's weights, on the CPU."""
    try:
        model = build_smp_model(member.architecture, member.encoder, len(card.classes),
                                member.extra)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{card.card_path}: cannot build {member.architecture} with encoder "
                         f"{member.encoder} and extra {member.extra}: {exc}") from exc
    state = read_state_dict(member.checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # names the missing, unexpected and mis-shaped keys
        details = str(exc)
        if len(details) > _MAX_DETAILS:
            details = details[:_MAX_DETAILS] + " ..."
        raise ValueError(f"{member.checkpoint}: does not fit {member.architecture}/"
                         f"{member.encoder} with {len(card.classes)} classes: {details}") from exc
    return model


def _state_dict(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint, unwrapped and unprefixed.

    Its tensors keep their dtype: `load_state_dict` copies fp16 ones into the model's fp32
    parameters.
    """
    while isinstance(checkpoint, Mapping) and not _is_state_dict(checkpoint):
        wrapper = next((k for k in _STATE_DICT_WRAPPERS
                        if isinstance(checkpoint.get(k), Mapping)), None)
        if wrapper is None:
            raise ValueError(f"{path}: no state dict found; top-level keys: "
                             f"{_some(list(checkpoint))}; expected tensors or one of "
                             + ", ".join(repr(k) for k in _STATE_DICT_WRAPPERS))
        checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: no state dict found (got {type(checkpoint).__name__})")
    state = dict(checkpoint)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                stripped = True
    return state


def _is_state_dict(mapping: Mapping) -> bool:
    return bool(mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                 for k, v in mapping.items())


def _some(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"


#: Separates a model's id from a version in a model id that selects one: `id@version`.
VERSION_SEPARATOR = "@"


def split_model_id(model_id: str) -> tuple[str, str | None]:
    """(`id`, `version`) of `id@version`; (`id`, None) of a plain id."""
    family, separator, version = model_id.partition(VERSION_SEPARATOR)
    return family, version if separator else None


@dataclass
class _Family:
    """The versions of one model id: the cards in registration order, the one a plain id
    selects, and those no longer served."""

    versions: dict[str, ModelCard]
    default: str
    retired: set[str]

    def current(self) -> list[str]:
        return [v for v in self.versions if v not in self.retired]


class ModelRegistry:
    """The models found in model directories, loaded lazily on first use and cached.

    A model may have several versions (cards of the same id with other versions, registered at
    run time by `register`): the plain id selects the default version, `id@version` any
    version that is not retired. Every method is safe to call from several threads; a job
    that resolved a card keeps it (`load`) even if its version is retired meanwhile.
    """

    def __init__(self, model_dirs: Sequence[Path], device: torch.device,
                 default_id: str | None = None, beside: Sequence[Path] = (),
                 runtime: str = "torch", threads: int | None = None,
                 reduced_precision: bool = False):
        """Register every `DIR/model.json` and `DIR/*/model.json`; then those in the `beside`
        directories whose ids are not registered yet (the embedded default model next to a
        user's models). On the CPU, `runtime` "onnx" or "auto" runs the models through ONNX
        Runtime where their export verifies (`roiseg.engine.onnx_runtime`); `threads` sets the
        threads of one forward pass (torch's for the whole process). With `reduced_precision`,
        a model whose card records a checked lower precision for this device type runs in it
        (torch autocast; before ONNX Runtime).

        Raises:
            ValueError: a broken card, a missing directory, duplicate ids, no models at
                all, an unknown `default_id`, or runtime "onnx" without ONNX Runtime.
        """
        from roiseg.engine import onnx_runtime

        if runtime not in onnx_runtime.RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; use "
                             + ", ".join(onnx_runtime.RUNTIMES))
        if runtime == "onnx" and not onnx_runtime.available():
            raise ValueError("--runtime onnx needs ONNX Runtime: pip install onnx onnxruntime")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"--threads must be 1 or more, got {threads}")
            torch.set_num_threads(threads)
        self.device = device
        self.runtime = runtime if device.type == "cpu" and onnx_runtime.available() else "torch"
        self.threads = threads
        self.reduced_precision = reduced_precision
        self._lock = threading.RLock()
        self._families: dict[str, _Family] = {}
        given = [(Path(d), False) for d in model_dirs] + [(Path(d), True) for d in beside]
        for directory, optional in given:
            if not directory.is_dir():
                raise ValueError(f"models directory {directory} does not exist")
            paths = [directory / CARD_FILE] if (directory / CARD_FILE).is_file() else []
            for path in paths + sorted(directory.glob(f"*/{CARD_FILE}")):
                card = ModelCard.from_file(path)
                if card.id in self._families:
                    if optional:
                        continue
                    raise ValueError(f"duplicate model id {card.id!r} in "
                                     f"{self._default_card(card.id).card_path} and "
                                     f"{card.card_path}")
                self._families[card.id] = _Family({card.version: card}, card.version, set())
        if not self._families:
            raise ValueError("no models found: no model.json in "
                             + ", ".join(str(d) for d in model_dirs) + " or their subdirectories")
        if default_id is not None and default_id not in self._families:
            raise ValueError(f"default model {default_id!r} is not registered; available: "
                             + ", ".join(self._families))
        self._default_id = default_id or next(iter(self._families))
        self._load_locks: dict[tuple[str, str], threading.Lock] = {}
        self._loaded: dict[tuple[str, str], LoadedModel] = {}

    @property
    def default_id(self) -> str:
        """Id of the model used when a request names none."""
        return self._default_id

    @property
    def device_name(self) -> str:
        """The device in words, e.g. "cuda:0 (NVIDIA H100 80GB HBM3)" or "cpu"."""
        if self.device.type == "cuda":
            index = self.device.index or 0
            return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
        return str(self.device)

    def cards(self) -> list[ModelCard]:
        """The default version's card of each model, in registration order."""
        with self._lock:
            return [family.versions[family.default] for family in self._families.values()]

    def versions(self, model_id: str) -> list[tuple[ModelCard, bool]]:
        """(card, whether it is the default) of each version of `model_id`'s model that is
        served, in registration order; each card's id is `id@version`.

        Raises:
            NotFound: no such model.
        """
        with self._lock:
            family_id = split_model_id(model_id)[0]
            family = self._family(family_id)
            return [(_selected(family.versions[v], family_id, v), v == family.default)
                    for v in family.current()]

    def card(self, model_id: str) -> ModelCard:
        """The card of `model_id`: a plain id's default version, or the version `id@version`
        names (its card's id is then `id@version`).

        Raises:
            NotFound: no such model, or no such version served (the message names the
                model's current version).
        """
        family_id, version = split_model_id(model_id)
        with self._lock:
            family = self._family(family_id)
            if version is None:
                return family.versions[family.default]
            current = f"{family_id}{VERSION_SEPARATOR}{family.default}"
            if version in family.retired:
                raise NotFound(f"model version {model_id!r} was retired; the current version is "
                               f"{current!r}")
            if version not in family.versions:
                raise NotFound(f"model {family_id!r} has no version {version!r}; its versions: "
                               + ", ".join(family.current()) + f" (current: {current!r})")
            return _selected(family.versions[version], family_id, version)

    def get(self, model_id: str) -> LoadedModel:
        """The loaded model `model_id`, loading it on first use.

        Raises:
            NotFound: no such model.
            ValueError: its checkpoint is refused (see `load_model`).
        """
        return self.load(self.card(model_id))

    def load(self, card: ModelCard) -> LoadedModel:
        """The loaded model of a card this registry gave (`card`), loading it on first use;
        the model of a version retired meanwhile is loaded but not kept.

        Raises:
            ValueError: its checkpoint is refused (see `load_model`).
        """
        key = (split_model_id(card.id)[0], card.version)
        with self._lock:
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                loaded = self._loaded.get(key)
            if loaded is None:
                loaded = load_model(card, self.device)
                checked = card.reduced_precision
                if self.reduced_precision and checked is not None \
                        and checked.device == self.device.type:
                    loaded.autocast = REDUCED_DTYPES[checked.dtype]
                    log.info("model %s runs in %s (checked: %.2f %% of held-out pixels keep "
                                "their class)", card.id, checked.dtype,
                                100 * checked.pixel_agreement)
                elif self.runtime != "torch" and card.format != "torchscript":
                    from roiseg.engine import onnx_runtime

                    loaded.onnx = onnx_runtime.onnx_session(loaded, self.threads)
                with self._lock:
                    family = self._families.get(key[0])
                    if family is not None and key[1] in family.current():
                        self._loaded[key] = loaded
            return loaded

    def register(self, card: ModelCard, make_default: bool = False) -> ModelCard:
        """Serves `card` from now on: a new version of the model of its id (or a new model);
        with `make_default` its plain id selects it. Returns its card as `id@version`
        selects it.

        Raises:
            InvalidInput: the model already has (or had) a version of that name.
        """
        with self._lock:
            family = self._families.get(card.id)
            if family is None:
                self._families[card.id] = _Family({card.version: card}, card.version, set())
            elif card.version in family.versions:
                raise InvalidInput(f"model {card.id!r} already has a version {card.version!r}"
                                   + (" (retired)" if card.version in family.retired else ""))
            else:
                family.versions[card.version] = card
                if make_default:
                    family.default = card.version
            return _selected(card, card.id, card.version)

    def set_default(self, model_id: str) -> ModelCard:
        """Makes the version `id@version` names the one its plain id selects; returns its card
        (as `id@version` selects it).

        Raises:
            InvalidInput: `model_id` names no version.
            NotFound: no such model or version served.
        """
        family_id, version = self._version_of(model_id)
        with self._lock:
            card = self.card(model_id)
            self._families[family_id].default = version
            log.info("model %s: the default version is now %s", family_id, version)
            return card

    def retire(self, model_id: str) -> ModelCard:
        """Stops serving the version `id@version` names (not the default one): it is no longer
        listed nor selectable, and its loaded model is released. Returns its card.

        Raises:
            InvalidInput: `model_id` names no version.
            NotFound: no such model or version served.
            FailedPrecondition: it is the model's default version.
        """
        family_id, version = self._version_of(model_id)
        with self._lock:
            card = self.card(model_id)
            family = self._families[family_id]
            if version == family.default:
                raise FailedPrecondition(
                    f"{model_id!r} is the default version of {family_id!r}: make another version "
                    "the default first")
            family.retired.add(version)
            self._loaded.pop((family_id, version), None)
            log.info("model %s: version %s retired", family_id, version)
            return card

    def retired(self, model_id: str) -> set[str]:
        """The retired versions of `model_id`'s model.

        Raises:
            NotFound: no such model.
        """
        with self._lock:
            return set(self._family(split_model_id(model_id)[0]).retired)

    def _version_of(self, model_id: str) -> tuple[str, str]:
        family_id, version = split_model_id(model_id)
        if not version:
            raise InvalidInput(f"name a version as id{VERSION_SEPARATOR}version, got "
                               f"{echo(model_id)}")
        return family_id, version

    def _family(self, family_id: str) -> _Family:
        try:
            return self._families[family_id]
        except KeyError:
            raise NotFound(f"unknown model {echo(family_id, 256)}; available: "
                           + ", ".join(self._families)) from None

    def _default_card(self, family_id: str) -> ModelCard:
        family = self._families[family_id]
        return family.versions[family.default]


def _selected(card: ModelCard, family_id: str, version: str) -> ModelCard:
    """`card` as `id@version` selects it: the same card under that id."""
    return replace(card, id=f"{family_id}{VERSION_SEPARATOR}{version}")
