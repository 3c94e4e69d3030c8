"""Python client of the roiseg.v1 contract, the same calls served in-process, and `connect`,
which gives one or the other."""

from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import cv2
import grpc
import numpy as np
from shapely.geometry.base import BaseGeometry

from roiseg import CONTRACT_MAJOR, CONTRACT_MINOR
from roiseg.client.targets import (
    Target,
    balanced_service_config,
    parse_target,
    pinned_service_config,
)
from roiseg.errors import RoisegError
from roiseg.io import roi
from roiseg.server.status import status_of
from roiseg.v1 import segmentation_pb2 as pb
from roiseg.v1 import segmentation_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from roiseg.server.service import Limits, SegmentationService

#: Message size the client accepts and sends; larger images go through UploadImage.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
UPLOAD_CHUNK_BYTES = 1 << 20

log = logging.getLogger(__name__)

ProgressCallback = Callable[[pb.Progress], None]
FineTuneCallback = Callable[[pb.FineTuneProgress], None]


@dataclass(frozen=True)
class ServerAddress:
    """A roiseg server and how to reach it."""

    target: str
    tls: bool = False
    root_certificates: bytes | None = None
    token: str | None = None


@dataclass(frozen=True)
class ModelSource:
    """The model cards an in-process service serves: `directories` (none: the embedded default
    model), beside the default model when `beside_default`; on which device and runtime
    (`roiseg.engine.onnx_runtime.RUNTIMES`), with how many threads (None: the libraries')."""

    directories: tuple[Path, ...] = ()
    beside_default: bool = False
    default_model: str | None = None
    device: str = "auto"
    runtime: str = "auto"
    threads: int | None = None
    #: Run models in the lower precision their cards record as checked.
    reduced_precision: bool = False


