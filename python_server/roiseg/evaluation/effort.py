"""Correction effort: how much a pathologist changed roiseg's pre-annotations.

The "fast-track" loop of paper 001: a model pre-annotates, a pathologist corrects in QuPath,
the corrections retrain the model. `effort` is ``roiseg effort PRED CORRECTED --out DIR``
(`roiseg.cli.effort` parses the options into `EffortOptions`). PRED is what roiseg wrote,
CORRECTED the same region exported from QuPath after the corrections ("Export objects as
GeoJSON"); each is a file or a folder of files paired by name. Per image and class:

- pixel Dice and IoU of prediction and correction: each class rasterised on its own (its
  objects united; a pixel centre inside counts) on a grid of `downsample` full-resolution
  pixels (`metrics.Grid`, `metrics.rasterize_geojson`);
- area added (corrected minus predicted) and removed (predicted minus corrected) in µm²,
  computed on the polygons (shapely), not on the raster;
- objects kept, edited (class changed, or outline moved: Hausdorff distance between the
  boundaries above `tolerance` full-resolution pixels), deleted and added, matched by QuPath's
  Feature ``id``; where ids are missing, by geometry (IoU > 0.5 with the same class).

The results are the classified objects, nested ones included; unclassified objects and the ROI
(objects of a `roi_classes` class, or an annotation without roiseg metadata that contains every
other object) are left out and the report says so.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.errors import GEOSException
from shapely.geometry import Polygon, shape
from shapely.geometry.base import BaseGeometry

from roiseg.errors import InvalidInput
from roiseg.evaluation import metrics as ev
from roiseg.evaluation import training_data
from roiseg.io import qupath_geojson
from roiseg.io.files import write_atomic
from roiseg.io.qupath_geojson import PIXEL_SIZE_KEY, RUN_ID_KEY

__all__ = [
    "ALL", "OBJECT_COUNTS", "ClassEffort", "Effort", "EffortOptions",
    "ImageEffort", "Matching", "ResultObject", "Side", "effort", "format_summary",
    "match_objects", "measure", "measure_correction", "outline_changed", "pair_files",
    "read_side", "resolve_pixel_size", "side_of",
]

#: The image and class of the pooled rows.
ALL = "(all)"
#: Objects correspond by geometry when IoU > this, with the same class.
MATCH_IOU = 0.5
#: A ROI holds at least this fraction of every other object's area.
ROI_COVER = 0.99
#: The automatic grid stays at or below this many pixels (1, 2, 4, ... px per grid pixel).
AUTO_MAX_PIXELS = 1 << 25
#: No grid above this many pixels is made; a coarser --downsample is asked for.
MAX_PIXELS = 1 << 28
_NAN = float("nan")
_LISTED = 20


@dataclass(frozen=True)
class EffortOptions:
    """What `effort` compares and how: predictions and corrections (files, or directories
    paired by file stem), the pixel size, the grid, the edit tolerance, the ROI classes and
    where the report goes."""

    pred: Path
    corrected: Path
    out: Path
    #: Full-resolution µm/px; required unless every pair's files carry `PIXEL_SIZE_KEY`.
    mpp: float | None = None
    #: Full-resolution pixels per grid pixel of the Dice raster; None: 1, or the smallest
    #: power of two that keeps the grid within `AUTO_MAX_PIXELS`.
    downsample: float | None = None
    #: An outline moved by more than this many full-resolution pixels is edited.
    tolerance: float = 1.0
    #: Classes of ROI objects, left out of the results (besides those found by containment).
    roi_classes: tuple[str, ...] = ()
    #: Measure only inside the polygons of this GeoJSON, or inside x, y, w, h (full-resolution
    #: pixels); default: everywhere.
    roi: Path | None = None
    region: ev.Rectangle | None = None
    #: Where the cards of the models named in PRED are looked up (training-image warning).
    model_dirs: tuple[Path, ...] = (training_data.EMBEDDED_MODELS_DIR,)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ResultObject:
    """A classified, polygonal object of a file that is not a ROI."""

    id: str | None
    class_name: str
    geometry: BaseGeometry
    #: Whether its metadata mark it as roiseg's (``roiseg.source``).
    roiseg: bool


@dataclass(frozen=True)
class Side:
    """One file's results and what was left out of them."""

    path: Path
    objects: tuple[ResultObject, ...]
    #: The ROI objects left out, as the report names them.
    rois: tuple[str, ...] = ()
    unclassified: int = 0
    #: Classified objects without area (points, lines), left out.
    without_area: int = 0
    #: (id, version) of the models, and the run ids, named by its roiseg objects.
    models: tuple[tuple[str, str], ...] = ()
    run_ids: frozenset[str] = frozenset()
    #: The µm/px values its objects' metadata give (`PIXEL_SIZE_KEY`).
    pixel_sizes: frozenset[float] = frozenset()


