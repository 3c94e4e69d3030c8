"""Measurement (not a test): the tile plan (tile size, overlap, max_tile_size, batch size) of
the default model as a measured choice: speed and accuracy of each plan.

    python benchmarks/tile_plans.py [--rounds 2] [--plans 512/128 512/128/768 512/128/1024
        512/128/1152] [--batches 4] [--sides 512 768 1024 1152 1536] [--runtime auto]

A plan is TILE/OVERLAP[/MAX_TILE_SIZE] (docs/model-cards.md; without MAX_TILE_SIZE, tiles of
TILE at a stride of TILE - OVERLAP). For each plan (and card batch size), roiseg end to end
(`pipeline.run`, `--runtime` auto: ONNX Runtime on the CPU), interleaved, best of `--rounds`,
on two images: benchmarks/peers.py's region of a real slide (2048 x 1536 px at 1 µm/px), and
a mosaic of the GlaS held-out images of the card. Each of those images (about 480 x 320 px at
1 µm/px) fits in one tile of any plan, so segmented one by one they cannot tell plans apart:
here they are laid side by side (5 x 3 images, 0.62 µm/px, about 2400 x 970 px at the model's
resolution, padded with white) and segmented as one image, so that tile borders and overlaps
fall on glands. Printed per plan and image: tiles run, Mpx they computed, seconds, agreement
with 512/128 (share of tissue pixels of the same class) and, on the mosaic, gland Dice
against the GlaS masks, pooled over the images' pixels (pixels roiseg calls glass count as
not gland). `--sides`: first, seconds per Mpx of one forward pass of square tiles of those
sides (batches of about 4 x 512² px, as plans scale them), ONNX Runtime and torch.

Measured on this project's 2 cores, shared with another engineer's test suites (load average
1.6 to 4.8 throughout: the seconds are rough, the ratios of interleaved runs less so):

- `--rounds 10 --sides 512 768 1024 1152 1536 --plans 512/128 512/128/1152` (load 1.8-2.1
  while the forward passes ran), s/Mpx at 512 (batch 4), 768, 1024, 1152, 1536 (batch 1):
  ONNX Runtime 0.95, 0.93, 0.94, 0.97, 0.99; torch 1.46, 1.29, 1.47, 1.62, 1.70 (an earlier
  best of 3: ONNX 0.95, 0.96, 0.99, 1.01, 1.03; torch 1.20, 1.31, 1.31, 1.50, 1.80). Per
  pixel a larger tile costs ONNX Runtime about the same (+2 to +8 % at 1152-1536), torch
  10-25 % more at 1152 and 16-50 % more at 1536.
- `--rounds 5 --plans 512/128 512/128/768 512/128/1024 512/128/1152 512/128/1536` (ONNX
  Runtime, card batch 4), region / mosaic: 512/128 20 / 18 tiles, 5.24 / 4.72 Mpx, 5.43 /
  4.81 s, Dice 0.9173; max 768: 9 / 8 tiles, 4.20 / 3.24 Mpx, 4.35 / 3.41 s, agreement
  97.6 / 99.1 %, Dice 0.9178; max 1024: 6 / 6, 3.83 / 3.10 Mpx, 4.01 / 3.15 s, 97.8 / 99.2 %,
  0.9170; max 1152: 4 / 6 (1088 x 832 / 576 x 896 px), 3.62 / 3.10 Mpx, 3.81 / 3.23 s,
  98.0 / 99.2 %, 0.9170; max 1536: 4 / 4 (the region's plan as 1152's), 3.62 / 2.95 Mpx,
  3.88 / 3.31 s, 98.0 / 99.3 %, 0.9176.
- `--runtime torch --rounds 4 --plans 512/128 512/128/1024 512/128/1152` (load 3.9-4.5):
  512/128 16.11 / 14.33 s; max 1024 10.27 / 9.74 s; max 1152 9.85 / 8.45 s.

The card sets max_tile_size 1152: the fastest plan on the region (1.43x 512/128 on ONNX
Runtime, 1.64x on torch; 1.49x / 1.70x on the mosaic), gland Dice within 0.0003 of 512/128;
1536 adds nothing on the region, no speed on the mosaic, and costs torch more per pixel. The
2 % of the region's tissue pixels that change class are what re-tiling does to this model
where it is unsure: on the CMU demo slide (1480 x 1108 px at 1 µm/px) max 1152 keeps 98.3 %
of the tissue's classes, 512 px tiles with overlap 96 or 160 instead of 128 keep 99.6 /
99.5 %, and 512/128 on the slide shifted by 192 px keeps 99.0 %.
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
from roiseg.engine.onnx_runtime import RUNTIMES  # noqa: E402
from roiseg.engine.tiling import pad, plan_tiles  # noqa: E402

GLAS = REPO.parent / "shared" / "data" / "glas-train"
GLAS_MPP = 0.62
GLAND = 1


#: A plan: tile size, overlap and max_tile_size (None: tiles of tile size, as without it).
Plan = tuple[int, int, int | None]


def parse_plan(text: str) -> Plan:
    """TILE/OVERLAP or TILE/OVERLAP/MAX_TILE_SIZE."""
    tile, overlap, *longest = (int(v) for v in text.split("/"))
    return tile, overlap, longest[0] if longest else None


def plan_name(plan: Plan) -> str:
    return "/".join(str(v) for v in plan if v is not None)


class PlanRegistry:
    """The default model with another tile plan: what `pipeline.run` asks of a registry."""

    def __init__(self, base: ModelRegistry, plan: Plan, batch: int) -> None:
        loaded = base.get(base.default_id)
        tile, overlap, longest = plan
        card = dataclasses.replace(loaded.card, tile_size=tile, overlap=overlap,
                                   max_tile_size=longest, batch_size=batch)
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


def forward_costs(sides: list[int], rounds: int, region: np.ndarray) -> None:
    """Seconds per Mpx of one forward pass of square tiles of the region, ONNX Runtime and
    torch, batches of about 4 x 512² px (as `tiling.plan_tiles` scales them), best of
    `rounds`, interleaved."""
    models = {runtime: ModelRegistry([DEFAULT_MODELS_DIR], torch.device("cpu"), runtime=runtime)
              for runtime in ("onnx", "torch")}
    loaded = {runtime: registry.get(registry.default_id) for runtime, registry in models.items()}
    batches = {side: np.stack([region[:side, :side]] * max(1, 4 * 512 ** 2 // side ** 2))
               for side in sides}
    best: dict[tuple[str, int], float] = {}
    for round_ in range(rounds + 1):  # round 0 warms up
        for side, batch in batches.items():
            for runtime, model in loaded.items():
                t0 = time.perf_counter()
                model.probabilities(batch)
                seconds = (time.perf_counter() - t0) / (batch[..., 0].size / 1e6)
                if round_:
                    best[(runtime, side)] = min(best.get((runtime, side), np.inf), seconds)
    print("forward pass, s/Mpx (batch): " + "  ".join(f"{side} ({len(batches[side])})"
                                                       for side in sides))
    for runtime in loaded:
        print(f"  {runtime:<6}" + "  ".join(f"{best[(runtime, side)]:.3f}" for side in sides),
              flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plans", nargs="+", default=["512/128", "512/128/768",
                                                        "512/128/1024", "512/128/1152"],
                        help="TILE/OVERLAP[/MAX_TILE_SIZE] each")
    parser.add_argument("--batches", nargs="+", type=int, default=[4])
    parser.add_argument("--sides", nargs="*", type=int, default=[],
                        help="also time forward passes of these tile sides")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "peers")
    args = parser.parse_args()

    path = args.out / "region.tif"
    region = write_region(path)
    if args.sides:
        forward_costs(args.sides, args.rounds, region)
    base = ModelRegistry([DEFAULT_MODELS_DIR], torch.device("cpu"), runtime=args.runtime)
    card = base.card(base.default_id)
    assert card.training_split is not None
    names = list(card.training_split.held_out)
    rgb, gland, valid = mosaic(names)
    images = {"region": (pipeline.SlideSource(path), region.shape[1], region.shape[0]),
              "GlaS": (pipeline.PixelSource(rgb, 0, 0, 1, GLAS_MPP), rgb.shape[1],
                       rgb.shape[0])}
    plans = [parse_plan(plan) for plan in args.plans]
    registries = {(plan, batch): PlanRegistry(base, plan, batch)
                  for plan in plans for batch in args.batches}
    print(f"card plan: {plan_name((card.tile_size, card.overlap, card.max_tile_size))}, batch "
          f"{card.batch_size}; {'ONNX Runtime' if base.get(base.default_id).onnx else 'torch'}"
          f"; region {region.shape[1]} x {region.shape[0]} px; GlaS mosaic: {len(names)} "
          f"held-out images, {rgb.shape[1]} x {rgb.shape[0]} px at {GLAS_MPP} µm/px",
          flush=True)

    times: dict[tuple[Plan, int, str], list[float]] = {
        (plan, batch, name): [] for plan, batch in registries for name in images}
    outputs: dict[tuple[Plan, str], pipeline.ModelOutput] = {}
    for registry in registries.values():  # warm-up: each tile size's first pass
        segment(registry, *images["region"])
    for _ in range(args.rounds):
        for (plan, batch), registry in registries.items():
            for name, image in images.items():
                t0 = time.perf_counter()
                outputs[(plan, name)] = segment(registry, *image)
                times[(plan, batch, name)].append(time.perf_counter() - t0)
        print("  round done", flush=True)

    reference = (card.tile_size, card.overlap, None)
    print(f"\nbest of {args.rounds}; Mpx: pixels the tiles that ran computed; agreement: share "
          f"of tissue pixels of the class {plan_name(reference)} gives them")
    print("plan              image   tiles    Mpx  " + "  ".join(f"batch {b:>2}"
                                                            for b in args.batches)
          + "  agreement  gland Dice")
    for plan in plans:
        for name in images:
            output = outputs[(plan, name)]
            card = registries[(plan, args.batches[0])].model.card
            tiled = plan_tiles(*pad(np.empty((*output.shape, 3), np.uint8),
                                    card.tile_size).shape[:2], card)
            seconds = [min(times[(plan, b, name)]) for b in args.batches]
            dice = f"{gland_dice(output, gland, valid):.4f}" if name == "GlaS" else ""
            print(f"{plan_name(plan):<16}  {name:<6} {output.tiles:>6}  "
                  f"{output.tiles * tiled.tile_h * tiled.tile_w / 1e6:5.2f}  "
                  + "  ".join(f"{s:6.2f} s" for s in seconds)
                  + f"  {agreement(output, outputs.get((reference, name))):>9.4%}  {dice}",
                  flush=True)
    return 0


def agreement(output: pipeline.ModelOutput, reference: pipeline.ModelOutput | None) -> float:
    """Share of the tissue pixels of `output` that `reference` gives the same class."""
    if reference is None:
        return float("nan")
    tissue = output.class_map != postprocess.NO_CLASS
    return float((output.class_map == reference.class_map)[tissue].mean())


if __name__ == "__main__":
    sys.exit(main())
