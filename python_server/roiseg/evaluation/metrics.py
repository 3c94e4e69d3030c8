"""Scores segmentations against a reference: pixel and region metrics (papers 001 and 003).

`evaluate` is ``roiseg evaluate PRED TRUTH --positive NAME --out DIR`` (`roiseg.cli.evaluate`
parses the options into `EvaluateOptions`); the functions below are the library API that
``roiseg compare`` uses too.

Both sides are QuPath GeoJSON (classes from ``properties.classification.name``) or label
masks. Class names are mapped onto evaluation classes (``--map "Gland epithelium=tumour"``,
paper 001); "Background" and unannotated pixels are background (index 0). Metrics exclude
background as paper 003 does: they are computed over the pixels that are non-background in
the reference. The positive class is one evaluation class; every other non-background class
is negative. Undefined values (0/0) are NaN, never 0 or 1. Predictions that name the model
that made them (roiseg's GeoJSON metadata) are checked against the images its card says it
was trained on (`roiseg.evaluation.training_data`).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio.errors
import rasterio.features
import shapely
from affine import Affine
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from roiseg.errors import InvalidInput, NotFound
from roiseg.evaluation.training_data import (
    EMBEDDED_MODELS_DIR,
    card_trained_on,
    training_data_warnings,
)
from roiseg.io import qupath_geojson
from roiseg.io import roi as roi_module
from roiseg.io.classes import BACKGROUND_CLASS
from roiseg.io.files import write_atomic
from roiseg.io.raster import RasterTransform

__all__ = [
    "BACKGROUND", "PIXEL_METRICS", "REGION_METRICS", "Annotation", "Counts", "EvalClasses",
    "EvaluateOptions", "Evaluation", "Grid", "ImageResult", "LabelMask", "Rectangle",
    "SummaryRow", "annotation_files", "check_positive", "choose_grid", "class_dice",
    "confusion", "csv_text", "cut_to_grid", "describe", "evaluate", "evaluate_annotations",
    "evaluate_labels", "evaluation_area", "fmt", "fmt_ci", "format_summary",
    "geojson_features", "labels_on_grid", "mean_ci", "model_ids", "pair_paths", "parse_map",
    "parse_point", "parse_rectangle", "pixel_metrics", "rasterize_geojson", "read_annotation",
    "region_metrics", "single_class_reference", "summarize", "write_csv",
]

#: Name of evaluation class 0.
BACKGROUND = "background"
GEOJSON_SUFFIXES = (".geojson", ".json")
MASK_SUFFIXES = (".png", ".tif", ".tiff")

#: Pixel metrics of the positive class, in report order, with their labels.
PIXEL_METRICS: dict[str, str] = {
    "dsc": "DSC (Dice)",
    "tpr": "TPR (sensitivity)",
    "tnr": "TNR (specificity)",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "fpr": "FPR",
    "fnr": "FNR",
    "mcc": "MCC",
    "informedness": "informedness",
    "markedness": "markedness",
    "reference_positive_fraction": "reference-positive fraction",
    "predicted_positive_fraction": "predicted-positive fraction",
}
#: Region metrics (4-connected positive regions, IoU > 0.5), in report order.
REGION_METRICS: dict[str, str] = {
    "region_dice": "region Dice (corresponding regions)",
    "region_recall": "regions found / reference regions",
    "region_precision": "regions correct / predicted regions",
    "regions_reference": "reference regions",
    "regions_predicted": "predicted regions",
    "regions_matched": "matched regions",
    "regions_missed": "missed regions",
    "regions_false": "false regions",
}
AREA_METRICS: dict[str, str] = {
    "reference_positive_um2": "reference-positive area µm²",
    "predicted_positive_um2": "predicted-positive area µm²",
}
#: A rectangle x, y, width, height in full-resolution pixels.
Rectangle = tuple[float, float, float, float]
_NAN = float("nan")
#: Pixels per band when counting (bounds temporary memory on large grids).
_BAND_PIXELS = 1 << 22


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Counts:
    """Pixel confusion counts of the positive class over the evaluated pixels."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                      self.tn + other.tn)


def confusion(pred_labels: np.ndarray, truth_labels: np.ndarray, positive: int,
              background: int = 0, valid: np.ndarray | None = None) -> Counts:
    """Counts of the positive class over pixels that are non-background in the reference
    (and inside `valid`). Predicted background counts as predicted negative."""
    pred, truth = np.asarray(pred_labels), np.asarray(truth_labels)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and reference {truth.shape} differ in shape")
    area = truth != background
    if valid is not None:
        area &= np.asarray(valid, dtype=bool)
    p, t = (pred == positive) & area, (truth == positive) & area
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return Counts(tp, fp, fn, int(np.count_nonzero(area)) - tp - fp - fn)


def _ratio(num: float, den: float) -> float:
    return num / den if den else _NAN