def read_side(path: str | Path, roi_classes: Iterable[str] = ()) -> Side:
    """The results of a QuPath GeoJSON file: its classified polygonal objects, nested ones
    included, without ROIs (class in `roi_classes`, any case; or an object without roiseg
    metadata that holds at least `ROI_COVER` of every other object, some of them roiseg's)."""
    path = Path(path)
    try:
        data = qupath_geojson.load(path)
    except ValueError as error:
        raise InvalidInput(str(error)) from None
    return side_of(data, path, roi_classes)


def side_of(data: Any, path: Path, roi_classes: Iterable[str] = ()) -> Side:
    """`read_side` of GeoJSON already read; `path` names it in messages."""
    roi_names = {n.strip().casefold() for n in roi_classes}
    found: list[ResultObject] = []
    rois: list[str] = []
    unclassified = without_area = 0
    models: dict[tuple[str, str], None] = {}
    runs: set[str] = set()
    sizes: set[float] = set()
    for number, (feature, _) in enumerate(qupath_geojson.objects(data), 1):
        properties = feature.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        metadata = properties.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else {}
        roiseg = qupath_geojson.is_roiseg_object(properties)
        if roiseg and metadata.get(qupath_geojson.MODEL_ID_KEY):
            models[(str(metadata[qupath_geojson.MODEL_ID_KEY]),
                    str(metadata.get(qupath_geojson.MODEL_VERSION_KEY, "")))] = None
        if roiseg and metadata.get(RUN_ID_KEY):
            runs.add(str(metadata[RUN_ID_KEY]))
        if metadata.get(PIXEL_SIZE_KEY) not in (None, ""):
            sizes.add(_pixel_size_value(metadata[PIXEL_SIZE_KEY], path))
        name = qupath_geojson.class_name(properties)
        if not name:
            unclassified += 1
            continue
        geometry = _geometry(feature.get("geometry"), path, number)
        if geometry.is_empty:
            without_area += 1
            continue
        identifier = feature.get("id")
        result = ResultObject(str(identifier) if identifier not in (None, "") else None, name,
                              geometry, roiseg)
        if name.casefold() in roi_names:
            rois.append(_describe_roi(result, f"class {name!r}, --roi-class"))
        else:
            found.append(result)
    for roi in _contained_rois(found):
        rois.append(_describe_roi(roi, "no roiseg metadata, contains every other object"))
        found = [o for o in found if o is not roi]
    return Side(path, tuple(found), tuple(rois), unclassified, without_area, tuple(models),
                frozenset(runs), frozenset(sizes))


def _geometry(value: Any, path: Path, number: int) -> BaseGeometry:
    if not value:
        return Polygon()
    try:
        return qupath_geojson.polygonal(shape(value))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError,
            GEOSException) as error:
        raise InvalidInput(f"{path.name}: object {number} has a geometry that is not GeoJSON "
                           f"({type(error).__name__}: {error}); export it again from QuPath"
                           ) from None


def _pixel_size_value(value: Any, path: Path) -> float:
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        mpp = _NAN
    if not (math.isfinite(mpp) and mpp > 0):
        raise InvalidInput(f"{path.name}: metadata {PIXEL_SIZE_KEY} is {value!r}, not a pixel "
                           "size in µm/px; pass --mpp")
    return mpp


def _contained_rois(objects: Sequence[ResultObject]) -> list[ResultObject]:
    """The objects without roiseg metadata that contain all the others (some roiseg's)."""
    if len(objects) < 2 or not any(o.roiseg for o in objects):
        return []
    bounds = shapely.bounds([o.geometry for o in objects])
    low, high = bounds[:, :2].min(axis=0), bounds[:, 2:].max(axis=0)
    slack = 0.05 * float(max(high - low))
    areas = np.array([o.geometry.area for o in objects])
    rois = []
    for index, candidate in enumerate(objects):
        box = bounds[index]
        if candidate.roiseg or (box[:2] > low + slack).any() or (box[2:] < high - slack).any():
            continue  # a ROI's bounds are (nearly) the bounds of everything
        others = [o.geometry for i, o in enumerate(objects) if i != index]
        inside = shapely.area(shapely.intersection(others, candidate.geometry))
        if (inside >= ROI_COVER * np.delete(areas, index)).all():
            rois.append(candidate)
    return rois


