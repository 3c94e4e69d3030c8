"""Train an SMP segmentation model on image/mask pairs and write a roiseg model card.

Mounted by the CLI as ``roiseg train`` (`add_arguments` + `run`); also runnable as
``python -m roiseg.train``. Output directory: ``model.pt`` (a float16 state_dict; the
loader casts it back to float32) and ``model.json`` (see docs/model-cards.md).

Pipeline: image/mask pairs (same file stem) are resampled from ``--source-mpp`` to the
model's ``--mpp`` (images INTER_AREA, masks nearest), mask values are mapped to classes,
the images are split into training and validation sets by image (seeded), and the model
is trained on class-balanced random crops with flips, 90° rotations and colour jitter,
with cross-entropy + Dice loss, AdamW and a cosine schedule that ends with the budget
(``--epochs`` or ``--max-minutes``, whichever comes first). Validation runs on whole
held-out images at the model's resolution; the best epoch by validation Dice is exported
and training stops early when it no longer improves (``--patience``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from roiseg.models import ClassSpec, sha256_file
from roiseg.pretrained import load_imagenet_encoder

#: Label value of pixels that carry no class (padding); ignored by the loss and metrics.
IGNORE_INDEX = 255
#: Normalisation of RGB/255 the ImageNet encoders expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Classes of binary masks (0 -> the first, any other value -> the second).
DEFAULT_BINARY_CLASSES = ("Stroma", "Gland epithelium")
#: Colours of well-known class names (lower case); other classes take `_PALETTE`.
KNOWN_CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "stroma": (80, 160, 80),
    "gland epithelium": (200, 40, 40),
    "tumor": (200, 0, 0),
    "tumour": (200, 0, 0),
    "background": (255, 255, 255),
}
_PALETTE = ((31, 119, 180), (255, 127, 14), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_STATE_VERSION = 1
#: Every n-th pixel of a class is kept as a candidate crop centre (memory).
_CENTRE_STRIDE = 7


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class MaskMapping:
    """How mask pixel values become class indices.

    ``values`` maps a mask value to a class index; when ``other`` is not None every value
    not in ``values`` maps to class ``other`` (binary masks: 0 -> 0, anything else -> 1).
    """

    names: tuple[str, ...]
    values: Mapping[int, int]
    other: int | None = None

    def lookup_table(self, max_value: int) -> np.ndarray:
        """Table of size ``max_value + 1``: class index per value, -1 for unmapped."""
        table = np.full(max_value + 1, -1 if self.other is None else self.other, np.int32)
        for value, index in self.values.items():
            if 0 <= value <= max_value:
                table[value] = index
        return table


@dataclass
class Sample:
    """One image at the model's resolution with its class-index labels."""

    name: str
    image: np.ndarray  # H x W x 3, uint8, RGB
    labels: np.ndarray  # H x W, uint8 class indices (IGNORE_INDEX = no label)


def parse_mask_values(text: str | None) -> MaskMapping:
    """Parse ``0=Stroma,255="Gland epithelium"`` into a `MaskMapping`.

    Classes are numbered in order of first appearance; several values may name the same
    class. ``None`` or an empty string gives the binary default: 0 -> "Stroma", any
    other value -> "Gland epithelium".
    """
    if not text or not text.strip():
        return MaskMapping(DEFAULT_BINARY_CLASSES, {0: 0}, other=1)
    pattern = re.compile(r"""\s*(\d+)\s*=\s*("([^"]*)"|'([^']*)'|[^,]*?)\s*(?:,|$)""")
    names: list[str] = []
    values: dict[int, int] = {}
    position = 0
    text = text.strip()
    while position < len(text):
        match = pattern.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"cannot parse --mask-values {text!r} at {text[position:]!r}; "
                             'expected e.g. 0=Stroma,255="Gland epithelium"')
        value = int(match.group(1))
        name = next(g for g in (match.group(3), match.group(4), match.group(2))
                    if g is not None).strip()
        if not name:
            raise ValueError(f"mask value {value} has no class name")
        if value in values:
            raise ValueError(f"mask value {value} is given twice")
        if name not in names:
            names.append(name)
        values[value] = names.index(name)
        position = match.end()
    if len(names) < 2:
        raise ValueError("a segmentation model needs at least two classes")
    return MaskMapping(tuple(names), values)


