"""The fast track's calls (docs/fast-track.md): corrected ROIs stored as training examples
(`roiseg.train.store`), model versions chosen and retired, fine-tuning on the examples.

Requests are checked as Segment checks them (`SegmentationService.check_request` and
`job_from_request`) and their pixels read as Segment reads them (`pipeline.read_roi`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from shapely.geometry.base import BaseGeometry

from roiseg.engine import pipeline
from roiseg.engine.models import (
    CARD_FILE,
    VERSION_SEPARATOR,
    ModelCard,
    split_model_id,
    write_card,
)
from roiseg.errors import Busy, Cancelled, FailedPrecondition, InvalidInput, echo
from roiseg.evaluation import effort
from roiseg.io import qupath_geojson
from roiseg.io.classes import BACKGROUND_CLASS
from roiseg.io.files import write_atomic
from roiseg.server.predictions import PredictionRecord
from roiseg.server.service import SegmentationService, check_contract, model_info, threaded
from roiseg.train import store as example_store
from roiseg.v1 import segmentation_pb2 as pb

log = logging.getLogger(__name__)

#: Longest ROI key or model version name a request may give.
MAX_KEY_CHARS = 256
#: The file, in a model's store directory, that keeps its default and retired versions.
VERSIONS_FILE = "versions.json"
#: FineTune's defaults: a short run from the model's weights.
DEFAULT_EPOCHS, DEFAULT_STEPS_PER_EPOCH, DEFAULT_BATCH_SIZE, DEFAULT_CROP = 3, 10, 4, 256
DEFAULT_LR, DEFAULT_VAL_FRACTION = 2e-4, 0.2
#: Where, in the dataset directory, the predictions are recorded.
PREDICTIONS_DIR = ".predictions"
#: A version name: it names a directory.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def example_message(record: dict[str, Any]) -> pb.Example:
    """The contract's Example of a stored record."""
    region, raster = record["region"], record["raster"]
    return pb.Example(
        example_id=record["example_id"], model_id=record["model_id"],
        image_id=record["image_id"], roi_key=record["roi_key"],
        predicted_by=record.get("predicted_by", ""), submitted_at=record["submitted_at"],
        class_areas=[pb.ClassArea(name=name, area_um2=counts["area_um2"],
                                  features=int(counts["annotations"]))
                     for name, counts in record["classes"].items()],
        region=pb.Rect(x=region["x"], y=region["y"], width=region["width"],
                       height=region["height"]),
        raster_width=raster["width"], raster_height=raster["height"], mpp=record["mpp"],
        effort=effort_message(record.get("effort")))


def effort_message(record: dict[str, Any] | None) -> pb.CorrectionEffort:
    """The contract's CorrectionEffort of `effort_record`'s dict (None: an example stored
    before efforts were measured)."""
    if record is None:
        return pb.CorrectionEffort(not_measured_why="submitted before roiseg measured efforts")
    return pb.CorrectionEffort(
        measured=record["measured"], not_measured_why=record["why"], run_ids=record["run_ids"],
        matched_by=record["matched_by"],
        classes=[pb.ClassCorrection(**c) for c in record["classes"]])


def effort_record(image: effort.ImageEffort | None, run_ids: Iterable[str] = (),
                  why: str = "") -> dict[str, Any]:
    """A correction's effort as stored with its example (JSON: NaN as absent)."""
    classes = []
    for c in (*image.classes, image.total) if image else ():
        row = {"name": c.class_name, "predicted_um2": c.predicted_um2,
               "corrected_um2": c.corrected_um2, "added_um2": c.added_um2,
               "removed_um2": c.removed_um2, "predicted_objects": c.objects["predicted"],
               **{k: c.objects[k] for k in ("kept", "edited", "reclassified", "deleted",
                                            "added")}}
        row.update({k: v for k, v in (("dice", c.dice), ("iou", c.iou)) if math.isfinite(v)})
        classes.append(row)
    return {"measured": image is not None, "why": why, "run_ids": sorted(run_ids),
            "matched_by": image.matching.by if image else "", "classes": classes}