def _describe_roi(roi: ResultObject, why: str) -> str:
    ident = f" {roi.id}" if roi.id else ""
    return f"{roi.class_name!r}{ident} ({why})"


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Matching:
    """Which predicted objects the correction kept, edited or deleted, and what it added."""

    #: "id" (QuPath's Feature id) or "geometry" (IoU > 0.5, same class).
    by: str
    #: Why ids could not be used ("" when they were).
    reason: str
    #: (predicted, corrected) pairs.
    kept: tuple[tuple[ResultObject, ResultObject], ...] = ()
    edited: tuple[tuple[ResultObject, ResultObject], ...] = ()
    deleted: tuple[ResultObject, ...] = ()
    added: tuple[ResultObject, ...] = ()


def outline_changed(a: BaseGeometry, b: BaseGeometry, tolerance: float = 1.0) -> bool:
    """Whether two outlines differ by more than `tolerance` (full-resolution pixels): the
    Hausdorff distance between their boundaries (holes included), vertices against lines."""
    if shapely.equals_exact(a, b, tolerance) \
            or shapely.equals_exact(shapely.normalize(a), shapely.normalize(b), tolerance):
        return False  # the same vertices (in another order): no distances to compute
    return bool(shapely.hausdorff_distance(a.boundary, b.boundary) > tolerance)


def match_objects(pred: Sequence[ResultObject], corrected: Sequence[ResultObject],
                  tolerance: float = 1.0) -> Matching:
    """Matches by Feature id when every object on both sides has a distinct one and the sides
    share some; otherwise by geometry (IoU > `MATCH_IOU`, same class, best pairs first), where
    a reclassified object is one deleted and one added. A match is kept unless its class
    changed or its outline moved by more than `tolerance` px (`outline_changed`)."""
    reason = _id_problem(pred, corrected)
    if reason:
        pairs = _geometry_pairs(pred, corrected)
    else:
        by_id = {o.id: o for o in corrected}
        pairs = [(p, by_id[p.id]) for p in pred if p.id in by_id]
    matched_pred = {id(p) for p, _ in pairs}
    matched_corrected = {id(c) for _, c in pairs}
    kept: list[tuple[ResultObject, ResultObject]] = []
    edited: list[tuple[ResultObject, ResultObject]] = []
    for p, c in pairs:
        changed = p.class_name != c.class_name or outline_changed(p.geometry, c.geometry,
                                                                  tolerance)
        (edited if changed else kept).append((p, c))
    return Matching("geometry" if reason else "id", reason, tuple(kept), tuple(edited),
                    tuple(p for p in pred if id(p) not in matched_pred),
                    tuple(c for c in corrected if id(c) not in matched_corrected))


def _id_problem(pred: Sequence[ResultObject], corrected: Sequence[ResultObject]) -> str:
    """Why Feature ids cannot match these objects; "" when they can."""
    for objects, side in ((pred, "PRED"), (corrected, "CORRECTED")):
        missing = sum(o.id is None for o in objects)
        if missing == len(objects) and missing:
            return f"{side} has no Feature ids"
        if missing:
            return f"{missing} of the {len(objects)} objects in {side} have no Feature id"
        twice = [(i, n) for i, n in Counter(o.id for o in objects).items() if n > 1]
        if twice:
            return f"{side} holds the Feature id {twice[0][0]} {twice[0][1]} times"
    if pred and corrected and not {o.id for o in pred} & {o.id for o in corrected}:
        return ("no Feature id of PRED is in CORRECTED (were the objects imported into QuPath "
                "without their ids?)")
    return ""


def _geometry_pairs(pred: Sequence[ResultObject], corrected: Sequence[ResultObject]
                    ) -> list[tuple[ResultObject, ResultObject]]:
    if not pred or not corrected:
        return []
    tree = shapely.STRtree([c.geometry for c in corrected])
    left, right = tree.query([p.geometry for p in pred], predicate="intersects")
    candidates = []
    for i, j in zip(left.tolist(), right.tolist()):
        a, b = pred[i], corrected[j]
        if a.class_name != b.class_name:
            continue
        both = a.geometry.intersection(b.geometry).area
        union = a.geometry.area + b.geometry.area - both
        if union > 0 and both / union > MATCH_IOU:
            candidates.append((both / union, i, j))
    pairs, used_pred, used_corrected = [], set(), set()
    for _, i, j in sorted(candidates, key=lambda t: (-t[0], t[1], t[2])):
        if i not in used_pred and j not in used_corrected:
            used_pred.add(i)
            used_corrected.add(j)
            pairs.append((pred[i], corrected[j]))
    return pairs


# --------------------------------------------------------------------------- measuring


#: What becomes of objects, as `ClassEffort.objects` counts it, with the report's labels:
#: the predicted objects (kept, edited, of those reclassified, deleted), the added ones, and
#: the objects on the corrected side.
OBJECT_COUNTS: dict[str, str] = {
    "predicted": "predicted objects", "kept": "kept unchanged",
    "edited": "edited (outline or class)", "reclassified": "of which reclassified",
    "deleted": "deleted", "added": "added", "corrected": "corrected objects",
}