def pixel_metrics(counts: Counts) -> dict[str, float]:
    """Every metric of `PIXEL_METRICS` from confusion counts; NaN where undefined (0/0)."""
    tp, fp, fn, tn = (float(v) for v in (counts.tp, counts.fp, counts.fn, counts.tn))
    n = tp + fp + fn + tn
    tpr, tnr = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    ppv, npv = _ratio(tp, tp + fp), _ratio(tn, tn + fn)
    product = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return {
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn),
        "tpr": tpr,
        "tnr": tnr,
        "ppv": ppv,
        "npv": npv,
        "fpr": _ratio(fp, fp + tn),
        "fnr": _ratio(fn, fn + tp),
        "mcc": (tp * tn - fp * fn) / math.sqrt(product) if product else _NAN,
        "informedness": tpr + tnr - 1,
        "markedness": ppv + npv - 1,
        "reference_positive_fraction": _ratio(tp + fn, n),
        "predicted_positive_fraction": _ratio(tp + fp, n),
    }


def region_metrics(pred_mask: np.ndarray, truth_mask: np.ndarray) -> dict[str, float]:
    """Region-level agreement of two boolean masks (paper 003).

    4-connected regions correspond when their IoU is > 0.5 (which makes the matching
    one-to-one). `region_dice` = 2 Σ|A∩B| / Σ(|A| + |B|) over corresponding pairs only
    (NaN without any); missed = reference regions without a match, false = predicted
    regions without a match. The `_matched_*` sums let sets be pooled.
    """
    pred, truth = np.asarray(pred_mask, dtype=bool), np.asarray(truth_mask, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and reference {truth.shape} differ in shape")
    n_truth, truth_labels = _components(truth)
    n_pred, pred_labels = _components(pred)
    matched = 0
    intersection = size = 0
    if n_truth and n_pred:
        truth_area = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)
        pred_area = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
        both = (truth_labels > 0) & (pred_labels > 0)
        keys, inter = np.unique(truth_labels[both].astype(np.int64) * (n_pred + 1)
                                + pred_labels[both], return_counts=True)
        t, p = np.divmod(keys, n_pred + 1)
        union = truth_area[t] + pred_area[p] - inter
        match = 2 * inter > union  # IoU > 0.5, exactly, in integers
        matched = int(match.sum())
        intersection = int(inter[match].sum())
        size = int((truth_area[t[match]] + pred_area[p[match]]).sum())
    return {
        "region_dice": _ratio(2 * intersection, size),
        "region_recall": _ratio(matched, n_truth),
        "region_precision": _ratio(matched, n_pred),
        "regions_reference": n_truth,
        "regions_predicted": n_pred,
        "regions_matched": matched,
        "regions_missed": n_truth - matched,
        "regions_false": n_pred - matched,
        "_matched_intersection": intersection,
        "_matched_size": size,
    }


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    if mask.size == 0 or not mask.any():
        return 0, np.zeros(mask.shape, np.int32)
    count, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=4,
                                            ltype=cv2.CV_32S)
    return count - 1, labels


def class_dice(class_confusion: np.ndarray) -> np.ndarray:
    """Dice of every class from a (K, K) matrix [reference, prediction]; NaN where 0/0."""
    cm = np.asarray(class_confusion, dtype=np.float64)
    den = cm.sum(axis=0) + cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * np.diag(cm) / np.where(den > 0, den, 1), np.nan)


#: Resamples of the bootstrap confidence intervals (fixed seed: reports are reproducible).
_BOOTSTRAP_RESAMPLES = 4000


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and bootstrap percentile confidence interval of the mean of the finite values
    (NaNs are left out).

    The interval lies within the values' range, so within what the metric can take (a
    proportion stays in 0..1, a count at or above 0), unlike a Student-t interval over a few
    images. NaN bounds with fewer than two values; (mean, mean, mean) when all are equal.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return _NAN, _NAN, _NAN
    mean = float(x.mean())
    if x.size < 2:
        return mean, _NAN, _NAN
    rng = np.random.default_rng(0)
    means = x[rng.integers(0, x.size, size=(_BOOTSTRAP_RESAMPLES, x.size))].mean(axis=1)
    tail = 50 * (1 - confidence)
    low, high = np.percentile(means, [tail, 100 - tail])
    return mean, min(float(low), mean), max(float(high), mean)


def single_class_reference(references: Iterable[Annotation], classes: EvalClasses
                           ) -> str | None:
    """A warning when the references, all together, hold a single non-background class: then
    only that class's pixels are scored, so its precision is 1 and its Dice flatters."""
    found = {classes.evaluation_name(n) for r in references for n in r.class_names()}
    found -= {BACKGROUND}
    if len(found) != 1:
        return None
    (name,) = found
    return (f"WARNING: the reference holds only the class {name!r}; all else in it is "
            f"background and left out, so only {name!r} pixels are scored: its precision "
            "cannot fall below 1 and Dice overstates the agreement. Annotate the other "
            "tissue too (or name what a mask's 0 is, e.g. 0=\"Other tissue\").")


# --------------------------------------------------------------------------- classes


