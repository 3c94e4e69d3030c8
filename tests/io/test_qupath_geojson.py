"""The one reader of QuPath GeoJSON (roiseg.io.qupath_geojson) that ROI files, project-mode ROIs,
evaluation references and training annotations all go through."""

from __future__ import annotations

import json

import pytest
from roiseg.io import qupath_geojson
from shapely.geometry import LineString, Polygon, box, mapping


def _feature(geometry, name=None, children=()):
    properties = {"objectType": "annotation"}
    if name:
        properties["classification"] = {"name": name, "color": [1, 2, 3]}
    if children:
        properties["childObjects"] = list(children)
    return {"type": "Feature", "geometry": mapping(geometry), "properties": properties}


def test_objects_walk_collections_lists_children_and_bare_geometries():
    child = _feature(box(1, 1, 2, 2), "Gland epithelium")
    data = [{"type": "FeatureCollection", "features": [_feature(box(0, 0, 9, 9), "Region",
                                                                [child])]},
            mapping(box(20, 20, 30, 30))]
    walked = list(qupath_geojson.objects(data))
    assert [(qupath_geojson.class_name(f["properties"]), level) for f, level in walked] == \
        [("Region", 1), ("Gland epithelium", 2), (None, 1)]
    assert [level for _, level in qupath_geojson.objects(data, children=False)] == [1, 1]


def test_class_names_as_qupath_and_other_exporters_write_them():
    assert qupath_geojson.class_name({"classification": {"name": " Stroma "}}) == "Stroma"
    assert qupath_geojson.class_name({"classification": {"names": ["Tumor", "Positive"]}}) == \
        "Tumor: Positive"
    assert qupath_geojson.class_name({"classification": "Necrosis"}) == "Necrosis"
    assert qupath_geojson.class_name({}) is None and qupath_geojson.class_name(None) is None


def test_polygonal_keeps_the_valid_area_and_nothing_else():
    bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])  # self-intersecting
    area = qupath_geojson.polygonal(bowtie)
    assert area.is_valid and area.area == pytest.approx(2.0)
    holed = box(0, 0, 10, 10).difference(box(4, 4, 6, 6))
    assert qupath_geojson.polygonal(holed).equals(holed)
    assert qupath_geojson.polygonal(LineString([(0, 0), (1, 1)])).is_empty


def test_load_says_what_could_not_be_read(tmp_path):
    path = tmp_path / "roi.geojson"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read ROI file .*roi.geojson"):
        qupath_geojson.load(path, "ROI file")
    path.write_text(json.dumps(_feature(box(0, 0, 1, 1))))
    assert qupath_geojson.load(path)["type"] == "Feature"
