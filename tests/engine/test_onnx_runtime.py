"""The ONNX Runtime path (`--runtime`): the same segmentation as torch, exported once and
cached, refused when the export disagrees with torch."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pytest
import torch
from conftest import GLAS
from roiseg.engine import onnx_runtime
from roiseg.engine.inference import predict
from roiseg.engine.models import DEFAULT_MODELS_DIR, ModelRegistry, build_smp_model, select_device


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROISEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def registry(runtime: str, threads: int | None = None) -> ModelRegistry:
    return ModelRegistry([DEFAULT_MODELS_DIR], select_device("cpu"), runtime=runtime,
                         threads=threads)


def tissue() -> np.ndarray:
    image = cv2.imread(str(GLAS / "images" / "train_5.png"))[..., ::-1]
    return np.ascontiguousarray(image[:400, :600])


def test_onnx_segments_as_torch_does_and_is_exported_once(cache):
    torch_registry = registry("torch")
    torch_model = torch_registry.get(torch_registry.default_id)
    assert torch_model.onnx is None
    onnx_registry = registry("onnx", threads=1)
    onnx_model = onnx_registry.get(onnx_registry.default_id)
    assert onnx_model.onnx is not None
    (exported,) = cache.glob("*.onnx")
    image = tissue()
    expected, found = predict(torch_model, image), predict(onnx_model, image)
    assert (found.class_map == expected.class_map).mean() >= 0.9999
    assert np.abs(found.probability.astype(int) - expected.probability.astype(int)).max() <= 1
    # a second server reuses the export
    stamp = exported.stat().st_mtime_ns
    again = registry("auto").get(onnx_registry.default_id)
    assert again.onnx is not None and list(cache.glob("*.onnx")) == [exported]
    assert exported.read_bytes()[:64] and exported.stat().st_mtime_ns >= stamp


def test_an_export_that_disagrees_with_torch_is_not_used(cache, caplog):
    reference = registry("torch")
    model = reference.get(reference.default_id)
    key = onnx_runtime.cache_key(model.card)
    # another model's weights where this model's export should be
    torch.manual_seed(0)
    other = build_smp_model("Unet", "mobilenet_v2", len(model.card.classes))
    impostor = type(model)(model.card, other.eval(), model.device)
    onnx_runtime._export(impostor, cache / f"{key}.onnx")
    with caplog.at_level(logging.WARNING):
        fallback = registry("onnx").get(reference.default_id)
    assert fallback.onnx is None
    assert "differs from torch" in caplog.text and "running on torch" in caplog.text
    # a damaged file: the same
    (cache / f"{key}.onnx").write_bytes(b"not a model")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert registry("auto").get(reference.default_id).onnx is None
    assert "ONNX export failed" in caplog.text


def test_runtime_and_threads_are_checked():
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        registry("tensorrt")
    with pytest.raises(ValueError, match="--threads must be 1 or more"):
        registry("torch", threads=0)


def test_the_cache_keeps_the_most_recently_used_exports(tmp_path):
    for age in range(onnx_runtime.MAX_CACHED + 5):
        for suffix in (".onnx", ".json"):
            path = tmp_path / f"export{age:02d}{suffix}"
            path.write_text("x")
            os.utime(path, (1_000_000 + age, 1_000_000 + age))
    onnx_runtime._prune(tmp_path)
    kept = sorted(p.stem for p in tmp_path.glob("*.onnx"))
    assert kept == [f"export{age:02d}" for age in range(5, onnx_runtime.MAX_CACHED + 5)]
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == kept