class FastTrack:
    """The fast-track calls of `service`; examples and fine-tuned versions are kept under
    `dataset_dir` (None: the example calls and fine-tuning are refused)."""

    def __init__(self, service: SegmentationService, dataset_dir: Path | None) -> None:
        self.service = service
        self.registry = service.registry
        self.store = example_store.ExampleStore(dataset_dir) if dataset_dir else None
        #: What Segment returned, to measure the corrections against (with a store only).
        self.predictions = PredictionRecord(self.store.root / PREDICTIONS_DIR) \
            if self.store else None
        self._fine_tune_slot = threading.BoundedSemaphore(1)
        self._torch_threads = torch.get_num_threads()
        if self.store is not None:
            self._restore_versions()

    # ------------------------------------------------------------------ examples

    def submit(self, request: pb.SubmitCorrectionsRequest,
               should_stop: Callable[[], bool]) -> pb.SubmitCorrectionsResponse:
        """Checks the request as Segment would, reads the ROI's pixels at the model's
        resolution (waiting for a job slot) and stores the example."""
        store = self._store()
        segment = pb.SegmentRequest(
            model_ids=[request.model_id] if request.model_id else [], image=request.image,
            roi=request.roi, options=pb.SegmentOptions(allow_upsample=request.allow_upsample),
            client_contract_major=request.client_contract_major,
            client_contract_minor=request.client_contract_minor)
        model_ids = self.service.check_request(segment)
        card = self.registry.card(model_ids[0])
        for what, text, limit in (("image id", request.image_id, 4096),
                                  ("ROI key", request.roi_key, MAX_KEY_CHARS),
                                  ("predicted_by", request.predicted_by, MAX_KEY_CHARS)):
            if len(text) > limit or "\0" in text:
                raise InvalidInput(f"the {what} {echo(text)} is too long (at most {limit} "
                                   "characters) or holds a NUL")
        slide = request.image.WhichOneof("source") == "slide"
        if not request.image_id and not slide:
            raise InvalidInput("say which image the pixels come from (image_id, e.g. the QuPath "
                               "image's URI): an example is stored per image and ROI")
        if not request.geojson.strip():
            raise InvalidInput("the request has no corrections: send the ROI's corrected "
                               "annotations as QuPath GeoJSON")
        with self.service.admitted(), self.service.job_slot(should_stop):
            job = self.service.job_from_request(segment, model_ids, should_stop)
            roi_pixels = pipeline.read_roi(job, card,
                                           max_roi_pixels=self.service.limits.max_roi_pixels)
            labels = example_store.parse_corrections(request.geojson, card, roi_pixels.roi,
                                                     dict(request.class_names))
            image_id = request.image_id or (str(job.source.path) if isinstance(
                job.source, pipeline.SlideSource) else "")
            measured = self._effort(request, labels.geojson, card, roi_pixels.roi,
                                    roi_pixels.source_mpp)
            record, replaced = store.put(
                card, example_store.RoiImage(roi_pixels.read.image, roi_pixels.read.transform,
                                             roi_pixels.roi, roi_pixels.source_mpp),
                labels, image_id=image_id,
                roi_key=request.roi_key or example_store.roi_key_of(job.roi),
                predicted_by=request.predicted_by, source=_source_record(request.image, job),
                effort=measured)
        return pb.SubmitCorrectionsResponse(example=example_message(record), replaced=replaced)

    def record(self, output: pipeline.ModelOutput, run_id: str) -> None:
        """Keeps what Segment returned for `run_id`, for `_effort`."""
        if self.predictions is not None:
            self.predictions.add(run_id, output.features)

    def _effort(self, request: pb.SubmitCorrectionsRequest, corrected: Any, card: ModelCard,
                roi: BaseGeometry, mpp: float) -> dict[str, Any]:
        """How much the `corrected` GeoJSON changed the pre-annotations: those the request
        gives, else the recorded predictions of the runs the corrected objects name
        (`effort_record`)."""
        fixed = effort.side_of(corrected, Path("corrections"))
        runs: Iterable[str] = ()
        if request.predicted_geojson.strip():
            try:
                predicted = json.loads(request.predicted_geojson)
            except (ValueError, RecursionError) as error:
                raise InvalidInput("the pre-annotations (predicted_geojson) are not JSON: "
                                   f"{str(error)[:200]}") from None
        else:
            runs = fixed.run_ids
            if not runs or self.predictions is None:
                return effort_record(None, why="no roiseg pre-annotation is left among the "
                                     "corrections (none names its run): nothing to compare with")
            features, missing = self.predictions.features(runs)
            if missing:
                return effort_record(None, runs, f"this server has no record of run(s) "
                                     f"{', '.join(missing)} (segmented by another server?)")
            models = {f"{m}@{v}" for m, v in fixed.models}
            predicted = qupath_geojson.feature_collection(
                [f for f in features if _made_by(f) in models])
        background = {BACKGROUND_CLASS} - {s.name for s in card.classes}
        image = effort.measure_correction(_without(predicted, background),
                                          _without(corrected, background), mpp, roi)
        return effort_record(image, runs)

    def examples(self, request: pb.ListExamplesRequest) -> pb.ListExamplesResponse:
        store = self._store()
        model_id = self._model(request.model_id)
        return pb.ListExamplesResponse(examples=[example_message(r)
                                                 for r in store.examples(model_id)])

    def remove(self, request: pb.RemoveExampleRequest) -> pb.RemoveExampleResponse:
        store = self._store()
        model_id = self._model(request.model_id)
        return pb.RemoveExampleResponse(removed=example_message(
            store.remove(model_id, request.example_id)))

    # ------------------------------------------------------------------ versions

    def set_default(self, request: pb.SetDefaultVersionRequest) -> pb.ModelInfo:
        card = self.registry.set_default(self._versioned(request.model_id))
        self._save_versions(split_model_id(card.id)[0])
        return self.service.model_listing(card.id)

    def retire(self, request: pb.RetireVersionRequest) -> pb.ModelInfo:
        card = self.registry.retire(self._versioned(request.model_id))
        self._save_versions(split_model_id(card.id)[0])
        return self.service.model_listing(card.id)

    @property
    def fine_tuning(self) -> bool:
        """Whether a fine-tuning is running (or still stopping)."""
        if self._fine_tune_slot.acquire(blocking=False):
            self._fine_tune_slot.release()
            return False
        return True

    def fine_tune_events(self, request: pb.FineTuneRequest,
                         should_stop: Callable[[], bool]) -> Iterator[pb.FineTuneEvent]:
        """The events of one FineTune call: the request checked here, the training in a
        thread of its own (one at a time, beside the segmentation job slots), its progress,
        then the new version, registered. When the caller goes (`should_stop`, or the stream is
        closed) the training stops at its next step and nothing is registered."""
        store = self._store()
        check_contract(request.client_contract_major, request.client_contract_minor)
        plan = self._plan(request)
        if not self._fine_tune_slot.acquire(blocking=False):
            raise Busy("a fine-tuning is running already (one runs at a time): try again when "
                       "it is done")

        def work(emit: Callable[[pb.FineTuneEvent], None], stop: Callable[[], bool]) -> None:
            try:
                emit(self._fine_tune(store, plan, emit, stop))
            finally:
                # torch gives threads started later the thread count last set (the
                # training's): segmentation gets its own back
                torch.set_num_threads(self._torch_threads)
                self._fine_tune_slot.release()

        yield from threaded(work, should_stop, "roiseg-fine-tune")

    def _plan(self, request: pb.FineTuneRequest) -> _Plan:
        """The fine-tuning a request asks for, checked (InvalidInput, NotFound)."""
        card = self.registry.card(self._versioned(request.model_id or self.registry.default_id))
        family = split_model_id(card.id)[0]
        if card.format != "state_dict":
            raise InvalidInput(f"model {card.id!r} is a {card.format} model: only state_dict "
                               "models can be fine-tuned")
        if len(request.example_ids) > 100_000:
            raise InvalidInput(f"the request names {len(request.example_ids)} examples")
        for example in request.example_ids:
            example_store.check_example_id(example)
        epochs = request.epochs or DEFAULT_EPOCHS
        steps = request.steps_per_epoch or DEFAULT_STEPS_PER_EPOCH
        batch = request.batch_size or DEFAULT_BATCH_SIZE
        crop = request.crop or DEFAULT_CROP
        lr = request.learning_rate if request.HasField("learning_rate") else DEFAULT_LR
        val = request.val_fraction if request.HasField("val_fraction") else DEFAULT_VAL_FRACTION
        minutes = request.max_minutes if request.HasField("max_minutes") else None
        for ok, what in ((epochs <= 10_000, f"epochs must be at most 10000, got {epochs}"),
                         (steps <= 100_000,
                          f"steps_per_epoch must be at most 100000, got {steps}"),
                         (batch <= 256, f"batch_size must be at most 256, got {batch}"),
                         (32 <= crop <= 2048 and crop % 32 == 0,
                          f"crop must be a multiple of 32 from 32 to 2048, got {crop}"),
                         (0 < lr <= 1, f"learning_rate must be in (0, 1], got {lr}"),
                         (0 <= val <= 0.9, f"val_fraction must be in [0, 0.9], got {val}"),
                         (minutes is None or 0 < minutes <= 10_000,
                          f"max_minutes must be in (0, 10000], got {minutes}")):
            if not ok:
                raise InvalidInput(what)
        version = request.version or self._next_version(family, card.version)
        if not _VERSION.fullmatch(version):
            raise InvalidInput(f"the version {echo(version)} must be 1-64 letters, digits, '.', "
                               "'_', '+' or '-', starting with a letter or digit")
        if any(c.version == version for c, _ in self.registry.versions(family)) \
                or version in self.registry.retired(family):
            raise InvalidInput(f"model {family!r} already has a version {version!r}: name "
                               "another one")
        return _Plan(card, family, version, list(request.example_ids), epochs, steps, batch,
                     crop, lr, val, minutes, request.seed, request.make_default)

    def _next_version(self, family: str, start: str) -> str:
        """`start` without any "-ftN" suffix, plus the first "-ftN" no version has."""
        base = re.sub(r"-ft\d+$", "", start)
        taken = {c.version for c, _ in self.registry.versions(family)} \
            | self.registry.retired(family)
        return next(f"{base}-ft{n}" for n in itertools.count(1) if f"{base}-ft{n}" not in taken)

    def _fine_tune(self, store: example_store.ExampleStore, plan: _Plan,
                   emit: Callable[[pb.FineTuneEvent], None],
                   stop: Callable[[], bool]) -> pb.FineTuneEvent:
        """Copies the examples, trains, registers the new version; the result event."""
        from roiseg.train.training import TrainOptions, TrainProgress, train

        started = time.monotonic()
        card = plan.card
        target = store.model_dir(plan.family) / example_store.MODELS / plan.version
        if target.exists():
            raise InvalidInput(f"{target} exists already: name another version")
        emit(_progress(pb.FINE_TUNE_STAGE_PREPARING, message="copying the examples"))
        last: list[TrainProgress] = []

        def progress(p: TrainProgress) -> None:
            last[:] = [p]
            stage = {"training": pb.FINE_TUNE_STAGE_TRAINING,
                     "validated": pb.FINE_TUNE_STAGE_VALIDATED,
                     "exporting": pb.FINE_TUNE_STAGE_EXPORTING}[p.stage]
            event = _progress(stage, epoch=p.epoch, epochs=p.epochs, step=p.step,
                              total_steps=p.total_steps, loss=p.loss)
            if p.val_score is not None:
                event.progress.val_dice = p.val_score
            if p.best_score is not None and p.best_score >= 0:
                event.progress.best_val_dice = p.best_score
            emit(event)

        with tempfile.TemporaryDirectory(dir=store.root, prefix=f".fine-tune-{plan.family}-") \
                as work_text:
            work = Path(work_text)
            records = store.copy_examples(plan.family, plan.example_ids, work)
            ids = [r["example_id"] for r in records]
            emit(_progress(pb.FINE_TUNE_STAGE_PREPARING,
                           message=f"{len(ids)} examples; loading {card.id}"))
            start = f"{plan.family}{VERSION_SEPARATOR}{card.version}"
            train(TrainOptions(
                images=work / example_store.IMAGES, out=work / "model",
                annotations=work / example_store.ANNOTATIONS, source_mpp=card.mpp, mpp=card.mpp,
                val_fraction=plan.val_fraction,
                data_description=f"{len(ids)} corrected ROIs of the roiseg fast-track dataset "
                                 f"{store.model_dir(plan.family)}",
                init_model=str(card.card_path), crop=plan.crop, batch_size=plan.batch_size,
                epochs=plan.epochs, steps_per_epoch=plan.steps_per_epoch,
                max_minutes=plan.max_minutes, lr=plan.learning_rate,
                warmup_steps=max(1, min(30, plan.epochs * plan.steps_per_epoch // 5)), ema=0.0,
                patience=max(plan.epochs, 1), seed=plan.seed,
                device="cuda" if self.registry.device.type == "cuda" else "cpu",
                threads=_training_threads(), progress_bar=False, model_id=plan.family,
                model_name=f"{plan.family} {plan.version} (fine-tuned from {start} on "
                           f"{len(ids)} corrected ROIs)",
                description=card.description, model_version=plan.version),
                on_progress=progress, should_stop=stop)
            emit(_progress(pb.FINE_TUNE_STAGE_REGISTERING, message=f"serving {plan.version}"))
            fields = json.loads((work / "model" / CARD_FILE).read_text(encoding="utf-8"))
            fields["fine_tuned_from"] = {
                "model": start, "sha256": card.sha256, "dataset": str(store.model_dir(plan.family)),
                "examples": len(ids), "example_ids": ids}
            fields["ensemble"] = _keep_partners(card, work / "model")
            write_card(work / "model", fields)
            if stop():
                raise Cancelled("fine-tuning cancelled")
            (work / "model" / "train_state.pt").unlink(missing_ok=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            (work / "model").rename(target)
        registered = self.registry.register(ModelCard.from_file(target / CARD_FILE),
                                            plan.make_default)
        self._save_versions(plan.family)
        log.info("model %s: version %s fine-tuned from %s on %d examples in %.0f s, served",
                 plan.family, plan.version, start, len(ids), time.monotonic() - started)
        done = last[0] if last else None
        return pb.FineTuneEvent(result=pb.FineTuneResult(
            model=model_info(registered, plan.make_default), example_ids=ids,
            epochs=done.epoch if done else 0, steps=done.step if done else 0,
            seconds=time.monotonic() - started,
            stop_reason="epochs done" if done and done.epoch >= plan.epochs else "time budget"))

    # ------------------------------------------------------------------ helpers

    def _store(self) -> example_store.ExampleStore:
        if self.store is None:
            raise FailedPrecondition("this server keeps no training examples: start it with "
                                     "`roiseg serve --dataset-dir DIR` to submit corrections and "
                                     "fine-tune models")
        return self.store

    def _model(self, model_id: str) -> str:
        """The id, without a version, of the model a request names (default: the server's)."""
        if len(model_id) > MAX_KEY_CHARS:
            raise InvalidInput(f"model ids: {echo(model_id)} is too long to be one")
        return split_model_id(self.registry.card(model_id or self.registry.default_id).id)[0]

    def _versioned(self, model_id: str) -> str:
        if len(model_id) > MAX_KEY_CHARS:
            raise InvalidInput(f"model ids: {echo(model_id)} is too long to be one")
        return model_id

    def _save_versions(self, family_id: str) -> None:
        """Keeps a model's default and retired versions in its store directory, so that a
        restarted server serves the same versions."""
        if self.store is None:
            return
        versions = self.registry.versions(family_id)
        default = next(card.version for card, is_default in versions if is_default)
        served = {card.version for card, _ in versions}
        state = {"default": default, "retired": sorted(self.registry.retired(family_id)),
                 "served": sorted(served)}
        write_atomic(self.store.model_dir(family_id) / VERSIONS_FILE,
                     json.dumps(state, indent=2) + "\n")

    def _restore_versions(self) -> None:
        """Registers the versions fine-tuned earlier (`DIR/ID/models/*/model.json`) of the
        models this server serves, and their saved default and retired versions."""
        assert self.store is not None
        for card_path in sorted(self.store.root.glob(f"*/{example_store.MODELS}/*/model.json")):
            try:
                card = ModelCard.from_file(card_path)
                self.registry.card(card.id)  # a model this server serves
                self.registry.register(card)
            except Exception as error:  # noqa: BLE001 - one broken version never stops a server
                log.warning("fine-tuned model %s not served: %s", card_path, error)
        for state_path in sorted(self.store.root.glob(f"*/{VERSIONS_FILE}")):
            family_id = state_path.parent.name
            try:
                state = json.loads(state_path.read_text(encoding="utf-8"))
                self.registry.set_default(f"{family_id}{VERSION_SEPARATOR}{state['default']}")
                for version in set(state.get("retired", [])) - self.registry.retired(family_id):
                    self.registry.retire(f"{family_id}{VERSION_SEPARATOR}{version}")
            except Exception as error:  # noqa: BLE001 - as above
                log.warning("%s: the saved versions of %s not restored: %s", state_path,
                            family_id, error)


@dataclass(frozen=True)
class _Plan:
    """A checked FineTune request."""

    card: ModelCard
    family: str
    version: str
    example_ids: list[str]
    epochs: int
    steps_per_epoch: int
    batch_size: int
    crop: int
    learning_rate: float
    val_fraction: float
    max_minutes: float | None
    seed: int
    make_default: bool


def _progress(stage: int, **fields: Any) -> pb.FineTuneEvent:
    return pb.FineTuneEvent(progress=pb.FineTuneProgress(
        stage=stage, **fields))  # type: ignore[arg-type]


def _training_threads() -> int:
    """CPU threads for the training: all but one, which segmentation keeps."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 2
    return max(1, cores - 1)


def _source_record(image: pb.ImageSource, job: pipeline.Job) -> dict[str, Any]:
    """Where an example's pixels came from, for its record."""
    if isinstance(job.source, pipeline.SlideSource):
        return {"slide": str(job.source.path), "pixel_size_um": job.source.mpp}
    p = image.pixels
    return {"pixels": {"origin_x": p.origin_x, "origin_y": p.origin_y,
                       "downsample": p.downsample, "pixel_size_um": p.pixel_size_um,
                       "image_width": p.image_width, "image_height": p.image_height}}


def _keep_partners(card: ModelCard, directory: Path) -> list[dict[str, Any]]:
    """The start card's further ensemble members, their checkpoints copied into `directory`,
    as the new card's `ensemble`: the fine-tuned model is averaged with them as its start was
    (only the card's own model is fine-tuned)."""
    partners = []
    for index, member in enumerate(card.ensemble, start=1):
        name = f"model.member{index}.pt"
        shutil.copyfile(member.checkpoint, directory / name)
        partners.append({"architecture": member.architecture, "encoder": member.encoder,
                         "checkpoint": name, "sha256": member.sha256,
                         **({"extra": member.extra} if member.extra else {})})
    return partners


def _made_by(feature: dict[str, Any]) -> str:
    """`id@version` of the model that made a recorded feature."""
    metadata = feature.get("properties", {}).get("metadata", {})
    return f"{metadata.get(qupath_geojson.MODEL_ID_KEY)}@" \
           f"{metadata.get(qupath_geojson.MODEL_VERSION_KEY)}"


def _without(data: Any, classes: set[str]) -> list[dict[str, Any]]:
    """The objects of GeoJSON `data`, nested ones brought to the top, without those of
    `classes`."""
    found = []
    for feature, _ in qupath_geojson.objects(data):
        properties = feature.get("properties")
        if qupath_geojson.class_name(properties) in classes:
            continue
        if isinstance(properties, dict) and "childObjects" in properties:
            feature["properties"] = {k: v for k, v in properties.items() if k != "childObjects"}
        found.append(feature)
    return found
