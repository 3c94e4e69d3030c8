"""Benchmark (not a test): the fast-track loop on GlaS, simulated.

    python benchmarks/fast_track.py [--per-round 3] [--rounds 3] [--evaluate 6] [--steps 10]

The images the default model held out from its training (its card's `training_split`) play
the new data. A fixed set of them (`--evaluate`) is only ever segmented; from the others,
`--per-round` images at a time are "corrected" (their reference masks submitted as the
pathologist's corrections through SubmitCorrections), the model is fine-tuned on every example
submitted so far (FineTune, starting from the previous version), and the new version segments
the evaluation images. Printed per version: gland Dice against the reference and the area a
pathologist would have to add or remove (µm² per image, the pixels where prediction and
reference differ), with the seconds fine-tuning took.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import rasterio.features
from roiseg.client.connection import (
    InProcessClient,
    ModelSource,
    corrections_request,
    encode_png,
    in_process_service,
    pixels_source,
    segment_request,
)
from roiseg.engine.models import DEFAULT_MODELS_DIR
from roiseg.io import qupath_geojson
from roiseg.v1 import segmentation_pb2 as pb
from shapely.geometry import box, mapping, shape

GLAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "glas-train"
GLAS_MPP = 0.62
GLAND, OTHER = "Gland epithelium", "Other tissue"


def _image(name: str) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.cvtColor(cv2.imread(str(GLAS / "images" / f"{name}.png")), cv2.COLOR_BGR2RGB)
    mask = cv2.imread(str(GLAS / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED) > 0
    return image, mask


def _pixels(image: np.ndarray) -> pb.ImageSource:
    return pixels_source(encoded=encode_png(image), downsample=1.0, origin_x=0, origin_y=0,
                         pixel_size_um=GLAS_MPP, image_width=image.shape[1],
                         image_height=image.shape[0])


def _corrections(mask: np.ndarray) -> str:
    """The reference mask as a pathologist's corrected annotations (glands and the rest)."""
    features = [{"type": "Feature", "geometry": geometry, "properties": {
        "objectType": "annotation",
        "classification": qupath_geojson.classification(GLAND if value else OTHER, (0, 0, 0))}}
        for geometry, value in rasterio.features.shapes(mask.astype(np.uint8))]
    return json.dumps(qupath_geojson.feature_collection(features))


def _score(client: InProcessClient, model_id: str, names: list[str]) -> tuple[float, float]:
    """Pooled gland Dice and the mean µm² per image where prediction and reference differ."""
    overlap = total = 0
    differ = []
    for name in names:
        image, mask = _image(name)
        roi = box(0, 0, image.shape[1], image.shape[0])
        result = client.segment(segment_request(roi, _pixels(image), [model_id]))
        glands = [shape(f["geometry"]) for f in
                  next(iter(result.feature_collections.values()))["features"]
                  if f["properties"]["classification"]["name"] == GLAND]
        predicted = rasterio.features.rasterize([mapping(g) for g in glands], mask.shape,
                                                dtype=np.uint8).astype(bool) \
            if glands else np.zeros_like(mask)
        overlap += int((predicted & mask).sum())
        total += int(predicted.sum() + mask.sum())
        differ.append(float((predicted ^ mask).sum()) * GLAS_MPP ** 2)
    return 2 * overlap / total, float(np.mean(differ))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--evaluate", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10, help="steps per epoch (2 epochs)")
    args = parser.parse_args()
    card = json.loads((DEFAULT_MODELS_DIR / "model.json").read_text())
    held_out = sorted(card["training_split"]["held_out"], key=lambda n: int(n.split("_")[1]))
    evaluate, stream = held_out[-args.evaluate:], held_out[:-args.evaluate]
    with tempfile.TemporaryDirectory() as dataset:
        client = InProcessClient(in_process_service(ModelSource(), dataset_dir=Path(dataset)))
        model_id = card["id"]
        dice, differ = _score(client, model_id, evaluate)
        print(f"evaluation images {', '.join(evaluate)}; corrected per round: {args.per_round}")
        print(f"version {card['version']} (start): gland Dice {dice:.4f}, "
              f"{differ:,.0f} µm² to correct per image")
        for round_number in range(args.rounds):
            corrected = stream[round_number * args.per_round:(round_number + 1) * args.per_round]
            if not corrected:
                break
            for name in corrected:
                image, mask = _image(name)
                client.submit_corrections(corrections_request(
                    box(0, 0, image.shape[1], image.shape[0]), _pixels(image),
                    _corrections(mask), model_id=model_id, image_id=name))
            started = time.monotonic()
            result = client.fine_tune(pb.FineTuneRequest(
                model_id=model_id, epochs=2, steps_per_epoch=args.steps, seed=round_number))
            seconds = time.monotonic() - started
            model_id = result.model.id
            dice, differ = _score(client, model_id, evaluate)
            print(f"{model_id} after {len(client.list_examples(card['id']))} corrected images "
                  f"({seconds:.0f} s fine-tuning): gland Dice {dice:.4f}, "
                  f"{differ:,.0f} µm² to correct per image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
