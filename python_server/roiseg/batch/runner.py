"""`roiseg batch`: pre-annotate many images at once, resumably.

Two sources of work:

* ``roiseg batch PROJECT.qpproj`` opens a QuPath project with paquo (see
  `roiseg.io.qupath_project`), segments the ROIs of each image and adds the results as child
  annotations of each ROI, saving each image as soon as it is done;
* ``roiseg batch --images DIR --out DIR`` needs no QuPath: for each slide or image in DIR
  (with optional QuPath GeoJSON ROIs beside it, ``NAME.geojson``; default: the whole
  image) it writes ``OUT/NAME.geojson`` (roiseg's features only, importable into QuPath),
  an overlay ``OUT/NAME.overlay.png`` and ``OUT/summary.csv``.

Jobs are (image, ROI) pairs. They run in-process, or through one or more servers
(``--server`` repeated): one worker thread per server pulls jobs from a shared queue; a
server that answers UNAVAILABLE puts its job back for the others and takes no more. The
main thread is the single writer: when every job of an image is back it writes that
image's outputs (atomically: temporary file + ``os.replace``; in a project, one save of
the image) and only then appends one record per ROI to the journal, a JSON Lines file
(``OUT/roiseg-journal.jsonl``, or ``roiseg-batch.jsonl`` next to the project). A re-run
reads the journal and skips the (ROI, model) pairs already done; ``--replace`` redoes
them, replacing only roiseg's own objects (`qupath_geojson.is_roiseg_object`) of those
models. A kill at any moment leaves every written image whole and the run resumable.

Mounted by the CLI as ``roiseg batch`` (`roiseg.cli.batch`), which calls `run`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import cv2
import grpc
import numpy as np
import shapely
from shapely.geometry import box
from tqdm import tqdm

from roiseg.batch.outputs import (
    BATCH_FOLDER_JOURNAL,
    BATCH_FOLDER_SUMMARY,
    BATCH_PROJECT_JOURNAL,
    BATCH_PROJECT_SUMMARY,
)
from roiseg.client import requests as commands
from roiseg.client.connection import Client, InProcessClient, SegmentationError
from roiseg.errors import RoisegError
from roiseg.io import overlay
from roiseg.io.files import write_atomic
from roiseg.io.qupath_geojson import MODEL_ID_KEY, feature_collection
from roiseg.io.qupath_project import (
    ROI_MODELS_KEY,
    ROI_TIME_KEY,
    Annotation,
    QuPathUnavailable,
    merge_features,
    read_geojson_annotations,
    select_rois,
    tag_features,
)
from roiseg.io.slides import Slide

log = logging.getLogger("roiseg.batch")

#: Version of the journal records.
JOURNAL_VERSION = 1
FOLDER_JOURNAL, FOLDER_SUMMARY = BATCH_FOLDER_JOURNAL, BATCH_FOLDER_SUMMARY
PROJECT_JOURNAL, PROJECT_SUMMARY = BATCH_PROJECT_JOURNAL, BATCH_PROJECT_SUMMARY
#: Files folder mode reads as images (".ome.tif(f)" included).
IMAGE_SUFFIXES = (".svs", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: Folder mode's overlay beside NAME.geojson (not NAME.png, so that `roiseg evaluate`
#: pairs the output folder with reference masks by name).
OVERLAY_SUFFIX = ".overlay.png"
#: ROI key of the whole-image ROI (folder mode, no GeoJSON beside the image).
WHOLE_IMAGE_KEY = "image"
IN_PROCESS = "in-process"
#: The summary CSV is rewritten at most this often during a run (and at its end).
SUMMARY_INTERVAL_S = 5.0
#: Status of a record.
OK, ERROR, NO_ROI = "ok", "error", "no-roi"

_SUMMARY_COLUMNS = ("image", "roi", "roi_name", "roi_class", "model", "model_version", "status",
                    "error", "seconds", "features", "server", "time")


# --------------------------------------------------------------------------- command line


def run(args: argparse.Namespace) -> int:
    """Runs the batch; 0 when every ROI is done, 1 when some were recorded as errors,
    2 for unusable arguments, 130 when interrupted (the run can be resumed)."""
    try:
        source = _source(args)
    except (QuPathUnavailable, ValueError, FileNotFoundError, RoisegError) as error:
        print(f"roiseg batch: error: {error}", file=sys.stderr)
        return 2
    try:
        return _Batch(args, source).run()
    except (SegmentationError, RoisegError, ValueError) as error:
        print(f"roiseg batch: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("roiseg batch: interrupted", file=sys.stderr)
        return 130
    finally:
        source.close()


# --------------------------------------------------------------------------- journal


class Journal:
    """The append-only JSON Lines record of what was done, one record per (image, ROI) per
    run, written after the image's outputs. A torn last line (a kill while appending) is
    ignored when read."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: list[dict] = []
        self._done: dict[tuple[str, str], dict[str, str]] = {}
        if self.path.exists():
            skipped = 0
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                if isinstance(record, dict):
                    self._remember(record)
            if skipped:
                log.warning("%s: ignored %d unreadable line(s)", self.path, skipped)

    def done(self, image_id: str, roi: str) -> dict[str, str]:
        """Model id -> version of the models whose latest record for this ROI is ok."""
        return dict(self._done.get((image_id, roi), {}))

    def append(self, records: Sequence[dict]) -> None:
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        with open(self.path, "a+b") as file:
            file.seek(0, os.SEEK_END)
            if file.tell():
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":
                    text = b"\n" + text
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        for record in records:
            self._remember(record)

    def _remember(self, record: dict) -> None:
        self.records.append(record)
        roi = record.get("roi")
        if not roi:
            return
        done = self._done.setdefault((str(record.get("image_id")), str(roi)), {})
        for model in record.get("models") or []:
            if record.get("status") == OK:
                done[model["id"]] = model.get("version", "")
            else:
                done.pop(model.get("id"), None)


