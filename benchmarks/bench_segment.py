"""Benchmark (not a test): end-to-end Segment time against pure model time, and the
server's peak memory for large ROIs.

    python benchmarks/bench_segment.py [--device auto] [--runtime auto] [--size 2048 ...]
        [--large 16000 ...] [--layout full|islands] [--runtimes 1024]

1. A `--size` x `--size` px region at model resolution (real H&E from the demo slide,
   mirrored to size; several sizes may be given) is segmented through a real gRPC server on
   loopback. The same tiles are then run through the model alone, in the same process, and
   the ratio is printed, with the request's own forward time over its end-to-end time.
2. For each `--large` side, a pyramidal tiled JPEG TIFF at the model's 1 µm/px is written
   tile by tile (`--layout full`: the same tissue everywhere; `islands`: the same 16 Mpx of
   tissue at every size, on glass) and segmented whole by a `roiseg serve` process reading
   the file itself (one server per size); its peak resident memory (VmHWM) and the request's
   stage times are printed. `--large 0` skips this part.
3. On the CPU, the model's forward passes over the tiles of a `--runtimes` x `--runtimes` px
   region with torch, with ONNX Runtime and with torch in the reduced precision the card
   records as checked (`--reduced-precision`), at 1 thread and at 2, interleaved; the
   speed-ups are printed. `--runtimes 0` skips this part.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile
import torch
from roiseg.client.connection import Client, encode_png, segment_request, slide_source
from roiseg.engine.models import DEFAULT_MODELS_DIR, ModelRegistry, select_device
from roiseg.engine.tiling import pad, plan_tiles
from roiseg.server.service import Limits, SegmentationService, create_server
from roiseg.v1 import segmentation_pb2 as pb
from shapely.geometry import box

SLIDE = Path(__file__).resolve().parents[1] / "examples" / "data" / "cmu_small_region.svs"
SLIDE_MPP = 0.499


def tissue(size: int, mpp: float) -> np.ndarray:
    """Real H&E at `mpp`, mirrored until it is size x size."""
    level0 = tifffile.imread(SLIDE, series=0, level=0)[900:2700, 700:2000]
    scale = SLIDE_MPP / mpp
    patch = cv2.resize(level0, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    reps = (size // patch.shape[0] + 2, size // patch.shape[1] + 2)
    row = np.concatenate([patch, patch[:, ::-1]] * (reps[1] // 2 + 1), axis=1)
    block = np.concatenate([row, row[::-1]] * (reps[0] // 2 + 1), axis=0)
    return np.ascontiguousarray(block[:size, :size])


def end_to_end(device: str, runtime: str, size: int) -> None:
    registry = ModelRegistry([DEFAULT_MODELS_DIR], select_device(device), runtime=runtime)
    card = registry.card(registry.default_id)
    service = SegmentationService(registry, limits=Limits(max_roi_pixels=400_000_000))
    server, port = create_server(service, "127.0.0.1:0")
    server.start()
    image = tissue(size, card.mpp)
    encoded = encode_png(image)
    with Client(f"127.0.0.1:{port}") as client:
        def segment(pixels: np.ndarray, data: bytes):
            source = client.pixels_source(data, downsample=1, origin_x=0, origin_y=0,
                                          pixel_size_um=card.mpp)
            geometry = box(0, 0, pixels.shape[1], pixels.shape[0])
            return client.segment(segment_request(geometry, source, (), pb.SegmentOptions()))

        warm = image[:600, :600]
        segment(warm, encode_png(warm))
        t0 = time.perf_counter()
        result = segment(image, encoded)
        wall = time.perf_counter() - t0
    server.stop(None)
    model_result = result.results[card.id]
    timings = model_result.execution.timings
    pure = pure_forward(registry, image)
    runs_on = "ONNX Runtime" if registry.get(card.id).onnx is not None else "torch"
    print(f"device: {registry.device_name}, {runs_on}")
    plan = plan_tiles(*pad(image, card.tile_size).shape[:2], card)
    print(f"region: {size} x {size} px at {card.mpp} µm/px, {model_result.execution.tiles} tiles "
          f"of {plan.tile_w} x {plan.tile_h} px (overlap >= {card.overlap}), "
          f"{model_result.feature_count} polygons")
    print(f"end-to-end Segment (client wall, PNG upload to polygons): {wall:.2f} s")
    print(f"  server stages: read {timings.read_s:.2f}, tissue {timings.tissue_s:.2f}, "
          f"inference {timings.inference_s:.2f} (forward {timings.model_s:.2f}), "
          f"post-process {timings.postprocess_s:.2f}, vectorise {timings.vectorize_s:.2f}")
    print(f"pure model forward on the same tiles: {pure:.2f} s")
    print(f"ratio end-to-end / pure model: {wall / pure:.2f}")
    print(f"the same request's forward passes / its end-to-end time: "
          f"{timings.model_s / wall:.3f} (no second run, so no drift between runs)")


def pure_forward(registry: ModelRegistry, image: np.ndarray) -> float:
    """Seconds of forward passes over the tiles `predict` cuts from `image`."""
    model = registry.get(registry.default_id)
    padded = pad(image, model.card.tile_size)
    plan = plan_tiles(*padded.shape[:2], model.card)
    tiles = np.stack([padded[y:y + plan.tile_h, x:x + plan.tile_w]
                      for y in plan.ys for x in plan.xs])
    model.probabilities(tiles[:plan.batch_size])  # warm-up
    _sync(model.device)
    t0 = time.perf_counter()
    for start in range(0, len(tiles), plan.batch_size):
        model.probabilities(tiles[start:start + plan.batch_size])
    _sync(model.device)
    return time.perf_counter() - t0


def runtimes(size: int, rounds: int = 3) -> None:
    """Forward time on the same tiles: torch, ONNX Runtime and torch under the card's checked
    reduced precision (bfloat16), 1 and 2 threads, interleaved; the best of `rounds` each."""
    image = tissue(size, 1.0)
    contenders = {"torch": {"runtime": "torch"}, "onnx": {"runtime": "onnx"},
                  "reduced": {"runtime": "auto", "reduced_precision": True}}
    for threads in (1, 2):
        models = {name: ModelRegistry([DEFAULT_MODELS_DIR], select_device("cpu"),
                                      threads=threads, **settings)
                  for name, settings in contenders.items()}
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(rounds):  # interleaved, so that a busy machine slows all alike
            for name, registry in models.items():
                times[name].append(pure_forward(registry, image))
        best = {name: min(seconds) for name, seconds in times.items()}
        print(f"{size} x {size} px, {threads} thread(s): torch {best['torch']:.2f} s, "
              f"ONNX Runtime {best['onnx']:.2f} s ({best['torch'] / best['onnx']:.2f}x), "
              f"torch bfloat16 {best['reduced']:.2f} s ({best['torch'] / best['reduced']:.2f}x)")


#: Side of the tissue islands of the `--layout islands` slides, and how many there are.
ISLAND = 1024
ISLANDS = 16
#: Pyramid levels (downsamples) of the large slides, as scanners write them.
LEVELS = (1, 4, 16)
TIFF_TILE = 512


def write_slide(path: Path, size: int, layout: str) -> None:
    """A size x size px pyramidal JPEG TIFF at 1 µm/px, written tile by tile (a 40,000 px slide
    never is in memory): `full`, tissue everywhere (mirrored real H&E); `islands`, the same
    16 Mpx of tissue whatever the size (16 islands of 1024 x 1024 px on a 4 x 4 grid, glass
    between: at 4096 px they fill the slide), so that memory measured at several sizes differs
    by the slide's area alone, not by the tissue (and polygons) in it."""
    patch = tissue(ISLAND if layout == "islands" else 4 * ISLAND, 1.0)
    grid = int(np.sqrt(ISLANDS))
    spots = [(int((j + 0.5) * size / grid) - ISLAND // 2, int((i + 0.5) * size / grid)
              - ISLAND // 2) for j in range(grid) for i in range(grid)]

    def tiles(downsample: int):
        side = -(-size // downsample)
        scaled = cv2.resize(patch, None, fx=1 / downsample, fy=1 / downsample,
                            interpolation=cv2.INTER_AREA) if downsample > 1 else patch
        reach = scaled.shape[0]
        for y in range(0, side, TIFF_TILE):
            for x in range(0, side, TIFF_TILE):
                tile = np.full((TIFF_TILE, TIFF_TILE, 3), 242, np.uint8)
                if layout == "full":
                    ys = (np.arange(y, y + TIFF_TILE) % (2 * reach))
                    xs = (np.arange(x, x + TIFF_TILE) % (2 * reach))
                    ys = np.where(ys < reach, ys, 2 * reach - 1 - ys)  # mirrored
                    xs = np.where(xs < reach, xs, 2 * reach - 1 - xs)
                    tile = scaled[ys[:, None], xs[None, :]]
                else:
                    for top, left in spots:
                        top, left = top // downsample, left // downsample
                        y0, y1 = max(y, top), min(y + TIFF_TILE, top + reach)
                        x0, x1 = max(x, left), min(x + TIFF_TILE, left + reach)
                        if y0 < y1 and x0 < x1:
                            tile[y0 - y:y1 - y, x0 - x:x1 - x] = \
                                scaled[y0 - top:y1 - top, x0 - left:x1 - left]
                yield tile

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k, downsample in enumerate(LEVELS):
            side = -(-size // downsample)
            tif.write(tiles(downsample), shape=(side, side, 3), dtype=np.uint8,
                      tile=(TIFF_TILE, TIFF_TILE), photometric="rgb", compression="jpeg",
                      subifds=len(LEVELS) - 1 if k == 0 else None,
                      subfiletype=1 if k else 0,
                      resolution=(1e4 / downsample, 1e4 / downsample),
                      resolutionunit="CENTIMETER")


def large_roi_memory(device: str, size: int, layout: str, max_mpx: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.tif"
        t0 = time.perf_counter()
        write_slide(path, size, layout)
        print(f"\nwrote a {size} x {size} px pyramidal JPEG TIFF, tissue {layout} "
              f"({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s",
              flush=True)
        ready = Path(tmp) / "address"
        server = subprocess.Popen([sys.executable, "-m", "roiseg.cli", "serve", "--port", "0",
                                   "--device", device, "--slide-root", tmp, "--ready-file",
                                   str(ready), "--max-roi-megapixels", str(max_mpx)])
        try:
            while not (ready.exists() and ready.read_text()):
                time.sleep(0.2)
            with Client(ready.read_text()) as client:
                client.segment(segment_request(box(0, 0, 600, 600), slide_source(str(path), 1.0)))
                idle = _peak_rss_mib(server.pid)
                t0 = time.perf_counter()
                result = client.segment(segment_request(box(0, 0, size, size),
                                                        slide_source(str(path), 1.0)))
                wall = time.perf_counter() - t0
            peak = _peak_rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait()
    (model_result,) = result.results.values()
    t = model_result.execution.timings
    print(f"{size} x {size} px ROI ({layout}): {model_result.execution.tiles} tiles, "
          f"{model_result.feature_count} polygons in {wall:.0f} s (model {t.model_s:.0f} s, "
          f"read {t.read_s:.0f} s, tissue {t.tissue_s:.1f} s, vectorise {t.vectorize_s:.1f} s)")
    print(f"server peak RSS: {peak:.0f} MiB (after a small warm-up request: {idle:.0f} MiB): "
          f"{peak - idle:.0f} MiB above it for {size * size / 1e6:.0f} Mpx; the RGB region "
          f"alone would be {size * size * 3 / 2**20:.0f} MiB", flush=True)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, nargs="*", default=[2048])
    parser.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnx"))
    parser.add_argument("--large", type=int, nargs="*", default=[16000],
                        help="sides of the large ROIs whose peak memory is measured")
    parser.add_argument("--layout", choices=("full", "islands"), default="full",
                        help="tissue everywhere, or the same 16 Mpx of tissue at every size")
    parser.add_argument("--runtimes", type=int, default=1024)
    args = parser.parse_args()
    for size in args.size:
        if size:
            end_to_end(args.device, args.runtime, size)
    if args.runtimes:
        runtimes(args.runtimes)
    for size in args.large:
        if size:
            large_roi_memory(args.device, size, args.layout, max(400.0, size * size / 1e6 + 1))


if __name__ == "__main__":
    main()