def class_specs(names: Sequence[str],
                colors: Mapping[str, Sequence[int]] | None = None) -> list[ClassSpec]:
    """Classes with colours: given ones, then `KNOWN_CLASS_COLORS`, then a palette."""
    colors = {k.lower(): v for k, v in (colors or {}).items()}
    specs: list[ClassSpec] = []
    palette = iter(_PALETTE * (1 + len(names) // len(_PALETTE)))
    for index, name in enumerate(names):
        color = colors.get(name.lower()) or KNOWN_CLASS_COLORS.get(name.lower())
        rgb = tuple(int(c) for c in (color if color is not None else next(palette)))
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise ValueError(f"colour of {name!r} must be three values 0..255, got {rgb}")
        specs.append(ClassSpec(index, name, (rgb[0], rgb[1], rgb[2])))
    return specs


def find_pairs(images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    """Image/mask pairs matched by file stem, sorted by name; unmatched images are an error."""
    images = sorted(p for p in Path(images_dir).iterdir()
                    if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith("."))
    masks = {p.stem: p for p in Path(masks_dir).iterdir()
             if p.suffix.lower() in _IMAGE_SUFFIXES}
    if not images:
        raise ValueError(f"no images in {images_dir}")
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no mask in {masks_dir}: "
                         f"{', '.join(missing[:5])}")
    return [(p, masks[p.stem]) for p in images]


def load_sample(image_path: Path, mask_path: Path, mapping: MaskMapping,
                scale: float) -> Sample:
    """Read one pair, map the mask to classes and resample both by ``scale``.

    ``scale`` = source µm/px / model µm/px. Images are resampled with INTER_AREA (INTER_LINEAR
    when upsampling), labels with nearest neighbour.
    """
    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {image_path}")
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(f"cannot read mask {mask_path}")
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, 3)):
            raise ValueError(f"mask {mask_path} has colour channels; masks must hold "
                             "one value per pixel")
        mask = mask[..., 0]
    if mask.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"mask {mask_path} must be 8- or 16-bit, not {mask.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} px, its image "
                         f"{image.shape[1]}x{image.shape[0]} px")
    table = mapping.lookup_table(int(np.iinfo(mask.dtype).max))
    classes = table[mask]
    if (classes < 0).any():
        unmapped = sorted(int(v) for v in np.unique(mask[classes < 0]))[:10]
        raise ValueError(f"mask {mask_path} has values {unmapped} that --mask-values "
                         "does not map to a class")
    labels = classes.astype(np.uint8)
    if abs(scale - 1.0) > 1e-6:
        h, w = labels.shape
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, size, interpolation=interpolation)
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    return Sample(image_path.stem, np.ascontiguousarray(image), labels)


def split_by_image(names: Sequence[str], val_fraction: float,
                   seed: int) -> tuple[list[int], list[int]]:
    """Deterministic split of sample indices: (train, validation), both sorted.

    The validation set holds round(``val_fraction`` * n) images (at least one when the
    fraction is positive, and at least one image is left for training).
    """
    n = len(names)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("--val-fraction must be in [0, 1)")
    n_val = 0 if val_fraction == 0 else min(n - 1, max(1, round(val_fraction * n)))
    order = sorted(range(n), key=lambda i: names[i])
    permuted = [order[i] for i in np.random.default_rng(seed).permutation(n)]
    return sorted(permuted[n_val:]), sorted(permuted[:n_val])