def summary_rows(records: Iterable[Mapping[str, Any]]) -> tuple[list[dict], list[str]]:
    """The summary's rows (the latest record per image, ROI and model; an image's
    image-level error disappears once one of its ROIs is recorded) and its class names."""
    rows: dict[tuple[str, str, str], dict] = {}
    classes: dict[str, None] = {}
    for record in records:
        image, roi = str(record.get("image_id")), str(record.get("roi") or "")
        if roi:
            rows.pop((image, "", ""), None)
        base = {"image": record.get("image", ""), "roi": roi,
                "roi_name": record.get("roi_name", ""), "roi_class": record.get("roi_class", ""),
                "status": record.get("status", ""), "error": record.get("error", ""),
                "seconds": record.get("seconds", ""), "server": record.get("server", ""),
                "time": record.get("time", "")}
        models = record.get("models") or []
        if not models:
            rows[(image, roi, "")] = {**base, "model": "", "model_version": "", "features": ""}
            continue
        for model in models:
            areas = model.get("areas_um2") or {}
            classes.update(dict.fromkeys(areas))
            rows[(image, roi, model["id"])] = {
                **base, "model": model["id"], "model_version": model.get("version", ""),
                "features": model.get("features", ""),
                **{f"area_um2:{name}": area for name, area in areas.items()}}
    return list(rows.values()), sorted(classes)