def _no_objects() -> dict[str, int]:
    return dict.fromkeys(OBJECT_COUNTS, 0)


@dataclass(frozen=True)
class ClassEffort:
    """The correction of one class in one image (or pooled: `ALL`).

    Objects kept, edited and deleted count under their predicted class, added objects under
    their corrected class."""

    image: str
    class_name: str
    #: Raster areas in µm² (grid pixels times a grid pixel's area): in both, in the prediction
    #: only, in the correction only. Dice and IoU come from them, and pool over any pixel size.
    raster_um2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: Polygon areas in µm²: each side's, what the correction added and what it removed.
    predicted_um2: float = 0.0
    corrected_um2: float = 0.0
    added_um2: float = 0.0
    removed_um2: float = 0.0
    #: Object counts by `OBJECT_COUNTS` key (all keys present).
    objects: Mapping[str, int] = field(default_factory=_no_objects)

    @property
    def dice(self) -> float:
        """Pixel Dice, 2|P∩C| / (|P| + |C|); NaN when the class is on neither side."""
        both, pred_only, corrected_only = self.raster_um2
        return float(ev.class_dice(np.array([[0.0, pred_only], [corrected_only, both]]))[1])

    @property
    def iou(self) -> float:
        """Pixel IoU, |P∩C| / |P∪C|; NaN when the class is on neither side."""
        union = sum(self.raster_um2)
        return self.raster_um2[0] / union if union > 0 else _NAN

    def __add__(self, other: ClassEffort) -> ClassEffort:
        a, b = self.raster_um2, other.raster_um2
        return replace(self, raster_um2=(a[0] + b[0], a[1] + b[1], a[2] + b[2]),
                       predicted_um2=self.predicted_um2 + other.predicted_um2,
                       corrected_um2=self.corrected_um2 + other.corrected_um2,
                       added_um2=self.added_um2 + other.added_um2,
                       removed_um2=self.removed_um2 + other.removed_um2,
                       objects={k: self.objects[k] + other.objects[k] for k in OBJECT_COUNTS})

    def row(self) -> dict[str, Any]:
        """One CSV row: image, class, Dice, IoU, areas, object counts."""
        return {"image": self.image, "class": self.class_name, "dice": self.dice,
                "iou": self.iou, "area_predicted_um2": self.predicted_um2,
                "area_corrected_um2": self.corrected_um2, "area_added_um2": self.added_um2,
                "area_removed_um2": self.removed_um2,
                **{f"objects_{k}": self.objects[k] for k in OBJECT_COUNTS}}


def _pool(items: Iterable[ClassEffort], image: str, class_name: str) -> ClassEffort:
    total = ClassEffort(image, class_name)
    for item in items:
        total = total + item
    return total


@dataclass(frozen=True)
class ImageEffort:
    """One image's correction: per class, pooled, and how it was measured."""

    name: str
    pred: Side
    corrected: Side
    mpp: float
    #: "--mpp" or "file metadata".
    mpp_source: str
    grid: ev.Grid
    #: Full-resolution pixels an outline may move and stay kept.
    tolerance: float
    matching: Matching
    classes: tuple[ClassEffort, ...]

    @property
    def total(self) -> ClassEffort:
        return _pool(self.classes, self.name, ALL)

    def rows(self) -> list[dict[str, Any]]:
        own = {"matched_by": self.matching.by, "mpp": self.mpp,
               "downsample": self.grid.downsample}
        return [{**c.row(), **own} for c in (*self.classes, self.total)]