class CropSampler:
    """Class-balanced random crops with flips, 90° rotations and colour jitter.

    A crop is drawn by picking a class uniformly among the classes present, then a pixel
    of that class uniformly over all training images; the crop is placed around it (with
    a random offset of up to a quarter crop) and kept inside the image. Images smaller than
    the crop are padded (reflected image, IGNORE_INDEX labels).
    """

    def __init__(self, samples: Sequence[Sample], crop: int, num_classes: int,
                 rng: np.random.Generator, augment: bool = True) -> None:
        if not samples:
            raise ValueError("no training images")
        self.crop = crop
        self.rng = rng
        self.augment = augment
        self._images: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        for s in samples:
            image, labels = _pad_to(s.image, s.labels, crop)
            self._images.append(image)
            self._labels.append(labels)
        self._centres: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self._owners: list[np.ndarray] = []
        self._weights: list[np.ndarray] = []
        for c in range(num_classes):
            counts = []
            for labels in self._labels:
                flat = np.flatnonzero(labels.ravel() == c)[::_CENTRE_STRIDE].astype(np.int32)
                self._centres[c].append(flat)
                counts.append(flat.size)
            self._weights.append(np.asarray(counts, np.float64))
        self.classes_present = [c for c in range(num_classes) if self._weights[c].sum() > 0]
        if not self.classes_present:
            raise ValueError("the training masks hold no labelled pixels")

    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` crops: images (B, crop, crop, 3) uint8, labels (B, crop, crop)."""
        images = np.empty((batch_size, self.crop, self.crop, 3), np.uint8)
        labels = np.empty((batch_size, self.crop, self.crop), np.uint8)
        for b in range(batch_size):
            images[b], labels[b] = self.sample()
        return images, labels

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One augmented crop (image, labels)."""
        rng = self.rng
        c = int(rng.choice(self.classes_present))
        weights = self._weights[c]
        i = int(rng.choice(len(weights), p=weights / weights.sum()))
        labels = self._labels[i]
        flat = int(self._centres[c][i][rng.integers(self._centres[c][i].size)])
        cy, cx = divmod(flat, labels.shape[1])
        h, w = labels.shape
        jitter = self.crop // 4
        y0 = int(np.clip(cy - self.crop // 2 + rng.integers(-jitter, jitter + 1), 0, h - self.crop))
        x0 = int(np.clip(cx - self.crop // 2 + rng.integers(-jitter, jitter + 1), 0, w - self.crop))
        image = self._images[i][y0:y0 + self.crop, x0:x0 + self.crop]
        crop_labels = labels[y0:y0 + self.crop, x0:x0 + self.crop]
        if self.augment:
            image, crop_labels = _augment(image, crop_labels, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(crop_labels)


def _pad_to(image: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = labels.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if not ph and not pw:
        return image, labels
    image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
    labels = cv2.copyMakeBorder(labels, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    return image, labels


def _augment(image: np.ndarray, labels: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flips, 90° rotations, HSV jitter, then brightness/contrast jitter."""
    k = int(rng.integers(4))
    if k:
        image, labels = np.rot90(image, k), np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    image = np.ascontiguousarray(image)
    if rng.random() < 0.8:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-5, 5)) % 180  # OpenCV hue: 0..179
        hsv[..., 1] *= rng.uniform(0.8, 1.2)
        hsv[..., 2] *= rng.uniform(0.9, 1.1)
        image = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    if rng.random() < 0.8:
        x = image.astype(np.float32)
        mean = float(x.mean())
        x = (x - mean) * rng.uniform(0.85, 1.15) + mean + rng.uniform(-0.08, 0.08) * 255
        image = np.clip(x, 0, 255).astype(np.uint8)
    return image, labels


# --------------------------------------------------------------------------- model


def build_model(architecture: str, encoder: str, num_classes: int, pretrained: bool = False,
                extra: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """An SMP model exactly as the server builds it from a card, optionally ImageNet-initialised."""
    import segmentation_models_pytorch as smp

    model = smp.create_model(arch=architecture, encoder_name=encoder, encoder_weights=None,
                             in_channels=3, classes=num_classes, **dict(extra or {}))
    if pretrained:

        load_imagenet_encoder(model, encoder)
    return model


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
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    valid = (target != IGNORE_INDEX).unsqueeze(1).float()
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1])
    onehot = onehot.permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + 1.0) / (denominator + 1.0)
    return ce + (1.0 - dice.mean())


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, image: np.ndarray,
                          mean: Sequence[float] = IMAGENET_MEAN,
                          std: Sequence[float] = IMAGENET_STD, tile_size: int = 512,
                          overlap: int = 128, device: torch.device | str = "cpu",
                          amp: bool = False) -> np.ndarray:
    """Class probabilities (C, H, W) of a whole RGB image at the model's resolution.

    Images up to ``tile_size`` are run whole (reflect-padded to a multiple of 32); larger
    ones in tiles of ``tile_size`` overlapping by ``overlap``, the last row and column
    aligned to the border, with overlapping probabilities averaged.
    """
    model.eval()
    h, w = image.shape[:2]
    tile_h, tile_w = min(tile_size, h), min(tile_size, w)
    stride = max(1, tile_size - overlap)
    ys = _tile_starts(h, tile_h, stride)
    xs = _tile_starts(w, tile_w, stride)
    total: np.ndarray | None = None
    count = np.zeros((h, w), np.float32)
    for y in ys:
        for x in xs:
            tile = image[y:y + tile_h, x:x + tile_w]
            ph, pw = (-tile_h) % 32, (-tile_w) % 32
            if ph or pw:
                tile = cv2.copyMakeBorder(tile, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
            inputs = to_input(tile, mean, std, device)
            with torch.autocast("cuda", dtype=torch.float16,
                                enabled=amp and inputs.device.type == "cuda"):
                logits = model(inputs)
            probs = logits.float().softmax(1)[0, :, :tile_h, :tile_w].cpu().numpy()
            if total is None:
                total = np.zeros((probs.shape[0], h, w), np.float32)
            total[:, y:y + tile_h, x:x + tile_w] += probs
            count[y:y + tile_h, x:x + tile_w] += 1
    assert total is not None
    return total / count


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def evaluate(model: torch.nn.Module, samples: Sequence[Sample], num_classes: int,
             mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
             tile_size: int = 512, overlap: int = 128, device: torch.device | str = "cpu",
             amp: bool = False) -> dict[str, Any]:
    """Dice per class on whole images.

    Returns ``{"dice": [...], "dice_image_mean": [...], "score": float}``: ``dice`` pools
    all pixels of all images, ``dice_image_mean`` averages per-image Dice (images where a
    class is absent in both prediction and reference count as 1), ``score`` is the mean
    pooled Dice of the classes after the first (the early-stopping criterion).
    """
    intersection = np.zeros(num_classes)
    sizes = np.zeros(num_classes)
    per_image: list[np.ndarray] = []
    for sample in samples:
        probs = predict_probabilities(model, sample.image, mean, std, tile_size, overlap,
                                      device, amp)
        prediction = probs.argmax(0)
        valid = sample.labels != IGNORE_INDEX
        inter_i = np.zeros(num_classes)
        sizes_i = np.zeros(num_classes)
        for c in range(num_classes):
            pred_c = (prediction == c) & valid
            ref_c = sample.labels == c
            inter_i[c] = np.count_nonzero(pred_c & ref_c)
            sizes_i[c] = np.count_nonzero(pred_c) + np.count_nonzero(ref_c)
        intersection += inter_i
        sizes += sizes_i
        per_image.append(np.where(sizes_i > 0, 2 * inter_i / np.maximum(sizes_i, 1), 1.0))
    dice = np.where(sizes > 0, 2 * intersection / np.maximum(sizes, 1), 1.0)
    image_mean = np.mean(per_image, axis=0) if per_image else np.ones(num_classes)
    score = float(dice[1:].mean()) if num_classes > 1 else float(dice[0])
    return {"dice": [float(d) for d in dice], "dice_image_mean": [float(d) for d in image_mean],
            "score": score}


# --------------------------------------------------------------------------- export


def half_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict with floating tensors in float16 (integers unchanged), on CPU."""
    return {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point()
                else v.detach().cpu()).clone()
            for k, v in model.state_dict().items()}


def load_float_state_dict(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load a (possibly float16) state_dict file into ``model``, cast to the model's dtypes."""
    state = torch.load(path, map_location="cpu", weights_only=True)
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
    path = out_dir / checkpoint
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(half_state_dict(model), tmp)
    os.replace(tmp, path)
    return write_card(out_dir, {**card, "format": "state_dict", "checkpoint": checkpoint,
                                "sha256": sha256_file(path)})


def write_card(out_dir: Path, card: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``model.json`` (fields in the order of docs/model-cards.md); returns it."""
    written = _ordered_card(card)
    (Path(out_dir) / "model.json").write_text(
        json.dumps(written, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return written


_CARD_ORDER = ("id", "name", "description", "version", "format", "architecture", "encoder",
               "checkpoint", "sha256", "mpp", "tile_size", "overlap", "batch_size",
               "normalization", "classes", "background_class", "tumor_class", "trained_on",
               "metrics", "extra")


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``roiseg train`` options to ``parser``."""
    data = parser.add_argument_group("data")
    data.add_argument("--images", type=Path, required=True, help="directory of RGB images")
    data.add_argument("--masks", type=Path, required=True,
                      help="directory of label masks, same file names (stems) as the images")
    data.add_argument("--mask-values", default=None,
                      help='mask value to class, e.g. 0=Stroma,255="Gland epithelium"; '
                           "classes are numbered in order of appearance. Default: binary "
                           "masks, 0 = Stroma, any other value = Gland epithelium")
    data.add_argument("--colors", action="append", default=[], metavar='"NAME=R,G,B"',
                      help="class colour (repeatable); default: known names, then a palette")
    data.add_argument("--source-mpp", type=float, required=True,
                      help="µm per pixel of the images (GlaS: about 0.62)")
    data.add_argument("--mpp", type=float, default=1.0,
                      help="µm per pixel the model works at (default 1.0)")
    data.add_argument("--val-fraction", type=float, default=0.15,
                      help="fraction of images held out for validation, split by image "
                           "(default 0.15; 0 = no validation)")
    data.add_argument("--data-description", default=None,
                      help="one phrase describing the data, for the card's trained_on")

    model = parser.add_argument_group("model")
    model.add_argument("--architecture", default="Unet", help="SMP architecture (default Unet)")
    model.add_argument("--encoder", default="mobilenet_v2", help="SMP encoder (default mobilenet_v2)")
    model.add_argument("--no-pretrained", action="store_true",
                       help="random encoder initialisation instead of ImageNet weights")
    model.add_argument("--extra", type=json.loads, default=None,
                       help="JSON object of extra SMP constructor arguments (card 'extra')")

    train = parser.add_argument_group("training")
    train.add_argument("--crop", type=int, default=256, help="crop size in px (default 256)")
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--steps-per-epoch", type=int, default=40,
                       help="optimiser steps between validations (default 40)")
    train.add_argument("--max-minutes", type=float, default=None,
                       help="wall-clock budget of the training loop, validation included")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--warmup-steps", type=int, default=30)
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
    out.add_argument("--tile-size", type=int, default=512, help="card tile_size (default 512)")
    out.add_argument("--overlap", type=int, default=128, help="card overlap (default 128)")
    out.add_argument("--inference-batch-size", type=int, default=4,
                     help="card batch_size (default 4)")
    out.add_argument("--state", type=Path, default=None,
                     help="resumable training state (default OUT/train_state.pt); written "
                          "every epoch, removed after a completed run unless --keep-state")
    out.add_argument("--resume", action="store_true", help="continue from --state")
    out.add_argument("--keep-state", action="store_true",
                     help="keep the training state after a completed run")


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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m roiseg.train``."""
    parser = argparse.ArgumentParser(prog="roiseg train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


# --------------------------------------------------------------------------- training


@dataclass
class _Config:
    args: argparse.Namespace
    mapping: MaskMapping
    classes: list[ClassSpec]
    state_path: Path
    device: torch.device
    amp: bool
    threads: int
    command: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Config:
        if args.source_mpp <= 0 or args.mpp <= 0:
            raise ValueError("--source-mpp and --mpp must be positive")
        if args.crop < 32 or args.crop % 32:
            raise ValueError("--crop must be a multiple of 32")
        if args.batch_size < 1 or args.epochs < 1 or args.steps_per_epoch < 1:
            raise ValueError("--batch-size, --epochs and --steps-per-epoch must be >= 1")
        mapping = parse_mask_values(args.mask_values)
        colors: dict[str, list[int]] = {}
        for item in args.colors:
            name, _, rgb = item.rpartition("=")
            try:
                colors[name.strip().strip("\"'")] = [int(v) for v in rgb.split(",")]
            except ValueError:
                raise ValueError(f"--colors {item!r}: expected NAME=R,G,B") from None
        unknown = set(colors) - set(mapping.names)
        if unknown:
            raise ValueError(f"--colors names unknown classes: {', '.join(sorted(unknown))}")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device available")
        use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        device = torch.device("cuda" if use_cuda else "cpu")
        return cls(args=args, mapping=mapping, classes=class_specs(mapping.names, colors),
                   state_path=args.state or Path(args.out) / "train_state.pt",
                   device=device, amp=use_cuda and not args.no_amp, threads=args.threads,
                   command=_command_line(args))


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces ``args``: the process's own command line when it parses
    to the same options, else an equivalent ``roiseg train`` command rebuilt from them."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    argv = list(sys.argv)
    prog = os.path.basename(argv[0]) if argv else ""
    head = ["python", "-m", "roiseg.train"] if prog in ("", "-m", "train.py", "__main__.py") \
        else [prog]
    tail = argv[1:]
    if tail and tail[0] == "train":
        head, tail = head + ["train"], tail[1:]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parsed = parser.parse_args(tail)
        if all(getattr(args, k, None) == v for k, v in vars(parsed).items()):
            return shlex.join(head + tail)
    except SystemExit:
        pass
    rebuilt = ["roiseg", "train"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
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


class _Trainer:
    def __init__(self, config: _Config) -> None:
        self.config = config
        self.args = config.args
        self.num_classes = len(config.classes)

    # -- setup
    def _load_data(self) -> tuple[list[Sample], list[Sample]]:
        args = self.args
        pairs = find_pairs(args.images, args.masks)
        scale = args.source_mpp / args.mpp
        samples = [load_sample(i, m, self.config.mapping, scale) for i, m in pairs]
        train_idx, val_idx = split_by_image([s.name for s in samples], args.val_fraction,
                                            args.seed)
        return [samples[i] for i in train_idx], [samples[i] for i in val_idx]

    def _fingerprint(self, train: Sequence[Sample], val: Sequence[Sample]) -> dict[str, Any]:
        a = self.args
        return {"architecture": a.architecture, "encoder": a.encoder, "extra": a.extra,
                "classes": [c.name for c in self.config.classes], "mpp": a.mpp,
                "source_mpp": a.source_mpp, "crop": a.crop, "batch_size": a.batch_size,
                "steps_per_epoch": a.steps_per_epoch, "seed": a.seed,
                "train": [s.name for s in train], "val": [s.name for s in val]}

    def _lr_factor(self, progress: _Progress, total_steps: int, budget_s: float | None) -> float:
        """Linear warm-up, then cosine to 1 % over the budget (steps or time, whichever ends first)."""
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
              f"at {args.mpp} µm/px ({time.monotonic() - t_load:.1f} s to load); "
              f"device {config.device}{' + AMP' if config.amp else ''}", file=sys.stderr)
        fingerprint = self._fingerprint(train_set, val_set)

        model = build_model(args.architecture, args.encoder, self.num_classes,
                            pretrained=not args.no_pretrained, extra=args.extra)
        model = model.to(config.device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                      weight_decay=args.weight_decay)
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
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            progress = _Progress(**state["progress"])
            best_state = state["best"]
            print(f"roiseg train: resumed at epoch {progress.epoch}, step {progress.step}, "
                  f"{progress.elapsed_s / 60:.1f} min spent", file=sys.stderr)

        sampler = CropSampler(train_set, args.crop, self.num_classes, rng)
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
                    group["lr"] = args.lr * factor
                images, labels = sampler.batch(args.batch_size)
                inputs = to_input(images, IMAGENET_MEAN, IMAGENET_STD, config.device)
                target = torch.from_numpy(labels).to(config.device).long()
                with torch.autocast("cuda", dtype=torch.float16, enabled=config.amp):
                    logits = model(inputs)
                loss = segmentation_loss(logits, target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
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
            if val_set:
                t_val = time.monotonic()
                result = evaluate(model, val_set, self.num_classes, device=config.device,
                                  amp=config.amp)
                progress.last_val_s = time.monotonic() - t_val
                record["val_score"] = result["score"]
                if result["score"] > progress.best_score + 1e-4:
                    progress.best_score, progress.best_epoch = result["score"], progress.epoch
                    progress.bad_epochs = 0
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                else:
                    progress.bad_epochs += 1
            else:
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                progress.best_epoch = progress.epoch
            progress.elapsed_s = time.monotonic() - clock
            record["minutes"] = progress.elapsed_s / 60
            progress.history.append(record)
            bar.write(f"epoch {progress.epoch}: loss {record['loss']:.4f}"
                      + (f", val Dice {record['val_score']:.4f} (best {progress.best_score:.4f}"
                         f" @ {progress.best_epoch})" if "val_score" in record else "")
                      + f", {record['minutes']:.1f} min", file=sys.stderr)
            self._save_state(model, optimizer, scaler, rng, progress, best_state, fingerprint)
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

    def _save_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, rng: np.random.Generator, progress: _Progress,
                    best_state: dict[str, torch.Tensor] | None,
                    fingerprint: dict[str, Any]) -> None:
        path = self.config.state_path
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"version": _STATE_VERSION, "fingerprint": fingerprint,
                 "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                 "progress": copy.deepcopy(progress.__dict__), "best": best_state}
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def _finish(self, best_state: dict[str, torch.Tensor], train_set: Sequence[Sample],
                val_set: Sequence[Sample], progress: _Progress, stop_reason: str) -> int:
        args, config = self.args, self.config
        model = build_model(args.architecture, args.encoder, self.num_classes, extra=args.extra)
        model.load_state_dict(best_state)
        card = self._card(train_set, val_set, progress, stop_reason, metrics={})
        written = export_model(model, args.out, card)
        # Metrics of the model exactly as the server will run it: the float16 checkpoint
        # cast back to float32, whole held-out images at the model's resolution.
        metrics: dict[str, str] = {}
        if val_set:
            exported = load_float_state_dict(
                build_model(args.architecture, args.encoder, self.num_classes, extra=args.extra),
                Path(args.out) / written["checkpoint"]).to(config.device)
            result = evaluate(exported, val_set, self.num_classes, tile_size=args.tile_size,
                              overlap=args.overlap, device=config.device)
            keys = _metric_keys(config.classes)
            for key, spec in zip(keys, config.classes):
                metrics[key] = f"{result['dice'][spec.index]:.3f}"
            for key, spec in zip(keys, config.classes):
                metrics[f"{key}_image_mean"] = f"{result['dice_image_mean'][spec.index]:.3f}"
            metrics["val_images"] = str(len(val_set))
        card = self._card(train_set, val_set, progress, stop_reason, metrics)
        out_dir = Path(args.out)
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
              progress: _Progress, stop_reason: str, metrics: dict[str, str]) -> dict[str, Any]:
        args, config = self.args, self.config
        model_id = args.model_id or re.sub(r"[^a-z0-9._-]+", "-",
                                           Path(args.out).resolve().name.lower())
        names = [c.name for c in config.classes]
        data = args.data_description or f"image/mask pairs from {args.images}"
        init = ("an ImageNet-initialised encoder (pretrained.py)" if not args.no_pretrained
                else "a randomly initialised encoder")
        trained_on = (
            f"{data}: {len(train_set) + len(val_set)} images resampled from "
            f"{args.source_mpp:g} to {args.mpp:g} µm/px; {len(train_set)} for training, "
            f"{len(val_set)} held out for validation (split by image, seed {args.seed}). "
            f"{args.architecture}/{args.encoder} with {init}, trained on "
            f"{args.crop}x{args.crop} px class-balanced random crops (batch {args.batch_size}; "
            f"flips, 90° rotations, HSV/brightness/contrast jitter), cross-entropy + Dice "
            f"loss, AdamW lr {args.lr:g} with a cosine schedule; {progress.step} steps / "
            f"{progress.epoch} epochs in {progress.elapsed_s / 60:.1f} min on "
            f"{self._device_name()} ({stop_reason}); best validation epoch "
            f"{progress.best_epoch} exported in float16. "
            f"Command: {config.command}")
        card: dict[str, Any] = {
            "id": model_id,
            "name": args.model_name or f"{model_id} ({args.architecture} / {args.encoder})",
            "description": args.description or (
                f"{args.architecture}/{args.encoder} segmentation of {', '.join(names)} "
                f"at {args.mpp:g} µm/px."),
            "version": args.model_version,
            "format": "state_dict",
            "architecture": args.architecture,
            "encoder": args.encoder,
            "mpp": args.mpp,
            "tile_size": args.tile_size,
            "overlap": args.overlap,
            "batch_size": args.inference_batch_size,
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "classes": [{"index": c.index, "name": c.name, "color": list(c.color)}
                        for c in config.classes],
            "background_class": None,
            "tumor_class": None,
            "trained_on": trained_on,
            "metrics": metrics,
        }
        if args.extra:
            card["extra"] = args.extra
        return card

    def _device_name(self) -> str:
        device = self.config.device
        if device.type == "cuda":
            return f"{torch.cuda.get_device_name(device)} (AMP)" if self.config.amp \
                else torch.cuda.get_device_name(device)
        return f"CPU, {torch.get_num_threads()} threads"


if __name__ == "__main__":
    raise SystemExit(main())
