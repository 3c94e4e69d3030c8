"""Raster <-> full-resolution slide coordinates, as the Java client maps them (pinned by
`tests/vectors/conventions.json`)."""

from __future__ import annotations

from dataclasses import dataclass

import shapely
from shapely.geometry.base import BaseGeometry


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
