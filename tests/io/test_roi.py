"""ROIs: the contract's message, QuPath GeoJSON files, validation."""

from __future__ import annotations

import json

import pytest
from roiseg.errors import InvalidInput
from roiseg.io import roi
from roiseg.v1 import segmentation_pb2 as pb
from shapely.geometry import MultiPolygon, Polygon, box

HOLED = Polygon([(0, 0), (100, 0), (100, 80), (0, 80)], [[(20, 20), (40, 20), (40, 40), (20, 40)]])


def test_round_trip_keeps_holes_and_parts():
    geometry = MultiPolygon([HOLED, box(200, 0, 250, 50)])
    back = roi.from_proto(roi.to_proto(geometry))
    assert back.equals(geometry)
    assert back.area == pytest.approx(100 * 80 - 400 + 2500)


def test_self_intersecting_roi_is_repaired():
    bowtie = pb.Roi(polygons=[pb.Polygon(shell=pb.Ring(xy=[0, 0, 10, 10, 10, 0, 0, 10]))])
    geometry = roi.from_proto(bowtie)
    assert geometry.is_valid and geometry.area == pytest.approx(50)


@pytest.mark.parametrize("message, words", [
    (pb.Roi(), "empty"),
    (pb.Roi(polygons=[pb.Polygon(shell=pb.Ring(xy=[0, 0, 1, 1]))]), "at least 3"),
    (pb.Roi(polygons=[pb.Polygon(shell=pb.Ring(xy=[0, 0, 1, 1, 2]))]), "odd number"),
    (pb.Roi(polygons=[pb.Polygon(shell=pb.Ring(xy=[0, 0, 1, 1, 2, 2]))]), "degenerate"),
    (pb.Roi(polygons=[pb.Polygon(shell=pb.Ring(xy=[0, 0, 1, float("nan"), 2, 0]))]), "finite"),
])
def test_bad_rois_are_refused(message, words):
    with pytest.raises(InvalidInput, match=words):
        roi.from_proto(message)


def test_reads_qupath_geojson_exports(tmp_path):
    exported = [  # QuPath exports a list of features
        {"type": "Feature", "geometry": json.loads(json.dumps(HOLED.__geo_interface__)),
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
         "properties": {"objectType": "annotation"}},
    ]
    path = tmp_path / "roi.geojson"
    path.write_text(json.dumps(exported))
    assert roi.read_geojson(path).equals(HOLED)
    path.write_text(json.dumps({"type": "Point", "coordinates": [1, 2]}))
    with pytest.raises(InvalidInput, match="no polygon"):
        roi.read_geojson(path)


def test_rectangle_needs_positive_size():
    assert roi.rectangle(1, 2, 3, 4).bounds == (1, 2, 4, 6)
    with pytest.raises(InvalidInput):
        roi.rectangle(0, 0, 0, 5)