def write_summary(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Writes the summary CSV atomically: image, ROI, model, status/error, seconds, and one
    `area_um2:<class>` column per class."""
    rows, classes = summary_rows(records)
    columns = list(_SUMMARY_COLUMNS) + [f"area_um2:{name}" for name in classes]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in row.items()})
    write_atomic(path, text.getvalue().encode("utf-8"))


# --------------------------------------------------------------------------- plans


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
    handle: Any = field(default=None, repr=False)


@dataclass
class Job:
    image: ImagePlan
    roi: Annotation
    model_ids: tuple[str, ...]
    replacing: bool = False


@dataclass
class Outcome:
    job: Job
    error: str = ""
    server: str = ""
    seconds: float = 0.0
    collections: dict[str, dict] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class _ServerDown:
    worker: "_Worker"
    message: str
    requeued: bool


def _roi_name(roi: Annotation) -> str:
    if roi.key == WHOLE_IMAGE_KEY:
        return "whole image"
    return roi.name or roi.class_name or roi.key


def _image_stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif") + IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return path.stem


def _calibrate(plan: ImagePlan, slide: Slide, fallback: float | None, what: str) -> None:
    plan.width, plan.height = slide.width, slide.height
    try:
        plan.mpp = commands.pixel_size(plan.name, slide.mpp or fallback)
    except ValueError as error:
        raise ValueError(f"{error}{what}") from None


class _FolderSource:
    """Folder mode: images in a directory, outputs in another."""

    kind = "folder"

    def __init__(self, args: argparse.Namespace) -> None:
        self.images_dir = Path(args.images)
        if not self.images_dir.is_dir():
            raise ValueError(f"--images {self.images_dir} is not a directory")
        if not args.out:
            raise ValueError("--images needs --out DIR")
        self.out = Path(args.out)
        if self.out.resolve() == self.images_dir.resolve():
            raise ValueError("--out must be another directory than --images (the overlays "
                             "would be read as images)")
        self.args = args
        self.journal_path = args.journal or self.out / FOLDER_JOURNAL
        self.summary_path = args.summary or self.out / FOLDER_SUMMARY

    def slide_roots(self) -> list[Path]:
        return [self.images_dir.resolve()]

    def close(self) -> None:
        pass

    def done_with(self, plan: ImagePlan) -> None:
        pass

    def outputs_exist(self, plan: ImagePlan) -> bool:
        """Whether the image's GeoJSON and overlay are there (if not, its ROIs are redone
        whatever the journal says)."""
        return all((self.out / f"{plan.stem}{suffix}").is_file()
                   for suffix in (".geojson", OVERLAY_SUFFIX))

    def images(self) -> list[Path]:
        files = sorted(p for p in self.images_dir.iterdir()
                       if p.is_file() and not p.name.startswith(".")
                       and p.name.lower().endswith(IMAGE_SUFFIXES))
        return [p for p in files if _matches(self.args.image_filter, p.name)]

    def plans(self) -> Iterator[ImagePlan]:
        files = self.images()
        stems: dict[str, int] = {}
        for path in files:
            stems[_image_stem(path)] = stems.get(_image_stem(path), 0) + 1
        for path in files:
            plan = ImagePlan(id=path.name, name=path.name, path=path, stem=_image_stem(path))
            try:
                if stems[plan.stem] > 1:
                    raise ValueError(f"several images are named {plan.stem}: their outputs "
                                     f"would collide in {self.out}; rename one")
                with Slide.open(path) as slide:
                    _calibrate(plan, slide, self.args.mpp, "")
                roi_file = next((f for f in (path.with_name(plan.stem + ".geojson"),
                                             path.with_name(path.stem + ".geojson"))
                                 if f.is_file()), None)
                if roi_file is None:
                    plan.rois = [Annotation({"name": "whole image"},
                                            box(0, 0, plan.width, plan.height),
                                            fixed_key=WHOLE_IMAGE_KEY)]
                else:
                    plan.rois = select_rois(read_geojson_annotations(roi_file),
                                            self.args.roi_class)
            except (RoisegError, OSError, ValueError) as error:
                plan.error = str(error)
            yield plan

    def finish(self, plan: ImagePlan, outcomes: Sequence[Outcome],
               model_ids: Sequence[str]) -> list[str]:
        """Merges the image's new features into OUT/NAME.geojson and redraws its overlay."""
        ok = [o for o in outcomes if o.ok]
        if not ok:
            return []
        geojson_path = self.out / f"{plan.stem}.geojson"
        existing: list[dict] = []
        if geojson_path.exists():
            try:
                existing = json.loads(geojson_path.read_text(encoding="utf-8"))["features"]
            except (ValueError, KeyError, TypeError) as error:
                log.warning("%s is unreadable (%s): rewriting it", geojson_path, error)
        redone = {o.job.roi.key: o.job.model_ids for o in ok}
        new = [feature for o in ok for collection in o.collections.values()
               for feature in tag_features(collection.get("features", []), o.job.roi)]
        features = merge_features(existing, redone, new)
        write_atomic(geojson_path, json.dumps(feature_collection(features),
                                              ensure_ascii=False).encode("utf-8"))
        png_path = self.out / f"{plan.stem}{OVERLAY_SUFFIX}"
        write_atomic(png_path, _overlay_png(plan, features, model_ids))
        return [geojson_path.name, png_path.name]