def measure(name: str, pred: Side, corrected: Side, mpp: float, mpp_source: str = "--mpp",
            downsample: float | None = None, tolerance: float = 1.0,
            area: BaseGeometry | None = None) -> ImageEffort:
    """Compares one prediction with its correction (inside `area` when given: objects that
    overlap it are counted, areas and pixels are cut to it)."""
    pred_objects = _inside(pred.objects, area)
    corrected_objects = _inside(corrected.objects, area)
    matching = match_objects(pred_objects, corrected_objects, tolerance)
    grid = _grid(name, pred_objects, corrected_objects, downsample, area)
    valid = grid.roi_mask(area)
    pixel_um2 = (grid.downsample * mpp) ** 2
    um2 = mpp * mpp
    names = list(dict.fromkeys([o.class_name for o in pred_objects]
                               + [o.class_name for o in corrected_objects]))
    count = {n: _no_objects() for n in names}
    for p in pred_objects:
        count[p.class_name]["predicted"] += 1
    for c in corrected_objects:
        count[c.class_name]["corrected"] += 1
    for p, _ in matching.kept:
        count[p.class_name]["kept"] += 1
    for p, c in matching.edited:
        count[p.class_name]["edited"] += 1
        count[p.class_name]["reclassified"] += p.class_name != c.class_name
    for p in matching.deleted:
        count[p.class_name]["deleted"] += 1
    for c in matching.added:
        count[c.class_name]["added"] += 1
    classes = []
    for class_name in names:
        p_area = _union([o.geometry for o in pred_objects if o.class_name == class_name], area)
        c_area = _union([o.geometry for o in corrected_objects if o.class_name == class_name],
                        area)
        p_px = _raster(pred_objects, class_name, grid, valid)
        c_px = _raster(corrected_objects, class_name, grid, valid)
        both = int(np.count_nonzero(p_px & c_px))
        raster = (both, int(np.count_nonzero(p_px)) - both, int(np.count_nonzero(c_px)) - both)
        classes.append(ClassEffort(
            name, class_name, raster_um2=(raster[0] * pixel_um2, raster[1] * pixel_um2,
                                          raster[2] * pixel_um2),
            predicted_um2=p_area.area * um2, corrected_um2=c_area.area * um2,
            added_um2=c_area.difference(p_area).area * um2,
            removed_um2=p_area.difference(c_area).area * um2, objects=count[class_name]))
    return ImageEffort(name, pred, corrected, mpp, mpp_source, grid, tolerance, matching,
                       tuple(classes))


def measure_correction(predicted: Any, corrected: Any, mpp: float, roi: BaseGeometry,
                       tolerance: float = 1.0) -> ImageEffort:
    """One ROI's effort from GeoJSON already read (a submission's pre-annotations and
    corrections, full-resolution pixels, `mpp` µm/px), inside `roi`; `InvalidInput` for
    objects that are not GeoJSON."""
    pred = side_of(predicted, Path("pre-annotations"))
    fixed = side_of(corrected, Path("corrections"))
    return measure("ROI", pred, fixed, mpp, "image", None, tolerance, roi)


def _inside(objects: Sequence[ResultObject], area: BaseGeometry | None
            ) -> list[ResultObject]:
    if area is None:
        return list(objects)
    return [o for o in objects if o.geometry.intersection(area).area > 0]


def _union(geometries: Sequence[BaseGeometry], area: BaseGeometry | None) -> BaseGeometry:
    union = shapely.union_all(geometries) if geometries else Polygon()
    return union.intersection(area) if area is not None else union


def _grid(name: str, pred: Sequence[ResultObject], corrected: Sequence[ResultObject],
          downsample: float | None, area: BaseGeometry | None) -> ev.Grid:
    """The grid over both sides' objects (cut to the area's bounds): at `downsample`, or at
    the finest power of two within `AUTO_MAX_PIXELS`."""
    sides = [ev.Annotation(None, features=[(o.geometry, o.class_name) for o in objects])
             for objects in (pred, corrected)]
    if downsample is not None:
        grid = ev.choose_grid(sides[0], sides[1], downsample, area)
        if grid.width * grid.height > MAX_PIXELS:
            raise InvalidInput(f"{name}: a grid of {grid.width}x{grid.height} pixels at "
                               f"--downsample {downsample:g} is too large; pass a coarser "
                               f"--downsample (e.g. {downsample * 4:g})")
        return grid
    scale = 1.0
    grid = ev.choose_grid(sides[0], sides[1], scale, area)
    while grid.width * grid.height > AUTO_MAX_PIXELS:
        scale *= 2
        grid = ev.choose_grid(sides[0], sides[1], scale, area)
    return grid


def _raster(objects: Sequence[ResultObject], class_name: str, grid: ev.Grid,
            valid: np.ndarray | None) -> np.ndarray:
    features = [(o.geometry, class_name) for o in objects if o.class_name == class_name]
    mask = ev.rasterize_geojson(features, grid.shape, (grid.origin_x, grid.origin_y),
                             grid.downsample, {class_name: 1}) > 0
    return mask & valid if valid is not None else mask


# --------------------------------------------------------------------------- files


