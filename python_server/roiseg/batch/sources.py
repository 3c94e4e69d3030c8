"""Where `roiseg batch` finds its images and ROIs and puts its results: a folder of images
(`FolderSource`) or a QuPath project (`ProjectSource`)."""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import shapely
from shapely.geometry import box

from roiseg.batch.journal import utc_now
from roiseg.batch.options import BatchOptions
from roiseg.batch.outputs import (
    BATCH_FOLDER_JOURNAL,
    BATCH_FOLDER_SUMMARY,
    BATCH_PROJECT_JOURNAL,
    BATCH_PROJECT_SUMMARY,
)
from roiseg.client.requests import OVERLAY_SIDE, overlay_view, pixel_size
from roiseg.errors import InvalidInput, NotFound, RoisegError
from roiseg.io import overlay
from roiseg.io.files import write_atomic
from roiseg.io.qupath_geojson import MODEL_ID_KEY, feature_collection
from roiseg.io.qupath_project import (
    ROI_MODELS_KEY,
    ROI_TIME_KEY,
    Annotation,
    Project,
    QuPathUnavailable,
    merge_features,
    read_geojson_annotations,
    select_rois,
    tag_features,
)
from roiseg.io.slides import Slide
from roiseg.train.data import image_stem
from roiseg.v1 import segmentation_pb2 as pb

log = logging.getLogger("roiseg.batch")