class _ProjectSource:
    """Project mode: a QuPath project through paquo."""

    kind = "project"

    def __init__(self, args: argparse.Namespace) -> None:
        from roiseg.io.qupath_project import Project

        self.args = args
        self.project = Project(args.project, readonly=args.dry_run)
        self.journal_path = args.journal or self.project.directory / PROJECT_JOURNAL
        self.summary_path = args.summary or self.project.directory / PROJECT_SUMMARY
        self._images = [i for i in self.project.images() if _matches(args.image_filter, i.name)]

    def slide_roots(self) -> list[Path]:
        return sorted({i.path.resolve().parent for i in self._images if i.path})

    def close(self) -> None:
        self.project.close()

    def done_with(self, plan: ImagePlan) -> None:
        if plan.handle is not None:
            self.project.release(plan.handle)

    def outputs_exist(self, plan: ImagePlan) -> bool:
        return True

    def plans(self) -> Iterator[ImagePlan]:
        for image in self._images:
            plan = ImagePlan(id=image.id, name=image.name, path=image.path, stem=image.name,
                             handle=image)
            try:
                if image.path is None:
                    raise ValueError(f"the image file of {image.name} cannot be reached from "
                                     "this machine (see the project's image paths)")
                with Slide.open(image.path) as slide:
                    _calibrate(plan, slide, self.project.pixel_size_um(image) or self.args.mpp,
                               " or set it in QuPath")
                plan.rois = select_rois(self.project.annotations(image, self.args.roi_class),
                                        self.args.roi_class)
            except (RoisegError, OSError, ValueError) as error:
                plan.error = str(error)
            yield plan

    def finish(self, plan: ImagePlan, outcomes: Sequence[Outcome],
               model_ids: Sequence[str]) -> list[str]:
        """Replaces the ROIs' roiseg children, adds the classes, saves the image."""
        ok = [o for o in outcomes if o.ok]
        if not ok:
            return []
        classes: dict[str, Sequence[int]] = {}
        now = _now()
        for outcome in ok:
            roi = outcome.job.roi
            features = [f for collection in outcome.collections.values()
                        for f in tag_features(collection.get("features", []), roi)]
            self.project.replace_children(plan.handle, roi, features, outcome.job.model_ids)
            versions = _parse_models((roi.properties.get("metadata") or {}).get(ROI_MODELS_KEY))
            versions.update({m: r.model_version for m, r in outcome.results.items()})
            self.project.set_metadata(roi, {
                ROI_MODELS_KEY: ", ".join(f"{m}@{v}" for m, v in versions.items()),
                ROI_TIME_KEY: now})
            for feature in features:
                classification = feature["properties"]["classification"]
                classes.setdefault(classification["name"], classification["color"])
        self.project.add_classes(classes)
        self.project.save_image(plan.handle)
        self.project.save()
        return [f"{plan.name} (QuPath project)"]


def _source(args: argparse.Namespace) -> _FolderSource | _ProjectSource:
    if args.image_filter:
        try:
            re.compile(args.image_filter)
        except re.error as error:
            raise ValueError(f"--image-filter {args.image_filter!r}: {error}") from None
    if args.mpp < 0:
        raise ValueError("--mpp must be positive")
    if bool(args.images) == bool(args.project):
        raise ValueError("give either a QuPath project or --images DIR --out DIR")
    if args.images:
        return _FolderSource(args)
    if args.out:
        raise ValueError("--out goes with --images; a project's results go into the project")
    return _ProjectSource(args)


def _matches(pattern: str | None, name: str) -> bool:
    return not pattern or re.search(pattern, name) is not None


