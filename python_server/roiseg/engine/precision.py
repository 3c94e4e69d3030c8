"""A model's reduced precision checked against full precision, and recorded in its card.

A lower-precision forward pass (bfloat16 autocast on a CPU with bf16 instructions is about
twice as fast) may move a few pixels to another class. A server uses it only for a model
whose card records the check (`ModelCard.reduced_precision`) and only when started with
`--reduced-precision`; `roiseg precision` runs the check and writes the record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import torch

from roiseg.engine.inference import predict
from roiseg.engine.models import (
    REDUCED_DTYPES,
    ModelCard,
    ReducedPrecision,
    load_model,
    write_card,
)

__all__ = ["check", "record"]


def check(card: ModelCard, images: Iterable[np.ndarray], device: torch.device, dtype: str,
          checked_on: str) -> ReducedPrecision:
    """Segments each image (RGB at the card's resolution) in full precision and under `dtype`
    autocast, tile by tile as a server does; the record holds the fraction of pixels whose
    class is the same.

    Raises:
        ValueError: an unknown dtype, or no image.
    """
    if dtype not in REDUCED_DTYPES:
        raise ValueError(f"unknown precision {dtype!r}; one of: {', '.join(REDUCED_DTYPES)}")
    model = load_model(card, device)
    same = total = 0
    for image in images:
        model.autocast = None
        full = predict(model, image).class_map
        model.autocast = REDUCED_DTYPES[dtype]
        reduced = predict(model, image).class_map
        same += int(np.count_nonzero(full == reduced))
        total += full.size
    if not total:
        raise ValueError("no image to check the precision on")
    return ReducedPrecision(dtype, device.type, round(same / total, 6), checked_on)


def record(card: ModelCard, checked: ReducedPrecision) -> None:
    """Writes the check into the card's file (atomically; its other fields unchanged)."""
    fields = json.loads(card.card_path.read_text(encoding="utf-8"))
    fields["reduced_precision"] = checked.to_json()
    write_card(card.card_path.parent, fields)
