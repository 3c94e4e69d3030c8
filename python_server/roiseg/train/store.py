"""The fast-track dataset: corrected ROIs kept as training examples, one directory per model.

A pathologist corrects a ROI's pre-annotations in QuPath and submits them; the server keeps
the ROI's pixels at the model's resolution and the corrected annotations in the same pixel
frame, as files that `roiseg train` reads as they are (docs/fast-track.md)::

    ROOT/MODEL_ID/images/EXAMPLE.png             the ROI's bounding box at the model's µm/px
    ROOT/MODEL_ID/annotations/EXAMPLE.geojson    its classified annotations, clipped to the
                                                 ROI, in the PNG's pixel coordinates
    ROOT/MODEL_ID/records/EXAMPLE.json           what was submitted, when, and by which model
    ROOT/MODEL_ID/models/VERSION/                versions fine-tuned on the examples

    roiseg train --images ROOT/MODEL_ID/images --annotations ROOT/MODEL_ID/annotations \\
        --source-mpp MPP --init-model MODEL_ID

An example is one (image, ROI): its id is a digest of the image's identity and the ROI's key,
so submitting the same ROI again replaces it. Every file is written atomically, the record
last: an example exists once its record does (and is removed record first). One process
writes a store; its threads take the model's lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import shapely
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from roiseg import __version__
from roiseg.engine.models import ModelCard, split_model_id
from roiseg.errors import InvalidInput, NotFound, TooLarge, echo
from roiseg.io import qupath_geojson
from roiseg.io.classes import BACKGROUND_CLASS
from roiseg.io.files import write_atomic
from roiseg.io.raster import RasterTransform
from roiseg.train.data import parse_annotations

log = logging.getLogger(__name__)

IMAGES, ANNOTATIONS, RECORDS, MODELS = "images", "annotations", "records", "models"
#: Most annotations, and vertices in all, one submission may hold.
MAX_ANNOTATIONS = 100_000
MAX_VERTICES = 2_000_000
#: Self-crossing annotations are repaired in the request up to this many vertices (about a
#: second at worst); larger ones are refused.
MAX_REPAIR_VERTICES = 500
#: Hex digits of an example id.
_ID_DIGITS = 20


@dataclass(frozen=True)
class RoiImage:
    """A ROI's pixels at a model's resolution: `image` (RGB uint8) covers the ROI's bounding
    box, `transform` maps its pixels to full-resolution image pixels, `roi` is the ROI (full
    resolution, clipped to the image), `source_mpp` the image's full-resolution µm/px."""

    image: np.ndarray
    transform: RasterTransform
    roi: BaseGeometry
    source_mpp: float


def example_id(image_id: str, roi_key: str) -> str:
    """The id of the example of ROI `roi_key` in image `image_id`."""
    digest = hashlib.sha256(f"{image_id}\n{roi_key}".encode("utf-8")).hexdigest()
    return digest[:_ID_DIGITS]


def roi_key_of(roi: BaseGeometry) -> str:
    """A ROI's key when the client gives none: a digest of its outline (to 1/100 pixel)."""
    normal = shapely.normalize(shapely.set_precision(roi, 0.01))
    return "outline:" + hashlib.sha256(shapely.to_wkb(normal)).hexdigest()[:16]


def check_example_id(text: str) -> str:
    """`text` if it can be an example id (InvalidInput otherwise): ids name files."""
    if len(text) != _ID_DIGITS or any(c not in "0123456789abcdef" for c in text):
        raise InvalidInput(f"{echo(text)} is not an example id ({_ID_DIGITS} hexadecimal "
                           "digits, as SubmitCorrections and ListExamples give them)")
    return text


