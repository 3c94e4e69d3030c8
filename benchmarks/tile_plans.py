"""Measurement (not a test): the tile plan (tile size, overlap, batch size) of the default
model as a measured choice: speed and accuracy of each plan.

    python benchmarks/tile_plans.py [--rounds 2] [--plans 512/128 768/96 1024/64 1024/128]
                                    [--batches 1 2 4]

For each plan, roiseg end to end (`pipeline.run`, default runtime: ONNX Runtime on the CPU)
on benchmarks/peers.py's region of a real slide (2048 x 1536 px at 1 µm/px), interleaved,
best of `--rounds`; then, per tile size and overlap:
- agreement with the card's plan on that region (share of tissue pixels of the same class);
- gland Dice against the GlaS masks of the card's held-out images. Each of those images
  (about 480 x 320 px at 1 µm/px) fits in one tile of any plan, so segmented one by one they
  cannot tell plans apart: here they are laid side by side in one mosaic (5 x 3 images,
  0.62 µm/px, about 2400 x 970 px at the model's resolution, padded with white) that is
  segmented as one image, so that tile borders and overlaps fall on glands. Dice is pooled
  over the images' pixels (pixels roiseg calls glass count as not gland).

One run (`--rounds 1 --batches 1 4`, a busy 2-core machine, so the seconds are rough):
tile/overlap 512/128: 20 tiles, 13.1 s (batch 1) / 13.6 s (batch 4), Dice 0.9173; 768/96:
9 tiles, 13.5 / 11.7 s, agreement 97.5 %, Dice 0.9184; 1024/64: 6 tiles, 14.8 / 19.9 s,
97.8 %, 0.9155; 1024/128: 6 tiles, 20.8 / 26.2 s, 97.9 %, 0.9157. On a 2048 x 1536 px region
the larger tiles compute about as many pixels as 512/128 (the last tile of a row or column is
aligned to the border and overlaps its neighbour more: 5.2, 5.3, 6.3 Mpx), so no plan was
clearly faster here and the card keeps 512/128, batch 4.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from shapely.geometry import box

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import REPO, write_region  # noqa: E402
from roiseg.engine import pipeline, postprocess  # noqa: E402
from roiseg.engine.models import DEFAULT_MODELS_DIR, LoadedModel, ModelCard, ModelRegistry  # noqa: E402

GLAS = REPO.parent / "shared" / "data" / "glas-train"
GLAS_MPP = 0.62
GLAND = 1


class PlanRegistry:
    """The default model with another tile plan: what `pipeline.run` asks of a registry."""

    def __init__(self, base: ModelRegistry, tile: int, overlap: int, batch: int) -> None:
        loaded = base.get(base.default_id)
        card = dataclasses.replace(loaded.card, tile_size=tile, overlap=overlap,
                                   batch_size=batch)
        self.model = LoadedModel(card, loaded.module, loaded.device)
        self.model.onnx = loaded.onnx
        self.default_id = card.id

    def card(self, model_id: str) -> ModelCard:
        return self.model.card

    def load(self, card: ModelCard) -> LoadedModel:
        return self.model


def segment(registry: PlanRegistry, source: pipeline.PixelSource | pipeline.SlideSource,
            width: int, height: int) -> pipeline.ModelOutput:
    job = pipeline.Job((registry.default_id,), source, box(0, 0, width, height))
    (output,) = pipeline.run(job, registry, max_roi_pixels=1 << 34,  # type: ignore[arg-type]
                             keep_class_map=True)
    return output


def mosaic(names: list[str], columns: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images side by side (white padding), their gland masks, and where images are."""
    images = [cv2.cvtColor(cv2.imread(str(GLAS / "images" / f"{n}.png")), cv2.COLOR_BGR2RGB)
              for n in names]
    masks = [cv2.imread(str(GLAS / "masks" / f"{n}.png"), cv2.IMREAD_GRAYSCALE) > 127
             for n in names]
    cell_h = max(i.shape[0] for i in images)
    cell_w = max(i.shape[1] for i in images)
    rows = -(-len(images) // columns)
    rgb = np.full((rows * cell_h, columns * cell_w, 3), 255, np.uint8)
    gland = np.zeros(rgb.shape[:2], bool)
    valid = np.zeros(rgb.shape[:2], bool)
    for k, (image, mask) in enumerate(zip(images, masks)):
        y, x = (k // columns) * cell_h, (k % columns) * cell_w
        h, w = image.shape[:2]
        rgb[y:y + h, x:x + w] = image
        gland[y:y + h, x:x + w] = mask
        valid[y:y + h, x:x + w] = True
    return rgb, gland, valid


def gland_dice(output: pipeline.ModelOutput, gland: np.ndarray, valid: np.ndarray) -> float:
    """Pooled gland Dice of roiseg's class map, brought back to the mosaic's pixels."""
    predicted = cv2.resize((output.class_map == GLAND).astype(np.uint8),
                           (gland.shape[1], gland.shape[0]),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
    p, g = predicted[valid], gland[valid]
    return float(2 * (p & g).sum() / (p.sum() + g.sum()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plans", nargs="+", default=["512/128", "768/96", "1024/64",
                                                        "1024/128"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "peers")
    args = parser.parse_args()

    path = args.out / "region.tif"
    region = write_region(path)
    height, width = region.shape[:2]
    base = ModelRegistry([DEFAULT_MODELS_DIR], torch.device("cpu"), runtime="auto")
    card = base.card(base.default_id)
    assert card.training_split is not None
    plans = [tuple(int(v) for v in plan.split("/")) for plan in args.plans]
    registries = {(tile, overlap, batch): PlanRegistry(base, tile, overlap, batch)
                  for tile, overlap in plans for batch in args.batches}
    print(f"card plan: tile {card.tile_size}, overlap {card.overlap}, batch {card.batch_size}; "
          f"region {width} x {height} px; "
          f"{'ONNX Runtime' if base.get(base.default_id).onnx is not None else 'torch'}",
          flush=True)

    source = pipeline.SlideSource(path)
    times: dict[tuple[int, int, int], list[float]] = {key: [] for key in registries}
    maps: dict[tuple[int, int], np.ndarray] = {}
    tiles: dict[tuple[int, int], int] = {}
    for key, registry in registries.items():  # warm-up: each tile size's first pass
        segment(registry, source, width, height)
    for _ in range(args.rounds):
        for key, registry in registries.items():
            t0 = time.perf_counter()
            output = segment(registry, source, width, height)
            times[key].append(time.perf_counter() - t0)
            maps[key[:2]] = output.class_map
            tiles[key[:2]] = output.tiles
        print("  round done", flush=True)

    names = list(card.training_split.held_out)
    rgb, gland, valid = mosaic(names)
    glas_source = pipeline.PixelSource(rgb, 0, 0, 1, GLAS_MPP)
    reference = maps.get((card.tile_size, card.overlap))
    print(f"\nGlaS mosaic: {len(names)} held-out images, {rgb.shape[1]} x {rgb.shape[0]} px at "
          f"{GLAS_MPP} µm/px")
    print("tile/overlap  tiles  " + "  ".join(f"batch {b:>2}" for b in args.batches)
          + "   agree w/ card plan   GlaS gland Dice")
    for tile, overlap in plans:
        seconds = [min(times[(tile, overlap, b)]) for b in args.batches]
        dice = gland_dice(segment(registries[(tile, overlap, args.batches[0])], glas_source,
                                  rgb.shape[1], rgb.shape[0]), gland, valid)
        plan_map = maps[(tile, overlap)]
        tissue = plan_map != postprocess.NO_CLASS
        agree = (float((plan_map == reference)[tissue].mean()) if reference is not None
                 else float("nan"))
        print(f"{tile:>5}/{overlap:<5} {tiles[(tile, overlap)]:>6}  "
              + "  ".join(f"{s:7.2f} s" for s in seconds)
              + f"   {agree:>17.4%}   {dice:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
