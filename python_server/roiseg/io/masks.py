"""Label masks: which pixel value stands for which class."""

from __future__ import annotations

import re

_VALUE = re.compile(r"""\s*(\d+)\s*=\s*("([^"]*)"|'([^']*)'|[^,]*?)\s*(?:,|$)""")


def parse_values(text: str | None) -> dict[int, str] | None:
    """``0=background,255="Gland epithelium"`` -> {0: "background", 255: ...}; None if empty."""
    if not text or not text.strip():
        return None
    text, position, values = text.strip(), 0, {}
    while position < len(text):
        match = _VALUE.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"cannot parse mask values {text!r} at {text[position:]!r}; "
                             'expected e.g. 0=background,255="Gland epithelium"')
        value = int(match.group(1))
        name = next(g for g in (match.group(3), match.group(4), match.group(2))
                    if g is not None).strip()
        if not name:
            raise ValueError(f"mask value {value} has no class name")
        if value in values:
            raise ValueError(f"mask value {value} is given twice")
        values[value] = name
        position = match.end()
    return values