@dataclass
class Labels:
    """Corrected annotations of one ROI: (class, polygon clipped to the ROI) in file order,
    and the features left out by reason."""

    annotations: list[tuple[str, BaseGeometry]]
    skipped: dict[str, int]
    #: Classified objects that roiseg predicted ("roiseg") and that the user drew ("added").
    provenance: dict[str, int]
    #: `id@version` of the model whose pre-annotations were corrected, from their metadata.
    predicted_by: str
    #: The corrections as parsed (for measuring them against the predictions).
    geojson: Any = None
    #: The catch-all class the rest of the ROI was labelled with (no correction was of it).
    rest_of_roi: str | None = None


def parse_corrections(text: str, card: ModelCard, roi: BaseGeometry,
                      class_names: Mapping[str, str] | None = None) -> Labels:
    """The classified polygons of QuPath GeoJSON `text`, clipped to `roi`; names that
    `class_names` (model class -> name, as Segment was given them) gave are read back as the
    model's classes.

    When the model has a catch-all class (`ClassSpec.catch_all`: the rest of the tissue, left
    out of Segment's results by default) and the corrections hold none of it, the rest of the
    ROI is that class: what no correction covers is labelled so (`Labels.rest_of_roi` names
    it). Otherwise what no correction covers stays unlabelled (ignored in training).

    Unclassified objects, points, lines and roiseg's own "Background" objects are left out;
    so are polygons outside the ROI.

    Raises:
        InvalidInput: not GeoJSON features, an invalid geometry, classes the model lacks (named),
            or no classified polygon inside the ROI.
        TooLarge: more than `MAX_ANNOTATIONS` annotations or `MAX_VERTICES` vertices.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InvalidInput(f"the corrections are not JSON: {str(error)[:200]}") from None
    annotations, skipped = parse_annotations(data, "the corrections", MAX_REPAIR_VERTICES)
    back = _model_names(class_names or {})
    annotations = [replace(a, name=back.get(a.name, a.name)) for a in annotations]
    if len(annotations) > MAX_ANNOTATIONS:
        raise TooLarge(f"the corrections hold {len(annotations)} annotations; at most "
                       f"{MAX_ANNOTATIONS} are accepted per ROI")
    vertices = sum(int(shapely.get_num_coordinates(a.geometry)) for a in annotations)
    if vertices > MAX_VERTICES:
        raise TooLarge(f"the corrections have {vertices} vertices; at most {MAX_VERTICES}: "
                       "simplify them (QuPath: Objects > Annotations > Simplify shape)")
    skipped = Counter(skipped)
    names = {spec.name for spec in card.classes}
    if BACKGROUND_CLASS not in names:
        skipped[BACKGROUND_CLASS] = sum(a.name == BACKGROUND_CLASS for a in annotations)
        annotations = [a for a in annotations if a.name != BACKGROUND_CLASS]
    unknown = sorted({a.name for a in annotations} - names)
    if unknown:
        raise InvalidInput(
            f"the corrections use class(es) that model {card.id!r} does not have: "
            + ", ".join(echo(n, 64) for n in unknown[:20])
            + f"; its classes: {', '.join(spec.name for spec in card.classes)} (rename them in "
            "QuPath; adding classes to a model is not supported)")
    kept: list[tuple[str, BaseGeometry]] = []
    for annotation in annotations:
        inside = qupath_geojson.polygonal(annotation.geometry.intersection(roi))
        if inside.is_empty:
            skipped["outside the ROI"] += 1
        else:
            kept.append((annotation.name, inside))
    if not kept:
        raise InvalidInput("the corrections hold no classified polygon inside the ROI: classify "
                           "the annotations with the model's classes ("
                           + ", ".join(spec.name for spec in card.classes) + ")")
    rest_of_roi = _rest_of_roi(card, kept, roi)
    if rest_of_roi is not None:
        kept.insert(0, rest_of_roi)
    provenance, predicted_by = _provenance(data)
    return Labels(kept, {reason: n for reason, n in sorted(skipped.items()) if n}, provenance,
                  predicted_by, data, rest_of_roi[0] if rest_of_roi else None)


def _rest_of_roi(card: ModelCard, kept: list[tuple[str, BaseGeometry]],
                 roi: BaseGeometry) -> tuple[str, BaseGeometry] | None:
    """The ROI less the corrections, as the model's (first) catch-all class, when it has one
    and no correction is of it; None otherwise or when the corrections cover the ROI."""
    catch_all = [spec.name for spec in card.classes if spec.catch_all]
    if not catch_all or any(name in catch_all for name, _ in kept):
        return None
    rest = qupath_geojson.polygonal(
        roi.difference(shapely.union_all([geometry for _, geometry in kept])))
    return None if rest.is_empty else (catch_all[0], rest)


def _model_names(class_names: Mapping[str, str]) -> dict[str, str]:
    """Given name -> model class; InvalidInput when two classes were given one name."""
    back: dict[str, str] = {}
    for model_class, name in class_names.items():
        name = name.strip()
        if back.get(name, model_class) != model_class:
            raise InvalidInput(f"class_names gives {back[name]!r} and {model_class!r} the same "
                               f"name {name!r}: corrections in it cannot be told apart")
        back[name] = model_class
    return back


def _provenance(data: Any) -> tuple[dict[str, int], str]:
    """How many classified objects roiseg made and the user added, and the model that made
    the first of roiseg's (`id@version`; empty without any)."""
    counts = {"roiseg": 0, "added": 0}
    predicted_by = ""
    for feature, _ in qupath_geojson.objects(data, children=False):
        properties = feature.get("properties")
        if qupath_geojson.class_name(properties) is None:
            continue
        metadata = properties.get("metadata") if isinstance(properties, Mapping) else None
        if isinstance(metadata, Mapping) and qupath_geojson.is_roiseg_object(
                {"metadata": metadata}):
            counts["roiseg"] += 1
            model = metadata.get(qupath_geojson.MODEL_ID_KEY)
            version = metadata.get(qupath_geojson.MODEL_VERSION_KEY)
            if not predicted_by and isinstance(model, str) and isinstance(version, str):
                predicted_by = f"{model}@{version}"[:256]
        else:
            counts["added"] += 1
    return counts, predicted_by


