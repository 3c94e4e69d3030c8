"""Overlay pictures: returned polygons drawn over the region they were segmented from, each
panel with a title, a key of its classes, the region's full-resolution coordinates and, given
the pixel size, a scale bar."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Collection, Mapping, Sequence

import cv2
import numpy as np
import shapely
from PIL import Image, ImageDraw, ImageFont
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

#: Opacity of the class fills.
FILL_ALPHA = 0.35
#: Colour and strongest opacity of uncertainty: a yellow no H&E stain has; drawn at full
#: opacity from `UNSURE_FULL_AT` (of 255): a two-class model is at most half unsure.
UNSURE_COLOR, UNSURE_ALPHA, UNSURE_FULL_AT = (255, 230, 0), 0.85, 128
_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_TITLE_PX = 28
#: Height of the key under each panel.
LEGEND_PX = 26
#: A scale bar takes one of these lengths (µm), the longest within `_SCALE_FRACTION` of the
#: panel's width.
SCALE_LENGTHS_UM = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_SCALE_FRACTION = 0.25
_SCALE_COLOR = (0, 0, 0)


def render(image: np.ndarray, origin: tuple[float, float], downsample: float,
           feature_collections: Mapping[str, dict], roi: BaseGeometry | None = None,
           max_side: int = 1600, mpp: float | None = None,
           outlined: Collection[str] = ()) -> np.ndarray:
    """One panel per model, side by side: class fills and outlines on the image, a key of the
    classes and the region's coordinates under it, and a scale bar when `mpp` (full-resolution
    µm/px) is given.

    `image` covers full-resolution pixels from `origin` at `downsample` (RGB uint8). The
    classes named in `outlined` (a model's catch-all, the rest of the tissue) are drawn as
    outlines only, so that they leave the stain as it is; the key says so.
    """
    scale = min(1.0, max_side / max(image.shape[:2]))
    base = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) \
        if scale < 1 else image.copy()
    to_panel = (np.array([1.0, 1.0]) / downsample * scale, np.array(origin, dtype=float))
    um_per_px = mpp * downsample / scale if mpp else None
    extent = _extent(origin, downsample / scale, base.shape)
    panels = []
    for name, collection in feature_collections.items():
        panel = _panel(base, collection, roi, to_panel, outlined)
        _scale_bar(panel, um_per_px)
        key = [(tuple(int(c) for c in color),
                f"{class_name} (outline)" if class_name in outlined else class_name,
                class_name not in outlined)
               for class_name, color in _classes(collection).items()]
        panels.append(np.concatenate([_title(name, panel.shape[1]), panel,
                                      _legend(key, extent, panel.shape[1])], axis=0))
    return np.concatenate(panels, axis=1) if panels else base


def render_confidence(image: np.ndarray, origin: tuple[float, float], downsample: float,
                      maps: Mapping[str, tuple[np.ndarray, tuple[float, float, float, float]]],
                      max_side: int = 1600, mpp: float | None = None) -> np.ndarray:
    """One panel per model: where it is unsure, as a heat map over the image.

    `maps` holds per model an uncertainty raster (uint8, 255 = unsure) and its placement
    (origin x, origin y, downsample x, downsample y in full-resolution pixels).
    """
    scale = min(1.0, max_side / max(image.shape[:2]))
    base = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) \
        if scale < 1 else image.copy()
    um_per_px = mpp * downsample / scale if mpp else None
    extent = _extent(origin, downsample / scale, base.shape)
    key = [(UNSURE_COLOR, "unsure (1 − probability of the most probable class); clear: sure",
            True)]
    panels = []
    for title, (unsure, placement) in maps.items():
        placed = _placed(unsure, placement, base.shape, origin, downsample / scale,
                         cv2.INTER_LINEAR)
        alpha = np.clip(placed.astype(np.float32) / UNSURE_FULL_AT, 0, 1)[..., None] \
            * UNSURE_ALPHA
        panel = (base * (1 - alpha) + np.array(UNSURE_COLOR) * alpha).astype(np.uint8)
        _scale_bar(panel, um_per_px)
        panels.append(np.concatenate([_title(f"{title}: where it is unsure", panel.shape[1]),
                                      panel, _legend(key, extent, panel.shape[1])], axis=0))
    return np.concatenate(panels, axis=1) if panels else base


#: Colours of a model's errors against a reference: predicted where the reference has none
#: (false positive), and missed (false negative).
FALSE_POSITIVE_COLOR, FALSE_NEGATIVE_COLOR = (230, 0, 160), (255, 140, 0)


def render_errors(image: np.ndarray, origin: tuple[float, float], downsample: float,
                  errors: Mapping[str, tuple[np.ndarray, np.ndarray,
                                             tuple[float, float, float, float]]],
                  positive: str, max_side: int = 1600, mpp: float | None = None) -> np.ndarray:
    """One panel per model: where it disagrees with the reference on the `positive` class.

    `errors` holds per panel title the false-positive and false-negative masks (bool, same
    shape) and their placement (origin x, origin y, downsample x, downsample y).
    """
    scale = min(1.0, max_side / max(image.shape[:2]))
    base = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) \
        if scale < 1 else image.copy()
    um_per_px = mpp * downsample / scale if mpp else None
    extent = _extent(origin, downsample / scale, base.shape)
    key = [(FALSE_POSITIVE_COLOR, "predicted, not in the reference", True),
           (FALSE_NEGATIVE_COLOR, "in the reference, missed", True)]
    panels = []
    for title, (false_positive, false_negative, placement) in errors.items():
        panel = base.copy()
        for mask, color in ((false_positive, FALSE_POSITIVE_COLOR),
                            (false_negative, FALSE_NEGATIVE_COLOR)):
            placed = _placed(mask.astype(np.uint8), placement, base.shape, origin,
                             downsample / scale, cv2.INTER_NEAREST) > 0
            panel[placed] = (0.35 * panel[placed] + 0.65 * np.array(color)).astype(np.uint8)
        _scale_bar(panel, um_per_px)
        panels.append(np.concatenate([_title(f"{title}: {positive} against the reference",
                                             panel.shape[1]),
                                      panel, _legend(key, extent, panel.shape[1])], axis=0))
    return np.concatenate(panels, axis=1) if panels else base


def _placed(raster: np.ndarray, placement: tuple[float, float, float, float],
            shape: tuple[int, ...], origin: tuple[float, float], step: float,
            interpolation: int) -> np.ndarray:
    """`raster` (placed at origin x, y and downsample x, y in full-resolution pixels) resampled
    onto a panel of `shape` whose pixel (i, j) covers full-resolution `origin` + (i, j) * step."""
    x0, y0, dx, dy = placement
    to_map = np.array([[step / dx, 0, (origin[0] + step / 2 - x0) / dx - 0.5],
                       [0, step / dy, (origin[1] + step / 2 - y0) / dy - 0.5]])
    return cv2.warpAffine(raster, to_map, (shape[1], shape[0]),
                          flags=interpolation | cv2.WARP_INVERSE_MAP)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Writes an RGB image as PNG."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
        raise OSError(f"cannot write {path}")


def _panel(base: np.ndarray, collection: dict, roi: BaseGeometry | None,
           to_panel: tuple[np.ndarray, np.ndarray], outlined: Collection[str]) -> np.ndarray:
    """The image with the collection's polygons: filled (but those of `outlined` classes) and
    outlined, and the ROI's outline."""
    fills = base.copy()
    outlines = []
    for feature in collection.get("features", []):
        classification = feature["properties"]["classification"]
        color = tuple(int(c) for c in classification["color"])
        rings = _rings(shape(feature["geometry"]), to_panel)
        if classification["name"] not in outlined:
            cv2.fillPoly(fills, rings, color, lineType=cv2.LINE_AA, shift=_SHIFT)
        outlines.append((rings, color))
    panel = cv2.addWeighted(fills, FILL_ALPHA, base, 1 - FILL_ALPHA, 0)
    for rings, color in outlines:
        cv2.polylines(panel, rings, True, color, 1, lineType=cv2.LINE_AA, shift=_SHIFT)
    if roi is not None:
        cv2.polylines(panel, _rings(roi, to_panel), True, (20, 20, 20), 2,
                      lineType=cv2.LINE_AA, shift=_SHIFT)
    return panel


def _title(text: str, width: int) -> np.ndarray:
    bar = np.full((_TITLE_PX, width, 3), 255, np.uint8)
    _text(bar, (6, 5), text, 15)
    return bar


def _classes(collection: dict) -> dict[str, Sequence[int]]:
    """Each class of a collection's features, once, with its colour, in order."""
    found: dict[str, Sequence[int]] = {}
    for feature in collection.get("features", []):
        classification = feature["properties"]["classification"]
        found.setdefault(classification["name"], classification["color"])
    return found


def _extent(origin: tuple[float, float], px: float, shape: tuple[int, ...]) -> str:
    """The full-resolution pixels a panel covers, in words."""
    x0, y0 = origin
    return (f"x {x0:,.0f}–{x0 + shape[1] * px:,.0f}, y {y0:,.0f}–{y0 + shape[0] * px:,.0f} px "
            "(full resolution)")


def _legend(key: Sequence[tuple[Sequence[int], str, bool]], extent: str,
            width: int) -> np.ndarray:
    """A strip naming each colour of the panel (color, name, filled: a filled swatch, else a
    swatch outlined in the colour) and, at the right, the region's coordinates."""
    strip = np.full((LEGEND_PX, width, 3), 255, np.uint8)
    x = 6
    for color, name, filled in key:
        rgb = tuple(int(c) for c in color)
        if filled:
            cv2.rectangle(strip, (x, 6), (x + 14, LEGEND_PX - 7), rgb, -1)
            cv2.rectangle(strip, (x, 6), (x + 14, LEGEND_PX - 7), (90, 90, 90), 1)
        else:
            cv2.rectangle(strip, (x, 6), (x + 14, LEGEND_PX - 7), rgb, 2)
        x = _text(strip, (x + 19, 5), name, 13) + 14
    if x + 6 + _text_width(extent, 12) <= width - 6:  # where there is room
        _text(strip, (x + 6, 5), extent, 12, right_to=width - 6)
    return strip


def scale_length_um(um_per_px: float, width_px: int) -> float:
    """The scale bar's length in µm for a panel `width_px` wide at `um_per_px`."""
    longest = _SCALE_FRACTION * width_px * um_per_px
    fitting = [length for length in SCALE_LENGTHS_UM if length <= longest]
    return fitting[-1] if fitting else SCALE_LENGTHS_UM[0]


def _scale_bar(panel: np.ndarray, um_per_px: float | None) -> None:
    """Draws a bar of a round length in µm at the panel's lower left, on a white label."""
    if not um_per_px:
        return
    height, width = panel.shape[:2]
    length_um = scale_length_um(um_per_px, width)
    length_px = max(1, round(length_um / um_per_px))
    label = f"{length_um:g} µm" if length_um < 1000 else f"{length_um / 1000:g} mm"
    left, bottom = 10, height - 10
    top, right = max(0, bottom - 30), left + max(length_px, 60) + 6
    cv2.rectangle(panel, (left - 6, top), (right, bottom + 5), (255, 255, 255), -1)
    cv2.rectangle(panel, (left, bottom - 5), (left + length_px - 1, bottom), _SCALE_COLOR, -1)
    _text(panel[top:bottom - 5, left:right], (0, bottom - 26 - top), label, 13)


@lru_cache(maxsize=8)
def _font(size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, bool]:
    """DejaVu Sans when the system has it (µ, –), else Pillow's own font (ASCII); and whether
    the font has the µ sign."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size), True
    except OSError:
        return ImageFont.load_default(size), False


def _drawable(text: str, unicode: bool) -> str:
    return text if unicode else text.replace("µ", "u").replace("–", "-").replace("−", "-")


def _text_width(text: str, size: int) -> int:
    font, unicode = _font(size)
    return int(font.getlength(_drawable(text, unicode)))


def _text(image: np.ndarray, xy: tuple[int, int], text: str, size: int,
          right_to: int | None = None) -> int:
    """Writes black text on `image` in place (right-aligned to `right_to` when given and there
    is room); returns where it ends on x."""
    font, unicode = _font(size)
    text = _drawable(text, unicode)
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    width = int(draw.textlength(text, font=font))
    x, y = xy
    if right_to is not None:
        x = max(x, right_to - width)
    draw.text((x, y), text, font=font, fill=(0, 0, 0))
    image[...] = np.asarray(picture)
    return x + width


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