def pair_files(pred: str | Path, corrected: str | Path
               ) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(name, prediction, correction) pairs by file stem, and warnings naming the files left
    unpaired (folder against folder only; a file against a folder must find its pair)."""
    pred, corrected = Path(pred), Path(corrected)
    preds, corrections = _geojson_files(pred, "PRED"), _geojson_files(corrected, "CORRECTED")
    if pred.is_file() and corrected.is_file():
        return [(corrected.stem, pred, corrected)], []
    if pred.is_file() or corrected.is_file():
        (stem,) = preds if pred.is_file() else corrections
        folder, files = (corrected, corrections) if pred.is_file() else (pred, preds)
        if stem not in files:
            raise InvalidInput(f"{folder} holds no GeoJSON named {stem} (.geojson or .json) "
                               f"to pair with {pred if pred.is_file() else corrected}")
        return [(stem, preds[stem], corrections[stem])], []
    names = sorted(preds.keys() & corrections.keys())
    if not names:
        raise InvalidInput(f"no file name is in both {pred} and {corrected}: predictions and "
                           "corrections are paired by file name (train_1.geojson with "
                           "train_1.geojson)")
    warnings = []
    for files, other, what in ((preds, corrections, f"prediction(s) in {pred} have no "
                                                    f"correction in {corrected}"),
                               (corrections, preds, f"correction(s) in {corrected} have no "
                                                    f"prediction in {pred}")):
        alone = sorted(files.keys() - other.keys())
        if alone:
            warnings.append(f"WARNING: {len(alone)} {what}, left out: {_listed(alone)}")
    return [(n, preds[n], corrections[n]) for n in names], warnings


def _geojson_files(path: Path, what: str) -> dict[str, Path]:
    files = ev.annotation_files(path)
    if path.is_file() and path.suffix.lower() not in ev.GEOJSON_SUFFIXES:
        raise InvalidInput(f"{what} {path} is not QuPath GeoJSON "
                           f"({', '.join(ev.GEOJSON_SUFFIXES)})")
    files = {k: v for k, v in files.items() if v.suffix.lower() in ev.GEOJSON_SUFFIXES}
    if not files:
        raise InvalidInput(f"{what} {path} holds no GeoJSON files "
                           f"({', '.join(ev.GEOJSON_SUFFIXES)})")
    return files


def resolve_pixel_size(pairs: Sequence[tuple[str, Side, Side]], given: float | None
                       ) -> tuple[dict[str, tuple[float, str]], list[str]]:
    """Each pair's µm/px and where it came from: `given` (--mpp), else its files' metadata
    (`PIXEL_SIZE_KEY`), which must agree. InvalidInput naming the pairs that have none; never
    a guess. Warnings where --mpp differs from a file's value by more than 1 %."""
    if given is not None and not (math.isfinite(given) and given > 0):
        raise InvalidInput(f"--mpp must be a positive number of µm per pixel, got {given:g}")
    sizes, missing, warnings = {}, [], []
    for name, pred, corrected in pairs:
        found = sorted(pred.pixel_sizes | corrected.pixel_sizes)
        if given is not None:
            sizes[name] = (given, "--mpp")
            if found and any(abs(v - given) > 0.01 * given for v in found):
                warnings.append(f"WARNING: {name}: --mpp {given:g} overrides the files' "
                                f"pixel size {found[0]:g} µm/px")
        elif not found:
            missing.append(name)
        elif found[-1] - found[0] > 1e-6 * found[-1]:
            raise InvalidInput(f"{name}: PRED and CORRECTED give different pixel sizes "
                               f"({', '.join(f'{v:g}' for v in found)} µm/px): pass --mpp")
        else:
            sizes[name] = (found[0], "file metadata")
    if missing:
        raise InvalidInput(f"no pixel size for {_listed(missing)}: neither file carries "
                           f"{PIXEL_SIZE_KEY} metadata, and areas in µm² need one. Pass --mpp, "
                           "the µm per full-resolution pixel of the image (roiseg never "
                           "guesses it)")
    return sizes, warnings


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Effort:
    """What `effort` measured and wrote; `warnings` head the summary too."""

    images: tuple[ImageEffort, ...]
    #: Per class over all images (image `ALL`), then everything (`ALL`, `ALL`).
    classes: tuple[ClassEffort, ...]
    total: ClassEffort
    summary: str
    #: A few lines for the terminal.
    text: str
    warnings: tuple[str, ...]
    written: tuple[Path, ...]


def effort(options: EffortOptions) -> Effort:
    """Measures every correction against its prediction and writes OUT/effort.csv (a row per
    image and class, each image's `ALL` row, then the per-class and overall totals) and
    OUT/summary.md, atomically. InvalidInput or NotFound for inputs it cannot read."""
    try:
        return _effort(options)
    except OSError as error:
        raise InvalidInput(str(error)) from error


