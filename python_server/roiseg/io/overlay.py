"""Overlay pictures: returned polygons drawn over the region they were segmented from."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import cv2
import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

#: Opacity of the class fills.
FILL_ALPHA = 0.35
#: Colour and strongest opacity of uncertainty: a yellow no H&E stain has; drawn at full
#: opacity from `UNSURE_FULL_AT` (of 255): a two-class model is at most half unsure.
UNSURE_COLOR, UNSURE_ALPHA, UNSURE_FULL_AT = (255, 230, 0), 0.85, 128
_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_TITLE_PX = 28


def render(image: np.ndarray, origin: tuple[float, float], downsample: float,
           feature_collections: Mapping[str, dict], roi: BaseGeometry | None = None,
           max_side: int = 1600) -> np.ndarray:
    """One panel per model, side by side: class fills and outlines on the image.

    `image` covers full-resolution pixels from `origin` at `downsample` (RGB uint8).
    """
    scale = min(1.0, max_side / max(image.shape[:2]))
    base = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) \
        if scale < 1 else image.copy()
    to_panel = (np.array([1.0, 1.0]) / downsample * scale, np.array(origin, dtype=float))
    panels = [_panel(base, name, collection, roi, to_panel)
              for name, collection in feature_collections.items()]
    return np.concatenate(panels, axis=1) if panels else base


def render_confidence(image: np.ndarray, origin: tuple[float, float], downsample: float,
                      maps: Mapping[str, tuple[np.ndarray, tuple[float, float, float, float]]],
                      max_side: int = 1600) -> np.ndarray:
    """One panel per model: where it is unsure, as a heat map over the image.

    `maps` holds per model an uncertainty raster (uint8, 255 = unsure) and its placement
    (origin x, origin y, downsample x, downsample y in full-resolution pixels).
    """
    scale = min(1.0, max_side / max(image.shape[:2]))
    base = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) \
        if scale < 1 else image.copy()
    panels = []
    for title, (unsure, (x0, y0, dx, dy)) in maps.items():
        # panel pixel (i, j) -> map pixel: full = origin + (i + 0.5) * downsample / scale
        step = downsample / scale
        to_map = np.array([[step / dx, 0, (origin[0] + step / 2 - x0) / dx - 0.5],
                           [0, step / dy, (origin[1] + step / 2 - y0) / dy - 0.5]])
        placed = cv2.warpAffine(unsure, to_map, (base.shape[1], base.shape[0]),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        alpha = np.clip(placed.astype(np.float32) / UNSURE_FULL_AT, 0, 1)[..., None] \
            * UNSURE_ALPHA
        panel = (base * (1 - alpha) + np.array(UNSURE_COLOR) * alpha).astype(np.uint8)
        bar = np.full((_TITLE_PX, panel.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, f"{title}: where it is unsure", (6, _TITLE_PX - 9),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        panels.append(np.concatenate([bar, panel], axis=0))
    return np.concatenate(panels, axis=1) if panels else base


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Writes an RGB image as PNG."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
        raise OSError(f"cannot write {path}")


def _panel(base: np.ndarray, title: str, collection: dict, roi: BaseGeometry | None,
           to_panel: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    fills = base.copy()
    outlines = []
    for feature in collection.get("features", []):
        color = tuple(int(c) for c in feature["properties"]["classification"]["color"])
        rings = _rings(shape(feature["geometry"]), to_panel)
        cv2.fillPoly(fills, rings, color, lineType=cv2.LINE_AA, shift=_SHIFT)
        outlines.append((rings, color))
    panel = cv2.addWeighted(fills, FILL_ALPHA, base, 1 - FILL_ALPHA, 0)
    for rings, color in outlines:
        cv2.polylines(panel, rings, True, color, 1, lineType=cv2.LINE_AA, shift=_SHIFT)
    if roi is not None:
        cv2.polylines(panel, _rings(roi, to_panel), True, (20, 20, 20), 2,
                      lineType=cv2.LINE_AA, shift=_SHIFT)
    bar = np.full((_TITLE_PX, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (6, _TITLE_PX - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def _rings(geometry: BaseGeometry, to_panel: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    factor, origin = to_panel
    rings = []
    for polygon in shapely.get_parts(geometry):
        if polygon.geom_type != "Polygon":
            continue
        for ring in (polygon.exterior, *polygon.interiors):
            xy = (np.asarray(ring.coords)[:, :2] - origin) * factor
            rings.append(np.round(xy * (1 << _SHIFT)).astype(np.int32))
    return rings
