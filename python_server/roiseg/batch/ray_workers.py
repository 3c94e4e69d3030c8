"""`roiseg batch --ray`: the batch's jobs run on a pool of Ray actors.

Each actor (`_SegmentActor`) holds an in-process service over the run's models, loaded once on
its device: one GPU per actor where the cluster has GPUs, else CPU cores. It reads the slides
itself (they must be at the same absolute path on every node, as on a shared file system) and
returns each job's `SegmentResult` to the driver. The driver sees each actor as a client
(`RayClient`, the calls of `roiseg.client.connection.InProcessClient`), which the batch runner
gives a worker thread exactly as it gives one to a ``--server``: the runner's main thread stays
the single writer of outputs and journal, so resume, skip, ``--replace``, the summary and
exactly-once output are those of any batch.

A worker process that dies mid-job is restarted by Ray (which reloads the models) and its job
re-run (`TASK_RETRIES`); the job fails only if it kills the worker every time, and a worker
Ray cannot bring back hands its job to the others, as an unreachable server does.

Ray is an optional extra (``pip install 'roiseg[ray]'``): this module imports it only when a
pool is started.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from roiseg.client.connection import (
    InProcessClient,
    ModelSource,
    ProgressCallback,
    SegmentationError,
    SegmentResult,
    in_process_service,
    pixels_source,
)
from roiseg.errors import FailedPrecondition, InvalidInput
from roiseg.v1 import segmentation_pb2 as pb

log = logging.getLogger("roiseg.batch")

#: `--ray` without an address: the cluster RAY_ADDRESS or a running `ray start` names, else a
#: new local one.
AUTO = "auto"
INSTALL_HINT = "pip install 'roiseg[ray]'"
#: How often Ray re-runs a job on its restarted actor when the actor's process dies mid-job.
TASK_RETRIES = 2
#: How long the driver waits for the first worker to start (models loaded) before giving up.
STARTUP_TIMEOUT_S = 600.0
#: How long to try to reach a cluster's HOST:PORT before saying it is not there.
CONNECT_TIMEOUT_S = 10.0
#: After a worker died mid-job: how long to wait for Ray to bring it back.
RESTART_TIMEOUT_S = 120.0


def import_ray() -> ModuleType:
    """The `ray` module; FailedPrecondition naming the extra to install when it is missing."""
    try:
        import ray
    except ImportError:
        raise FailedPrecondition(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") \
            from None
    return ray


@dataclass(frozen=True)
class WorkerShape:
    """How many actors, and what each reserves: a GPU, or CPU cores (and as many threads)."""

    count: int
    gpus: int
    cpus: int
    threads: int

    def describe(self) -> str:
        each = "1 GPU" if self.gpus else f"{self.cpus} CPU core(s)"
        return f"{self.count} Ray worker(s), each on {each} with {self.threads} thread(s)"


def plan_workers(total: Mapping[str, float], largest_node_cpus: int, requested: int = 0,
                 threads: int | None = None) -> WorkerShape:
    """The pool for a cluster with `total` resources (`ray.cluster_resources()`).

    With GPUs: `requested` actors (default: one per GPU), one GPU each, the GPUs' nodes' cores
    shared out as their threads. Without: `requested` actors (default: one per core), the
    cores shared out among them (at most one node's worth each), one thread per core.
    `threads` (--threads) overrides the threads. InvalidInput for a negative count."""
    if requested < 0:
        raise InvalidInput(f"--ray-workers must be 1 or more, got {requested}")
    gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 0))
    if gpus:
        count = requested or gpus
        return WorkerShape(count, 1, 0, threads or max(1, cpus // max(count, gpus)))
    count = requested or max(1, cpus)
    each = max(1, min(cpus // count, largest_node_cpus or 1))
    return WorkerShape(count, 0, each, threads or each)


@dataclass(frozen=True)
class _Failed:
    """A job the service refused or failed (a SegmentationError, sent back by value)."""

    code: str
    message: str


class _SegmentActor:
    """A Ray actor: the in-process service over the run's models, one job at a time."""

    def __init__(self, models: ModelSource, slide_roots: Sequence[Path]) -> None:
        self._client = InProcessClient(in_process_service(models, slide_roots))

    def ready(self) -> tuple[str, int, str]:
        """Where the actor runs: host, process id, device."""
        return socket.gethostname(), os.getpid(), str(self._client.service.registry.device)

    def server_info(self) -> pb.ServerInfo:
        return self._client.server_info()

    def list_models(self) -> list[pb.ModelInfo]:
        return self._client.list_models()

    def segment(self, request: pb.SegmentRequest) -> SegmentResult | _Failed:
        try:
            return self._client.segment(request)
        except SegmentationError as error:
            return _Failed(error.code.name, error.message)


class RayClient:
    """One actor of the pool, seen as a client of the roiseg calls the batch makes."""

    def __init__(self, ray: ModuleType, actor: Any, address: str) -> None:
        self.address = address
        self._ray = ray
        self._actor = actor
        self._started = actor.ready.remote()
        #: Host and process id of the actor once it has started.
        self.host = ""
        self.pid = 0
        #: Jobs sent and not yet back (0 or 1: the runner's thread sends one at a time).
        self.in_flight = 0

    def wait_ready(self, stop: threading.Event) -> bool:
        """Waits until the actor has started (False if `stop` is set first, or it could not
        start: an actor Ray cannot place never takes a job)."""
        while not stop.is_set():
            done, _ = self._ray.wait([self._started], timeout=0.5)
            if done:
                try:
                    self.host, self.pid, _ = self._ray.get(self._started)
                except self._ray.exceptions.RayError as error:
                    log.warning("Ray worker %s did not start: %s", self.address, error)
                    return False
                return True
        return False

    def server_info(self) -> pb.ServerInfo:
        return self._get(self._actor.server_info.remote())

    def list_models(self) -> list[pb.ModelInfo]:
        return self._get(self._actor.list_models.remote())

    def pixels_source(self, encoded: bytes, **fields: Any) -> pb.ImageSource:
        """Pixels read by the driver, sent inline (Ray moves large objects itself)."""
        return pixels_source(encoded=encoded, **fields)

    def segment(self, request: pb.SegmentRequest,
                on_progress: ProgressCallback | None = None) -> SegmentResult:
        """Runs the job on the actor; SegmentationError UNAVAILABLE when the actor is gone for
        good (the runner gives the job to another worker), ABORTED when the job killed it on
        every try."""
        self.in_flight += 1
        try:
            result = self._get(self._actor.segment.remote(request))
        finally:
            self.in_flight -= 1
        if isinstance(result, _Failed):
            raise SegmentationError(grpc.StatusCode[result.code], result.message)
        return result

    def close(self) -> None:
        self._ray.kill(self._actor, no_restart=True)

    def _get(self, reference: Any) -> Any:
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(reference)
        except exceptions.RayActorError as error:
            raise self._died(error) from None
        except exceptions.RayTaskError as error:
            cause = error.cause if isinstance(error.cause, BaseException) else error
            raise SegmentationError(grpc.StatusCode.INTERNAL,
                                    f"{type(cause).__name__}: {cause}") from None

    def _died(self, error: Exception) -> SegmentationError:
        """Why the actor's process died under a job, once Ray has restarted it (ABORTED: the
        job killed it on every try) or given up (UNAVAILABLE: the actor is gone)."""
        exceptions = self._ray.exceptions
        lines = str(error).strip().splitlines()
        reason = lines[0] if lines else type(error).__name__
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                self.host, self.pid, _ = self._ray.get(
                    self._actor.ready.remote(), timeout=max(0.1, deadline - time.monotonic()))
                return SegmentationError(grpc.StatusCode.ABORTED,
                                         f"the job killed its Ray worker {TASK_RETRIES + 1} "
                                         f"times ({reason})")
            except exceptions.ActorUnavailableError:  # restarting: ask again
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
            except (exceptions.RayActorError, exceptions.GetTimeoutError):
                pass
            return SegmentationError(grpc.StatusCode.UNAVAILABLE,
                                     f"the Ray worker is gone ({reason})")


class RayPool:
    """The actors of a run, and the Ray connection this run opened (if it did)."""

    def __init__(self, ray: ModuleType, clients: list[RayClient], shape: WorkerShape,
                 connected_here: bool) -> None:
        self.clients = clients
        self.shape = shape
        self._ray = ray
        self._connected_here = connected_here

    def stop(self) -> None:
        """Stops the actors (a job still running on one ends with UNAVAILABLE)."""
        for client in self.clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - the cluster may be gone already
                log.debug("stopping %s failed", client.address, exc_info=True)

    def disconnect(self) -> None:
        """Disconnects from Ray if this run connected (a local cluster it started stops too);
        call it once no thread of the run uses Ray any more."""
        if self._connected_here and self._ray.is_initialized():
            self._ray.shutdown()

    def close(self) -> None:
        self.stop()
        self.disconnect()


def start_pool(address: str, models: ModelSource, slide_roots: Sequence[Path],
               workers: int = 0) -> RayPool:
    """Connects to the Ray cluster at `address` (`AUTO`: the one RAY_ADDRESS or a running
    ``ray start`` names, else a new local one; none if this process is connected already),
    starts the actors (`plan_workers`) and waits until one of them is ready, ready ones first.

    Raises FailedPrecondition without Ray or without a cluster at `address`,
    SegmentationError UNAVAILABLE when no actor starts."""
    ray = import_ray()
    connected_here = _connect(ray, address)
    try:
        shape = plan_workers(ray.cluster_resources(), _largest_node_cpus(ray), workers,
                             models.threads)
        _warn_if_too_many(ray.cluster_resources(), shape)
        log.info("roiseg batch on Ray: %s", shape.describe())
        actor_class = ray.remote(num_gpus=shape.gpus, num_cpus=shape.cpus, max_restarts=-1,
                                 max_task_retries=TASK_RETRIES)(_SegmentActor)
        own_models = ModelSource(models.directories, models.beside_default,
                                 models.default_model, models.device, models.runtime,
                                 shape.threads)
        roots = [Path(root) for root in slide_roots]
        clients = [RayClient(ray, actor_class.remote(own_models, roots), f"ray:{index}")
                   for index in range(shape.count)]
        pool = RayPool(ray, clients, shape, connected_here)
        try:
            _wait_for_one(ray, pool)
        except BaseException:
            pool.close()
            raise
        return pool
    except BaseException:
        if connected_here and ray.is_initialized():
            ray.shutdown()
        raise


def _connect(ray: ModuleType, address: str) -> bool:
    """Connects this process to Ray unless it is already; whether it connected now. Keeps
    the process's SIGTERM handler (`ray.init` sets its own, which exits at once: `roiseg
    batch` stops resumably instead)."""
    if ray.is_initialized():
        return False
    if address != AUTO:
        _check_reachable(address)
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=None if address == AUTO else address)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise FailedPrecondition(f"cannot reach the Ray cluster at {address}: {error}") \
            from None
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return True


