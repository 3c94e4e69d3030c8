"""The roiseg.v1.Segmentation gRPC service and the server that hosts it."""

from __future__ import annotations

import hmac
import json
import logging
import math
import queue
import threading
import time
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence, cast

import cv2
import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha import reflection
from shapely.geometry.base import BaseGeometry

from roiseg import CONTRACT_MAJOR, CONTRACT_MINOR, __version__
from roiseg.engine import pipeline
from roiseg.engine.models import ModelCard, ModelRegistry, split_model_id
from roiseg.errors import (
    Busy,
    Cancelled,
    Forbidden,
    InvalidInput,
    NotFound,
    RoisegError,
    TooLarge,
    VersionMismatch,
    echo,
)
from roiseg.io import roi
from roiseg.io.slides import decode_image, image_size
from roiseg.server.health import HEALTH_SERVICE_NAME, Health
from roiseg.server.status import status_of
from roiseg.server.uploads import UploadStore
from roiseg.v1 import segmentation_pb2 as pb
from roiseg.v1 import segmentation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
#: One line per call (peer, call, models and ROI, seconds, status); `roiseg serve` shows it.
access_log = logging.getLogger("roiseg.access")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmentation"].full_name
#: Size of the GeoJSON chunks a Segment stream carries.
GEOJSON_CHUNK_BYTES = 1 << 20


#: Longest model id, class name or file path a request may name.
MAX_NAME_CHARS = 4096
#: Most models and classes one request may name.
MAX_NAMES = 256
#: Longest error message sent back (gRPC metadata has a size limit).
MAX_MESSAGE_CHARS = 1000
#: The client's downsample and the image size it states must stay below these.
MAX_DOWNSAMPLE = 10_000.0
MAX_IMAGE_SIDE = 2**31
#: Pixels of a sent image that lie outside the ROI's bounding box and are still decoded: the
#: image may have up to four times the box's pixels plus this many.
SPARE_DECODE_PIXELS = 16_000_000


@dataclass(frozen=True)
class Limits:
    """What the server accepts and how much work it takes on at once."""

    max_message_bytes: int = 64 << 20
    max_upload_bytes: int = 1 << 30
    upload_capacity_bytes: int = 2 << 30
    max_roi_pixels: int = 20_000 * 20_000
    concurrent_jobs: int = 1
    #: Segment calls that may wait for a job slot; more are refused as busy.
    queued_jobs: int = 8
    concurrent_uploads: int = 4
    #: An upload that sends nothing for this long, or is not done after the total, is ended.
    upload_idle_s: float = 30.0
    upload_total_s: float = 600.0
    #: Longest a self-crossing ROI outline may take to repair.
    roi_repair_s: float = roi.REPAIR_TIMEOUT_S

    @property
    def rpc_threads(self) -> int:
        """Threads for every admitted Segment (or SubmitCorrections) call and upload, one for
        the fine-tuning, and four for the quick calls (server info, models, health), so those
        always answer."""
        return self.concurrent_jobs + self.queued_jobs + self.concurrent_uploads + 1 + 4