#: Files folder mode reads as images (".ome.tif(f)" included).
IMAGE_SUFFIXES = (".svs", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: Folder mode's overlay beside NAME.geojson (not NAME.png, so that `roiseg evaluate`
#: pairs the output folder with reference masks by name).
OVERLAY_SUFFIX = ".overlay.png"
#: ROI key of the whole-image ROI (folder mode, no GeoJSON beside the image).
WHOLE_IMAGE_KEY = "image"


@dataclass
class ImagePlan:
    """An image to process: journal id, display name, file, calibration and ROIs, or the
    error that makes it unusable."""

    id: str
    name: str
    path: Path | None
    stem: str = ""
    mpp: float = 0.0
    width: int = 0
    height: int = 0
    rois: list[Annotation] = field(default_factory=list)
    error: str = ""

    @property
    def file(self) -> Path:
        """The image file; NotFound when this machine cannot reach it."""
        if self.path is None:
            raise NotFound(f"the image file of {self.name} cannot be reached from this machine "
                           "(see the project's image paths)")
        return self.path


@dataclass
class Job:
    """The models to run on one ROI of an image."""

    image: ImagePlan
    roi: Annotation
    model_ids: tuple[str, ...]
    replacing: bool = False


@dataclass
class Outcome:
    """What a job gave: per model its FeatureCollection and result, or an error."""

    job: Job
    error: str = ""
    server: str = ""
    seconds: float = 0.0
    collections: dict[str, dict] = field(default_factory=dict)
    results: dict[str, pb.ModelResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error


def roi_name(roi: Annotation) -> str:
    """A ROI as the journal and the messages name it."""
    if roi.key == WHOLE_IMAGE_KEY:
        return "whole image"
    return roi.name or roi.class_name or roi.key


class Source(ABC):
    """Images with their ROIs, and where their results go; `open_source` picks one."""

    journal_path: Path
    summary_path: Path
    #: Appended to the missing-pixel-size error: where else the size can be set.
    _calibration_hint = ""

    def __init__(self, options: BatchOptions) -> None:
        self.options = options
        #: Classes the overlays draw as outlines: the models' catch-all classes, which the
        #: runner sets once it knows the models.
        self.outlined: Collection[str] = frozenset()

    def plans(self) -> Iterator[ImagePlan]:
        """Every image, calibrated and with its ROIs, or with the error that stops it."""
        for plan in self._plans():
            if not plan.error:
                try:
                    with Slide.open(plan.file) as slide:
                        plan.width, plan.height = slide.width, slide.height
                        plan.mpp = self._pixel_size(plan, slide.mpp)
                    plan.rois = self._rois(plan)
                except (RoisegError, OSError, ValueError) as error:
                    plan.error = str(error)
            yield plan

    def finish(self, plan: ImagePlan, outcomes: Sequence[Outcome],
               model_ids: Sequence[str]) -> list[str]:
        """Saves the results of the image's successful jobs; returns what it wrote."""
        done = [o for o in outcomes if o.ok]
        return self._save(plan, done, model_ids) if done else []

    @abstractmethod
    def slide_roots(self) -> list[Path]:
        """The directories an in-process server may read the images from."""

    def outputs_exist(self, plan: ImagePlan) -> bool:
        """Whether the image's outputs are there (if not, its ROIs are redone whatever the
        journal says)."""
        return True

    def done_with(self, plan: ImagePlan) -> None:
        """Releases what the image holds."""

    def close(self) -> None:
        """Releases the source."""

    @abstractmethod
    def _plans(self) -> Iterator[ImagePlan]:
        """The images, not yet opened."""

    @abstractmethod
    def _rois(self, plan: ImagePlan) -> list[Annotation]:
        """The image's ROIs."""

    @abstractmethod
    def _save(self, plan: ImagePlan, done: Sequence[Outcome],
              model_ids: Sequence[str]) -> list[str]:
        """Saves the results of `done`, all of one image; returns what it wrote."""

    def _fallback_mpp(self, plan: ImagePlan) -> float | None:
        return self.options.mpp

    def _pixel_size(self, plan: ImagePlan, file_mpp: float | None) -> float:
        try:
            return pixel_size(plan.name, file_mpp or self._fallback_mpp(plan))
        except InvalidInput as error:
            raise InvalidInput(f"{error}{self._calibration_hint}") from None

    def _selected(self, name: str) -> bool:
        pattern = self.options.image_filter
        return pattern is None or pattern.search(name) is not None


def open_source(options: BatchOptions) -> Source:
    """The folder or the QuPath project `options` names; InvalidInput for a wrong
    combination, RoisegError when QuPath cannot be used."""
    if options.mpp is not None and options.mpp <= 0:
        raise InvalidInput("--mpp must be positive")
    if options.images is not None and options.project is None:
        return FolderSource(options, options.images)
    if options.project is None or options.images is not None:
        raise InvalidInput("give either a QuPath project or --images DIR --out DIR")
    if options.out is not None:
        raise InvalidInput("--out goes with --images; a project's results go into the project")
    try:
        return ProjectSource(options, options.project)
    except QuPathUnavailable as error:
        raise RoisegError(str(error)) from error
    except FileNotFoundError as error:
        raise NotFound(str(error)) from error


class FolderSource(Source):
    """Folder mode: the images in a directory, each with its ROIs in NAME.geojson beside it
    (default: the whole image); NAME.geojson and NAME.overlay.png written to OUT."""

    def __init__(self, options: BatchOptions, images_dir: Path) -> None:
        super().__init__(options)
        self.images_dir = images_dir
        if not images_dir.is_dir():
            raise InvalidInput(f"--images {images_dir} is not a directory")
        if options.out is None:
            raise InvalidInput("--images needs --out DIR")
        self.out = options.out
        if self.out.resolve() == images_dir.resolve():
            raise InvalidInput("--out must be another directory than --images (the overlays "
                               "would be read as images)")
        self.journal_path = options.journal or self.out / BATCH_FOLDER_JOURNAL
        self.summary_path = options.summary or self.out / BATCH_FOLDER_SUMMARY

    def slide_roots(self) -> list[Path]:
        return [self.images_dir.resolve()]

    def outputs_exist(self, plan: ImagePlan) -> bool:
        return all((self.out / f"{plan.stem}{suffix}").is_file()
                   for suffix in (".geojson", OVERLAY_SUFFIX))

    def _plans(self) -> Iterator[ImagePlan]:
        files = [p for p in sorted(self.images_dir.iterdir())
                 if p.is_file() and not p.name.startswith(".")
                 and p.name.lower().endswith(IMAGE_SUFFIXES) and self._selected(p.name)]
        stems = [image_stem(p) for p in files]
        for path, stem in zip(files, stems):
            plan = ImagePlan(id=path.name, name=path.name, path=path, stem=stem)
            if stems.count(stem) > 1:
                plan.error = (f"several images are named {stem}: their outputs would collide in "
                              f"{self.out}; rename one")
            yield plan

    def _rois(self, plan: ImagePlan) -> list[Annotation]:
        path = plan.file
        roi_file = next((f for f in (path.with_name(plan.stem + ".geojson"),
                                     path.with_name(path.stem + ".geojson")) if f.is_file()),
                        None)
        if roi_file is None:
            return [Annotation({"name": "whole image"}, box(0, 0, plan.width, plan.height),
                               fixed_key=WHOLE_IMAGE_KEY)]
        return select_rois(read_geojson_annotations(roi_file), self.options.roi_classes)

    def _save(self, plan: ImagePlan, done: Sequence[Outcome],
              model_ids: Sequence[str]) -> list[str]:
        """Merges the image's new features into OUT/NAME.geojson and redraws its overlay."""
        geojson_path = self.out / f"{plan.stem}.geojson"
        existing: list[dict] = []
        if geojson_path.exists():
            try:
                existing = json.loads(geojson_path.read_text(encoding="utf-8"))["features"]
            except (ValueError, KeyError, TypeError) as error:
                log.warning("%s is unreadable (%s): rewriting it", geojson_path, error)
        redone = {o.job.roi.key: o.job.model_ids for o in done}
        new = [feature for o in done for collection in o.collections.values()
               for feature in tag_features(collection.get("features", []), o.job.roi)]
        features = merge_features(existing, redone, new)
        write_atomic(geojson_path, json.dumps(feature_collection(features),
                                              ensure_ascii=False).encode("utf-8"))
        png_path = self.out / f"{plan.stem}{OVERLAY_SUFFIX}"
        write_atomic(png_path, _overlay_png(plan, features, model_ids, self.outlined))
        return [geojson_path.name, png_path.name]


class ProjectSource(Source):
    """Project mode: a QuPath project through paquo; the results become child annotations
    of their ROIs."""

    _calibration_hint = " or set it in QuPath"

    def __init__(self, options: BatchOptions, path: Path) -> None:
        super().__init__(options)
        self.project = Project(path, readonly=options.dry_run)
        self.journal_path = options.journal or self.project.directory / BATCH_PROJECT_JOURNAL
        self.summary_path = options.summary or self.project.directory / BATCH_PROJECT_SUMMARY
        #: The images to process, by id.
        self._images = {i.id: i for i in self.project.images() if self._selected(i.name)}

    def slide_roots(self) -> list[Path]:
        return sorted({i.path.resolve().parent for i in self._images.values() if i.path})

    def close(self) -> None:
        self.project.close()

    def done_with(self, plan: ImagePlan) -> None:
        self.project.release(self._images[plan.id])

    def _plans(self) -> Iterator[ImagePlan]:
        for image in self._images.values():
            yield ImagePlan(id=image.id, name=image.name, path=image.path, stem=image.name)

    def _fallback_mpp(self, plan: ImagePlan) -> float | None:
        return self.project.pixel_size_um(self._images[plan.id]) or self.options.mpp

    def _rois(self, plan: ImagePlan) -> list[Annotation]:
        classes = self.options.roi_classes
        return select_rois(self.project.annotations(self._images[plan.id], classes), classes)

    def _save(self, plan: ImagePlan, done: Sequence[Outcome],
              model_ids: Sequence[str]) -> list[str]:
        """Replaces the ROIs' roiseg children, adds the classes, saves the image."""
        image = self._images[plan.id]
        classes: dict[str, Sequence[int]] = {}
        now = utc_now()
        for outcome in done:
            roi = outcome.job.roi
            features = [f for collection in outcome.collections.values()
                        for f in tag_features(collection.get("features", []), roi)]
            self.project.replace_children(image, roi, features, outcome.job.model_ids)
            versions = _parse_models((roi.properties.get("metadata") or {}).get(ROI_MODELS_KEY))
            versions.update({m: r.model_version for m, r in outcome.results.items()})
            self.project.set_metadata(roi, {
                ROI_MODELS_KEY: ", ".join(f"{m}@{v}" for m, v in versions.items()),
                ROI_TIME_KEY: now})
            for feature in features:
                classification = feature["properties"]["classification"]
                classes.setdefault(classification["name"], classification["color"])
        self.project.add_classes(classes)
        self.project.save_image(image)
        self.project.save()
        return [f"{plan.name} (QuPath project)"]


def _parse_models(text: str | None) -> dict[str, str]:
    """``"m1@1.0, m2@2.0"`` (a ROI's `ROI_MODELS_KEY`) -> {model: version}."""
    models = {}
    for part in (text or "").split(","):
        model, _, version = part.strip().partition("@")
        if model:
            models[model] = version
    return models


def _overlay_png(plan: ImagePlan, features: Sequence[Mapping[str, Any]],
                 model_ids: Sequence[str], outlined: Collection[str]) -> bytes:
    """The image's ROIs with roiseg's features, one panel per model (`outlined` classes as
    outlines)."""
    by_model: dict[str, list] = {m: [] for m in model_ids}
    for feature in features:
        model = ((feature.get("properties") or {}).get("metadata") or {}).get(MODEL_ID_KEY, "")
        by_model.setdefault(model, []).append(feature)
    geometry = shapely.union_all([roi.geometry for roi in plan.rois]) if plan.rois else \
        box(0, 0, plan.width, plan.height)
    with Slide.open(plan.file) as slide:
        pixels, origin, downsample = overlay_view(slide, geometry)
    picture = overlay.render(pixels, origin, downsample,
                             {m: feature_collection(f) for m, f in by_model.items()}, geometry,
                             max_side=OVERLAY_SIDE, mpp=plan.mpp or None, outlined=outlined)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(picture[..., ::-1]))
    if not ok:
        raise OSError(f"cannot encode the overlay of {plan.name}")
    return data.tobytes()
