"""Conventions shared with the Java client: raster transforms and QuPath GeoJSON features.

The Java client mirrors this module; both are pinned by `tests/vectors/conventions.json`.
"""

from __future__ import annotations

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
