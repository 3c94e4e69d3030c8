"""The shared conventions, pinned by the vectors the Java client is tested against too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from roiseg.io import classes, overlay, qupath_geojson
from roiseg.io.raster import RasterTransform
from shapely.geometry import shape

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "conventions.json")
                     .read_text("utf-8"))


def test_names_match_the_vectors():
    keys = VECTORS["metadata_keys"]
    assert qupath_geojson.ROISEG_SOURCE_KEY == keys["source"]
    assert qupath_geojson.ROISEG_SOURCE_VALUE == keys["source_value"]
    assert qupath_geojson.MODEL_ID_KEY == keys["model_id"]
    assert qupath_geojson.MODEL_VERSION_KEY == keys["model_version"]
    assert qupath_geojson.RUN_ID_KEY == keys["run_id"]
    assert qupath_geojson.AREA_MEASUREMENT == VECTORS["measurements"]["area"]
    assert qupath_geojson.PROBABILITY_MEASUREMENT == VECTORS["measurements"]["probability"]
    assert classes.BACKGROUND_CLASS == VECTORS["background"]["name"]
    assert list(classes.BACKGROUND_COLOR) == VECTORS["background"]["color"]
    uncertainty = VECTORS["uncertainty"]
    assert list(overlay.UNSURE_COLOR) == uncertainty["color"]
    assert (overlay.UNSURE_ALPHA, overlay.UNSURE_FULL_AT) == (uncertainty["max_alpha"],
                                                              uncertainty["full_at"])


@pytest.mark.parametrize("case", VECTORS["transforms"])
def test_transforms(case):
    t = RasterTransform(**case["transform"])
    assert t.to_full(*case["raster"]) == pytest.approx(case["full"])
    assert t.to_raster(*case["full"]) == pytest.approx(case["raster"])


@pytest.mark.parametrize("case", VECTORS["features"])
def test_features(case):
    given = case["input"]
    feature = qupath_geojson.annotation_feature(
        shape(given["geometry"]), given["class_name"], given["color"], given["measurements"],
        qupath_geojson.model_metadata(given["model_id"], given["model_version"], given["run_id"]),
        given["id"])
    assert json.loads(json.dumps(feature)) == case["feature"]


@pytest.mark.parametrize("case", VECTORS["roiseg_objects"])
def test_roiseg_objects_are_recognised(case):
    assert qupath_geojson.is_roiseg_object(case["properties"]) is case["is_roiseg"]


def test_colours_close_to_a_qupath_builtin_class_of_another_name_are_confusable():
    assert classes.confusable_builtin_class("Gland epithelium", (200, 40, 40)) == "Tumor"
    assert classes.confusable_builtin_class("Lymphocytes", (155, 195, 150)) == "Stroma"
    # QuPath's own class in QuPath's own colour, and a colour far from every built-in
    assert classes.confusable_builtin_class("Stroma", (150, 200, 150)) is None
    assert classes.confusable_builtin_class("Gland epithelium", (0, 170, 200)) is None


def test_default_model_classes_cannot_be_taken_for_qupath_builtin_classes():
    from roiseg.engine.models import DEFAULT_MODELS_DIR

    card = json.loads((DEFAULT_MODELS_DIR / "model.json").read_text())
    for item in card["classes"]:
        assert classes.confusable_builtin_class(item["name"], item["color"]) is None, item
        builtin = classes.QUPATH_BUILTIN_CLASS_COLORS.get(item["name"])
        assert builtin is None or tuple(item["color"]) == builtin, \
            f"{item['name']} is QuPath's class: it shows in QuPath's colour {builtin}"


def test_new_classes_get_colours_no_one_takes_for_qupath_builtin_classes():
    from roiseg.train.training import class_specs

    specs = class_specs(["Stroma", "Gland epithelium", "Mucin", "Fat", "Muscle", "Vessel",
                         "Nerve", "Lumen", "Debris", "Blood"])
    assert specs[0].color == classes.QUPATH_BUILTIN_CLASS_COLORS["Stroma"]
    for spec in specs:
        assert classes.confusable_builtin_class(spec.name, spec.color) is None, spec
    # a colour the user asks for is kept
    assert class_specs(["A", "B"], {"A": (200, 0, 0)})[0].color == (200, 0, 0)
