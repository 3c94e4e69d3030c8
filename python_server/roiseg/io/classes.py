"""Class names and display colours: the background class, QuPath's built-in classes and the
colour each class of a model is shown in. Mirrored by the Java client's `Conventions`; both are
pinned by `tests/vectors/conventions.json`."""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

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
    "other tissue": (60, 180, 75),  # a catch-all class: drawn as an outline
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