def _effort(options: EffortOptions) -> Effort:
    if options.downsample is not None and not options.downsample > 0:
        raise InvalidInput(f"--downsample must be positive, got {options.downsample:g}")
    if not options.tolerance >= 0:
        raise InvalidInput(f"--tolerance must be 0 or more pixels, got {options.tolerance:g}")
    pairs, warnings = pair_files(options.pred, options.corrected)
    area = ev.evaluation_area(options.roi, options.region)
    sides = [(name, read_side(p, options.roi_classes), read_side(c, options.roi_classes))
             for name, p, c in pairs]
    sizes, size_warnings = resolve_pixel_size(sides, options.mpp)
    warnings += size_warnings
    images = tuple(measure(name, pred, corrected, *sizes[name], options.downsample,
                           options.tolerance, area) for name, pred, corrected in sides)
    warnings += _provenance_warnings(images, options.model_dirs)
    names = list(dict.fromkeys(c.class_name for i in images for c in i.classes))
    classes = tuple(_pool((c for i in images for c in i.classes if c.class_name == n), ALL, n)
                    for n in names)
    total = _pool(classes, ALL, ALL)
    rows = [row for image in images for row in image.rows()]
    common = {"matched_by": _matched_by(images), "mpp": _common(i.mpp for i in images),
              "downsample": _common(i.grid.downsample for i in images)}
    rows += [{**c.row(), **common} for c in (*classes, total)]
    options.out.mkdir(parents=True, exist_ok=True)
    csv_path, summary_path = options.out / "effort.csv", options.out / "summary.md"
    write_atomic(csv_path, ev.csv_text(rows))
    summary = format_summary(images, classes, total, warnings)
    write_atomic(summary_path, summary)
    return Effort(images, classes, total, summary, _short(images, total), tuple(warnings),
                  (csv_path, summary_path))


def _provenance_warnings(images: Sequence[ImageEffort], model_dirs: Sequence[Path]
                         ) -> list[str]:
    """PRED without roiseg objects; CORRECTED's roiseg objects from another run than PRED's;
    images the predicting model was trained on."""
    warnings = []
    for image in images:
        pred, corrected = image.pred, image.corrected
        if pred.objects and not any(o.roiseg for o in pred.objects):
            warnings.append(f"WARNING: {image.name}: PRED {pred.path.name} holds no roiseg "
                            "object (no roiseg.source metadata): is it roiseg's output?")
        if pred.run_ids and corrected.run_ids and not pred.run_ids & corrected.run_ids:
            warnings.append(f"WARNING: {image.name}: CORRECTED was made from roiseg run "
                            f"{_listed(corrected.run_ids)}, PRED is run {_listed(pred.run_ids)}:"
                            " is this the prediction that was corrected?")
    models = {m for image in images for m in image.pred.models}
    trained = {m: training_data.card_trained_on(*m, model_dirs) for m in models}
    used = {i.name: [trained[m] for m in i.pred.models] for i in images}
    # Which images could not be checked is no news here: only the warnings.
    warnings += [w for w in training_data.training_data_warnings(used)
                 if w.startswith("WARNING")]
    return warnings


def _common(values: Iterable[float]) -> float:
    """The value all images share; NaN when they differ."""
    found = set(values)
    return found.pop() if len(found) == 1 else _NAN


def _matched_by(images: Sequence[ImageEffort]) -> str:
    kinds = {i.matching.by for i in images}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _listed(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:_LISTED]) + (", …" if len(names) > _LISTED else "")


def _area(value: float) -> str:
    return f"{value:,.1f}" if math.isfinite(value) else "n/a"


def _mean(values: Iterable[float]) -> float:
    found = list(values)
    return sum(found) / len(found) if found else _NAN


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole > 0 else "n/a"


def _method(images: Sequence[ImageEffort]) -> list[str]:
    """What was measured and how, for the summary's head."""
    sizes = sorted({(i.mpp, i.mpp_source) for i in images})
    size_text = "; ".join(f"{mpp:g} µm/px ({source})" for mpp, source in sizes[:5])
    grids = sorted({i.grid.downsample for i in images})
    lines = [f"{len(images)} image(s); pixel size {size_text}. Pixel Dice and IoU per class "
             "(a class's objects united, a pixel counts when its centre is inside) on a grid of "
             f"{'/'.join(f'{d:g}' for d in grids)} full-resolution px per pixel; areas added "
             "(corrected minus predicted) and removed (predicted minus corrected) from the "
             "polygons.",
             "Objects kept, edited (class changed, or outline moved by more than "
             f"{'/'.join(f'{t:g}' for t in sorted({i.tolerance for i in images}))} "
             "full-resolution px, Hausdorff distance), deleted and added: kept, edited and "
             "deleted ones count under their predicted class, added ones under their corrected "
             "class."]
    by_id = [i.name for i in images if i.matching.by == "id"]
    by_geometry = [i for i in images if i.matching.by == "geometry"]
    if by_id:
        lines.append(f"Objects matched by Feature id in {len(by_id)} image(s).")
    if by_geometry:
        listed = "; ".join(f"{i.name}: {i.matching.reason}" for i in by_geometry[:_LISTED])
        lines.append(f"**Objects matched by geometry** (IoU > {MATCH_IOU:g} with the same "
                     f"class; a reclassified object counts as deleted and added) in "
                     f"{len(by_geometry)} image(s), for want of Feature ids: {listed}"
                     f"{'; …' if len(by_geometry) > _LISTED else ''}.")
    left_out = [line for line in map(_left_out, images) if line]
    lines += left_out[:_LISTED]
    if len(left_out) > _LISTED:
        lines.append(f"… and in {len(left_out) - _LISTED} more image(s).")
    models = sorted({f"{m}@{v}" for i in images for m, v in i.pred.models})
    if models:
        lines.append(f"Predictions by {', '.join(models)}.")
    return [f"- {line}" for line in lines]


