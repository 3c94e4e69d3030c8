"""QuPath GeoJSON as QuPath reads and writes it: the one reader and the one writer.

QuPath's "Export objects as GeoJSON" writes a FeatureCollection, a single Feature or a list of
Features; objects may hold their children in ``properties.childObjects``; a bare geometry is
an object without properties. Coordinates are full-resolution image pixels.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from roiseg.errors import InvalidInput

_GEOMETRY_TYPES = frozenset({"Polygon", "MultiPolygon", "GeometryCollection", "Point",
                             "MultiPoint", "LineString", "MultiLineString"})


def load(path: str | Path, what: str = "GeoJSON") -> Any:
    """The parsed JSON of a file; ValueError saying which `what` could not be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}") from error


def objects(data: Any, children: bool = True) -> Iterator[tuple[dict[str, Any], int]]:
    """(Feature, level) for every object in QuPath GeoJSON, in file order: level 1 at the
    top, each ``childObjects`` one level below its parent (left out without `children`).
    A bare geometry comes as a Feature with empty properties."""

    def visit(item: Any, level: int) -> Iterator[tuple[dict[str, Any], int]]:
        if isinstance(item, list):
            for element in item:
                yield from visit(element, level)
            return
        if not isinstance(item, Mapping):
            return
        kind = item.get("type")
        if kind == "FeatureCollection":
            yield from visit(item.get("features") or [], level)
        elif kind == "Feature":
            yield dict(item), level
            properties = item.get("properties")
            if children and isinstance(properties, Mapping):
                yield from visit(properties.get("childObjects") or [], level + 1)
        elif kind in _GEOMETRY_TYPES:
            yield {"type": "Feature", "geometry": dict(item), "properties": {}}, level

    yield from visit(data, 1)


def class_name(properties: Any) -> str | None:
    """An object's classification: ``classification.name`` (QuPath), its ``names`` joined as
    QuPath shows a derived class, or a plain string as some exporters write it."""
    if not isinstance(properties, Mapping):
        return None
    classification = properties.get("classification")
    if isinstance(classification, Mapping):
        name = classification.get("name")
        if name is None and isinstance(classification.get("names"), list):
            name = ": ".join(str(n) for n in classification["names"])
        return (str(name).strip() or None) if name is not None else None
    if isinstance(classification, str):
        return classification.strip() or None
    return None


def polygonal(geometry: BaseGeometry | None,
              max_repair_vertices: int | None = None) -> BaseGeometry:
    """The valid area of an annotation's geometry: its polygons made valid as QuPath reads
    them (shells united, holes subtracted), without the points and lines a repair may leave;
    an empty Polygon when it has none. A self-crossing geometry of more than
    `max_repair_vertices` vertices is refused (InvalidInput): its repair time grows with the
    square of its crossings."""
    if geometry is None or geometry.is_empty:
        return Polygon()
    if not geometry.is_valid:
        vertices = shapely.get_num_coordinates(geometry)
        if max_repair_vertices is not None and vertices > max_repair_vertices:
            raise InvalidInput(f"an annotation of {vertices} vertices crosses itself: fix or "
                               "simplify it in QuPath and try again")
        geometry = shapely.make_valid(geometry, method="structure", keep_collapsed=False)
    parts = [q for p in shapely.get_parts(geometry) if p.geom_type in ("Polygon", "MultiPolygon")
             for q in shapely.get_parts(p) if not q.is_empty and q.area > 0]
    if not parts:
        return Polygon()
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


#: Metadata keys roiseg writes on every object it creates. `ROISEG_SOURCE_KEY` marks an
#: object as a roiseg pre-annotation: clients replace only objects carrying it.
ROISEG_SOURCE_KEY = "roiseg.source"
ROISEG_SOURCE_VALUE = "roiseg"
MODEL_ID_KEY = "roiseg.model_id"
MODEL_VERSION_KEY = "roiseg.model_version"
#: One Segment call: every object it made carries the same run id.
RUN_ID_KEY = "roiseg.run_id"
#: The image's full-resolution µm/px, as a decimal string (QuPath's metadata are strings), so
#: that areas of the objects and of their corrections can be measured from the file alone.
PIXEL_SIZE_KEY = "roiseg.pixel_size_um"

#: Measurement names, as QuPath shows them.
AREA_MEASUREMENT = "roiseg: predicted area µm^2"
PROBABILITY_MEASUREMENT = "roiseg: mean class probability"


def classification(name: str, color: Sequence[int]) -> dict[str, Any]:
    """QuPath's classification object; QuPath up to 0.7 needs the colour with the name."""
    return {"name": name, "color": [int(c) for c in color]}


def annotation_feature(geometry: BaseGeometry, class_name: str, color: Sequence[int],
                       measurements: Mapping[str, float], metadata: Mapping[str, str],
                       feature_id: str, name: str | None = None) -> dict[str, Any]:
    """A GeoJSON Feature QuPath imports as an unlocked, classified annotation whose object id
    is `feature_id` (a UUID, at the Feature's top level as QuPath writes it), so a corrected
    object can be traced to the prediction it came from; `name` is the object's name."""
    properties: dict[str, Any] = {
        "objectType": "annotation",
        "classification": classification(class_name, color),
        "isLocked": False,
        "measurements": {k: float(v) for k, v in measurements.items()},
        "metadata": {ROISEG_SOURCE_KEY: ROISEG_SOURCE_VALUE, **metadata},
    }
    if name is not None:
        properties["name"] = name
    return {"type": "Feature", "id": feature_id, "geometry": shapely.geometry.mapping(geometry),
            "properties": properties}


def feature_collection(features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def model_metadata(model_id: str, model_version: str, run_id: str) -> dict[str, str]:
    """The provenance roiseg writes on each object: the model, its version and the run."""
    return {MODEL_ID_KEY: model_id, MODEL_VERSION_KEY: model_version, RUN_ID_KEY: run_id}


def is_roiseg_object(properties: Mapping[str, Any]) -> bool:
    """Whether a feature's properties mark it as a roiseg pre-annotation."""
    metadata = properties.get("metadata") or {}
    return metadata.get(ROISEG_SOURCE_KEY) == ROISEG_SOURCE_VALUE
