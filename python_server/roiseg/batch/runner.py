"""`roiseg batch`: pre-annotate many images at once, resumably.

Two sources of work:

* ``roiseg batch PROJECT.qpproj`` opens a QuPath project with paquo (see
  `roiseg.io.qupath_project`), segments the ROIs of each image and adds the results as child
  annotations of each ROI, saving each image as soon as it is done;
* ``roiseg batch --images DIR --out DIR`` needs no QuPath: for each slide or image in DIR
  (with optional QuPath GeoJSON ROIs beside it, ``NAME.geojson``; default: the whole
  image) it writes ``OUT/NAME.geojson`` (roiseg's features only, importable into QuPath),
  an overlay ``OUT/NAME.overlay.png`` and ``OUT/summary.csv``.

Jobs are (image, ROI) pairs. They run in-process, through one or more servers
(``--server`` repeated), or on a pool of Ray actors (``--ray``, `roiseg.batch.ray_workers`):
one worker thread per server or actor pulls jobs from a shared queue; a server that answers
UNAVAILABLE (an actor Ray cannot bring back) puts its job back for the others and takes no
more. The main thread is the single writer: when every job of an image is back it writes that
image's outputs (atomically: temporary file + ``os.replace``; in a project, one save of
the image) and only then appends one record per ROI to the journal, a JSON Lines file
(``OUT/roiseg-journal.jsonl``, or ``roiseg-batch.jsonl`` next to the project). A re-run
reads the journal and skips the (ROI, model) pairs already done; ``--replace`` redoes
them, replacing only roiseg's own objects (`qupath_geojson.is_roiseg_object`) of those
models. A kill at any moment leaves every written image whole and the run resumable.

`run` is ``roiseg batch`` (`roiseg.cli.batch` parses the options into `BatchOptions`); the
sources are in `roiseg.batch.sources`, the journal in `roiseg.batch.journal`.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tqdm import tqdm

from roiseg.batch import ray_workers
from roiseg.batch.journal import (
    ERROR,
    JOURNAL_VERSION,
    NO_ROI,
    OK,
    Journal,
    utc_now,
    write_summary,
)
from roiseg.batch.options import BatchOptions
from roiseg.batch.ray_workers import RayClient, RayPool
from roiseg.batch.sources import ImagePlan, Job, Outcome, Source, open_source, roi_name
from roiseg.client.connection import (
    Client,
    InProcessClient,
    SegmentationError,
    SegmentResult,
    connect,
    in_process_service,
)
from roiseg.client.requests import catch_all_names, roi_request
from roiseg.errors import InvalidInput, NotFound
from roiseg.io.qupath_project import Annotation

log = logging.getLogger("roiseg.batch")

#: Worker name of the in-process service.
IN_PROCESS = "in-process"
#: The summary CSV is rewritten at most this often during a run (and at its end).
SUMMARY_INTERVAL_S = 5.0
#: How long a run's end waits for its Ray worker threads to notice it.
JOIN_TIMEOUT_S = 10.0


@dataclass
class BatchResult:
    """What a run did. An interrupted run (Ctrl-C, SIGTERM) left `unfinished` images
    untouched; running it again resumes it."""

    summary_csv: Path
    segmented: int = 0
    skipped: int = 0
    errors: int = 0
    images: int = 0
    #: Jobs each server (or the in-process service, or Ray worker) did.
    jobs: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    unfinished: int = 0


def run(options: BatchOptions) -> BatchResult:
    """Runs the batch (with `options.dry_run`, prints what it would do). ROIs that fail are
    counted as errors and the rest completes. Raises InvalidInput or NotFound for unusable
    options, RoisegError when QuPath cannot be used, SegmentationError when no server
    answers."""
    if options.ray is not None and options.servers:
        raise InvalidInput("--ray and --server are two ways to spread the work: give one")
    source = open_source(options)
    try:
        return _Batch(options, source).run()
    finally:
        source.close()


@dataclass
class _Worker:
    address: str
    client: Client | InProcessClient | RayClient
    alive: bool = True
    checked: bool = False
    jobs: int = 0
    thread: threading.Thread | None = None


@dataclass
class _ServerDown:
    worker: _Worker
    message: str
    requeued: bool


@dataclass
class _Pending:
    """An image whose jobs are out: how many, and the outcomes back so far."""

    plan: ImagePlan
    jobs: int
    outcomes: list[Outcome] = field(default_factory=list)


class _Batch:
    """One run: worker threads segment the queued jobs; this thread plans the images, writes
    each image's outputs once all its jobs are back, and keeps the journal."""

    def __init__(self, options: BatchOptions, source: Source) -> None:
        self.options = options
        self.source = source
        # in-process and on Ray, the workers read the slides themselves
        self.server_reads_slide = options.server_reads_slide or not options.servers
        self.journal = Journal(source.journal_path)
        self.result = BatchResult(source.summary_path)
        self.model_ids: list[str] = []
        self.target_mpp = 0.0
        self._jobs: queue.Queue[Job] = queue.Queue()
        self._results: queue.Queue[Outcome | _ServerDown] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._ray_pool: RayPool | None = None
        self._summary_written = 0.0

    # ----------------------------------------------------------------- setup

    def _connect(self) -> None:
        if self.options.ray is not None:
            self._ray_pool = ray_workers.start_pool(self.options.ray, self.options.models,
                                                    self.source.slide_roots(),
                                                    self.options.ray_workers)
            self._workers = [_Worker(c.address, c) for c in self._ray_pool.clients]
            return
        if not self.options.servers:
            service = in_process_service(self.options.models, self.source.slide_roots())
            self._workers = [_Worker(IN_PROCESS, InProcessClient(service))]
            return
        for server in dict.fromkeys(self.options.servers):
            self._workers.append(_Worker(server.target, connect(server, self.options.models)))

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
            chosen = list(dict.fromkeys(self.options.model_ids)) or [info.default_model_id]
            unknown = [m for m in chosen if m not in models]
            if unknown:
                raise NotFound(f"unknown model(s) {', '.join(unknown)} on {worker.address}; "
                               f"available: {', '.join(models)}")
            self.source.outlined = catch_all_names((models[m] for m in chosen),
                                                   self.options.segment.class_names)
            return chosen, min(models[m].mpp for m in chosen)
        raise SegmentationError(grpc.StatusCode.UNAVAILABLE,
                                "no roiseg server is reachable: " + "; ".join(errors))

    # ----------------------------------------------------------------- run

    def run(self) -> BatchResult:
        self._connect()
        try:
            self.model_ids, self.target_mpp = self._resolve_models()
            if self.options.dry_run:
                self._dry_run()
            else:
                self._run()
            return self.result
        finally:
            self._stop.set()
            for worker in self._workers:
                if isinstance(worker.client, Client):
                    worker.client.close()
            if self._ray_pool is not None:
                self._ray_pool.stop()
                self._join_workers()
                self._ray_pool.disconnect()

    def _join_workers(self) -> None:
        """Waits (a little) for the worker threads to end, once stopped."""
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for worker in self._workers:
            if worker.thread is not None:
                worker.thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _todo(self, plan: ImagePlan, roi: Annotation) -> tuple[str, ...]:
        """The models to run on a ROI: those the journal does not record as done (all with
        --replace, or when the image's outputs have gone)."""
        if self.options.replace or not self.source.outputs_exist(plan):
            return tuple(self.model_ids)
        done = self.journal.done(plan.id, roi.key)
        return tuple(m for m in self.model_ids if m not in done)

    def _dry_run(self) -> None:
        where = ", ".join(w.address for w in self._workers)
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
                print(f"{plan.name} / {roi_name(roi)} [{roi.key}]: {action}")
            self.source.done_with(plan)

    def _run(self) -> None:
        for worker in self._workers:
            worker.thread = threading.Thread(target=self._work, args=(worker,),
                                             name=f"roiseg-batch {worker.address}", daemon=True)
            worker.thread.start()
        pending: dict[str, _Pending] = {}
        plans = iter(self.source.plans())
        exhausted = False
        bar = tqdm(total=0, unit="ROI", desc="roiseg batch", file=sys.stderr, disable=None)
        finished = 0
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
                state.outcomes.append(item)
                bar.update(1)
                finished += 1
                if not item.ok:
                    bar.write(f"{item.job.image.name} / {roi_name(item.job.roi)}: error: "
                              f"{item.error}", file=sys.stderr)
                elif bar.disable:  # no terminal (cron, Slurm): a line per finished ROI
                    objects = sum(r.feature_count for r in item.results.values())
                    print(f"roiseg batch: {item.job.image.name} / {roi_name(item.job.roi)}: "
                          f"{objects} objects in {item.seconds:.1f} s "
                          f"({finished} of {bar.total} planned)", file=sys.stderr, flush=True)
                if len(state.outcomes) == state.jobs:
                    del pending[item.job.image.id]
                    self._finish(state.plan, state.outcomes)
        except KeyboardInterrupt:
            self._stop.set()
            bar.close()
            # from the file: the interrupt may have come between its write and `_remember`
            write_summary(self.source.summary_path, Journal(self.journal.path).records)
            self.result.interrupted, self.result.unfinished = True, len(pending)
            return
        finally:
            self._stop.set()
            bar.close()
        write_summary(self.source.summary_path, self.journal.records)
        self.result.jobs = {w.address: w.jobs for w in self._workers}

    def _plan(self, plan: ImagePlan, pending: dict[str, _Pending], bar: tqdm) -> None:
        """Queues the jobs of an image, or records why it has none."""
        if plan.error or not plan.rois:
            record = _record(plan, None)
            record.update(status=ERROR if plan.error else NO_ROI, error=plan.error)
            if plan.error:
                self.result.errors += 1
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
                self.result.skipped += 1
        if not jobs:
            self.source.done_with(plan)
            return
        pending[plan.id] = _Pending(plan, len(jobs))
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
        """The single writer: the image's outputs first, then its journal records, both in
        the order of the image's ROIs (whichever worker finished first)."""
        order = {id(roi): index for index, roi in enumerate(plan.rois)}
        outcomes = sorted(outcomes, key=lambda outcome: order[id(outcome.job.roi)])
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
            record = _record(plan, outcome.job.roi)
            record.update(status=OK if outcome.ok else ERROR, error=outcome.error,
                          server=outcome.server, seconds=round(outcome.seconds, 3),
                          models=_model_records(outcome))
            if outcome.ok:
                record["outputs"] = outputs
                self.result.segmented += 1
                for notice in dict.fromkeys(n for r in outcome.results.values()
                                            for n in r.notices):
                    print(f"{plan.name} / {roi_name(outcome.job.roi)}: note: {notice}",
                          file=sys.stderr)
            else:
                self.result.errors += 1
            records.append(record)
        self.journal.append(records)
        self.result.images += 1
        if time.monotonic() - self._summary_written > SUMMARY_INTERVAL_S:
            write_summary(self.source.summary_path, self.journal.records)
            self._summary_written = time.monotonic()

    # ----------------------------------------------------------------- workers

    def _work(self, worker: _Worker) -> None:
        if isinstance(worker.client, RayClient) and not worker.client.wait_ready(self._stop):
            with self._lock:
                worker.alive = False
            return
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

    def _segment(self, worker: _Worker, job: Job) -> SegmentResult:
        client = worker.client
        if not worker.checked and isinstance(client, Client):
            info = client.server_info()
            if info.max_message_bytes:
                client.max_message_bytes = min(client.max_message_bytes, info.max_message_bytes)
            worker.checked = True
        return client.segment(roi_request(
            client, job.image.file, job.roi.geometry, job.image.mpp, job.model_ids,
            self.options.segment, self.target_mpp, self.server_reads_slide))


def _record(plan: ImagePlan, roi: Annotation | None) -> dict:
    """A journal record of an image, or of one of its ROIs, yet without its outcome."""
    return {"v": JOURNAL_VERSION, "time": utc_now(), "image": plan.name, "image_id": plan.id,
            "roi": roi.key if roi else "", "roi_name": roi_name(roi) if roi else "",
            "roi_class": roi.class_name if roi else "", "status": "", "error": "",
            "server": "", "seconds": 0.0, "models": []}


def _model_records(outcome: Outcome) -> list[dict]:
    """The journal's record of each model a job ran: version, checkpoint, features, areas."""
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
            "mpp_used": round(result.execution.mpp_used, 6),
            **({"notices": list(result.notices)} if result.notices else {})})
    return models