def _left_out(image: ImageEffort) -> str:
    """What of an image's files is not a result, as the summary says it; "" when nothing."""
    left = [f"ROI {r}" for side in (image.pred, image.corrected) for r in side.rois]
    unclassified = image.pred.unclassified + image.corrected.unclassified
    without_area = image.pred.without_area + image.corrected.without_area
    if unclassified:
        left.append(f"{unclassified} unclassified object(s)")
    if without_area:
        left.append(f"{without_area} classified point/line object(s)")
    return f"{image.name}: left out {', '.join(left)}." if left else ""


def format_summary(images: Sequence[ImageEffort], classes: Sequence[ClassEffort],
                   total: ClassEffort, warnings: Sequence[str] = ()) -> str:
    """The Markdown summary: how it was measured, effort per image (mean) and in total, and per
    class."""
    lines = ["# roiseg effort: corrections to the pre-annotations", ""]
    lines += [f"**{w}**" for w in warnings] + [""] * bool(warnings)
    lines += [*_method(images), ""]
    per_image = [i.total for i in images]
    areas = {"predicted_um2": "predicted area µm²", "added_um2": "area added µm²",
             "removed_um2": "area removed µm²", "corrected_um2": "corrected area µm²"}
    lines += ["## Effort", "",
              f"{_percent(total.objects['kept'], total.objects['predicted'])} of the predicted "
              "objects kept "
              f"unchanged; area added plus removed = "
              f"{_percent(total.added_um2 + total.removed_um2, total.predicted_um2)} of the "
              "predicted area.", "",
              "| | mean per image | total |", "|---|---|---|"]
    for key, label in OBJECT_COUNTS.items():
        mean = _mean(t.objects[key] for t in per_image)
        lines.append(f"| {label} | {mean:.2f} | {total.objects[key]} |")
    for key, label in areas.items():
        mean = _mean(getattr(t, key) for t in per_image)
        lines.append(f"| {label} | {_area(mean)} | {_area(getattr(total, key))} |")
    lines += ["", "## Per class", "",
              "Dice and IoU: mean over the images holding the class (95 % CI: bootstrap "
              "percentile interval of the mean) and pooled over all pixels; areas and objects: "
              "totals.", "",
              "| class | images | Dice mean | Dice 95 % CI | IoU mean | Dice pooled | "
              "IoU pooled | area added µm² | area removed µm² | kept | edited | reclassified | "
              "deleted | added |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in (*classes, total):
        own = [e for i in images for e in (*i.classes, i.total) if e.class_name == c.class_name]
        dice, low, high = ev.mean_ci(e.dice for e in own)
        iou = ev.mean_ci(e.iou for e in own)[0]
        name = "all classes" if c.class_name == ALL else c.class_name
        cells = [name, str(len(own)), ev.fmt(dice), ev.fmt_ci(low, high), ev.fmt(iou),
                 ev.fmt(c.dice), ev.fmt(c.iou), _area(c.added_um2), _area(c.removed_um2),
                 *(str(c.objects[k]) for k in ("kept", "edited", "reclassified", "deleted",
                                               "added"))]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _short(images: Sequence[ImageEffort], total: ClassEffort) -> str:
    """A few lines for the terminal."""
    by = _matched_by(images)
    matched = {"id": "by Feature id", "geometry": "by geometry (no usable Feature ids)",
               "mixed": "by Feature id or, where there are none, by geometry"}[by]
    return "\n".join([
        f"roiseg effort: {len(images)} image(s), objects matched {matched}",
        "  objects: {predicted} predicted: {kept} kept, {edited} edited ({reclassified} "
        "reclassified), {deleted} deleted; {added} added".format(**total.objects),
        f"  area: {_area(total.added_um2)} µm² added, {_area(total.removed_um2)} µm² removed "
        f"(predicted {_area(total.predicted_um2)} µm²)",
        f"  pixel Dice {ev.fmt(total.dice)}, IoU {ev.fmt(total.iou)} (all classes, pooled)"])