def _parse_models(text: str | None) -> dict[str, str]:
    models = {}
    for part in (text or "").split(","):
        model, _, version = part.strip().partition("@")
        if model:
            models[model] = version
    return models


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _overlay_png(plan: ImagePlan, features: Sequence[Mapping[str, Any]],
                 model_ids: Sequence[str]) -> bytes:
    """The image's ROIs with roiseg's features, one panel per model."""

    by_model: dict[str, list] = {m: [] for m in model_ids}
    for feature in features:
        model = ((feature.get("properties") or {}).get("metadata") or {}).get(MODEL_ID_KEY, "")
        by_model.setdefault(model, []).append(feature)
    geometry = shapely.union_all([roi.geometry for roi in plan.rois]) if plan.rois else \
        box(0, 0, plan.width, plan.height)
    with Slide.open(plan.path) as slide:
        pixels, origin, downsample = commands.overlay_view(slide, geometry)
    picture = overlay.render(pixels, origin, downsample,
                             {m: feature_collection(f) for m, f in by_model.items()}, geometry,
                             max_side=commands.OVERLAY_SIDE)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(picture[..., ::-1]))
    if not ok:
        raise OSError(f"cannot encode the overlay of {plan.name}")
    return data.tobytes()


# --------------------------------------------------------------------------- the engine


@dataclass
class _Worker:
    address: str
    client: Any
    alive: bool = True
    checked: bool = False
    jobs: int = 0
    thread: threading.Thread | None = None


