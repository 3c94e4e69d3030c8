"""Regions of interest: the contract's Roi message, GeoJSON files and shapely geometries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon, box, shape
from shapely.geometry.base import BaseGeometry

from roiseg.errors import InvalidInput
from roiseg.io import qupath_geojson
from roiseg.v1 import segmentation_pb2 as pb


def to_proto(geometry: BaseGeometry) -> pb.Roi:
    """The Roi message for a polygonal geometry in full-resolution pixels."""
    roi = pb.Roi()
    for polygon in _polygons(geometry):
        message = roi.polygons.add()
        message.shell.xy.extend(_flat(polygon.exterior.coords))
        for hole in polygon.interiors:
            message.holes.add().xy.extend(_flat(hole.coords))
    return roi


def from_proto(roi: pb.Roi) -> BaseGeometry:
    """A valid (Multi)Polygon from a Roi message; InvalidInput if empty or degenerate."""
    polygons = []
    for index, message in enumerate(roi.polygons):
        shell = _ring(message.shell.xy, f"polygon {index} shell")
        holes = [_ring(h.xy, f"polygon {index} hole {j}") for j, h in enumerate(message.holes)]
        polygons.append(Polygon(shell, holes))
    if not polygons:
        raise InvalidInput("the ROI is empty: send at least one polygon (a rectangle is a polygon)")
    geometry = shapely.make_valid(MultiPolygon(polygons) if len(polygons) > 1 else polygons[0])
    geometry = _polygonal(geometry)
    if geometry.is_empty or geometry.area <= 0:
        raise InvalidInput("the ROI is degenerate: its polygons enclose no area")
    return geometry


def rectangle(x: float, y: float, width: float, height: float) -> Polygon:
    """A rectangular ROI; InvalidInput if width or height is not positive."""
    if width <= 0 or height <= 0:
        raise InvalidInput(f"the region {x},{y},{width},{height} needs a positive width and height")
    return box(x, y, x + width, y + height)


def read_geojson(path: str | Path) -> BaseGeometry:
    """The union of the polygonal geometries in a GeoJSON file (Feature, FeatureCollection,
    geometry, or a list of them, as QuPath exports)."""
    try:
        data = qupath_geojson.load(path, "ROI file")
    except ValueError as error:
        raise InvalidInput(str(error)) from error
    geometries = [shape(feature["geometry"]) for feature, _ in
                  qupath_geojson.objects(data, children=False) if feature.get("geometry")]
    polygonal = [_polygonal(g) for g in geometries]
    polygonal = [g for g in polygonal if not g.is_empty]
    if not polygonal:
        raise InvalidInput(f"ROI file {path} holds no polygon")
    return shapely.union_all(polygonal)


def _polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """The polygonal part of a geometry (make_valid may add lines or points)."""
    parts = [g for g in _polygons(geometry)]
    if not parts:
        return Polygon()
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _polygons(geometry: BaseGeometry) -> list[Polygon]:
    if isinstance(geometry, Polygon):
        return [] if geometry.is_empty else [geometry]
    if hasattr(geometry, "geoms"):
        return [p for g in geometry.geoms for p in _polygons(g)]
    return []


def _flat(coords: Any) -> list[float]:
    return [float(v) for xy in coords for v in xy[:2]]


def _ring(xy: Any, what: str) -> list[tuple[float, float]]:
    values = list(xy)
    if len(values) % 2:
        raise InvalidInput(f"ROI {what}: an odd number of coordinates ({len(values)}); "
                           "send x, y pairs")
    points = list(zip(values[0::2], values[1::2]))
    if len(points) > 1 and points[0] == points[-1]:
        points = points[:-1]
    if len(set(points)) < 3:
        raise InvalidInput(f"ROI {what}: needs at least 3 distinct points, got {len(set(points))}")
    if not all(map(_finite, values)):
        raise InvalidInput(f"ROI {what}: coordinates must be finite numbers")
    return points


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")