class ExampleStore:
    """The examples of every model under `root` (see the module's description)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}

    def model_dir(self, model_id: str) -> Path:
        """The directory of a model's examples (a model id without a version)."""
        return self.root / model_id

    def lock(self, model_id: str) -> threading.RLock:
        """The lock a model's examples are written and copied under."""
        with self._guard:
            return self._locks.setdefault(model_id, threading.RLock())

    def put(self, card: ModelCard, pixels: RoiImage, labels: Labels, *, image_id: str,
            roi_key: str, predicted_by: str, source: dict[str, Any],
            effort: dict[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
        """Stores (or replaces) the example of (`image_id`, `roi_key`) for `card`'s model,
        with the correction `effort` measured on it; returns its record and whether it
        replaced one."""
        identity = example_id(image_id, roi_key)
        t = pixels.transform
        height, width = pixels.image.shape[:2]
        mpp_x, mpp_y = t.scale_x * pixels.source_mpp, t.scale_y * pixels.source_mpp
        colors = {spec.name: spec.color for spec in card.classes}
        features = []
        classes: dict[str, dict[str, float]] = {}
        for name, geometry in labels.annotations:
            features.append({"type": "Feature", "geometry": mapping(t.geometry_to_raster(geometry)),
                             "properties": {"objectType": "annotation",
                                            "classification": qupath_geojson.classification(
                                                name, colors[name])}})
            counts = classes.setdefault(name, {"annotations": 0, "area_um2": 0.0})
            counts["annotations"] += 1
            counts["area_um2"] += geometry.area * pixels.source_mpp ** 2
        record = {
            "example_id": identity, "model_id": split_model_id(card.id)[0],
            "image_id": image_id, "roi_key": roi_key,
            "predicted_by": predicted_by or labels.predicted_by,
            "submitted_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "source": source, "roi": mapping(pixels.roi),
            "region": {"x": t.origin_x, "y": t.origin_y, "width": width * t.scale_x,
                       "height": height * t.scale_y},
            "raster": {"width": width, "height": height, "origin_x": t.origin_x,
                       "origin_y": t.origin_y, "scale_x": t.scale_x, "scale_y": t.scale_y},
            "mpp": card.mpp, "mpp_used": (mpp_x + mpp_y) / 2, "source_mpp": pixels.source_mpp,
            "classes": classes, "skipped": labels.skipped, "rest_of_roi": labels.rest_of_roi,
            "annotations_from": labels.provenance, "effort": effort,
            "files": {"image": f"{IMAGES}/{identity}.png",
                      "annotations": f"{ANNOTATIONS}/{identity}.geojson"},
            "roiseg_version": __version__,
        }
        ok, png = cv2.imencode(".png", np.ascontiguousarray(pixels.image[..., ::-1]))
        if not ok:
            raise InvalidInput("the ROI's pixels could not be encoded as PNG")
        directory = self.model_dir(record["model_id"])
        with self.lock(record["model_id"]):
            replaced = (directory / RECORDS / f"{identity}.json").is_file()
            write_atomic(directory / record["files"]["image"], png.tobytes())
            write_atomic(directory / record["files"]["annotations"],
                   json.dumps(qupath_geojson.feature_collection(features)))
            write_atomic(directory / RECORDS / f"{identity}.json",
                   json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        log.info("model %s: example %s %s (%s, ROI %s)", record["model_id"], identity,
                 "replaced" if replaced else "stored", image_id, roi_key)
        return record, replaced

    def examples(self, model_id: str) -> list[dict[str, Any]]:
        """The records of a model's examples, oldest first (unreadable ones are logged and
        left out)."""
        records = []
        for path in sorted((self.model_dir(model_id) / RECORDS).glob("*.json")):
            try:
                records.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as error:
                log.warning("%s: unreadable example record left out: %s", path, error)
        return sorted(records, key=lambda r: (r.get("submitted_at", ""), r.get("example_id", "")))

    def remove(self, model_id: str, identity: str) -> dict[str, Any]:
        """Removes an example; returns its record.

        Raises:
            NotFound: the model has no such example.
        """
        directory = self.model_dir(model_id)
        record_path = directory / RECORDS / f"{check_example_id(identity)}.json"
        with self.lock(model_id):
            try:
                record = json.loads(record_path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise NotFound(f"model {model_id!r} has no example {identity!r}") from None
            record_path.unlink()
            for name in (f"{IMAGES}/{identity}.png", f"{ANNOTATIONS}/{identity}.geojson"):
                (directory / name).unlink(missing_ok=True)
        log.info("model %s: example %s removed", model_id, identity)
        return record

    def copy_examples(self, model_id: str, identities: Sequence[str],
                      destination: Path) -> list[dict[str, Any]]:
        """Copies a model's examples (`identities`, or all when empty) into
        `destination`/images and /annotations, consistently (under the model's lock); returns
        their records.

        Raises:
            NotFound: an unknown example id (named), or no examples at all.
        """
        directory = self.model_dir(model_id)
        with self.lock(model_id):
            records = self.examples(model_id)
            if identities:
                wanted = {check_example_id(i) for i in identities}
                missing = sorted(wanted - {r["example_id"] for r in records})
                if missing:
                    raise NotFound(f"model {model_id!r} has no example(s) "
                                   + ", ".join(missing[:10]))
                records = [r for r in records if r["example_id"] in wanted]
            if not records:
                raise NotFound(f"model {model_id!r} has no stored examples: submit corrected "
                               "ROIs first (SubmitCorrections, roiseg submit)")
            for record in records:
                for kind in ("image", "annotations"):
                    target = destination / record["files"][kind]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(directory / record["files"][kind], target)
        return records
