"""TIAToolbox side of `benchmarks/peers.py` (not a test): runs in TIAToolbox's own virtual
environment, started by peers.py, never on its own.

    build/peers-venv/bin/python benchmarks/peers_tiatoolbox.py TIFF TILE STRIDE BATCH OUT

Builds the default model's network exactly as roiseg does (`roiseg.engine.models.load_model`:
same checkpoints, same ensemble), wraps it as a TIAToolbox `ModelABC` (roiseg's ImageNet
normalisation, softmax) and segments TIFF with `SemanticSegmentor` in WSI mode at the file's
baseline resolution (TILE px patches every STRIDE px, BATCH patches a pass, TIAToolbox's own
tissue mask and merging of overlapping patches, class map saved as zarr). It prints "ready",
then answers each line "run" on stdin with the seconds of one `SemanticSegmentor.run` (model
already built), and "save" with the path of the last class map as .npy in OUT. Answers start
with "= " (TIAToolbox logs to stdout too).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from roiseg.engine.models import DEFAULT_MODELS_DIR, ModelRegistry
from tiatoolbox.models.engine.io_config import IOSegmentorConfig
from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor
from tiatoolbox.models.models_abc import ModelABC


class RoisegNetwork(ModelABC):
    """The roiseg card's network as TIAToolbox wants a model: NHWC uint8 batches in,
    NHWC class probabilities out, argmax as post-processing."""

    def __init__(self, module: torch.nn.Module, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        super().__init__()
        self.network = module
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        x = (imgs.permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std
        return self.network(x).softmax(dim=1)

    @staticmethod
    def infer_batch(model: torch.nn.Module, batch_data: torch.Tensor, *,
                    device: str) -> np.ndarray:
        model.eval()
        with torch.inference_mode():
            probs = model(batch_data.to(device))
        return probs.permute(0, 2, 3, 1).cpu().numpy()

    def postproc(self, image: np.ndarray) -> np.ndarray:
        return np.argmax(image, axis=-1)


def main() -> int:
    tiff, tile, stride, batch, out = (Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                      int(sys.argv[4]), Path(sys.argv[5]))
    registry = ModelRegistry([DEFAULT_MODELS_DIR], torch.device("cpu"), runtime="torch")
    loaded = registry.get(registry.default_id)
    network = RoisegNetwork(loaded.module, loaded.card.mean, loaded.card.std).eval()
    segmentor = SemanticSegmentor(model=network, batch_size=batch, device="cpu", verbose=False)
    save_dir = out / "tiatoolbox"
    baseline = [{"units": "baseline", "resolution": 1.0}]
    ioconfig = IOSegmentorConfig(input_resolutions=baseline, output_resolutions=baseline,
                                 patch_input_shape=(tile, tile), patch_output_shape=(tile, tile),
                                 stride_shape=(stride, stride), save_resolution=baseline[0])
    last = None

    def run() -> float:
        nonlocal last
        shutil.rmtree(save_dir, ignore_errors=True)
        t0 = time.perf_counter()
        result = segmentor.run([tiff], patch_mode=False, save_dir=save_dir, overwrite=True,
                               output_type="zarr", ioconfig=ioconfig, batch_size=batch,
                               verbose=False)
        seconds = time.perf_counter() - t0
        last = result
        return seconds

    print("= ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            print(f"= {run():.4f}", flush=True)
        elif command == "save":
            import zarr

            (path,) = last.values() if isinstance(last, dict) else (last,)
            store = zarr.open(str(path), mode="r")
            predictions = np.asarray(store["predictions"])
            np.save(out / "tiatoolbox_class_map.npy", predictions.astype(np.uint8))
            print(f"= {out / 'tiatoolbox_class_map.npy'}", flush=True)
        elif command == "quit":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
