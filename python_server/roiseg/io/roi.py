"""Regions of interest: the contract's Roi message, GeoJSON files and shapely geometries."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, shape
from shapely.geometry.base import BaseGeometry

from roiseg.errors import Cancelled, InvalidInput, TooLarge
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


#: The most polygons and vertices a ROI may have; QuPath's largest brush and wand annotations
#: stay far below.
MAX_POLYGONS = 10_000
MAX_VERTICES = 1_000_000
#: Coordinates beyond this many pixels from the origin are no image's.
MAX_COORDINATE = 2.0**31
#: Invalid outlines up to this many vertices are repaired here; larger ones in a child process
#: that a deadline or cancel ends (repair time grows with the square of the crossings).
_REPAIR_HERE_VERTICES = 256
#: Longest a repair in a child process may take.
REPAIR_TIMEOUT_S = 20.0


def check_proto(roi: pb.Roi) -> None:
    """The cheap checks of a Roi message (counts, coordinates), in time linear in its size;
    InvalidInput or TooLarge says what to fix."""
    if not roi.polygons:
        raise InvalidInput("the ROI is empty: send at least one polygon (a rectangle is a polygon)")
    if len(roi.polygons) > MAX_POLYGONS:
        raise TooLarge(f"the ROI has {len(roi.polygons)} polygons; at most {MAX_POLYGONS} are "
                       "accepted: merge them or segment them in parts")
    vertices = 0
    for index, message in enumerate(roi.polygons):
        holes = ((f"polygon {index} hole {j}", h) for j, h in enumerate(message.holes))
        for what, ring in ((f"polygon {index} shell", message.shell), *holes):
            vertices += _check_ring(ring.xy, what)
            if vertices > MAX_VERTICES:
                raise TooLarge(f"the ROI has more than {MAX_VERTICES} vertices: simplify it "
                               "(QuPath: Objects > Annotations > Simplify shape)")


def from_proto(roi: pb.Roi, should_stop: Callable[[], bool] = lambda: False,
               timeout_s: float = REPAIR_TIMEOUT_S) -> BaseGeometry:
    """A valid (Multi)Polygon from a Roi message that passed `check_proto`. Self-crossing
    outlines are repaired without ever covering more than the shells cover (shells united, holes
    subtracted); InvalidInput if nothing is left, Cancelled when `should_stop` says so."""
    check_proto(roi)
    polygons = [Polygon(_points(m.shell.xy), [_points(h.xy) for h in m.holes])
                for m in roi.polygons]
    geometry = MultiPolygon(polygons) if len(polygons) > 1 else polygons[0]
    if not geometry.is_valid:
        if shapely.get_num_coordinates(geometry) <= _REPAIR_HERE_VERTICES:
            geometry = _repair(geometry)
        else:
            geometry = _repair_in_child(geometry, should_stop, timeout_s)
    if geometry.is_empty or geometry.area <= 0:
        raise InvalidInput("the ROI is degenerate: it encloses no area (its holes cover it, or its "
                           "points are in a line): nothing is left to segment")
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


def _check_ring(xy: Any, what: str) -> int:
    """The ring's number of vertices; InvalidInput unless it is x, y pairs of finite
    coordinates within an image with 3 distinct points."""
    values = np.asarray(xy, dtype=np.float64)
    if values.size % 2:
        raise InvalidInput(f"ROI {what}: an odd number of coordinates ({values.size}); "
                           "send x, y pairs")
    if not np.isfinite(values).all():
        raise InvalidInput(f"ROI {what}: coordinates must be finite numbers")
    if (np.abs(values) > MAX_COORDINATE).any():
        raise InvalidInput(f"ROI {what}: coordinates must lie within ±{MAX_COORDINATE:.0f} "
                           "pixels")
    points = values.reshape(-1, 2)
    if len(np.unique(points, axis=0)) < 3:
        raise InvalidInput(f"ROI {what}: needs at least 3 distinct points")
    return len(points)


def _points(xy: Any) -> np.ndarray:
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


def _repair(geometry: BaseGeometry) -> BaseGeometry:
    """The area inside the shells and outside the holes, as a valid polygonal geometry."""
    return _polygonal(shapely.make_valid(geometry, method="structure", keep_collapsed=False))


def _repair_wkb(wkb: bytes, connection: Connection) -> None:
    connection.send_bytes(shapely.to_wkb(_repair(shapely.from_wkb(wkb))))


def _repair_in_child(geometry: BaseGeometry, should_stop: Callable[[], bool],
                     timeout_s: float) -> BaseGeometry:
    """`_repair` in a child process, ended when `should_stop` says so or after `timeout_s`."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_repair_wkb, args=(shapely.to_wkb(geometry), sender),
                            daemon=True)
    child.start()
    sender.close()
    deadline = time.monotonic() + timeout_s
    try:
        while not receiver.poll(0.1):
            if should_stop():
                raise Cancelled("segmentation cancelled while repairing the ROI's outline")
            if time.monotonic() > deadline:
                raise InvalidInput(
                    f"the ROI's outline crosses itself too often to repair within {timeout_s:g} s "
                    f"({shapely.get_num_coordinates(geometry)} vertices): fix or simplify it "
                    "in QuPath and try again")
        return shapely.from_wkb(receiver.recv_bytes())
    except EOFError:
        raise InvalidInput("the ROI's outline crosses itself and could not be repaired: fix or "
                           "simplify it in QuPath and try again") from None
    finally:
        child.kill()
        child.join()
        receiver.close()
