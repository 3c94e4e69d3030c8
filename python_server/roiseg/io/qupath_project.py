"""QuPath objects for `roiseg batch`: which annotations are ROIs, which objects roiseg may
replace, and the thin layer over paquo that reads and writes a QuPath project.

The selection and replacement rules work on plain GeoJSON-like dicts and shapely
geometries, so folder mode (GeoJSON files beside images) and project mode share them and
they are tested without QuPath. `Project` is the only code that touches paquo; paquo is
imported when a project is opened, so roiseg works without paquo or QuPath installed.

paquo (`pip install paquo`) needs an installed QuPath (found through `PAQUO_QUPATH_DIR`, a
`.paquo.toml` or its search directories); importing it starts QuPath's JVM headless.
QuPath >= 0.5 is needed for object metadata, which is how roiseg recognises its own
objects when it replaces them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from roiseg.io import qupath_geojson
from roiseg.io.qupath_geojson import MODEL_ID_KEY, is_roiseg_object, polygonal

log = logging.getLogger(__name__)

#: Metadata key on every object `roiseg batch` writes: the key of the ROI it came from.
ROI_KEY = "roiseg.roi"
#: Metadata key `roiseg batch` sets on a ROI it segmented: "model@version, ...".
ROI_MODELS_KEY = "roiseg.batch.models"
#: Metadata key `roiseg batch` sets on a ROI it segmented: when (ISO 8601, UTC).
ROI_TIME_KEY = "roiseg.batch.time"

PAQUO_HINT = ("opening a QuPath project needs paquo and an installed QuPath: "
              "pip install paquo (or roiseg[qupath]), and set PAQUO_QUPATH_DIR to the QuPath "
              "installation directory; or use --images DIR --out DIR, which needs no QuPath")


class QuPathUnavailable(RuntimeError):
    """paquo or QuPath is missing; the message says what to install."""


# --------------------------------------------------------------------------- pure rules


@dataclass
class Annotation:
    """An annotation as plain data: GeoJSON-like properties, polygonal geometry, level in
    the hierarchy (1 = top level, directly below the root) and an optional id (QuPath's
    UUID). `handle` is the paquo object in project mode, None otherwise."""

    properties: dict[str, Any]
    geometry: BaseGeometry
    level: int = 1
    id: str | None = None
    handle: Any = field(default=None, repr=False, compare=False)
    #: A key to use instead of `roi_key` (the whole-image ROI of folder mode).
    fixed_key: str | None = None

    @property
    def class_name(self) -> str:
        return qupath_geojson.class_name(self.properties) or ""

    @property
    def name(self) -> str:
        return str(self.properties.get("name") or "")

    @cached_property
    def key(self) -> str:
        """The ROI's key in the journal and in its objects' metadata (`ROI_KEY`)."""
        return self.fixed_key or roi_key(self.geometry, self.id)


def select_rois(annotations: Iterable[Annotation],
                roi_classes: Sequence[str] = ()) -> list[Annotation]:
    """The annotations to segment, in order.

    Never roiseg's own objects, never annotations without area (points, lines). With
    `roi_classes`, the annotations of those classes at any level; without, the top-level
    annotations (level 1).
    """
    wanted = set(roi_classes)
    chosen = []
    for annotation in annotations:
        if is_roiseg_object(annotation.properties):
            continue
        if polygonal(annotation.geometry).is_empty:
            continue
        if wanted:
            if annotation.class_name not in wanted:
                continue
        elif annotation.level != 1:
            continue
        chosen.append(annotation)
    return chosen


def roi_key(geometry: BaseGeometry, object_id: str | None = None) -> str:
    """A stable key of a ROI: its id (when it has one) and a hash of its geometry rounded
    to 0.01 px, so that an edited ROI counts as a new one."""
    rounded = shapely.normalize(shapely.transform(geometry, lambda c: np.round(c, 2)))
    digest = hashlib.sha1(shapely.to_wkb(rounded, hex=False, output_dimension=2)).hexdigest()[:12]
    return f"{object_id}:{digest}" if object_id else f"geom:{digest}"


def replaceable(properties: Mapping[str, Any], model_ids: Iterable[str]) -> bool:
    """Whether an object with these properties is roiseg's and comes from one of
    `model_ids` (or names no model), i.e. a re-run of those models replaces it."""
    if not is_roiseg_object(properties):
        return False
    model = (properties.get("metadata") or {}).get(MODEL_ID_KEY)
    return not model or model in set(model_ids)


def merge_features(existing: Sequence[Mapping[str, Any]], redone: Mapping[str, Iterable[str]],
                   new: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Folder mode's per-image GeoJSON after a run: the existing features minus roiseg's
    features of the (ROI key -> model ids) that were redone, plus the new features.
    Features that are not roiseg's are always kept."""
    redone = {key: set(models) for key, models in redone.items()}
    kept = []
    for feature in existing:
        properties = feature.get("properties") or {}
        key = (properties.get("metadata") or {}).get(ROI_KEY)
        if key in redone and replaceable(properties, redone[key]):
            continue
        kept.append(dict(feature))
    return kept + [dict(f) for f in new]