class _Batch:
    def __init__(self, args: argparse.Namespace, source: _FolderSource | _ProjectSource) -> None:
        self.args = args
        self.source = source
        self.options = commands.segment_options(args)
        self.in_process = not args.server
        self.server_reads_slide = args.server_reads_slide or self.in_process
        self.journal = Journal(source.journal_path)
        self._jobs: queue.Queue[Job] = queue.Queue()
        self._results: queue.Queue[Outcome | _ServerDown] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._summary_written = 0.0
        self.counts = {"segmented": 0, "skipped": 0, "errors": 0, "images": 0}

    # ----------------------------------------------------------------- setup

    def _connect(self) -> None:
        if self.in_process:
            service = commands.service(self.args, self.source.slide_roots())
            self._workers = [_Worker(IN_PROCESS, InProcessClient(service))]
            return
        for address in dict.fromkeys(self.args.server):
            self._workers.append(_Worker(address, commands.connect(self.args, address)))

    def _resolve_models(self) -> tuple[list[str], float]:
        """The model ids to run and the finest µm/px among them, from the first server that
        answers."""
        errors = []
        for worker in self._workers:
            try:
                info = worker.client.server_info()
                models = {m.id: m for m in worker.client.list_models()}
            except SegmentationError as error:
                errors.append(f"{worker.address}: {error}")
                continue
            chosen = list(dict.fromkeys(self.args.model_ids)) or [info.default_model_id]
            unknown = [m for m in chosen if m not in models]
            if unknown:
                raise ValueError(f"unknown model(s) {', '.join(unknown)} on {worker.address}; "
                                 f"available: {', '.join(models)}")
            return chosen, min(models[m].mpp for m in chosen)
        raise SegmentationError(grpc.StatusCode.UNAVAILABLE,
                                "no roiseg server is reachable: " + "; ".join(errors))

    # ----------------------------------------------------------------- run

    def run(self) -> int:
        self._connect()
        try:
            self.model_ids, self.target_mpp = self._resolve_models()
            if self.args.dry_run:
                return self._dry_run()
            return self._run()
        finally:
            self._stop.set()
            for worker in self._workers:
                if hasattr(worker.client, "close"):
                    worker.client.close()

    def _todo(self, plan: ImagePlan, roi: Annotation) -> tuple[str, ...]:
        """The models to run on a ROI: those the journal does not record as done (all with
        --replace, or when the image's outputs have gone)."""
        if self.args.replace or not self.source.outputs_exist(plan):
            return tuple(self.model_ids)
        done = self.journal.done(plan.id, roi.key)
        return tuple(m for m in self.model_ids if m not in done)

    def _dry_run(self) -> int:
        where = "in-process" if self.in_process else ", ".join(w.address for w in self._workers)
        print(f"roiseg batch (dry run): models {', '.join(self.model_ids)} via {where}; "
              f"journal {self.source.journal_path}")
        for plan in self.source.plans():
            if plan.error:
                print(f"{plan.name}: error: {plan.error}")
                continue
            if not plan.rois:
                print(f"{plan.name}: no ROI")
            for roi in plan.rois:
                todo = self._todo(plan, roi)
                done = self.journal.done(plan.id, roi.key)
                if not todo:
                    action = "skip (done)"
                elif any(m in done for m in todo):
                    action = "replace " + ", ".join(todo)
                else:
                    action = "segment " + ", ".join(todo)
                print(f"{plan.name} / {_roi_name(roi)} [{roi.key}]: {action}")
            self.source.done_with(plan)
        return 0

    def _run(self) -> int:
        for worker in self._workers:
            worker.thread = threading.Thread(target=self._work, args=(worker,),
                                             name=f"roiseg-batch {worker.address}", daemon=True)
            worker.thread.start()
        pending: dict[str, dict] = {}
        plans = iter(self.source.plans())
        exhausted = False
        bar = tqdm(total=0, unit="ROI", desc="roiseg batch", file=sys.stderr, disable=None)
        try:
            while True:
                while not exhausted and self._jobs.qsize() < 2 * len(self._workers):
                    plan = next(plans, None)
                    if plan is None:
                        exhausted = True
                    else:
                        self._plan(plan, pending, bar)
                if exhausted and not pending:
                    break
                try:
                    item = self._results.get(timeout=0.2)
                except queue.Empty:
                    self._fail_if_no_server()
                    continue
                if isinstance(item, _ServerDown):
                    bar.write(f"roiseg batch: server {item.worker.address} is unavailable "
                              f"({item.message}); "
                              + ("its job went back to the queue for the other servers"
                                 if item.requeued else "no server is left"), file=sys.stderr)
                    continue
                state = pending[item.job.image.id]
                state["outcomes"].append(item)
                bar.update(1)
                if not item.ok:
                    bar.write(f"{item.job.image.name} / {_roi_name(item.job.roi)}: error: "
                              f"{item.error}", file=sys.stderr)
                if len(state["outcomes"]) == state["jobs"]:
                    del pending[item.job.image.id]
                    self._finish(state["plan"], state["outcomes"])
        except KeyboardInterrupt:
            self._stop.set()
            bar.close()
            # from the file: the interrupt may have come between its write and `_remember`
            write_summary(self.source.summary_path, Journal(self.journal.path).records)
            print(f"roiseg batch: interrupted; {self.counts['images']} image(s) saved this run, "
                  f"{len(pending)} unfinished left untouched. Run the same command again to "
                  "resume.", file=sys.stderr)
            return 130
        finally:
            self._stop.set()
            bar.close()
        write_summary(self.source.summary_path, self.journal.records)
        servers = ", ".join(f"{w.address} {w.jobs}" for w in self._workers)
        print(f"roiseg batch: {self.counts['segmented']} ROI(s) segmented, "
              f"{self.counts['skipped']} skipped (already done), {self.counts['errors']} "
              f"error(s); jobs per server: {servers}; summary {self.source.summary_path}")
        return 1 if self.counts["errors"] else 0

    def _plan(self, plan: ImagePlan, pending: dict[str, dict], bar: tqdm) -> None:
        if plan.error or not plan.rois:
            record = self._record_base(plan, None)
            record.update(status=ERROR if plan.error else NO_ROI, error=plan.error)
            if plan.error:
                self.counts["errors"] += 1
                bar.write(f"{plan.name}: error: {plan.error}", file=sys.stderr)
            self.journal.append([record])
            self.source.done_with(plan)
            return
        jobs = []
        for roi in plan.rois:
            todo = self._todo(plan, roi)
            if todo:
                done = self.journal.done(plan.id, roi.key)
                jobs.append(Job(plan, roi, todo, replacing=any(m in done for m in todo)))
            else:
                self.counts["skipped"] += 1
        if not jobs:
            self.source.done_with(plan)
            return
        pending[plan.id] = {"plan": plan, "jobs": len(jobs), "outcomes": []}
        bar.total += len(jobs)
        bar.refresh()
        for job in jobs:
            self._jobs.put(job)

    def _fail_if_no_server(self) -> None:
        """Records the queued jobs as errors once every server has gone."""
        with self._lock:
            if any(w.alive for w in self._workers):
                return
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            self._results.put(Outcome(job, error="no roiseg server is reachable (tried "
                                      + ", ".join(w.address for w in self._workers) + ")"))

    def _finish(self, plan: ImagePlan, outcomes: list[Outcome]) -> None:
        """The single writer: the image's outputs first, then its journal records."""
        outputs: list[str] = []
        try:
            outputs = self.source.finish(plan, outcomes, self.model_ids)
        except Exception as error:  # noqa: BLE001 - recorded; the batch goes on
            log.debug("saving %s failed", plan.name, exc_info=True)
            message = f"saving the results failed: {type(error).__name__}: {error}"
            print(f"{plan.name}: error: {message}", file=sys.stderr)
            for outcome in outcomes:
                if outcome.ok:
                    outcome.error = message
        finally:
            self.source.done_with(plan)
        records = []
        for outcome in outcomes:
            record = self._record_base(plan, outcome.job.roi)
            record.update(status=OK if outcome.ok else ERROR, error=outcome.error,
                          server=outcome.server, seconds=round(outcome.seconds, 3),
                          models=self._model_records(outcome))
            if outcome.ok:
                record["outputs"] = outputs
                self.counts["segmented"] += 1
            else:
                self.counts["errors"] += 1
            records.append(record)
        self.journal.append(records)
        self.counts["images"] += 1
        if time.monotonic() - self._summary_written > SUMMARY_INTERVAL_S:
            write_summary(self.source.summary_path, self.journal.records)
            self._summary_written = time.monotonic()

    def _record_base(self, plan: ImagePlan, roi: Annotation | None) -> dict:
        return {"v": JOURNAL_VERSION, "time": _now(), "image": plan.name, "image_id": plan.id,
                "roi": roi.key if roi else "", "roi_name": _roi_name(roi) if roi else "",
                "roi_class": roi.class_name if roi else "", "status": "", "error": "",
                "server": "", "seconds": 0.0, "models": []}

    def _model_records(self, outcome: Outcome) -> list[dict]:
        if not outcome.ok:
            return [{"id": m} for m in outcome.job.model_ids]
        models = []
        for model_id in outcome.job.model_ids:
            result = outcome.results.get(model_id)
            if result is None:
                continue
            models.append({
                "id": model_id, "version": result.model_version,
                "sha256": result.checkpoint_sha256, "features": result.feature_count,
                "areas_um2": {a.name: round(a.area_um2, 3) for a in result.class_areas},
                "mpp_used": round(result.execution.mpp_used, 6)})
        return models

    # ----------------------------------------------------------------- workers

    def _work(self, worker: _Worker) -> None:
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            started = time.monotonic()
            try:
                result = self._segment(worker, job)
                outcome = Outcome(job, server=worker.address,
                                  collections=result.feature_collections,
                                  results=result.results)
            except SegmentationError as error:
                if error.code == grpc.StatusCode.UNAVAILABLE and worker.address != IN_PROCESS:
                    with self._lock:
                        worker.alive = False
                        others = any(w.alive for w in self._workers)
                    self._results.put(_ServerDown(worker, str(error), others))
                    if others:
                        self._jobs.put(job)
                        return
                    outcome = Outcome(job, error=str(error), server=worker.address)
                    self._results.put(outcome)
                    return
                outcome = Outcome(job, error=str(error), server=worker.address)
            except Exception as error:  # noqa: BLE001 - recorded; the batch goes on
                log.debug("segmenting %s failed", job.image.name, exc_info=True)
                outcome = Outcome(job, error=f"{type(error).__name__}: {error}",
                                  server=worker.address)
            outcome.seconds = time.monotonic() - started
            worker.jobs += 1
            self._results.put(outcome)

    def _segment(self, worker: _Worker, job: Job):
        client = worker.client
        if not worker.checked and isinstance(client, Client):
            info = client.server_info()
            if info.max_message_bytes:
                client.max_message_bytes = min(client.max_message_bytes, info.max_message_bytes)
            worker.checked = True
        return client.segment(commands.roi_request(
            client, job.image.path, job.roi.geometry, job.image.mpp, job.model_ids, self.options,
            self.target_mpp, self.server_reads_slide))