def _check_reachable(address: str) -> None:
    """FailedPrecondition at once when a "HOST:PORT" address has nothing listening (Ray
    itself would retry for minutes); other forms ("ray://...") are left to Ray."""
    host, separator, port = address.rpartition(":")
    if "://" in address or not separator or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                 timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise FailedPrecondition(f"cannot reach the Ray cluster at {address} ({error}): is "
                                 "`ray start --head` running there, on that port?") from None


def _largest_node_cpus(ray: ModuleType) -> int:
    return max((int(node.get("Resources", {}).get("CPU", 0)) for node in ray.nodes()
                if node.get("Alive")), default=0)


def _warn_if_too_many(total: Mapping[str, float], shape: WorkerShape) -> None:
    """Warns when the cluster has not the resources of every actor (the rest wait for an
    autoscaler or never start; the started ones do all the work)."""
    need, kind = (shape.count, "GPU") if shape.gpus else (shape.count * shape.cpus, "CPU")
    have = int(total.get(kind, 0))
    if need > have:
        log.warning("%s need %d %s, the Ray cluster has %d: the workers that do not fit wait "
                    "for the cluster to grow", shape.describe(), need, kind, have)


def _wait_for_one(ray: ModuleType, pool: RayPool) -> None:
    """Waits until an actor has started, and puts the started ones first; raises the start
    error of the actors when none could start."""
    pending = {client._started: client for client in pool.clients}
    done, _ = ray.wait(list(pending), num_returns=1, timeout=STARTUP_TIMEOUT_S)
    if not done:
        raise SegmentationError(grpc.StatusCode.UNAVAILABLE,
                                f"no Ray worker started within {STARTUP_TIMEOUT_S:.0f} s: does "
                                f"the cluster have the resources ({pool.shape.describe()})?")
    done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
    try:
        ray.get(done[0])
    except ray.exceptions.RayError as error:
        cause = getattr(error, "cause", None) or error
        raise SegmentationError(grpc.StatusCode.UNAVAILABLE,
                                f"the Ray workers could not start: {cause}") from None
    ready = {id(pending[reference]) for reference in done}
    pool.clients.sort(key=lambda client: id(client) not in ready)