def parse_map(items: Sequence[str], flag: str = '--map needs "CLASS=EVALUATION CLASS"'
              ) -> dict[str, str]:
    """``["Gland epithelium=tumour", ...]`` -> {source name: evaluation class}; `flag` says
    what an item must look like."""
    mapping: dict[str, str] = {}
    for item in items:
        source, sep, target = item.rpartition("=")
        if not sep or not source.strip() or not target.strip():
            raise InvalidInput(f"{flag}, got {item!r}")
        mapping[source.strip()] = target.strip()
    return mapping


class EvalClasses:
    """Evaluation classes: index 0 is background; others numbered as first met.

    Names go through the `--map` mapping first (exact, then case-insensitive); names equal
    to "background" (any case, e.g. QuPath's "Background") are background. Names that
    differ only in case are one class.
    """

    def __init__(self, mapping: Mapping[str, str] | None = None) -> None:
        self.mapping = dict(mapping or {})
        self._lower = {k.lower(): v for k, v in self.mapping.items()}
        self.names: list[str] = [BACKGROUND]
        self._index: dict[str, int] = {BACKGROUND: 0}

    def evaluation_name(self, name: str) -> str:
        name = str(name).strip()
        mapped = self.mapping.get(name)
        if mapped is None:
            mapped = self._lower.get(name.lower(), name)
        return BACKGROUND if mapped.lower() in (BACKGROUND, BACKGROUND_CLASS.lower()) \
            else mapped

    def index(self, name: str) -> int:
        """The evaluation class index of a class name (added when new)."""
        evaluation = self.evaluation_name(name)
        key = evaluation.lower()
        if key not in self._index:
            self._index[key] = len(self.names)
            self.names.append(evaluation)
        return self._index[key]

    __call__ = index

    def find(self, name: str) -> int | None:
        """The index of a class name if it is known, without adding it."""
        return self._index.get(self.evaluation_name(name).lower())

    def __len__(self) -> int:
        return len(self.names)


# --------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class Grid:
    """A raster over full-resolution pixels: pixel (i, j) covers
    [origin_x + i*downsample, origin_x + (i+1)*downsample) x [origin_y + j*downsample, ...)."""

    origin_x: float
    origin_y: float
    downsample: float
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def affine(self) -> Affine:
        return Affine(self.downsample, 0, self.origin_x, 0, self.downsample, self.origin_y)

    @property
    def transform(self) -> RasterTransform:
        return RasterTransform(self.origin_x, self.origin_y, self.downsample, self.downsample)

    @classmethod
    def covering(cls, bounds: tuple[float, float, float, float], downsample: float,
                 anchor: tuple[float, float] = (0.0, 0.0)) -> Grid:
        """The grid of pixels at `anchor` + multiples of `downsample` that covers `bounds`."""
        if not downsample > 0:
            raise InvalidInput(f"the downsample must be positive, got {downsample}")
        x0, y0, x1, y1 = bounds
        ax, ay = anchor
        i0, j0 = math.floor((x0 - ax) / downsample), math.floor((y0 - ay) / downsample)
        i1, j1 = math.ceil((x1 - ax) / downsample), math.ceil((y1 - ay) / downsample)
        return cls(ax + i0 * downsample, ay + j0 * downsample, downsample, max(0, i1 - i0),
                   max(0, j1 - j0))

    def pixel_area_um2(self, mpp: float | None) -> float | None:
        return (self.downsample * mpp) ** 2 if mpp else None

    def roi_mask(self, geometry: BaseGeometry | None) -> np.ndarray | None:
        """Pixels whose centres lie inside `geometry` (full-resolution pixels); None = all."""
        if geometry is None:
            return None
        from roiseg.engine.vectorize import roi_mask
        return roi_mask(self.transform.geometry_to_raster(geometry), self.shape)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class LabelMask:
    """A label mask: its pixel values, the class name of each value, and its grid."""

    pixels: np.ndarray
    values: dict[int, str]
    grid: Grid


@dataclass
class Annotation:
    """One side of an evaluation: classified polygons or a label mask."""

    path: Path | None
    #: Polygonal geometries (full-resolution pixels) and class names, in drawing order.
    features: list[tuple[BaseGeometry, str]] = field(default_factory=list)
    mask: LabelMask | None = None
    #: (id, version) of the models that made a roiseg GeoJSON, from its objects' metadata.
    models: tuple[tuple[str, str], ...] = ()

    def class_names(self) -> list[str]:
        if self.mask is not None:
            present = np.unique(self.mask.pixels)
            return [self.mask.values[int(v)] for v in present if int(v) in self.mask.values]
        return list(dict.fromkeys(name for _, name in self.features))

    def bounds(self) -> tuple[float, float, float, float] | None:
        if self.mask is not None:
            g = self.mask.grid
            return (g.origin_x, g.origin_y, g.origin_x + g.width * g.downsample,
                    g.origin_y + g.height * g.downsample)
        geometries = [g for g, _ in self.features]
        if not geometries:
            return None
        x0, y0, x1, y1 = shapely.total_bounds(geometries)
        return float(x0), float(y0), float(x1), float(y1)