def tag_features(features: Iterable[Mapping[str, Any]], roi: Annotation) -> list[dict]:
    """Copies of roiseg's features with the ROI's key in their metadata."""
    tagged = []
    for feature in features:
        feature = json.loads(json.dumps(feature))
        properties = feature.setdefault("properties", {})
        properties.setdefault("metadata", {})[ROI_KEY] = roi.key
        tagged.append(feature)
    return tagged


def read_geojson_annotations(path: str | Path) -> list[Annotation]:
    """The annotations of a QuPath GeoJSON file, top-level objects at level 1 and their
    `childObjects` below."""
    annotations = []
    for feature, level in qupath_geojson.objects(qupath_geojson.load(path, "ROI file")):
        if not feature.get("geometry"):
            continue
        properties = dict(feature.get("properties") or {})
        object_id = feature.get("id") or properties.get("id")
        annotations.append(Annotation(properties, polygonal(shape(feature["geometry"])), level,
                                      str(object_id) if object_id else None))
    return annotations


# --------------------------------------------------------------------------- paquo


def load_paquo():
    """The paquo classes roiseg uses, with QuPath's JVM started and able to open the slides
    QuPath's GUI opens through OpenSlide; QuPathUnavailable when paquo or QuPath is missing."""
    try:
        from paquo.classes import QuPathPathClass
        from paquo.images import ImageProvider
        from paquo.pathobjects import QuPathPathAnnotationObject
        from paquo.projects import QuPathProject
    except ImportError as error:
        raise QuPathUnavailable(f"{PAQUO_HINT} ({error})") from error
    except Exception as error:  # noqa: BLE001 - paquo raises several kinds when QuPath is absent
        raise QuPathUnavailable(f"{PAQUO_HINT} (paquo could not start QuPath: {error})") from error
    _load_openslide()
    return QuPathProject, QuPathPathClass, QuPathPathAnnotationObject, ImageProvider


def _load_openslide() -> None:
    """Loads OpenSlide into headless QuPath as its GUI does.

    QuPath loads OpenSlide's native library when its GUI installs the OpenSlide extension;
    headless, as under paquo, QuPath 0.5 then cannot open SVS, NDPI or MRXS files that its GUI
    opens (and that the project lists). roiseg calls that extension's loader the same way: the
    directory set in QuPath's preferences (Preferences > OpenSlide), else the library QuPath
    ships or the system's (Debian: libopenslide0). A QuPath without the extension, or whose
    OpenSlide cannot load, is left as it is: its other readers still open what they can."""
    from jpype import JClass

    try:
        loader = JClass("qupath.lib.images.servers.openslide.jna.OpenSlideLoader")
        if loader.isOpenSlideAvailable():
            return
        directory = JClass("qupath.lib.gui.prefs.PathPrefs").createPersistentPreference(
            "openslide.path", "").get()
        if loader.tryToLoadQuietly(str(directory or "")):
            log.info("OpenSlide %s loaded into QuPath", loader.getLibraryVersion())
        else:
            log.warning("QuPath's OpenSlide library could not be loaded: slides only OpenSlide "
                        "reads (SVS, NDPI, MRXS) will not open; set its folder in QuPath's "
                        "Preferences > OpenSlide, or install OpenSlide (Debian: libopenslide0)")
    except Exception:  # noqa: BLE001 - a QuPath without the OpenSlide extension
        log.debug("QuPath has no OpenSlide extension", exc_info=True)


@dataclass
class ProjectImage:
    """An image entry: its name, QuPath's entry id, the local file (None when its URI is not
    a reachable file), the paquo entry and its URI as QuPath gives it (the image's identity
    that QuPath's extension sends with corrections)."""

    name: str
    id: str
    path: Path | None
    handle: Any = field(repr=False)
    uri: str = ""


