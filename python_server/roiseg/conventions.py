"""Conventions shared with the Java client: raster transforms and QuPath GeoJSON features.

The Java client mirrors this module; both are pinned by `tests/vectors/conventions.json`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import shapely
from shapely.geometry.base import BaseGeometry

#: Metadata keys roiseg writes on every object it creates. `ROISEG_SOURCE_KEY` marks an
#: object as a roiseg pre-annotation: clients replace only objects carrying it.
ROISEG_SOURCE_KEY = "roiseg.source"
ROISEG_SOURCE_VALUE = "roiseg"
MODEL_ID_KEY = "roiseg.model_id"
MODEL_VERSION_KEY = "roiseg.model_version"

#: Measurement names, as QuPath shows them.
AREA_MEASUREMENT = "Area µm^2"
PROBABILITY_MEASUREMENT = "Mean class probability"

#: Name and colour of the non-tissue class returned on request.
BACKGROUND_CLASS = "Background"
BACKGROUND_COLOR = (255, 255, 255)

RGB = tuple[int, int, int]

#: QuPath's built-in classes and their colours (PathClass, QuPath 0.5 to 0.7). QuPath shows a
#: class of one of these names in its own colour (roiseg never recolours a class QuPath has), so a
#: model class of another name needs a colour that cannot be taken for one of these.
QUPATH_BUILTIN_CLASS_COLORS: dict[str, RGB] = {
    "Tumor": (200, 0, 0), "Stroma": (150, 200, 150), "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50), "Other": (255, 200, 0), "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180), "Image": (128, 128, 128), "Positive": (200, 50, 50),
    "Negative": (90, 90, 180), "1+": (255, 215, 0), "2+": (225, 150, 50), "3+": (200, 50, 50),
}
#: Colours of common class names (lower case): QuPath's own for its built-in classes, and
#: for the others colours no one takes for one of QuPath's built-in classes.
KNOWN_CLASS_COLORS: dict[str, RGB] = {
    **{name.lower(): rgb for name, rgb in QUPATH_BUILTIN_CLASS_COLORS.items()},
    "gland epithelium": (0, 170, 200),
    "tumour": QUPATH_BUILTIN_CLASS_COLORS["Tumor"],
    "background": BACKGROUND_COLOR,
}
#: Colours for other class names, in order, skipping those too close to a built-in class.
_PALETTE: tuple[RGB, ...] = (
    (31, 119, 180), (255, 127, 14), (148, 103, 189), (140, 86, 75), (227, 119, 194),
    (127, 127, 127), (188, 189, 34), (23, 190, 207))
#: RGB distance under which two class colours are taken for one another.
_CONFUSABLE_RGB_DISTANCE = 80.0


def confusable_builtin_class(name: str, color: Sequence[int]) -> str | None:
    """The QuPath built-in class of another name whose colour `color` could be taken for, if
    any; None for a built-in class's own name (QuPath shows it in its own colour)."""
    if name.lower() in {builtin.lower() for builtin in QUPATH_BUILTIN_CLASS_COLORS}:
        return None
    for builtin, rgb in QUPATH_BUILTIN_CLASS_COLORS.items():
        if sum((int(a) - b) ** 2 for a, b in zip(color, rgb)) ** 0.5 < _CONFUSABLE_RGB_DISTANCE:
            return builtin
    return None


@dataclass(frozen=True)
class RasterTransform:
    """Maps raster pixel-corner coordinates (u, v) to full-resolution slide pixels.

    Raster pixel (i, j) covers full-resolution
    [origin_x + i*scale_x, origin_x + (i+1)*scale_x) x [origin_y + j*scale_y, ...).
    """

    origin_x: float
    origin_y: float
    scale_x: float
    scale_y: float

    def to_full(self, u: float, v: float) -> tuple[float, float]:
        return self.origin_x + u * self.scale_x, self.origin_y + v * self.scale_y

    def to_raster(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.origin_x) / self.scale_x, (y - self.origin_y) / self.scale_y

    def geometry_to_full(self, geometry: BaseGeometry) -> BaseGeometry:
        return shapely.transform(geometry, lambda c: c * [self.scale_x, self.scale_y]
                                 + [self.origin_x, self.origin_y])

    def geometry_to_raster(self, geometry: BaseGeometry) -> BaseGeometry:
        return shapely.transform(geometry, lambda c: (c - [self.origin_x, self.origin_y])
                                 / [self.scale_x, self.scale_y])


def pixel_area_um2(mpp_x: float, mpp_y: float) -> float:
    """Area of one pixel in µm²."""
    return mpp_x * mpp_y


def classification(name: str, color: Sequence[int]) -> dict[str, Any]:
    """QuPath's classification object; QuPath up to 0.7 needs the colour with the name."""
    return {"name": name, "color": [int(c) for c in color]}


def annotation_feature(geometry: BaseGeometry, class_name: str, color: Sequence[int],
                       measurements: Mapping[str, float],
                       metadata: Mapping[str, str]) -> dict[str, Any]:
    """A GeoJSON Feature QuPath imports as an unlocked, classified annotation."""
    return {
        "type": "Feature",
        "geometry": shapely.geometry.mapping(geometry),
        "properties": {
            "objectType": "annotation",
            "classification": classification(class_name, color),
            "isLocked": False,
            "measurements": {k: float(v) for k, v in measurements.items()},
            "metadata": {ROISEG_SOURCE_KEY: ROISEG_SOURCE_VALUE, **metadata},
        },
    }


def feature_collection(features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def model_metadata(model_id: str, model_version: str) -> dict[str, str]:
    return {MODEL_ID_KEY: model_id, MODEL_VERSION_KEY: model_version}


def is_roiseg_object(properties: Mapping[str, Any]) -> bool:
    """Whether a feature's properties mark it as a roiseg pre-annotation."""
    metadata = properties.get("metadata") or {}
    return metadata.get(ROISEG_SOURCE_KEY) == ROISEG_SOURCE_VALUE


#: A new model's card when no model is fine-tuned (`roiseg train`): µm/px, tile size, overlap
#: and inference batch size.
NEW_MODEL_MPP, NEW_MODEL_TILE_SIZE, NEW_MODEL_OVERLAP, NEW_MODEL_BATCH_SIZE = 1.0, 512, 128, 4

#: `roiseg batch`'s journal and summary: in OUT in folder mode, beside a QuPath project.
BATCH_FOLDER_JOURNAL, BATCH_FOLDER_SUMMARY = "roiseg-journal.jsonl", "summary.csv"
BATCH_PROJECT_JOURNAL, BATCH_PROJECT_SUMMARY = "roiseg-batch.jsonl", "roiseg-batch-summary.csv"


def class_colors(names: Sequence[str], colors: Mapping[str, Sequence[int]] | None = None
                 ) -> dict[str, RGB]:
    """The display colour of each class name: a given one (`colors`, names in any case),
    else `KNOWN_CLASS_COLORS`, else the next palette colour that cannot be taken for a QuPath
    built-in class. ValueError for a given colour that is not three values 0..255."""
    given = {k.lower(): v for k, v in (colors or {}).items()}
    palette = itertools.cycle(_PALETTE)
    out: dict[str, RGB] = {}
    for name in names:
        color = given.get(name.lower()) or KNOWN_CLASS_COLORS.get(name.lower())
        while color is None or (name.lower() not in given
                                and confusable_builtin_class(name, color) is not None):
            color = next(palette)
        rgb = tuple(int(c) for c in color)
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise ValueError(f"colour of {name!r} must be three values 0..255, got {rgb}")
        out[name] = (rgb[0], rgb[1], rgb[2])
    return out