class SegmentationService(pb_grpc.SegmentationServicer):
    """Answers the contract's calls; every failure becomes a status with a message."""

    def __init__(self, registry: ModelRegistry, slide_roots: Sequence[Path] = (),
                 limits: Limits = Limits(), dataset_dir: Path | None = None) -> None:
        """`dataset_dir` enables the fast track (corrections, versions kept, fine-tuning:
        `roiseg.server.fasttrack`)."""
        from roiseg.server.fasttrack import FastTrack

        self.registry = registry
        self.slide_roots = [Path(r).resolve() for r in slide_roots]
        self.limits = limits
        self.uploads = UploadStore(limits.max_upload_bytes, limits.upload_capacity_bytes,
                                   max_active=limits.concurrent_uploads)
        self._jobs = threading.BoundedSemaphore(limits.concurrent_jobs)
        self._admitted = threading.BoundedSemaphore(limits.concurrent_jobs + limits.queued_jobs)
        self.fast_track = FastTrack(self, dataset_dir)

    # ------------------------------------------------------------------ gRPC methods

    def GetServerInfo(self, request: pb.GetServerInfoRequest, context) -> pb.ServerInfo:
        return pb.ServerInfo(
            server_version=__version__, contract_major=CONTRACT_MAJOR,
            contract_minor=CONTRACT_MINOR, device=self.registry.device_name,
            default_model_id=self.registry.default_id,
            max_message_bytes=self.limits.max_message_bytes,
            max_upload_bytes=self.limits.max_upload_bytes,
            max_roi_pixels=self.limits.max_roi_pixels,
            slide_paths_allowed=bool(self.slide_roots),
            examples_enabled=self.fast_track.store is not None)

    def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[self.model_listing(c.id)
                                             for c in self.registry.cards()],
                                     default_model_id=self.registry.default_id)

    def model_listing(self, model_id: str) -> pb.ModelInfo:
        """ListModels' entry of a model: its default version, with every version served."""
        versions = self.registry.versions(model_id)
        default = next(card for card, is_default in versions if is_default)
        info = model_info(self.registry.card(split_model_id(default.id)[0]), True)
        info.versions.extend(model_info(card, is_default) for card, is_default in versions)
        return info

    def UploadImage(self, request_iterator, context) -> pb.UploadImageResponse:
        watchdog = _Watchdog(context, self.limits.upload_idle_s, self.limits.upload_total_s)
        try:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "header":
                raise InvalidInput("an upload starts with a header message")
            expected = first.header.total_bytes
            with self.uploads.receiving(expected), watchdog:
                data = bytearray()
                for message in request_iterator:
                    watchdog.touch()
                    if message.WhichOneof("part") != "chunk":
                        raise InvalidInput("an upload has one header, then only chunks")
                    data += message.chunk
                    if len(data) > expected:
                        raise InvalidInput(f"the upload is longer than the {expected} bytes "
                                           "announced")
                upload_id = self.uploads.put(bytes(data), expected)
            return pb.UploadImageResponse(upload_id=upload_id, received_bytes=len(data),
                                          expires_in_seconds=self.uploads.ttl_s)
        except RoisegError as error:
            _abort(context, error)
        except grpc.RpcError:
            if watchdog.ended is None:
                raise
            log.info("UploadImage ended: %s", watchdog.ended)
            _abort(context, Cancelled(watchdog.ended))

    def Segment(self, request: pb.SegmentRequest, context) -> Iterator[pb.SegmentEvent]:
        yield from _streamed(context, "Segment", "segmenting",
                             lambda stop: self.segment_events(request, stop), _about(request))

    def SubmitCorrections(self, request: pb.SubmitCorrectionsRequest,
                          context) -> pb.SubmitCorrectionsResponse:
        return _answered(context, "SubmitCorrections",
                         lambda stop: self.fast_track.submit(request, stop))

    def ListExamples(self, request: pb.ListExamplesRequest, context) -> pb.ListExamplesResponse:
        return _answered(context, "ListExamples", lambda stop: self.fast_track.examples(request))

    def RemoveExample(self, request: pb.RemoveExampleRequest,
                      context) -> pb.RemoveExampleResponse:
        return _answered(context, "RemoveExample", lambda stop: self.fast_track.remove(request))

    def SetDefaultVersion(self, request: pb.SetDefaultVersionRequest, context) -> pb.ModelInfo:
        return _answered(context, "SetDefaultVersion",
                         lambda stop: self.fast_track.set_default(request))

    def RetireVersion(self, request: pb.RetireVersionRequest, context) -> pb.ModelInfo:
        return _answered(context, "RetireVersion", lambda stop: self.fast_track.retire(request))

    def FineTune(self, request: pb.FineTuneRequest, context) -> Iterator[pb.FineTuneEvent]:
        yield from _streamed(context, "FineTune", "fine-tuning",
                             lambda stop: self.fast_track.fine_tune_events(request, stop))

    # ------------------------------------------------------------------ the work

    def segment_events(self, request: pb.SegmentRequest,
                       should_stop: Callable[[], bool]) -> Iterator[pb.SegmentEvent]:
        """The events of one Segment call; the in-process CLI consumes the same stream.
        Cheap checks run here; the ROI's repair and the pixels' decoding wait for the job slot."""
        with self.admitted():
            yield from self._segment_events(request, should_stop)

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """A place among the segmentations running or waiting; Busy when there is none."""
        if not self._admitted.acquire(blocking=False):
            admitted = self.limits.concurrent_jobs + self.limits.queued_jobs
            raise Busy(f"the server is busy: {admitted} segmentations are running or waiting; "
                       "try again in a minute")
        try:
            yield
        finally:
            self._admitted.release()

    @contextmanager
    def job_slot(self, stop: Callable[[], bool],
                 waiting: Callable[[], None] = lambda: None) -> Iterator[None]:
        """A job slot, waited for (`waiting` is called once if it must wait) until `stop`
        says the caller is gone (Cancelled)."""
        if not self._jobs.acquire(blocking=False):
            waiting()
            while not self._jobs.acquire(timeout=0.2):
                if stop():
                    raise Cancelled("segmentation cancelled")
        try:
            yield
        finally:
            self._jobs.release()

    def _segment_events(self, request: pb.SegmentRequest,
                        should_stop: Callable[[], bool]) -> Iterator[pb.SegmentEvent]:
        model_ids = self.check_request(request)

        def work(emit: Callable[[Any], None], stop: Callable[[], bool]) -> None:
            with self.job_slot(stop, lambda: emit(pipeline.Progress(
                    pipeline.Stage.QUEUED, message="waiting for another segmentation"))):
                job = self.job_from_request(request, model_ids, stop)
                for output in pipeline.run(job, self.registry,
                                           max_roi_pixels=self.limits.max_roi_pixels,
                                           progress=emit, should_stop=stop):
                    emit(output)  # the client first; the record is for later submissions
                    self.fast_track.record(output, job.run_id)

        for item in threaded(work, should_stop, "roiseg-job"):
            if isinstance(item, pipeline.Progress):
                stage = cast(pb.Stage, item.stage)
                yield pb.SegmentEvent(progress=pb.Progress(
                    stage=stage, model_id=item.model_id, tiles_done=item.done,
                    tiles_total=item.total, message=item.message))
            else:
                yield from _output_events(item, self.registry.device_name)

    def check_request(self, request: pb.SegmentRequest) -> tuple[str, ...]:
        """The request's model ids after the checks that take no more than reading it
        (contract, models, options, ROI counts and coordinates, image source)."""
        check_contract(request.client_contract_major, request.client_contract_minor)
        _check_names("model ids", request.model_ids)
        _check_names("class names", request.options.classes)
        _check_names("class names", [*request.options.class_names,
                                     *request.options.class_names.values()])
        model_ids = tuple(dict.fromkeys(request.model_ids)) or (self.registry.default_id,)
        for model_id in model_ids:
            self.registry.card(model_id)
        roi.check_proto(request.roi)
        kind = request.image.WhichOneof("source")
        if kind == "slide":
            self._slide_path(request.image.slide.path)
        elif kind == "pixels":
            _check_pixels(request.image.pixels)
        else:
            raise InvalidInput("the request has no image: send the region's pixels or a slide "
                               "path")
        return model_ids

    def job_from_request(self, request: pb.SegmentRequest, model_ids: tuple[str, ...],
                         should_stop: Callable[[], bool] = lambda: False) -> pipeline.Job:
        """The job of a checked request: its ROI repaired, its pixels decoded."""
        geometry = roi.from_proto(request.roi, should_stop, self.limits.roi_repair_s)
        return pipeline.Job(model_ids=model_ids, source=self._source(request.image, geometry),
                            roi=geometry, options=_options(request.options,
                                                           request.client_contract_minor))

    def _source(self, image: pb.ImageSource,
                geometry: BaseGeometry) -> pipeline.PixelSource | pipeline.SlideSource:
        if image.WhichOneof("source") == "slide":
            return pipeline.SlideSource(self._slide_path(image.slide.path),
                                        image.slide.pixel_size_um or None)
        pixels = image.pixels
        which = pixels.WhichOneof("data")
        if which == "upload_id":
            data = self.uploads.get(pixels.upload_id)
        elif which == "encoded" and pixels.encoded:
            data = pixels.encoded
        else:
            raise InvalidInput("the region has no pixels: send encoded image bytes or an "
                               "upload id")
        _check_declared_size(data, geometry, pixels.downsample)
        return pipeline.PixelSource(decode_image(data, self.limits.max_roi_pixels),
                                    pixels.origin_x, pixels.origin_y,
                                    pixels.downsample, pixels.pixel_size_um,
                                    pixels.image_width or None, pixels.image_height or None)

    def _slide_path(self, path_text: str) -> Path:
        if not self.slide_roots:
            raise Forbidden("this server reads no slide files (it was started without "
                            "--slide-root): send the region's pixels instead")
        if len(path_text) > MAX_NAME_CHARS or "\0" in path_text:
            raise InvalidInput(f"the slide path {echo(path_text)} is not a file path")
        path = Path(path_text)
        if not path.is_absolute():
            raise InvalidInput(f"the slide path must be absolute, got {echo(path_text)}")
        try:
            resolved = path.resolve()
            inside = any(resolved.is_relative_to(root) for root in self.slide_roots)
            is_file = inside and resolved.is_file()
        except (OSError, RuntimeError) as error:  # a name too long, a symlink loop
            raise NotFound(f"slide file {echo(path_text)} cannot be opened on the server: "
                           f"{error.strerror if isinstance(error, OSError) else error}") from None
        if not inside:
            raise Forbidden(f"{echo(path_text)} is outside the directories this server may read")
        if not is_file:
            raise NotFound(f"slide file {echo(path_text)} does not exist on the server")
        return resolved


