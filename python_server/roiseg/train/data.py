"""Training data of `roiseg train`: labelled samples, the split, and class-balanced crops.

Two kinds of input become the same `Sample` (an RGB image at the model's resolution with a
class index per pixel, `IGNORE_INDEX` where nothing is known):

- image/mask pairs (`find_pairs`, `load_sample`): label masks whose values are mapped to
  classes by a `MaskMapping`;
- images or slides with QuPath GeoJSON annotations (`find_annotated`,
  `load_annotated_sample`): the annotations' polygons, classified by
  ``properties.classification.name``, are rasterised onto the image grid; pixels that no
  annotation covers are ignored unless a class is named for them.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from roiseg.errors import InvalidInput, NotFound
from roiseg.io import qupath_geojson
from roiseg.io.masks import parse_values
from roiseg.io.slides import Slide, read_slide_region

log = logging.getLogger("roiseg.train")

#: Label value of pixels that carry no class (padding, unannotated); ignored by the loss
#: and the metrics.
IGNORE_INDEX = 255
#: Classes of binary masks (0 -> the first, any other value -> the second).
DEFAULT_BINARY_CLASSES = ("Other tissue", "Gland epithelium")
#: Images of image/mask pairs.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Images and slides that GeoJSON annotations may belong to (read by `roiseg.io.slides`).
ANNOTATED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".svs")
#: Every n-th pixel of a class is kept as a candidate crop centre (memory).
_CENTRE_STRIDE = 7

#: Geometry types that hold an area (an empty one of them is "empty", not "not a polygon").
_AREA_TYPES = ("Polygon", "MultiPolygon")


# --------------------------------------------------------------------------- masks


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
    """Parse ``0="Other tissue",255="Gland epithelium"`` into a `MaskMapping`.

    Classes are numbered in order of first appearance; several values may name the same
    class. ``None`` or an empty string gives the binary default: 0 -> "Other tissue", any
    other value -> "Gland epithelium".
    """
    parsed = parse_values(text)
    if parsed is None:
        return MaskMapping(DEFAULT_BINARY_CLASSES, {0: 0}, other=1)
    names: list[str] = []
    values: dict[int, int] = {}
    for value, name in parsed.items():
        if name not in names:
            names.append(name)
        values[value] = names.index(name)
    if len(names) < 2:
        raise InvalidInput("a segmentation model needs at least two classes")
    return MaskMapping(tuple(names), values)


def find_pairs(images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    """Image/mask pairs matched by file stem, sorted by name.

    Raises:
        NotFound: no such directory, no images, or images without a mask.
    """
    images = _files(images_dir, IMAGE_SUFFIXES)
    masks = {p.stem: p for p in _files(masks_dir, IMAGE_SUFFIXES)}
    if not images:
        raise NotFound(f"no images in {images_dir}")
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise NotFound(f"{len(missing)} image(s) have no mask in {masks_dir}: "
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
        raise InvalidInput(f"cannot read image {image_path}")
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise InvalidInput(f"cannot read mask {mask_path}")
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, 3)):
            raise InvalidInput(f"mask {mask_path} has colour channels; masks must hold "
                               "one value per pixel")
        mask = mask[..., 0]
    if mask.dtype not in (np.uint8, np.uint16):
        raise InvalidInput(f"mask {mask_path} must be 8- or 16-bit, not {mask.dtype}")
    if mask.shape != image.shape[:2]:
        raise InvalidInput(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} px, its image "
                           f"{image.shape[1]}x{image.shape[0]} px")
    table = mapping.lookup_table(int(mask.max()))
    classes = table[mask]
    if (classes < 0).any():
        unmapped = sorted(int(v) for v in np.unique(mask[classes < 0]))[:10]
        raise InvalidInput(f"mask {mask_path} has values {unmapped} that --mask-values "
                           "does not map to a class")
    labels = classes.astype(np.uint8)
    if abs(scale - 1.0) > 1e-6:
        h, w = labels.shape
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, size, interpolation=interpolation)
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    return Sample(image_path.stem, np.ascontiguousarray(image), labels)


# --------------------------------------------------------------------------- GeoJSON


@dataclass(frozen=True)
class Annotation:
    """One classified annotation polygon, in full-resolution pixels of its image."""

    name: str
    geometry: BaseGeometry


def read_annotations(path: Path) -> tuple[list[Annotation], dict[str, int]]:
    """The classified polygons of a QuPath GeoJSON export, in file order.

    Accepts a FeatureCollection, a single Feature or a list of Features (QuPath's
    "Export objects as GeoJSON" writes any of them). The class is
    ``properties.classification.name``; Polygon and MultiPolygon geometries (holes kept)
    are used, GeometryCollections for their polygons.

    Returns:
        (annotations, skipped): ``skipped`` counts the features left out, by reason
        ("unclassified", "not a polygon", "empty").

    Raises:
        ValueError: the file cannot be read as JSON (`roiseg.io.qupath_geojson.load`).
        InvalidInput: the JSON is not GeoJSON features.
    """
    return parse_annotations(qupath_geojson.load(path, "annotations"), str(path))


def parse_annotations(data: Any, where: str, max_repair_vertices: int | None = None
                      ) -> tuple[list[Annotation], dict[str, int]]:
    """`read_annotations` of parsed GeoJSON; the errors name `where`. Self-crossing
    annotations over `max_repair_vertices` vertices are refused (`qupath_geojson.polygonal`)."""
    if isinstance(data, Mapping) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, Mapping) and data.get("type") == "Feature":
        features = [data]
    else:
        features = data
    if not isinstance(features, list):
        raise InvalidInput(f"{where}: expected a GeoJSON FeatureCollection, Feature or a list "
                           "of Features")
    annotations: list[Annotation] = []
    skipped: Counter[str] = Counter()
    for number, feature in enumerate(features):
        if not isinstance(feature, Mapping) or not isinstance(feature.get("geometry"),
                                                               Mapping):
            raise InvalidInput(f"{where}: feature {number} is not a GeoJSON Feature with a "
                               "geometry")
        name = qupath_geojson.class_name(feature.get("properties"))
        if name is None:
            skipped["unclassified"] += 1
            continue
        try:
            given = shape(feature["geometry"])
        except (ValueError, TypeError, AttributeError, shapely.errors.ShapelyError) as exc:
            raise InvalidInput(f"{where}: feature {number} has an invalid geometry: "
                               f"{exc}") from exc
        geometry = qupath_geojson.polygonal(given, max_repair_vertices)
        if geometry.is_empty:
            skipped["empty" if given.geom_type in _AREA_TYPES else "not a polygon"] += 1
            continue
        annotations.append(Annotation(name, geometry))
    return annotations, skipped


def find_annotated(images_dir: Path,
                   annotations_dir: Path) -> list[tuple[Path, Path]]:
    """(image, GeoJSON) pairs, sorted by image name: ``NAME.geojson`` (or
    ``NAME.EXT.geojson``) belongs to ``NAME.EXT``. Images without annotations are left out.

    Raises:
        NotFound: no such directory, or no image has annotations.
    """
    images = _files(images_dir, ANNOTATED_SUFFIXES)
    geojson = {p.name.lower(): p for p in _files(annotations_dir, (".geojson",))}
    pairs: list[tuple[Path, Path]] = []
    for image in images:
        stem = image_stem(image)
        match = geojson.get(f"{image.name.lower()}.geojson") or \
            geojson.get(f"{stem.lower()}.geojson")
        if match is not None:
            pairs.append((image, match))
    if not pairs:
        raise NotFound(f"no image in {images_dir} has a NAME.geojson in {annotations_dir}")
    return pairs


def _files(directory: Path, suffixes: Sequence[str]) -> list[Path]:
    """The files of ``directory`` with one of ``suffixes`` (any case), sorted; hidden files
    left out.

    Raises:
        NotFound: no such directory.
    """
    if not Path(directory).is_dir():
        raise NotFound(f"{directory} is not a directory")
    return sorted(p for p in Path(directory).iterdir()
                  if p.suffix.lower() in suffixes and not p.name.startswith("."))


def image_stem(path: Path) -> str:
    """File name without its extension (``.ome.tif``/``.ome.tiff`` counting as one)."""
    name = Path(path).name
    for suffix in (".ome.tif", ".ome.tiff"):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return Path(path).stem


def annotation_class_names(paths: Iterable[Path]) -> list[str]:
    """The class names the GeoJSON files use, sorted."""
    names: set[str] = set()
    for path in paths:
        names.update(a.name for a in read_annotations(path)[0])
    return sorted(names)


def load_annotated_sample(image_path: Path, annotations_path: Path, classes: Sequence[str],
                          mpp: float, source_mpp: float | None = None,
                          unannotated: int | None = None, margin_px: int = 64) -> Sample:
    """An image or slide with its GeoJSON annotations rasterised, at ``mpp`` µm/px.

    Only the bounding box of the annotations plus ``margin_px`` (model pixels) is read,
    through `roiseg.io.slides` (the pyramid level that suits ``mpp``). Annotations drawn
    later cover earlier ones where they overlap. Pixels that no annotation covers get
    class ``unannotated``, or `IGNORE_INDEX` when it is None. Annotations of classes not
    in ``classes`` are left out (logged).

    Args:
        source_mpp: µm per full-resolution pixel; default the slide's own calibration.

    Raises:
        InvalidInput: no pixel size, no usable annotation, or an unreadable image.
        NotFound: no such image.
        ValueError: an unreadable GeoJSON file.
    """
    annotations, skipped = read_annotations(annotations_path)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({a.name for a in annotations if a.name not in index})
    if unknown:
        skipped["class not trained"] = sum(a.name not in index for a in annotations)
        annotations = [a for a in annotations if a.name in index]
    if skipped:
        log.warning("%s: left out %s", annotations_path.name,
                    ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
                    + (f" (classes {', '.join(unknown)})" if unknown else ""))
    if not annotations:
        raise InvalidInput(f"{annotations_path}: no annotation of the classes "
                           f"{', '.join(classes)}")
    with Slide.open(image_path) as slide:
        pixel_size = source_mpp or slide.mpp
        if not pixel_size:
            raise InvalidInput(f"{image_path.name} has no pixel size in its metadata; pass "
                               "--source-mpp (µm per full-resolution pixel)")
        x0, y0, x1, y1 = shapely.union_all([a.geometry for a in annotations]).bounds
        pad = margin_px * mpp / pixel_size
        bbox = (max(0.0, x0 - pad), max(0.0, y0 - pad),
                min(float(slide.width), x1 + pad), min(float(slide.height), y1 + pad))
        if bbox[0] >= bbox[2] or bbox[1] >= bbox[3]:
            raise InvalidInput(f"{annotations_path}: the annotations lie outside "
                               f"{image_path.name} ({slide.width}x{slide.height} px)")
        region = read_slide_region(slide, bbox, pixel_size, mpp, allow_upsample=True)
    t = region.transform
    height, width = region.image.shape[:2]
    labels = rasterize(
        [(a.geometry, index[a.name]) for a in annotations], out_shape=(height, width),
        transform=Affine(t.scale_x, 0.0, t.origin_x, 0.0, t.scale_y, t.origin_y),
        fill=IGNORE_INDEX if unannotated is None else unannotated, dtype="uint8")
    return Sample(image_stem(image_path), np.ascontiguousarray(region.image), labels)


# --------------------------------------------------------------------------- split and crops


def split_by_image(names: Sequence[str], val_fraction: float,
                   seed: int) -> tuple[list[int], list[int]]:
    """Deterministic split of sample indices: (train, validation), both sorted.

    The validation set holds round(``val_fraction`` * n) images (at least one when the
    fraction is positive, and at least one image is left for training).
    """
    n = len(names)
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidInput("--val-fraction must be in [0, 1)")
    n_val = 0 if val_fraction == 0 else min(n - 1, max(1, round(val_fraction * n)))
    order = sorted(range(n), key=lambda i: names[i])
    permuted = [order[i] for i in np.random.default_rng(seed).permutation(n)]
    return sorted(permuted[n_val:]), sorted(permuted[:n_val])


class CropSampler:
    """Class-balanced random crops with scale jitter, flips, 90° rotations and colour jitter.

    A crop is drawn by picking a class uniformly among the classes present, then a pixel
    of that class uniformly over all training images; the crop is placed around it (with
    a random offset of up to a quarter crop) and kept inside the image. Images smaller than
    the crop are padded (reflected image, IGNORE_INDEX labels). With ``scale_jitter`` s the
    window read is ``crop x f`` pixels, f log-uniform in [1 / (1 + s), 1 + s] (as far as
    the image allows), resized to the crop: the tissue appears up to (1 + s) times larger
    or smaller, as under another scanner's calibration.
    """

    def __init__(self, samples: Sequence[Sample], crop: int, num_classes: int,
                 rng: np.random.Generator, augment: bool = True,
                 scale_jitter: float = 0.0) -> None:
        if not samples:
            raise InvalidInput("no training images")
        if scale_jitter < 0:
            raise InvalidInput(f"scale jitter must be >= 0, got {scale_jitter}")
        self.crop = crop
        self.rng = rng
        self.augment = augment
        self.scale_jitter = scale_jitter
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
            raise InvalidInput("the training masks hold no labelled pixels")

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
        window = self.crop
        if self.augment and self.scale_jitter:
            bound = math.log1p(self.scale_jitter)
            window = min(h, w, round(self.crop * math.exp(rng.uniform(-bound, bound))))
        jitter = window // 4
        y0 = int(np.clip(cy - window // 2 + rng.integers(-jitter, jitter + 1), 0, h - window))
        x0 = int(np.clip(cx - window // 2 + rng.integers(-jitter, jitter + 1), 0, w - window))
        image = self._images[i][y0:y0 + window, x0:x0 + window]
        crop_labels = labels[y0:y0 + window, x0:x0 + window]
        if window != self.crop:
            size = (self.crop, self.crop)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if window > self.crop
                               else cv2.INTER_LINEAR)
            crop_labels = cv2.resize(crop_labels, size, interpolation=cv2.INTER_NEAREST)
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