class Project:
    """A QuPath project opened read-write through paquo (call `close` when done; it does
    not save unsaved images: `save_image` saves each one explicitly)."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        (self._QuPathProject, self._QuPathPathClass, self._Annotation,
         self._ImageProvider) = load_paquo()
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"QuPath project {path} does not exist")
        self.path = path if path.suffix == ".qpproj" else path / "project.qpproj"
        try:
            self._project = self._QuPathProject(self.path, mode="r" if readonly else "r+")
        except Exception as error:  # noqa: BLE001 - Java exceptions from a broken project
            raise ValueError(f"cannot open QuPath project {self.path}: {error}") from error

    @property
    def directory(self) -> Path:
        return self.path.parent

    def close(self) -> None:
        """Drops the project without saving (images are saved one by one)."""
        self._project = None

    def images(self) -> list[ProjectImage]:
        images = []
        for entry in self._project.images:
            try:
                uri_path = Path(self._ImageProvider.path_from_uri(entry.uri))
                local = uri_path if uri_path.is_file() else None
            except Exception:  # noqa: BLE001 - non-file URIs (servers, OMERO)
                local = None
            images.append(ProjectImage(entry.image_name, str(entry.entry_id), local, entry,
                                       str(entry.uri)))
        return images

    def pixel_size_um(self, image: ProjectImage) -> float | None:
        """QuPath's averaged full-resolution pixel size, if calibrated."""
        try:
            calibration = image.handle._image_data.getServer().getPixelCalibration()
            if calibration.hasPixelSizeMicrons():
                value = float(calibration.getAveragedPixelSizeMicrons())
                return value if value > 0 and np.isfinite(value) else None
        except Exception:  # noqa: BLE001 - a server QuPath cannot open, old QuPath
            log.debug("no pixel calibration for %s", image.name, exc_info=True)
        return None

    def annotations(self, image: ProjectImage,
                    roi_classes: Sequence[str] | None = None) -> list[Annotation]:
        """The image's annotations with their level and properties. With `roi_classes`
        (None: all annotations) only those that `select_rois` could choose: of these
        classes, or at the top level when the sequence is empty; this skips converting
        the geometry of every other object (roiseg's children, say)."""
        wanted = None if roi_classes is None else set(roi_classes)
        chosen = []
        for obj in image.handle.hierarchy.annotations:
            if wanted is not None:
                if wanted:
                    path_class = obj.path_class
                    if path_class is None or path_class.name not in wanted:
                        continue
                elif obj.level != 1:
                    continue
            chosen.append(self._annotation(obj))
        return chosen

    def children(self, annotation: Annotation) -> list[Annotation]:
        java = annotation.handle.java_object
        return [self._annotation(self._Annotation(child)) for child in java.getChildObjects()]

    def replace_children(self, image: ProjectImage, roi: Annotation,
                         features: Sequence[Mapping[str, Any]], model_ids: Iterable[str]) -> int:
        """Removes roiseg's children of `roi` made by `model_ids` and adds `features` (QuPath
        GeoJSON) as its children; returns how many were removed. The image still needs
        `save_image`."""
        hierarchy = image.handle.hierarchy
        model_ids = set(model_ids)
        old = [child.handle for child in self.children(roi)
               if replaceable(child.properties, model_ids)]
        if old:
            hierarchy.java_object.removeObjects([o.java_object for o in old], True)
        new = []
        for feature in features:
            obj = self._Annotation.from_geojson(dict(feature))
            _put_metadata(obj.java_object, (feature.get("properties") or {}).get("metadata") or {})
            new.append(obj.java_object)
        parent = roi.handle.java_object
        if new:
            if hasattr(parent, "addChildObjects"):
                parent.addChildObjects(new)
            else:  # QuPath < 0.4
                parent.addPathObjects(new)
        hierarchy.flush(invalidate_proxy_cache=True)
        return len(old)

    def set_metadata(self, annotation: Annotation, values: Mapping[str, str]) -> None:
        _put_metadata(annotation.handle.java_object, values)

    def add_classes(self, classes: Mapping[str, Sequence[int]]) -> None:
        """Adds the classes (name -> RGB) the project does not list yet."""
        existing = list(self._project.path_classes)
        names = {pc.name for pc in existing}
        added = [self._QuPathPathClass(name, color=tuple(int(c) for c in color))
                 for name, color in classes.items() if name not in names]
        if added:
            self._project.path_classes = existing + added

    def save_image(self, image: ProjectImage) -> None:
        """Saves the image's data. paquo's own `save` skips an image whose file it cannot
        reach with only a log warning; this raises OSError instead."""
        entry = image.handle
        if not entry.is_readable():
            raise OSError(f"QuPath cannot reach the image file of {image.name} ({entry.uri}), "
                          "so paquo would not save it: fix the project's image paths")
        entry.save()

    def release(self, image: ProjectImage) -> None:
        """Forgets the image's loaded data (after saving), so a long batch does not keep
        every image's hierarchy in memory."""
        for name in ("_image_data", "hierarchy", "_image_server", "_properties"):
            image.handle.__dict__.pop(name, None)

    def save(self) -> None:
        """Writes the project file (classes, entries) without touching the images."""
        self._project.save(images=False)

    def _annotation(self, obj: Any) -> Annotation:
        java = obj.java_object
        object_id = str(java.getID()) if hasattr(java, "getID") else None
        path_class = obj.path_class
        properties: dict[str, Any] = {"metadata": _get_metadata(java)}
        if path_class is not None:
            properties["classification"] = {"name": path_class.name}
        if obj.name:
            properties["name"] = obj.name
        return Annotation(properties, polygonal(obj.roi), int(obj.level), object_id, obj)


def _get_metadata(java: Any) -> dict[str, str]:
    """An object's metadata (QuPath >= 0.5; older QuPaths keep none on annotations)."""
    if not hasattr(java, "getMetadata"):
        return {}
    metadata = java.getMetadata()
    return {str(k): str(metadata.get(k)) for k in metadata.keySet()}


def _put_metadata(java: Any, values: Mapping[str, str]) -> None:
    if not hasattr(java, "getMetadata"):
        raise QuPathUnavailable("this QuPath keeps no metadata on objects, so roiseg could not "
                                "recognise its objects later: use QuPath 0.5 or newer")
    metadata = java.getMetadata()
    for key, value in values.items():
        metadata.put(str(key), str(value))