def threaded(work: Callable[[Callable[[Any], None], Callable[[], bool]], None],
             should_stop: Callable[[], bool], name: str) -> Iterator[Any]:
    """What `work(emit, stop)`, run in a thread of its own, emits, as it emits it; then what
    it raised, if anything. `stop()` says when `should_stop` does or the caller closed the
    iterator (a gRPC stream the client cancelled)."""
    events: queue.Queue = queue.Queue()
    closed = threading.Event()
    end = object()

    def run() -> None:
        try:
            work(events.put, lambda: closed.is_set() or should_stop())
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            events.put(error)
        finally:
            events.put(end)

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        while (item := events.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        closed.set()


def check_contract(major: int, minor: int) -> None:
    """VersionMismatch when a client states another major version of the contract."""
    if major and major != CONTRACT_MAJOR:
        newer = "server" if major > CONTRACT_MAJOR else "client"
        raise VersionMismatch(
            f"the client speaks roiseg contract {major}.{minor}, this server "
            f"{CONTRACT_MAJOR}.{CONTRACT_MINOR} (roiseg {__version__}): update the {newer}")


def _check_names(what: str, names: Sequence[str]) -> None:
    if len(names) > MAX_NAMES:
        raise InvalidInput(f"the request names {len(names)} {what}; at most {MAX_NAMES}")
    for name in names:
        if len(name) > MAX_NAME_CHARS // 16:
            raise InvalidInput(f"{what}: {echo(name)} is too long to be one")


def _check_pixels(pixels: pb.RegionPixels) -> None:
    """Checks the numbers a client states about the pixels it sends."""
    if not (0 < pixels.downsample <= MAX_DOWNSAMPLE):
        raise InvalidInput(f"the downsample must be a number above 0 and at most "
                           f"{MAX_DOWNSAMPLE:g}, got {pixels.downsample}")
    if not all(abs(v) <= roi.MAX_COORDINATE for v in (pixels.origin_x, pixels.origin_y)):
        raise InvalidInput("the region's origin must be finite image coordinates, got "
                           f"{pixels.origin_x}, {pixels.origin_y}")
    if max(pixels.image_width, pixels.image_height) > MAX_IMAGE_SIDE:
        raise InvalidInput(f"the image size {pixels.image_width} x {pixels.image_height} is not "
                           "an image's")


def _check_declared_size(data: bytes, geometry: BaseGeometry, downsample: float) -> None:
    """TooLarge, before decoding, when the sent image declares far more pixels than the ROI's
    bounding box needs at its downsample (a small image can declare a huge size)."""
    width, height = image_size(data)
    x0, y0, x1, y1 = geometry.bounds
    needed = (math.ceil((x1 - x0) / downsample) + 2) * (math.ceil((y1 - y0) / downsample) + 2)
    if width * height > 4 * needed + SPARE_DECODE_PIXELS:
        raise TooLarge(f"the image sent is {width} x {height} px, but the ROI needs only about "
                       f"{needed / 1e6:.1f} megapixels of it: send the pixels of the ROI's "
                       "bounding box only")


def model_info(card: ModelCard, is_default_version: bool = True) -> pb.ModelInfo:
    """The contract's description of a card (without its `versions`)."""
    return pb.ModelInfo(
        id=card.id, name=card.name, description=card.description, version=card.version,
        checkpoint_sha256=card.sha256, architecture=card.architecture, encoder=card.encoder,
        mpp=card.mpp, tile_size=card.tile_size, overlap=card.overlap,
        classes=[pb.ClassInfo(index=c.index, name=c.name, color=pb.Color(r=c.color[0],
                                                                           g=c.color[1],
                                                                           b=c.color[2]),
                              catch_all=c.catch_all)
                 for c in card.classes],
        trained_on=card.trained_on, tumor_class=card.tumor_class or "",
        metrics={k: str(v) for k, v in card.metrics.items()},
        fine_tuned_from=card.fine_tuned_from, is_default_version=is_default_version)


#: The contract minor version from which catch-all classes are left out by default.
_CATCH_ALL_MINOR = 4


def _options(message: pb.SegmentOptions, client_minor: int = CONTRACT_MINOR) -> pipeline.Options:
    """The pipeline's options for a request's; a client of contract 1.3 or older (which knows
    no catch-all classes) gets every class when it names none."""
    h = message.hysteresis
    return pipeline.Options(
        classes=tuple(dict.fromkeys(message.classes)),
        min_area_um2=message.min_area_um2 if message.HasField("min_area_um2") else 0.0,
        min_hole_um2=message.min_hole_um2 if message.HasField("min_hole_um2") else 0.0,
        simplify_um=message.simplify_um if message.HasField("simplify_um") else None,
        hysteresis=pipeline.Hysteresis(
            enabled=h.enabled,
            low=h.low if h.HasField("low") else pipeline.DEFAULT_HYSTERESIS_LOW,
            high=h.high if h.HasField("high") else pipeline.DEFAULT_HYSTERESIS_HIGH),
        include_background=message.include_background,
        allow_upsample=message.allow_upsample,
        confidence_map=message.confidence_map,
        review_below=message.review_below if message.HasField("review_below") else None,
        class_names=dict(message.class_names),
        all_classes=message.all_classes or 0 < client_minor < _CATCH_ALL_MINOR)


def _confidence_map(confidence: pipeline.Confidence | None) -> pb.ConfidenceMap | None:
    if confidence is None:
        return None
    height, width = confidence.image.shape
    t = confidence.transform
    return pb.ConfidenceMap(width=width, height=height, origin_x=t.origin_x,
                            origin_y=t.origin_y, downsample_x=t.scale_x, downsample_y=t.scale_y,
                            png=cv2.imencode(".png", confidence.image)[1].tobytes())


def _output_events(output: pipeline.ModelOutput, device: str) -> Iterator[pb.SegmentEvent]:
    card = output.card
    text = json.dumps(output.feature_collection, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")
    for start in range(0, len(text), GEOJSON_CHUNK_BYTES):
        yield pb.SegmentEvent(geojson_chunk=pb.GeoJsonChunk(
            model_id=card.id, data=text[start:start + GEOJSON_CHUNK_BYTES]))
    t = output.timings
    x, y, w, h = output.region
    yield pb.SegmentEvent(model_result=pb.ModelResult(
        model_id=card.id, model_version=card.version, checkpoint_sha256=card.sha256,
        feature_count=len(output.features),
        class_areas=[pb.ClassArea(name=name, area_um2=area, features=count)
                     for name, (area, count) in output.class_areas.items()],
        execution=pb.Execution(
            mpp_used=(output.mpp_x + output.mpp_y) / 2, source_mpp=output.source_mpp,
            level=output.level, level_downsample=output.level_downsample,
            region=pb.Rect(x=x, y=y, width=w, height=h),
            raster_width=output.shape[1], raster_height=output.shape[0],
            tiles=output.tiles, upsampled=output.upsampled,
            device=device,
            timings=pb.Timings(read_s=t.read_s, tissue_s=t.tissue_s, inference_s=t.inference_s,
                               model_s=t.model_s, postprocess_s=t.postprocess_s,
                               vectorize_s=t.vectorize_s, total_s=t.total_s)),
        confidence=_confidence_map(output.confidence), notices=output.notices))


class _Malformed:
    """A request message that did not parse."""


def _parser(message_type: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return _Malformed()
    return parse


def _refuse_malformed(request: Any, context: grpc.ServicerContext) -> Any:
    if isinstance(request, _Malformed):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      "the request is not a roiseg.v1 message: use a roiseg client or the stubs "
                      "generated from protos/roiseg/v1/segmentation.proto")
    return request


def _checked(behaviour: Callable, request_streaming: bool) -> Callable:
    """`behaviour` receiving only requests that parsed; the others end the call with
    INVALID_ARGUMENT (gRPC's own parsing would answer INTERNAL)."""
    if request_streaming:
        return lambda requests, context: behaviour(
            (_refuse_malformed(r, context) for r in requests), context)
    return lambda request, context: behaviour(_refuse_malformed(request, context), context)


def _segmentation_handlers(service: SegmentationService) -> grpc.GenericRpcHandler:
    """The contract's methods, from its service descriptor, served by `service`."""
    kinds = {(False, False): grpc.unary_unary_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler,
             (False, True): grpc.unary_stream_rpc_method_handler,
             (True, True): grpc.stream_stream_rpc_method_handler}
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["Segmentation"].methods:
        request_type = GetMessageClass(method.input_type)
        response_type = GetMessageClass(method.output_type)
        make = kinds[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            _checked(getattr(service, method.name), method.client_streaming),
            request_deserializer=_parser(request_type),
            response_serializer=response_type.SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


class _Watchdog:
    """Cancels a call that receives nothing for `idle_s` or lasts longer than `total_s`,
    so a stalled client cannot hold a server thread; `ended` says why it did."""

    def __init__(self, context: grpc.ServicerContext, idle_s: float, total_s: float) -> None:
        self._context = context
        self._idle_s, self._total_s = idle_s, total_s
        self._touched = self._started = time.monotonic()
        self._done = threading.Event()
        self.ended: str | None = None

    def __enter__(self) -> _Watchdog:
        threading.Thread(target=self._watch, name="roiseg-upload-watchdog", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def touch(self) -> None:
        self._touched = time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self._idle_s / 4)):
            now = time.monotonic()
            if now - self._touched > self._idle_s:
                self.ended = f"the upload sent nothing for {self._idle_s:g} s"
            elif now - self._started > self._total_s:
                self.ended = f"the upload took longer than {self._total_s:g} s"
            else:
                continue
            self._context.cancel()
            return


class _BearerToken(grpc.ServerInterceptor):
    """Refuses the Segmentation calls that lack `authorization: Bearer <token>`; health
    checks and reflection stay open."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        given = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return handler
        return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                        "this roiseg server needs an access token: set the bearer token the "
                        "server was started with in the client's server settings")


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
             message: str) -> grpc.RpcMethodHandler:
    def refuse(request, context):
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def create_server(service: SegmentationService, address: str = "127.0.0.1:0",
                  tls: tuple[bytes, bytes] | None = None,
                  token: str | None = None,
                  health: Health | None = None) -> tuple[grpc.Server, int]:
    """A server with the service, health checking and reflection, not yet started; returns
    it with the bound port. `tls` is (PEM certificate chain, PEM private key); `token`
    makes the Segmentation calls require `authorization: Bearer <token>`; `health` (default: a
    new one) reports the server SERVING, and NOT_SERVING once drained."""
    size = service.limits.max_message_bytes
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=service.limits.rpc_threads,
                                                    thread_name_prefix="roiseg-rpc"),
                         interceptors=[_BearerToken(token)] if token else [],
                         options=[("grpc.max_receive_message_length", size),
                                  ("grpc.max_send_message_length", size)])
    server.add_generic_rpc_handlers((_segmentation_handlers(service),))
    (health or Health((SERVICE_NAME,))).add_to(server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
    if tls:
        certificate_chain, private_key = tls
        port = server.add_secure_port(
            address, grpc.ssl_server_credentials([(private_key, certificate_chain)]))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port


def _about(request: pb.SegmentRequest) -> str:
    """A Segment request in a few words for the access log: models and ROI size."""
    models = ",".join(echo(m, 40) for m in request.model_ids[:4]) or "default"
    xy = [v for p in request.roi.polygons[:100] for v in p.shell.xy[:20_000]]
    xs, ys = xy[0::2], xy[1::2]
    size = f"{max(xs) - min(xs):.0f}x{max(ys) - min(ys):.0f} px" if xs and ys else "no ROI"
    return f"models {models} ROI {size}"


def _answered(context: grpc.ServicerContext, name: str,
              call: Callable[[Callable[[], bool]], Any], about: str = "") -> Any:
    """`call(should_stop)`'s answer; its errors end the call with their status."""
    with _reported(context, name, f"in {name}", about) as should_stop:
        return call(should_stop)
    raise AssertionError("an error ended the call")


def _streamed(context: grpc.ServicerContext, name: str, doing: str,
              events: Callable[[Callable[[], bool]], Iterator[Any]],
              about: str = "") -> Iterator[Any]:
    """`events(should_stop)`, which a client's cancel or deadline stops; its errors end the
    call with their status."""
    with _reported(context, name, f"while {doing}", about) as should_stop:
        yield from events(should_stop)


@contextmanager
def _reported(context: grpc.ServicerContext, name: str, doing: str,
              about: str = "") -> Iterator[Callable[[], bool]]:
    """A should_stop for the call's work, true once the client is gone; the work's errors end
    the call with their status (INTERNAL for a fault, logged). Each call ends with an access
    log line: peer, call, `about` it, seconds, status."""
    stopped = threading.Event()
    context.add_callback(stopped.set)
    started, status = time.monotonic(), "CANCELLED"
    try:
        yield stopped.is_set
        status = "OK"
    except RoisegError as error:
        status = status_of(error).name
        log.info("%s refused: %s (%s)", name, error, status)
        _abort(context, error)
    except Exception:  # noqa: BLE001 - the server keeps serving and says what happened
        status = "INTERNAL"
        log.exception("%s failed", name)
        context.abort(grpc.StatusCode.INTERNAL,
                      f"the server failed {doing}; its log has the details")
    finally:
        access_log.info("%s %s%s %.2f s %s", context.peer(), name, f" {about}" if about else "",
                        time.monotonic() - started, status)


def _abort(context: grpc.ServicerContext, error: RoisegError) -> NoReturn:
    """Ends the call with `error`'s status and message, cut to `MAX_MESSAGE_CHARS` (`abort`
    raises)."""
    message = str(error)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 1] + "…"
    context.abort(status_of(error), message)
    raise AssertionError("grpc's abort returned")