def geojson_features(data: Any) -> list[tuple[BaseGeometry, str]]:
    """Polygonal geometries with class names from QuPath GeoJSON (Feature,
    FeatureCollection or a list; top-level objects). Objects without a classification are
    left out."""
    out: list[tuple[BaseGeometry, str]] = []
    for feature, _ in qupath_geojson.objects(data, children=False):
        name = qupath_geojson.class_name(feature.get("properties"))
        geometry = feature.get("geometry")
        if not name or not geometry:
            continue
        area = qupath_geojson.polygonal(shape(geometry))
        if not area.is_empty:
            out.append((area, name))
    return out


def model_ids(data: Any) -> tuple[tuple[str, str], ...]:
    """(id, version) of the models named in the metadata of roiseg's top-level objects."""
    found: dict[tuple[str, str], None] = {}
    for feature, _ in qupath_geojson.objects(data, children=False):
        metadata = (feature.get("properties") or {}).get("metadata") or {}
        if metadata.get(qupath_geojson.MODEL_ID_KEY):
            found[(str(metadata[qupath_geojson.MODEL_ID_KEY]),
                   str(metadata.get(qupath_geojson.MODEL_VERSION_KEY, "")))] = None
    return tuple(found)


def read_annotation(path: str | Path, values: Mapping[int, str] | None = None,
                    positive: str | None = None, mask_downsample: float = 1.0,
                    mask_origin: tuple[float, float] = (0.0, 0.0),
                    reference_option: str | None = None) -> Annotation:
    """A GeoJSON file or a label mask (values -> class names: `values`, or for a prediction
    mask with at most two values 0 = background and the other = `positive`).

    `reference_option` is set when reading a reference: it names the option that gives the
    mask values. A binary reference mask without them is refused, since reading its 0 as
    background would leave everything but the positive class out of the score."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in GEOJSON_SUFFIXES:
        data = qupath_geojson.load(path)
        return Annotation(path, features=geojson_features(data), models=model_ids(data))
    if suffix not in MASK_SUFFIXES:
        raise InvalidInput(f"{path.name}: not a GeoJSON ({', '.join(GEOJSON_SUFFIXES)}) or mask "
                           f"({', '.join(MASK_SUFFIXES)})")
    mask = _read_mask(path)
    mapping = None if values is None else dict(values)
    present = [int(v) for v in np.unique(mask)]
    if mapping is None:
        if len(present) > 2 or (len(present) == 2 and 0 not in present):
            raise InvalidInput(f"mask {path.name} holds values {present[:10]}: say which class "
                               "each is, e.g. --truth-values 0=background,1=tumour,2=stroma")
        if reference_option is not None and len(present) == 2:
            other = present[1]
            name = positive or "CLASS"
            raise InvalidInput(
                f"reference mask {path.name} holds only the values 0 and {other}. Read with 0 as "
                f"background, only its {other} pixels would be scored: precision would be 1 "
                f"and Dice would look far better than it is. Say what 0 is: {reference_option} "
                f"'0=\"Other tissue\",{other}=\"{name}\"' (0 is the rest of the tissue: every "
                f"pixel is scored) or {reference_option} '0=background,{other}=\"{name}\"' "
                f"(only the {other} area is scored)")
        if positive is None:
            raise InvalidInput(f"mask {path.name} is binary: pass --positive NAME (its non-zero "
                               "class) or the mask values")
        mapping = {0: BACKGROUND, **{v: positive for v in present if v != 0}}
    unmapped = [v for v in present if v not in mapping]
    if unmapped:
        raise InvalidInput(f"mask {path.name} has values {unmapped[:10]} that the mask values "
                           f"({mapping}) do not name")
    if not mask_downsample > 0:
        raise InvalidInput(f"--mask-downsample must be positive, got {mask_downsample}")
    grid = Grid(float(mask_origin[0]), float(mask_origin[1]), float(mask_downsample),
                mask.shape[1], mask.shape[0])
    return Annotation(path, mask=LabelMask(mask, mapping, grid))


def _read_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None and path.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        try:
            mask = tifffile.imread(path)
        except Exception as error:  # noqa: BLE001 - reported to the user
            raise InvalidInput(f"cannot read mask {path}: {error}") from None
    if mask is None:
        raise InvalidInput(f"cannot read mask {path}")
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[2])):
            raise InvalidInput(f"mask {path.name} has colour channels; label masks hold one "
                               "value per pixel")
        mask = mask[..., 0]
    if mask.dtype.kind not in "ui":
        raise InvalidInput(f"mask {path.name} must hold integer labels, not {mask.dtype}")
    return mask


def rasterize_geojson(collection: Any, shape: tuple[int, int], origin: tuple[float, float],
                      downsample: float,
                      class_index: Callable[[str], int | None] | Mapping[str, int]
                      ) -> np.ndarray:
    """(H, W) uint16 class indices of GeoJSON features on a grid (pixel centres decide;
    later features are drawn over earlier ones); 0 where no feature is.

    `collection` is QuPath GeoJSON or `geojson_features` output; `class_index` gives a
    class name's index (a callable such as `EvalClasses`, or a mapping; None or a missing
    name leaves the feature out). Grid pixel (i, j) covers full-resolution
    [origin_x + i*downsample, ...) as in `Grid`.
    """
    shape = (int(shape[0]), int(shape[1]))
    features = collection if _is_feature_list(collection) else geojson_features(collection)
    shapes = []
    for geometry, name in features:
        index = class_index(name) if callable(class_index) else class_index.get(name)
        if index is not None:
            shapes.append((geometry, int(index)))
    if not shapes or shape[0] == 0 or shape[1] == 0:
        return np.zeros(shape, np.uint16)
    transform = Affine(downsample, 0, origin[0], 0, downsample, origin[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.features.rasterize(shapes, out_shape=shape, fill=0, transform=transform,
                                           dtype="uint16")


def _is_feature_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, tuple) for v in value)


def labels_on_grid(annotation: Annotation, grid: Grid, classes: EvalClasses) -> np.ndarray:
    """(H, W) uint16 evaluation class indices of `annotation` on `grid`."""
    mask = annotation.mask
    if mask is None:
        return rasterize_geojson(annotation.features, grid.shape,
                                 (grid.origin_x, grid.origin_y), grid.downsample, classes)
    table = np.zeros(int(mask.pixels.max()) + 1, np.uint16)
    for value, name in mask.values.items():
        if value < table.size:
            table[value] = classes.index(name)
    return cut_to_grid(table[mask.pixels], mask.grid, grid)


def cut_to_grid(labels: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """`labels` on `source` cut (or padded with background) to `target`, which must share
    the downsample and lie on the same pixel lattice."""
    if source == target:
        return labels
    ds = source.downsample
    dx, dy = (target.origin_x - source.origin_x) / ds, (target.origin_y - source.origin_y) / ds
    if abs(target.downsample - ds) > 1e-9 * ds or abs(dx - round(dx)) > 1e-6 \
            or abs(dy - round(dy)) > 1e-6:
        raise InvalidInput("a mask can only be evaluated on its own pixel grid: give the "
                           "other side at the same --mask-downsample, or as GeoJSON")
    dx, dy = round(dx), round(dy)
    out = np.zeros(target.shape, labels.dtype)
    x0, y0 = max(0, dx), max(0, dy)
    x1, y1 = min(source.width, dx + target.width), min(source.height, dy + target.height)
    if x1 > x0 and y1 > y0:
        out[y0 - dy:y1 - dy, x0 - dx:x1 - dx] = labels[y0:y1, x0:x1]
    return out


def choose_grid(pred: Annotation, truth: Annotation, downsample: float = 1.0,
                roi: BaseGeometry | None = None) -> Grid:
    """A mask's own grid (the reference's when both are masks, which must then agree);
    for two GeoJSONs the grid at `downsample` over the union of their bounds (cut to the
    ROI's bounds when one is given)."""
    if pred.mask is not None and truth.mask is not None:
        if pred.mask.grid != truth.mask.grid:
            raise InvalidInput(f"masks {_mask_label(pred, pred.mask)} and "
                               f"{_mask_label(truth, truth.mask)} are not on the same grid")
        return truth.mask.grid
    for mask in (truth.mask, pred.mask):
        if mask is not None:
            return mask.grid
    bounds = [b for b in (pred.bounds(), truth.bounds()) if b is not None]
    region = shapely.union_all([box(*b) for b in bounds]) if bounds else None
    if roi is not None:
        region = roi.envelope if region is None else region.intersection(roi.envelope)
    if region is None or region.is_empty:
        return Grid(0.0, 0.0, downsample, 0, 0)
    return Grid.covering(region.bounds, downsample)


def _mask_label(annotation: Annotation, mask: LabelMask) -> str:
    """A mask as messages name it: file name and size."""
    name = annotation.path.name if annotation.path else "mask"
    return f"{name} ({mask.grid.width}x{mask.grid.height})"


def annotation_files(path: Path) -> dict[str, Path]:
    """GeoJSON and mask files by stem: `path` itself, or the files in the directory."""
    if not path.exists():
        raise NotFound(f"{path} does not exist")
    if path.is_file():
        return {path.stem: path}
    files: dict[str, Path] = {}
    for p in sorted(path.iterdir()):
        if p.is_file() and not p.name.startswith(".") \
                and p.suffix.lower() in GEOJSON_SUFFIXES + MASK_SUFFIXES:
            if p.stem in files:
                raise InvalidInput(f"{path} holds two files named {p.stem}: "
                                   f"{files[p.stem].name} and {p.name}")
            files[p.stem] = p
    return files


def pair_paths(pred: str | Path, truth: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, prediction, reference) pairs: two files, or files paired by stem.

    Every reference must have a prediction; predictions without a reference are left out.
    """
    pred, truth = Path(pred), Path(truth)
    if pred.is_file() and truth.is_file():
        return [(truth.stem, pred, truth)]
    preds, truths = annotation_files(pred), annotation_files(truth)
    if not truths:
        raise InvalidInput(f"no GeoJSON or mask files in {truth}")
    if pred.is_file():
        truths = {k: v for k, v in truths.items() if k == pred.stem}
        if not truths:
            raise InvalidInput(f"{truth} holds no reference named {pred.stem}")
    missing = sorted(k for k in truths if k not in preds)
    if missing:
        raise InvalidInput(f"{len(missing)} reference(s) have no prediction in {pred}: "
                           f"{', '.join(missing[:5])}")
    return [(k, preds[k], truths[k]) for k in sorted(truths)]


# --------------------------------------------------------------------------- evaluation


@dataclass
class ImageResult:
    """What one prediction scored against its reference."""

    name: str
    counts: Counts
    #: (K, K) pixel counts [reference class, predicted class] over the evaluated pixels.
    class_confusion: np.ndarray
    regions: dict[str, float]
    pixel_area_um2: float | None = None

    def metrics(self) -> dict[str, float]:
        values = {**pixel_metrics(self.counts),
                  **{k: self.regions[k] for k in REGION_METRICS}}
        if self.pixel_area_um2:
            values["reference_positive_um2"] = (self.counts.tp + self.counts.fn) \
                * self.pixel_area_um2
            values["predicted_positive_um2"] = (self.counts.tp + self.counts.fp) \
                * self.pixel_area_um2
        return values

    def dice(self, n_classes: int) -> np.ndarray:
        """Per-class Dice over the evaluated pixels (index 0, background, is NaN)."""
        dice = class_dice(_pad(self.class_confusion, n_classes))
        dice[0] = _NAN
        return dice

    def row(self, class_names: Sequence[str]) -> dict[str, Any]:
        """One CSV row: counts, metrics and per-class Dice (`dice_<class>`)."""
        c = self.counts
        row: dict[str, Any] = {"image": self.name, "pixels": c.total, "tp": c.tp, "fp": c.fp,
                               "fn": c.fn, "tn": c.tn, **self.metrics()}
        dice = self.dice(len(class_names))
        for index, name in enumerate(class_names):
            if index:
                row[f"dice_{name}"] = float(dice[index])
        return row


def _pad(cm: np.ndarray, n: int) -> np.ndarray:
    if cm.shape[0] >= n:
        return cm
    out = np.zeros((n, n), cm.dtype)
    out[:cm.shape[0], :cm.shape[1]] = cm
    return out


def evaluate_labels(name: str, pred_labels: np.ndarray, truth_labels: np.ndarray,
                    positive: int, n_classes: int, valid: np.ndarray | None = None,
                    pixel_area_um2: float | None = None) -> ImageResult:
    """Scores evaluation class maps (0 = background) over the reference's non-background
    pixels (inside `valid`). Predicted positive regions are cut to those pixels too."""
    pred, truth = np.asarray(pred_labels), np.asarray(truth_labels)
    if pred.shape != truth.shape:
        raise InvalidInput(f"{name}: prediction {pred.shape} and reference {truth.shape} differ "
                           "in shape")
    area = truth != 0
    if valid is not None:
        area &= valid
    k = max(n_classes, int(pred.max(initial=0)) + 1, int(truth.max(initial=0)) + 1)
    pairs = np.zeros(k * k, np.int64)
    rows = max(1, _BAND_PIXELS // max(1, truth.shape[1] if truth.ndim == 2 else 1))
    for top in range(0, truth.shape[0], rows):  # bands bound the temporary memory
        band = area[top:top + rows]
        pairs += np.bincount(truth[top:top + rows][band].astype(np.int64) * k
                             + pred[top:top + rows][band], minlength=k * k)
    cm = pairs.reshape(k, k)
    tp = int(cm[positive, positive]) if positive < k else 0
    fn = int(cm[positive].sum()) - tp if positive < k else 0
    fp = int(cm[:, positive].sum()) - tp if positive < k else 0
    counts = Counts(tp, fp, fn, int(cm.sum()) - tp - fp - fn)
    regions = region_metrics((pred == positive) & area, (truth == positive) & area)
    return ImageResult(name, counts, cm, regions, pixel_area_um2)


def evaluate_annotations(name: str, pred: Annotation, truth: Annotation, classes: EvalClasses,
                         positive: str, downsample: float = 1.0,
                         roi: BaseGeometry | None = None, mpp: float | None = None,
                         grid: Grid | None = None) -> ImageResult:
    """Rasterises both sides on one grid (`choose_grid` unless given) and scores them."""
    grid = grid or choose_grid(pred, truth, downsample, roi)
    truth_labels = labels_on_grid(truth, grid, classes)
    pred_labels = labels_on_grid(pred, grid, classes)
    return evaluate_labels(name, pred_labels, truth_labels, classes.index(positive),
                           len(classes), grid.roi_mask(roi), grid.pixel_area_um2(mpp))


# --------------------------------------------------------------------------- summaries


@dataclass
class SummaryRow:
    key: str
    label: str
    mean: float
    low: float
    high: float
    n: int
    pooled: float


def summarize(results: Sequence[ImageResult], class_names: Sequence[str]
              ) -> tuple[list[SummaryRow], list[SummaryRow]]:
    """Per-metric and per-class-Dice rows: mean, 95 % CI and n over images, and the value
    pooled over all pixels (metrics from summed counts; region Dice over all matched
    pairs; region counts summed)."""
    total = sum((r.counts for r in results), Counts())
    pooled = pixel_metrics(total)
    inter = sum(r.regions["_matched_intersection"] for r in results)
    size = sum(r.regions["_matched_size"] for r in results)
    pooled["region_dice"] = _ratio(2 * inter, size)
    sums = {k: sum(r.regions[k] for r in results)
            for k in REGION_METRICS if k.startswith("regions_")}
    pooled.update(sums)
    pooled["region_recall"] = _ratio(sums["regions_matched"], sums["regions_reference"])
    pooled["region_precision"] = _ratio(sums["regions_matched"], sums["regions_predicted"])
    metric_values = [r.metrics() for r in results]
    labels = {**PIXEL_METRICS, **REGION_METRICS, **AREA_METRICS}
    rows = []
    for key, label in labels.items():
        values = [m[key] for m in metric_values if key in m]
        if not values:
            continue
        if key in AREA_METRICS:
            pooled[key] = float(sum(values))
        mean, low, high = mean_ci(values)
        rows.append(SummaryRow(key, label, mean, low, high, _finite_count(values),
                               pooled.get(key, _NAN)))
    n = len(class_names)
    dice = np.array([r.dice(n) for r in results]).reshape(len(results), n)
    pooled_dice = class_dice(sum((_pad(r.class_confusion, n)[:n, :n] for r in results),
                                 np.zeros((n, n), np.int64)))
    class_rows = []
    for index in range(1, n):
        mean, low, high = mean_ci(dice[:, index])
        class_rows.append(SummaryRow(f"dice_{class_names[index]}", class_names[index], mean,
                                     low, high, _finite_count(dice[:, index]),
                                     float(pooled_dice[index])))
    return rows, class_rows


def _finite_count(values: Iterable[float]) -> int:
    return sum(1 for v in values if v is not None and math.isfinite(v))


def fmt(value: float, key: str = "") -> str:
    """A number for Markdown ("n/a" when undefined): region counts as counts, areas with
    one decimal, everything else with four."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if key.startswith("regions_"):
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"
    if key in AREA_METRICS:
        return f"{value:.1f}"
    return f"{value:.4f}"


def fmt_ci(low: float, high: float, key: str = "") -> str:
    return "n/a" if not (math.isfinite(low) and math.isfinite(high)) \
        else f"{fmt(low, key)} – {fmt(high, key)}"


def format_summary(rows: Sequence[SummaryRow], class_rows: Sequence[SummaryRow],
                   title: str, notes: Sequence[str] = ()) -> str:
    """The Markdown summary: metric table, then per-class Dice."""
    lines = [f"# {title}", ""]
    lines += [f"{note}" for note in notes]
    if notes:
        lines.append("")
    lines += ["| metric | mean | 95 % CI | n | pooled (all pixels) |",
              "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.label} | {fmt(r.mean, r.key)} | {fmt_ci(r.low, r.high, r.key)} | "
                     f"{r.n} | {fmt(r.pooled, r.key)} |")
    if class_rows:
        lines += ["", "## Per-class Dice", "",
                  "| class | mean | 95 % CI | n | pooled (all pixels) |", "|---|---|---|---|---|"]
        for r in class_rows:
            lines.append(f"| {r.label} | {fmt(r.mean)} | {fmt_ci(r.low, r.high)} | {r.n} | "
                         f"{fmt(r.pooled)} |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV text (columns in order of first appearance); NaN and missing values
    written as "NaN"."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, restval="NaN")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return text.getvalue()


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows as a CSV file (`csv_text`), written atomically."""
    write_atomic(path, csv_text(rows))


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else repr(value)
    return value


# --------------------------------------------------------------------------- roiseg evaluate


def parse_rectangle(text: str, option: str = "--region") -> Rectangle:
    """``"x,y,w,h"`` -> (x, y, w, h); InvalidInput naming `option` otherwise."""
    x, y, width, height = _numbers(text, option, "x,y,w,h")
    return x, y, width, height


def parse_point(text: str, option: str) -> tuple[float, float]:
    """``"X,Y"`` -> (X, Y); InvalidInput naming `option` otherwise."""
    x, y = _numbers(text, option, "X,Y")
    return x, y


def _numbers(text: str, option: str, layout: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in text.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != len(layout.split(",")):
        raise InvalidInput(f"{option} needs {layout}, got {text!r}")
    return numbers


def evaluation_area(roi: Path | None, region: Rectangle | None) -> BaseGeometry | None:
    """The polygons of the GeoJSON file `roi`, else the rectangle `region` (x, y, width,
    height), else None (everywhere); full-resolution pixels."""
    if roi is not None:
        return roi_module.read_geojson(roi)
    return roi_module.rectangle(*region) if region is not None else None


def check_positive(positive: str | None, classes: EvalClasses, seen: Iterable[str]) -> str:
    """`positive` if some input holds it (after mapping), else InvalidInput listing classes."""
    found = sorted({classes.evaluation_name(n) for n in seen} - {BACKGROUND}, key=str.lower)
    if not positive:
        raise InvalidInput("pass --positive NAME, the class to score; the inputs hold "
                           f"{', '.join(found) or 'no class'}")
    if classes.evaluation_name(positive).lower() not in {n.lower() for n in found}:
        raise InvalidInput(f"no input holds the class {positive!r} (after --map); they hold "
                           f"{', '.join(found) or 'no class'}")
    return positive


def describe(classes: EvalClasses, positive: str, what: str) -> str:
    """One sentence saying what was scored, for the Markdown reports."""
    name = classes.evaluation_name(positive)
    negative = [n for n in classes.names[1:] if n.lower() != name.lower()]
    return (f"{what}; positive class **{name}**, negative: every other non-background class "
            f"({', '.join(negative) or 'none'}). Pixels that are background in the reference "
            "are excluded. Regions are 4-connected and correspond when IoU > 0.5. "
            "95 % CI: bootstrap percentile interval of the mean over images; undefined "
            "values (0/0) are n/a.")


@dataclass(frozen=True)
class EvaluateOptions:
    """What `evaluate` scores and how: predictions and references (files, or directories
    paired by stem), the evaluation classes, the grid and where the report goes."""

    pred: Path
    truth: Path
    out: Path
    positive: str | None = None
    #: Class name -> evaluation class (`parse_map`).
    class_map: Mapping[str, str] = field(default_factory=dict)
    #: Mask value -> class name, for prediction and reference masks.
    pred_values: Mapping[int, str] | None = None
    truth_values: Mapping[int, str] | None = None
    mask_downsample: float = 1.0
    #: Full-resolution position of the masks' top-left corner.
    mask_origin: tuple[float, float] = (0.0, 0.0)
    #: Full-resolution pixels per grid pixel when both sides are GeoJSON.
    downsample: float = 1.0
    #: Full-resolution µm/px, only for the µm² areas.
    mpp: float | None = None
    #: Evaluate only inside the polygons of this GeoJSON, or inside x, y, w, h (full-resolution
    #: pixels).
    roi: Path | None = None
    region: Rectangle | None = None
    #: Where the cards of the models named in prediction GeoJSON are looked up.
    model_dirs: tuple[Path, ...] = (EMBEDDED_MODELS_DIR,)


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` scored and wrote; `warnings` head the summary too."""

    results: tuple[ImageResult, ...]
    summary: str
    warnings: tuple[str, ...]
    written: tuple[Path, ...]


def evaluate(options: EvaluateOptions) -> Evaluation:
    """Scores every prediction against its reference and writes OUT/metrics.csv and
    OUT/summary.md. Raises InvalidInput or NotFound for inputs it cannot score."""
    try:
        return _evaluate(options)
    except OSError as error:
        raise InvalidInput(str(error)) from error


def _evaluate(options: EvaluateOptions) -> Evaluation:
    classes = EvalClasses(options.class_map)
    area = evaluation_area(options.roi, options.region)
    loaded = []
    for name, pred_path, truth_path in pair_paths(options.pred, options.truth):
        pred = read_annotation(pred_path, options.pred_values, options.positive,
                               options.mask_downsample, options.mask_origin)
        truth = read_annotation(truth_path, options.truth_values, options.positive,
                                options.mask_downsample, options.mask_origin, "--truth-values")
        loaded.append((name, pred, truth))
    positive = check_positive(options.positive, classes,
                              (n for _, p, t in loaded for n in p.class_names()
                               + t.class_names()))
    # Number the classes in a stable order: reference first, then prediction.
    for _, pred, truth in loaded:
        for n in truth.class_names() + pred.class_names():
            classes.index(n)
    results = tuple(evaluate_annotations(name, pred, truth, classes, positive,
                                         options.downsample, area, options.mpp)
                    for name, pred, truth in loaded)
    models = {model for _, pred, _ in loaded for model in pred.models}
    trained = {model: card_trained_on(*model, options.model_dirs) for model in models}
    cautions = [w for w in [single_class_reference((t for _, _, t in loaded), classes)] if w]
    cautions += training_data_warnings({name: [trained[m] for m in pred.models]
                                        for name, pred, _ in loaded})
    options.out.mkdir(parents=True, exist_ok=True)
    csv_path, summary_path = options.out / "metrics.csv", options.out / "summary.md"
    write_csv(csv_path, [r.row(classes.names) for r in results])
    rows, class_rows = summarize(results, classes.names)
    notes = [f"**{c}**" for c in cautions] + [describe(classes, positive,
                                                       f"{len(results)} image(s)")]
    summary = format_summary(rows, class_rows, "roiseg evaluate", notes)
    summary_path.write_text(summary, encoding="utf-8")
    return Evaluation(results, summary, tuple(cautions), (csv_path, summary_path))
