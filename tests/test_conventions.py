"""The shared conventions, pinned by the vectors the Java client is tested against too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapely.geometry import shape

from roiseg import conventions
from roiseg.conventions import RasterTransform

VECTORS = json.loads((Path(__file__).parent / "vectors" / "conventions.json").read_text("utf-8"))


def test_names_match_the_vectors():
    keys = VECTORS["metadata_keys"]
    assert conventions.ROISEG_SOURCE_KEY == keys["source"]
    assert conventions.ROISEG_SOURCE_VALUE == keys["source_value"]
    assert conventions.MODEL_ID_KEY == keys["model_id"]
    assert conventions.MODEL_VERSION_KEY == keys["model_version"]
    assert conventions.AREA_MEASUREMENT == VECTORS["measurements"]["area"]
    assert conventions.PROBABILITY_MEASUREMENT == VECTORS["measurements"]["probability"]
    assert conventions.BACKGROUND_CLASS == VECTORS["background"]["name"]
    assert list(conventions.BACKGROUND_COLOR) == VECTORS["background"]["color"]


@pytest.mark.parametrize("case", VECTORS["transforms"])
def test_transforms(case):
    t = RasterTransform(**case["transform"])
    assert t.to_full(*case["raster"]) == pytest.approx(case["full"])
    assert t.to_raster(*case["full"]) == pytest.approx(case["raster"])


@pytest.mark.parametrize("case", VECTORS["features"])
def test_features(case):
    given = case["input"]
    feature = conventions.annotation_feature(
        shape(given["geometry"]), given["class_name"], given["color"], given["measurements"],
        conventions.model_metadata(given["model_id"], given["model_version"]))
    assert json.loads(json.dumps(feature)) == case["feature"]


@pytest.mark.parametrize("case", VECTORS["roiseg_objects"])
def test_roiseg_objects_are_recognised(case):
    assert conventions.is_roiseg_object(case["properties"]) is case["is_roiseg"]
