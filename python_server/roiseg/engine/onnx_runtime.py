"""ONNX Runtime execution of a model on the CPU (`roiseg serve --runtime`).

The model's forward pass with its input normalisation and softmax is exported to ONNX once per
checkpoint (and per exporter version), cached in `cache_dir()`, and checked against torch on a
reference batch before it is used: a model whose export fails or disagrees stays on torch, with
a warning in the log. torch stays the runtime on CUDA.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from roiseg.engine.models import LoadedModel, ModelCard
from roiseg.io.files import write_atomic

log = logging.getLogger(__name__)

#: Runtimes a registry can be asked for: "auto" is ONNX Runtime on the CPU when it is installed
#: and the export verifies, torch otherwise.
RUNTIMES = ("auto", "torch", "onnx")
#: Part of the cache key: bump when the exported graph changes.
EXPORT_VERSION = 1
#: The export is used only when its probabilities are within this of torch's on the reference
#: batch and its most probable class agrees on at least `MIN_AGREEMENT` of the pixels.
MAX_PROBABILITY_DIFFERENCE = 1e-3
MIN_AGREEMENT = 0.999
#: Exports kept in the cache; the least recently used go first.
MAX_CACHED = 24
_REFERENCE_SIZE = 256
_export_lock = threading.Lock()


def available() -> bool:
    """Whether ONNX Runtime (and the exporter's onnx package) are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_dir() -> Path:
    """Where exported models are kept: $ROISEG_CACHE_DIR/onnx, else ~/.cache/roiseg/onnx."""
    root = os.environ.get("ROISEG_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "roiseg") / "onnx"


class _Exported(torch.nn.Module):
    """The model as exported: (N, H, W, 3) float pixels 0..255 in, (N, C, H, W) probabilities
    out."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: LoadedModel) -> None:
        super().__init__()
        self.module = model.module
        self.register_buffer("mean", torch.tensor(model.card.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(model.card.std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.permute(0, 3, 1, 2) / 255 - self.mean) / self.std
        return self.module(x).float().softmax(dim=1)


@dataclass(frozen=True)
class Verification:
    """How the export compared with torch on the reference batch."""

    max_difference: float
    agreement: float

    @property
    def ok(self) -> bool:
        return self.max_difference <= MAX_PROBABILITY_DIFFERENCE and \
            self.agreement >= MIN_AGREEMENT


class OnnxSession:
    """An ONNX Runtime session of an exported model: `probabilities` as `LoadedModel`'s."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options,
                                             providers=["CPUExecutionProvider"])

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, C, H, W) float32 probabilities."""
        (out,) = self._session.run(None, {"pixels": batch.astype(np.float32)})
        return out


def cache_key(card: ModelCard) -> str:
    """What the export depends on: the checkpoints, how they are built and normalised, the
    exporter's version and torch's."""
    fields = {"members": [(m.sha256, m.architecture, m.encoder, m.extra) for m in card.members],
              "format": card.format, "classes": len(card.classes), "mean": card.mean,
              "std": card.std, "export": EXPORT_VERSION,
              "torch": ".".join(torch.__version__.split(".")[:2])}
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def reference_batch() -> np.ndarray:
    """Two tiles of smooth colour noise (a fixed seed), the kind of structure the checks need."""
    rng = np.random.default_rng(20261202)
    tiles = []
    for sigma in (3, 12):
        noise = rng.integers(0, 256, (_REFERENCE_SIZE, _REFERENCE_SIZE, 3), dtype=np.uint8)
        tiles.append(cv2.GaussianBlur(noise, (0, 0), sigma))
    return np.stack(tiles)


def verify(session: OnnxSession, model: LoadedModel) -> Verification:
    """The export's probabilities against torch's on the reference batch."""
    batch = reference_batch()
    expected = model.probabilities(batch).numpy()
    found = session.probabilities(batch)
    if found.shape != expected.shape:
        return Verification(float("inf"), 0.0)
    return Verification(float(np.abs(found - expected).max()),
                        float((found.argmax(axis=1) == expected.argmax(axis=1)).mean()))


def onnx_session(model: LoadedModel, threads: int | None = None) -> OnnxSession | None:
    """A verified ONNX Runtime session of a CPU model, exported on first use and cached; None
    (with a warning) when it cannot be exported or disagrees with torch."""
    card = model.card
    directory = cache_dir()
    key = cache_key(card)
    path, record = directory / f"{key}.onnx", directory / f"{key}.json"
    try:
        with _export_lock:
            if path.is_file():
                path.touch()  # recently used
            else:
                _export(model, path)
                _prune(directory)
        session = OnnxSession(path, threads)
        check = verify(session, model)
    except Exception as error:  # noqa: BLE001 - any exporter or runtime failure: stay on torch
        log.warning("model %s: ONNX export failed, running on torch: %s: %s", card.id,
                    type(error).__name__, str(error)[:300])
        return None
    write_atomic(record, json.dumps({"model": card.id, "version": card.version,
                                     "max_difference": check.max_difference,
                                     "agreement": check.agreement, "ok": check.ok}) + "\n")
    if not check.ok:
        log.warning("model %s: its ONNX export differs from torch (probabilities by up to %.2g, "
                    "most probable class agreeing on %.4f of the pixels): running on torch",
                    card.id, check.max_difference, check.agreement)
        return None
    log.info("model %s runs on ONNX Runtime (%s; probabilities within %.1g of torch)",
             card.id, path.name, check.max_difference)
    return session


def _export(model: LoadedModel, path: Path) -> None:
    """Exports the model (dynamic batch and tile size) to `path`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _Exported(model).eval()
    example = torch.zeros(1, 64, 64, 3)
    handle, temporary = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o644)  # as any cache file
    try:
        kwargs: dict[str, Any] = {
            "input_names": ["pixels"], "output_names": ["probabilities"],
            "dynamic_axes": {"pixels": {0: "n", 1: "h", 2: "w"},
                             "probabilities": {0: "n", 2: "h", 3: "w"}},
            "opset_version": 17, "dynamo": False}
        # the TorchScript-based exporter: no onnxscript needed, dynamic tile sizes; torch
        # warns that it is deprecated (if a torch drops it, models stay on torch)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(wrapper, (example,), temporary, **kwargs)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _prune(directory: Path) -> None:
    """Keeps the `MAX_CACHED` most recently used exports (and their records)."""
    exports = sorted(directory.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in exports[MAX_CACHED:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
