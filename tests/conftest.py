"""Shared fixtures: real slides, the embedded default model, a real loopback gRPC server."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import tifffile
import torch
from roiseg.client.connection import Client
from roiseg.engine.models import DEFAULT_MODELS_DIR, ModelRegistry, select_device
from roiseg.server.service import Limits, SegmentationService, create_server

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SLIDES = SHARED / "slides"
GLAS = SHARED / "glas-train"
CMU = SLIDES / "cmu_small_region.svs"
CMU_MPP = 0.499

def same_segmentation(collection: dict) -> dict:
    """A FeatureCollection without what differs between two runs of the same segmentation
    (each object's id and the run id), for comparing runs."""
    features = []
    for feature in collection["features"]:
        feature = {k: v for k, v in feature.items() if k != "id"}
        properties = dict(feature["properties"])
        properties["metadata"] = {k: v for k, v in properties["metadata"].items()
                                  if k != "roiseg.run_id"}
        features.append({**feature, "properties": properties})
    return {**collection, "features": features}


def swatch_is_hollow(picture: np.ndarray, color: tuple[int, int, int]) -> bool:
    """Whether the key under an overlay (`picture`, RGB) shows the class of `color` as an
    outlined swatch (a class drawn as outlines) rather than a filled one."""
    from roiseg.io import overlay

    legend = picture[-overlay.LEGEND_PX:]
    rows, columns = np.nonzero((legend == color).all(axis=2))
    assert rows.size >= 20, f"no swatch of {color} in the key"
    middle = legend[(rows.min() + rows.max()) // 2, (columns.min() + columns.max()) // 2]
    return bool((middle == 255).all())


# tests/qupath runs the extension inside real QuPath; make test-qupath runs it after building the
# extension (qupath_extension/build-qupath-module.sh sets ROISEG_QUPATH_HOMES and ROISEG_QUPATH_JAR)
collect_ignore = [] if os.environ.get("ROISEG_QUPATH_HOMES") else ["qupath"]


def pytest_collection_modifyitems(items):
    if not SHARED.is_dir():
        raise pytest.UsageError(f"the real test data is missing: expected {SHARED}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on 2 shared cores run faster on one thread than oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cmu_level0() -> np.ndarray:
    """The CMU SVS level 0 as RGB (2967 x 2220)."""
    return tifffile.imread(CMU, series=0, level=0)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """The default model plus a second id of it at 2 µm/px, for multi-model requests."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(DEFAULT_MODELS_DIR, root / "default")
    card = json.loads((DEFAULT_MODELS_DIR / "model.json").read_text())
    coarse = root / "coarse"
    shutil.copytree(DEFAULT_MODELS_DIR, coarse)  # its checkpoints, an ensemble's included
    card.update(id="glas-coarse", name="GlaS glands at 2 µm/px", mpp=2.0)
    (coarse / "model.json").write_text(json.dumps(card))
    return root


@pytest.fixture(scope="session")
def registry(models_dir) -> ModelRegistry:
    card = json.loads((DEFAULT_MODELS_DIR / "model.json").read_text())
    return ModelRegistry([models_dir], select_device("cpu"), card["id"])


@pytest.fixture(scope="session")
def service(registry) -> SegmentationService:
    return SegmentationService(registry, slide_roots=[SLIDES],
                               limits=Limits(max_message_bytes=4 << 20,
                                             max_upload_bytes=64 << 20,
                                             upload_capacity_bytes=128 << 20,
                                             max_roi_pixels=12_000_000))


@pytest.fixture(scope="session")
def address(service) -> str:
    server, port = create_server(service, "127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture()
def client(address) -> Client:
    """A client with gRPC's 4 MB default message limit."""
    with Client(address, max_message_bytes=4 << 20, timeout_s=300) as c:
        yield c


@pytest.fixture()
def channel(address) -> grpc.Channel:
    with grpc.insecure_channel(address) as ch:
        yield ch