class SegmentationError(Exception):
    """A refused or failed call: the gRPC status and the server's message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.code.name})"


@dataclass
class SegmentResult:
    """Per model: its GeoJSON FeatureCollection and what the server did."""

    feature_collections: dict[str, dict] = field(default_factory=dict)
    results: dict[str, pb.ModelResult] = field(default_factory=dict)


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of an RGB uint8 image."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError("the image could not be encoded as PNG")
    return data.tobytes()


def segment_request(geometry: BaseGeometry, image: pb.ImageSource,
                    model_ids: Sequence[str] = (),
                    options: pb.SegmentOptions | None = None) -> pb.SegmentRequest:
    """A Segment request for an ROI in full-resolution pixels."""
    return pb.SegmentRequest(model_ids=list(model_ids), image=image, roi=roi.to_proto(geometry),
                             options=options or pb.SegmentOptions(),
                             client_contract_major=CONTRACT_MAJOR,
                             client_contract_minor=CONTRACT_MINOR)


def corrections_request(geometry: BaseGeometry, image: pb.ImageSource, geojson: str, *,
                        model_id: str = "", image_id: str = "", roi_key: str = "",
                        predicted_by: str = "",
                        allow_upsample: bool = False,
                        predicted_geojson: str = "",
                        class_names: Mapping[str, str] | None = None
                        ) -> pb.SubmitCorrectionsRequest:
    """A SubmitCorrections request: the corrected annotations (QuPath GeoJSON text) of an ROI
    in full-resolution pixels, and optionally the pre-annotations they correct."""
    return pb.SubmitCorrectionsRequest(
        model_id=model_id, image=image, roi=roi.to_proto(geometry), geojson=geojson,
        image_id=image_id, roi_key=roi_key, predicted_by=predicted_by,
        allow_upsample=allow_upsample, predicted_geojson=predicted_geojson,
        class_names=dict(class_names or {}),
        client_contract_major=CONTRACT_MAJOR, client_contract_minor=CONTRACT_MINOR)


def fine_tune_result(events: Iterable[pb.FineTuneEvent],
                     on_progress: FineTuneCallback | None = None) -> pb.FineTuneResult:
    """The result at the end of a FineTune stream, its progress given to `on_progress`."""
    result = None
    for event in events:
        if event.WhichOneof("event") == "progress":
            if on_progress:
                on_progress(event.progress)
        else:
            result = event.result
    if result is None:
        raise SegmentationError(grpc.StatusCode.INTERNAL, "the fine-tuning ended without a result")
    return result


def pixels_source(*, downsample: float, origin_x: float, origin_y: float, pixel_size_um: float,
                  encoded: bytes = b"", upload_id: str = "", image_width: int = 0,
                  image_height: int = 0) -> pb.ImageSource:
    """Pixels read by the client: encoded bytes, or an id from `upload`."""
    pixels = pb.RegionPixels(downsample=downsample, origin_x=origin_x, origin_y=origin_y,
                             pixel_size_um=pixel_size_um, image_width=image_width,
                             image_height=image_height)
    if upload_id:
        pixels.upload_id = upload_id
    else:
        pixels.encoded = encoded
    return pb.ImageSource(pixels=pixels)


def slide_source(path: str, pixel_size_um: float = 0.0) -> pb.ImageSource:
    """A slide file the server reads itself (under its allowed roots)."""
    return pb.ImageSource(slide=pb.SlideFile(path=path, pixel_size_um=pixel_size_um))


def collect(events: Iterable[pb.SegmentEvent],
            on_progress: ProgressCallback | None = None) -> SegmentResult:
    """Assembles a Segment stream into per-model FeatureCollections."""
    result = SegmentResult()
    chunks: dict[str, bytearray] = {}
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "progress":
            if on_progress:
                on_progress(event.progress)
        elif kind == "geojson_chunk":
            chunks.setdefault(event.geojson_chunk.model_id, bytearray()).extend(
                event.geojson_chunk.data)
        elif kind == "model_result":
            model_id = event.model_result.model_id
            result.feature_collections[model_id] = json.loads(chunks.pop(model_id, b"") or
                                                              b'{"type":"FeatureCollection",'
                                                              b'"features":[]}')
            result.results[model_id] = event.model_result
    return result


class Client:
    """A connection to one roiseg server or several, e.g. `Client("127.0.0.1:50051")`,
    `Client("gpu1:50051,gpu2:50051")` or `Client("dns:///roiseg.lab.svc.cluster.local:50051")`
    (the forms: `roiseg.client.targets`). Calls to several servers are balanced over those that
    report healthy, and go to another one when a server is unavailable."""

    def __init__(self, target: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 timeout_s: float | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, token: str | None = None) -> None:
        """`tls` (or `root_certificates`, PEM, to trust a private CA) connects over TLS;
        `token` is sent as `authorization: Bearer <token>` on every call. A malformed target
        raises `roiseg.client.targets.TargetError`."""
        self.target = target
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self._target: Target = parse_target(target)
        self._credentials = (grpc.ssl_channel_credentials(root_certificates)
                             if tls or root_certificates else None)
        if token and not self._credentials and not self._target.loopback:
            log.warning("the access token is sent unencrypted to %s: anyone on the network "
                        "can read it; serve with --tls-cert/--tls-key and connect with --tls",
                        target)
        self._channel = self._open(balanced_service_config())
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub = pb_grpc.SegmentationStub(self._channel)
        #: Uploads and the requests naming them stay on one server (see `_pinned`).
        self._pinned_channel: grpc.Channel | None = None
        self._pinned_stub: pb_grpc.SegmentationStub | None = None
        self._pinned_lock = threading.Lock()
        #: With several servers, the last upload (id, bytes), sent again if its server is gone
        #: when it is used.
        self._last_upload: tuple[str, bytes] | None = None

    def _open(self, service_config: str) -> grpc.Channel:
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.service_config", service_config),
                   ("grpc.enable_retries", 1)]
        if self._credentials:
            return grpc.secure_channel(self._target.grpc_target, self._credentials, options)
        return grpc.insecure_channel(self._target.grpc_target, options)

    def _pinned(self) -> pb_grpc.SegmentationStub:
        """The stub for uploads and the requests that name them: with several servers, a
        second channel that keeps to one server (an upload lives on the server that received
        it), else the only one."""
        if not self._target.several:
            return self._stub
        with self._pinned_lock:
            if self._pinned_stub is None:
                self._pinned_channel = self._open(pinned_service_config())
                self._pinned_stub = pb_grpc.SegmentationStub(self._pinned_channel)
            return self._pinned_stub

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._last_upload = None
        self._channel.close()
        if self._pinned_channel is not None:
            self._pinned_channel.close()

    def server_info(self) -> pb.ServerInfo:
        return self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest())

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self._call(self._stub.ListModels, pb.ListModelsRequest()).models)

    def upload(self, data: bytes) -> str:
        """Uploads an encoded image in chunks; returns its upload id."""
        def messages() -> Iterator[pb.UploadImageRequest]:
            yield pb.UploadImageRequest(header=pb.UploadHeader(total_bytes=len(data)))
            for start in range(0, len(data), UPLOAD_CHUNK_BYTES):
                yield pb.UploadImageRequest(chunk=data[start:start + UPLOAD_CHUNK_BYTES])
        upload_id = self._call(self._pinned().UploadImage, messages()).upload_id
        if self._target.several:
            self._last_upload = (upload_id, data)
        return upload_id

    def pixels_source(self, encoded: bytes, **fields: Any) -> pb.ImageSource:
        """Pixels inline when they fit in one message, else uploaded first."""
        if len(encoded) > self.max_message_bytes // 2:
            return pixels_source(upload_id=self.upload(encoded), **fields)
        return pixels_source(encoded=encoded, **fields)

    def segment(self, request: pb.SegmentRequest,
                on_progress: ProgressCallback | None = None) -> SegmentResult:
        def call(stub: pb_grpc.SegmentationStub, request: pb.SegmentRequest) -> SegmentResult:
            return collect(stub.Segment(request, timeout=self.timeout_s,
                                        metadata=self._metadata), on_progress)
        return self._with_pixels(request, call)

    def submit_corrections(
            self, request: pb.SubmitCorrectionsRequest) -> pb.SubmitCorrectionsResponse:
        """Stores the corrections as a training example (see `corrections_request`)."""
        return self._with_pixels(request, lambda stub, r: stub.SubmitCorrections(
            r, timeout=self.timeout_s, metadata=self._metadata))

    def _with_pixels(self, request: Any, call: Callable[[Any, Any], Any]) -> Any:
        """`call(stub, request)` on the server that holds the request's upload, if it names
        one; when that server no longer has it (it stopped, and the pinned channel moved to
        another), the client's last upload is sent again and the call repeated once."""
        upload_id = request.image.pixels.upload_id if request.image.HasField("pixels") else ""
        stub = self._pinned() if upload_id else self._stub
        try:
            return call(stub, request)
        except grpc.RpcError as error:
            last = self._last_upload
            if not (error.code() == grpc.StatusCode.NOT_FOUND and last is not None
                    and last[0] == upload_id and upload_id in (error.details() or "")):
                raise _error(error) from None
        log.info("upload %s is gone with its server; uploading the image again", upload_id)
        again = type(request)()
        again.CopyFrom(request)
        again.image.pixels.upload_id = self.upload(last[1])
        try:
            return call(stub, again)
        except grpc.RpcError as error:
            raise _error(error) from None

    def list_examples(self, model_id: str = "") -> list[pb.Example]:
        return list(self._call(self._stub.ListExamples,
                               pb.ListExamplesRequest(model_id=model_id)).examples)

    def remove_example(self, example_id: str, model_id: str = "") -> pb.Example:
        return self._call(self._stub.RemoveExample, pb.RemoveExampleRequest(
            model_id=model_id, example_id=example_id)).removed

    def set_default_version(self, model_id: str) -> pb.ModelInfo:
        """Makes `id@version` the version the model's plain id selects."""
        return self._call(self._stub.SetDefaultVersion,
                          pb.SetDefaultVersionRequest(model_id=model_id))

    def retire_version(self, model_id: str) -> pb.ModelInfo:
        """Stops serving `id@version`."""
        return self._call(self._stub.RetireVersion, pb.RetireVersionRequest(model_id=model_id))

    def fine_tune_events(self, request: pb.FineTuneRequest) -> Any:
        """The FineTune stream, an iterator of events with `cancel()` (which stops the
        training; nothing is registered)."""
        request.client_contract_major = CONTRACT_MAJOR
        request.client_contract_minor = CONTRACT_MINOR
        return self._stub.FineTune(request, timeout=self.timeout_s, metadata=self._metadata)

    def fine_tune(self, request: pb.FineTuneRequest,
                  on_progress: FineTuneCallback | None = None) -> pb.FineTuneResult:
        """Fine-tunes a model on its stored examples; the new version, already served."""
        try:
            return fine_tune_result(self.fine_tune_events(request), on_progress)
        except grpc.RpcError as error:
            raise _error(error) from None

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _error(error) from None


class InProcessClient:
    """The same calls answered by a service in this process (no network)."""

    def __init__(self, service) -> None:
        self.service = service

    def __enter__(self) -> "InProcessClient":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def server_info(self) -> pb.ServerInfo:
        return self.service.GetServerInfo(pb.GetServerInfoRequest(), None)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.service.ListModels(pb.ListModelsRequest(), None).models)

    def pixels_source(self, encoded: bytes, **fields: Any) -> pb.ImageSource:
        return pixels_source(encoded=encoded, **fields)

    def segment(self, request: pb.SegmentRequest,
                on_progress: ProgressCallback | None = None) -> SegmentResult:
        with _statuses():
            return collect(self.service.segment_events(request, lambda: False), on_progress)

    def submit_corrections(
            self, request: pb.SubmitCorrectionsRequest) -> pb.SubmitCorrectionsResponse:
        with _statuses():
            return self.service.fast_track.submit(request, lambda: False)

    def list_examples(self, model_id: str = "") -> list[pb.Example]:
        with _statuses():
            return list(self.service.fast_track.examples(
                pb.ListExamplesRequest(model_id=model_id)).examples)

    def remove_example(self, example_id: str, model_id: str = "") -> pb.Example:
        with _statuses():
            return self.service.fast_track.remove(pb.RemoveExampleRequest(
                model_id=model_id, example_id=example_id)).removed

    def fine_tune(self, request: pb.FineTuneRequest,
                  on_progress: FineTuneCallback | None = None) -> pb.FineTuneResult:
        with _statuses():
            return fine_tune_result(self.service.fast_track.fine_tune_events(
                request, lambda: False), on_progress)


@contextmanager
def _statuses() -> Iterator[None]:
    """roiseg's errors as the SegmentationError a server's status would give."""
    try:
        yield
    except RoisegError as error:
        raise SegmentationError(status_of(error), str(error)) from None


def _error(error: grpc.RpcError) -> SegmentationError:
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return SegmentationError(code, f"the roiseg server is not reachable: {error.details()}; "
                                       "is it running, and are host and port right?")
    return SegmentationError(code, error.details() or code.name)


def in_process_service(models: ModelSource, slide_roots: Sequence[Path] = (),
                       limits: Limits | None = None,
                       dataset_dir: Path | None = None) -> SegmentationService:
    """A service over `models`, run in this process (imports torch); `dataset_dir` keeps the
    fast track's examples and fine-tuned versions."""
    from roiseg.engine.models import DEFAULT_MODELS_DIR, ModelRegistry, select_device
    from roiseg.server.service import Limits, SegmentationService

    beside = [DEFAULT_MODELS_DIR] if models.directories and models.beside_default else []
    registry = ModelRegistry(list(models.directories) or [DEFAULT_MODELS_DIR],
                             select_device(models.device), models.default_model, beside,
                             models.runtime, models.threads, models.reduced_precision)
    return SegmentationService(registry, slide_roots, limits or Limits(), dataset_dir)


def connect(server: ServerAddress | None, models: ModelSource,
            dataset_dir: Path | None = None) -> Client | InProcessClient:
    """A client of `server`, or of an in-process service over `models` (and `dataset_dir`)
    without one."""
    if server is None:
        return InProcessClient(in_process_service(models, dataset_dir=dataset_dir))
    return Client(server.target, tls=server.tls, root_certificates=server.root_certificates,
                  token=server.token)
