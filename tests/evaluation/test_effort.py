"""`roiseg effort`: a real GlaS prediction of the embedded default model, corrected as a
pathologist would in QuPath, against numbers worked out here with shapely."""

from __future__ import annotations

import copy
import csv
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import shapely
from conftest import GLAS
from roiseg.cli import main as roiseg_main
from roiseg.evaluation import effort as ef
from roiseg.io import qupath_geojson
from shapely import affinity
from shapely.geometry import Point, box, mapping, shape

IMAGE = GLAS / "images" / "train_10.png"  # 775 x 522 px
MPP = 0.62
GLAND, STROMA = "Gland epithelium", "Other tissue"
#: The pathologist's move of one gland's outline, in full-resolution pixels.
MOVE = (6.0, -4.0)
#: Pixel Dice/IoU (pixel centres on a 1 px grid) against the polygons' own Dice/IoU: the
#: rasterisation error allowed (measured: below 2e-4 on this image).
RASTER_TOLERANCE = 0.002


@pytest.fixture(scope="module")
def prediction(tmp_path_factory, one_torch_thread) -> dict:
    """The embedded default model on a GlaS image, in-process, its catch-all "Other tissue"
    too, with a Feature id on every object (roiseg writes them; added here only where an older
    roiseg did not)."""
    out = tmp_path_factory.mktemp("effort") / "pred.geojson"
    assert roiseg_main(["segment", str(IMAGE), "--mpp", str(MPP), "-o", str(out),
                        "--all-classes", "--device", "cpu"]) == 0
    data = json.loads(out.read_text())
    for feature in data["features"]:
        feature.setdefault("id", str(uuid.uuid4()))
    return data


def _name(feature: dict) -> str | None:
    classification = feature["properties"].get("classification")
    return classification["name"] if classification else None


def _area(feature: dict) -> float:
    return shape(feature["geometry"]).area


class Correction:
    """What the pathologist did to the prediction, and the QuPath export that resulted."""

    def __init__(self, pred: dict) -> None:
        features = copy.deepcopy(pred["features"])
        glands = sorted((f for f in features if _name(f) == GLAND), key=_area, reverse=True)
        assert len(glands) >= 5, "the test needs a prediction with at least 5 glands"
        self.moved, self.reclassified = glands[0], glands[1]
        self.deleted = glands[-2:]
        kept = [f for f in features if f not in (self.moved, self.reclassified, *self.deleted)]
        self.kept = kept
        moved = copy.deepcopy(self.moved)
        moved["geometry"] = mapping(affinity.translate(shape(moved["geometry"]), *MOVE))
        reclassified = copy.deepcopy(self.reclassified)
        reclassified["properties"]["classification"] = {"name": STROMA, "color": [150, 200, 150]}
        self.added = {"type": "Feature", "id": str(uuid.uuid4()),
                      "geometry": mapping(_free_circle(pred)),
                      "properties": {"objectType": "annotation", "isLocked": False,
                                     "classification": {"name": GLAND, "color": [200, 0, 0]}}}
        #: The results after correction, in the order QuPath would list them.
        self.results = [*kept, moved, reclassified, self.added]
        note = {"type": "Feature", "id": str(uuid.uuid4()),
                "geometry": mapping(box(300, 300, 340, 330)),
                "properties": {"objectType": "annotation", "name": "check this"}}
        # QuPath's export of the hierarchy: the (classified) ROI holds the objects as children.
        self.roi = {"type": "Feature", "id": str(uuid.uuid4()),
                    "geometry": mapping(box(-10, -10, 785, 532)),
                    "properties": {"objectType": "annotation",
                                   "classification": {"name": "Region*", "color": [0, 0, 180]},
                                   "childObjects": [*self.results, note]}}
        self.export = {"type": "FeatureCollection", "features": [self.roi]}


def _free_circle(pred: dict) -> shapely.Polygon:
    """A missed gland: a 25 px circle in the stroma, away from every predicted gland."""
    glands = shapely.union_all([shape(f["geometry"]) for f in pred["features"]
                                if _name(f) == GLAND])
    for y in range(40, 500, 20):
        for x in range(40, 760, 20):
            circle = Point(x, y).buffer(25)
            if circle.distance(glands) > 10:
                return circle
    raise AssertionError("no room for a missed gland")


def _union(features: list[dict], name: str) -> Any:
    return shapely.union_all([shape(f["geometry"]) for f in features if _name(f) == name])


def _expected_areas(pred: list[dict], corrected: list[dict], name: str,
                    within: Any = None) -> dict[str, float]:
    """Area added, removed, predicted, corrected (µm²) and the polygons' Dice and IoU."""
    p, c = _union(pred, name), _union(corrected, name)
    if within is not None:
        p, c = p.intersection(within), c.intersection(within)
    both = p.intersection(c).area
    return {"area_added_um2": c.difference(p).area * MPP ** 2,
            "area_removed_um2": p.difference(c).area * MPP ** 2,
            "area_predicted_um2": p.area * MPP ** 2, "area_corrected_um2": c.area * MPP ** 2,
            "dice": 2 * both / (p.area + c.area), "iou": both / p.union(c).area}


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _rows(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    with (out / "effort.csv").open(newline="", encoding="utf-8") as file:
        return {(r["image"], r["class"]): r for r in csv.DictReader(file)}


def _without_ids(data: Any) -> Any:
    if isinstance(data, list):
        return [_without_ids(v) for v in data]
    if isinstance(data, dict):
        return {k: _without_ids(v) for k, v in data.items() if k != "id"}
    return data


OBJECT_COLUMNS = ("objects_predicted", "objects_corrected", "objects_kept", "objects_edited",
                  "objects_reclassified", "objects_deleted", "objects_added")


def _objects(row: dict[str, str]) -> tuple[int, ...]:
    return tuple(int(row[k]) for k in OBJECT_COLUMNS)


def _check_areas(row: dict[str, str], expected: dict[str, float]) -> None:
    for key in ("area_added_um2", "area_removed_um2", "area_predicted_um2",
                "area_corrected_um2"):
        assert float(row[key]) == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    for key in ("dice", "iou"):
        assert float(row[key]) == pytest.approx(expected[key], abs=RASTER_TOLERANCE), key


# --------------------------------------------------------------------------- real corrections


def test_corrections_are_counted_and_measured(prediction, tmp_path, capsys):
    fix = Correction(prediction)
    pred = _write(tmp_path / "pred" / "train_10.geojson", prediction)
    corrected = _write(tmp_path / "corrected" / "train_10.geojson", fix.export)
    out = tmp_path / "out"
    assert roiseg_main(["effort", str(pred), str(corrected), "--out", str(out),
                        "--mpp", str(MPP)]) == 0
    printed = capsys.readouterr().out
    rows = _rows(out)
    features = prediction["features"]
    glands = sum(_name(f) == GLAND for f in features)
    stroma = sum(_name(f) == STROMA for f in features)
    assert len(features) == glands + stroma
    # By hand: 2 glands deleted, 1 moved and 1 reclassified (edited, counted under the class
    # they were predicted as), 1 added; the rest kept. The ROI and the unclassified note are
    # not results.
    gland = rows[("train_10", GLAND)]
    assert _objects(gland) == (glands, glands - 2, glands - 4, 2, 1, 2, 1)
    assert _objects(rows[("train_10", STROMA)]) == (stroma, stroma + 1, stroma, 0, 0, 0, 0)
    total = (len(features), len(features) - 1, len(features) - 4, 2, 1, 2, 1)
    assert _objects(rows[("train_10", ef.ALL)]) == total
    assert _objects(rows[(ef.ALL, ef.ALL)]) == total
    for name in (GLAND, STROMA):
        expected = _expected_areas(features, fix.results, name)
        _check_areas(rows[("train_10", name)], expected)
        _check_areas(rows[(ef.ALL, name)], expected)
    # The correction changed real area, both ways: the moved gland left a strip behind and
    # covered another; the added and the reclassified glands are new area of their class.
    gland_areas = _expected_areas(features, fix.results, GLAND)
    assert gland_areas["area_added_um2"] > _area(fix.added) * MPP ** 2 * 0.99
    assert gland_areas["area_removed_um2"] > sum(map(_area, (fix.reclassified, *fix.deleted))) \
        * MPP ** 2 * 0.99
    assert 0.5 < float(gland["dice"]) < 0.99
    stroma_added = _expected_areas(features, fix.results, STROMA)["area_added_um2"]
    assert stroma_added == pytest.approx(_area(fix.reclassified) * MPP ** 2, rel=0.05)
    all_row = rows[("train_10", ef.ALL)]
    assert float(all_row["area_added_um2"]) == pytest.approx(
        sum(_expected_areas(features, fix.results, n)["area_added_um2"]
            for n in (GLAND, STROMA)), rel=1e-6)
    assert {r["matched_by"] for r in rows.values()} == {"id"}
    assert {r["mpp"] for r in rows.values()} == {str(MPP)}
    assert {r["downsample"] for r in rows.values()} == {"1.0"}
    summary = (out / "summary.md").read_text()
    assert "- Objects matched by Feature id in 1 image(s)." in summary
    assert "outline moved by more than 1 full-resolution px" in summary
    assert "left out ROI 'Region*'" in summary and "1 unclassified object(s)" in summary
    assert "grid of 1 full-resolution px per pixel" in summary
    assert "Predictions by glas-unet-mobilenetv2@" in summary
    assert f"{len(features)} predicted: {len(features) - 4} kept, 2 edited (1 reclassified), " \
        "2 deleted; 1 added" in printed
    assert "wrote" in printed and "effort.csv" in printed


def test_moves_within_the_tolerance_are_kept(prediction, tmp_path):
    fix = Correction(prediction)
    pred = _write(tmp_path / "pred.geojson", prediction)
    corrected = _write(tmp_path / "corrected.geojson", fix.export)
    out = tmp_path / "out"
    # The 7.2 px move is within a 10 px tolerance: only the reclassified gland is edited.
    assert roiseg_main(["effort", str(pred), str(corrected), "--out", str(out), "--mpp",
                        str(MPP), "--tolerance", "10"]) == 0
    n = len(prediction["features"])
    assert _objects(_rows(out)[(ef.ALL, ef.ALL)]) == (n, n - 1, n - 3, 1, 1, 2, 1)


def test_a_file_against_itself_is_no_correction(prediction, tmp_path):
    pred = _write(tmp_path / "pred.geojson", prediction)
    out = tmp_path / "out"
    assert roiseg_main(["effort", str(pred), str(pred), "--out", str(out), "--mpp",
                        str(MPP)]) == 0
    rows = _rows(out)
    n = len(prediction["features"])
    assert _objects(rows[(ef.ALL, ef.ALL)]) == (n, n, n, 0, 0, 0, 0)
    for row in rows.values():
        assert float(row["dice"]) == 1.0 and float(row["iou"]) == 1.0
        assert float(row["area_added_um2"]) == 0.0 and float(row["area_removed_um2"]) == 0.0
        assert row["area_predicted_um2"] == row["area_corrected_um2"]
        assert float(row["area_predicted_um2"]) > 0
    assert "100.0 % of the predicted objects kept unchanged" in (out / "summary.md").read_text()


def test_without_ids_objects_are_matched_by_geometry_and_the_report_says_so(
        prediction, tmp_path, capsys):
    fix = Correction(prediction)
    pred = _write(tmp_path / "pred.geojson", _without_ids(prediction))
    corrected = _write(tmp_path / "corrected.geojson", _without_ids(fix.export))
    out = tmp_path / "out"
    assert roiseg_main(["effort", str(pred), str(corrected), "--out", str(out), "--mpp",
                        str(MPP)]) == 0
    rows = _rows(out)
    features = prediction["features"]
    glands = sum(_name(f) == GLAND for f in features)
    stroma = len(features) - glands
    # IoU > 0.5 with the same class: the moved gland is found (edited); the reclassified one
    # is not (deleted as a gland, added as stroma).
    assert _objects(rows[("corrected", GLAND)]) == (glands, glands - 2, glands - 4, 1, 0, 3, 1)
    assert _objects(rows[("corrected", STROMA)]) == (stroma, stroma + 1, stroma, 0, 0, 0, 1)
    for name in (GLAND, STROMA):  # areas do not depend on the matching
        _check_areas(rows[("corrected", name)], _expected_areas(features, fix.results, name))
    assert {r["matched_by"] for r in rows.values()} == {"geometry"}
    summary = (out / "summary.md").read_text()
    assert "**Objects matched by geometry** (IoU > 0.5 with the same class; a reclassified " \
        "object counts as deleted and added) in 1 image(s), for want of Feature ids: " \
        "corrected: PRED has no Feature ids." in summary
    assert "matched by geometry (no usable Feature ids)" in capsys.readouterr().out
    # Ids on one side only are no use either.
    matching = ef.match_objects(ef.read_side(_write(tmp_path / "p.geojson", prediction)).objects,
                                ef.read_side(corrected).objects)
    assert matching.by == "geometry" and matching.reason == "CORRECTED has no Feature ids"


def test_a_missing_pixel_size_is_refused(prediction, tmp_path, capsys):
    """roiseg writes the image's pixel size on its objects; files without it need --mpp."""
    key = qupath_geojson.PIXEL_SIZE_KEY
    assert {f["properties"]["metadata"][key] for f in prediction["features"]} == {repr(MPP)}
    bare = copy.deepcopy(prediction)
    for feature in bare["features"]:
        del feature["properties"]["metadata"][key]
    fix = Correction(bare)
    pred = _write(tmp_path / "pred.geojson", bare)
    corrected = _write(tmp_path / "corrected.geojson", fix.export)
    out = tmp_path / "out"
    assert roiseg_main(["effort", str(pred), str(corrected), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("roiseg effort: error: no pixel size for corrected: ")
    assert "Pass --mpp" in error and "never guesses" in error
    assert not out.exists()
    # roiseg's own output carries it: enough.
    _write(pred, prediction)
    assert roiseg_main(["effort", str(pred), str(corrected), "--out", str(out)]) == 0
    assert "pixel size 0.62 µm/px (file metadata)" in (out / "summary.md").read_text()
    assert {r["mpp"] for r in _rows(out).values()} == {str(MPP)}


def test_folders_pair_by_name_and_report_unpaired_files(prediction, tmp_path, capsys):
    fix = Correction(prediction)
    preds, corrections = tmp_path / "pred", tmp_path / "corrected"
    for name in ("a", "b"):
        _write(preds / f"{name}.geojson", prediction)
    _write(corrections / "a.geojson", fix.export)
    _write(corrections / "c.geojson", fix.export)
    (corrections / "notes.txt").write_text("not GeoJSON")
    out = tmp_path / "out"
    assert roiseg_main(["effort", str(preds), str(corrections), "--out", str(out), "--mpp",
                        str(MPP)]) == 0
    assert {image for image, _ in _rows(out)} == {"a", ef.ALL}
    error = capsys.readouterr().err
    assert f"1 prediction(s) in {preds} have no correction in {corrections}, left out: b" \
        in error
    assert f"1 correction(s) in {corrections} have no prediction in {preds}, left out: c" \
        in error
    assert "left out: b" in (out / "summary.md").read_text()
    # A file against a folder takes the file of its name; nothing in common is an error.
    pairs, warnings = ef.pair_files(preds / "b.geojson", preds)
    assert pairs == [("b", preds / "b.geojson", preds / "b.geojson")] and not warnings
    _write(tmp_path / "other" / "z.geojson", prediction)
    assert roiseg_main(["effort", str(preds), str(tmp_path / "other"), "--out", str(out),
                        "--mpp", str(MPP)]) == 2
    assert "no file name is in both" in capsys.readouterr().err


def test_region_limits_areas_and_objects(prediction, tmp_path):
    fix = Correction(prediction)
    pred = _write(tmp_path / "pred.geojson", prediction)
    corrected = _write(tmp_path / "corrected.geojson", fix.export)
    out = tmp_path / "out"
    assert roiseg_main(["effort", str(pred), str(corrected), "--out", str(out), "--mpp",
                        str(MPP), "--region", "0,0,400,300"]) == 0
    rows = _rows(out)
    region = box(0, 0, 400, 300)
    for name in (GLAND, STROMA):
        _check_areas(rows[("corrected", name)],
                     _expected_areas(prediction["features"], fix.results, name, region))
    inside = [f for f in prediction["features"]
              if shape(f["geometry"]).intersection(region).area > 0]
    assert int(rows[("corrected", ef.ALL)]["objects_predicted"]) == len(inside) \
        < len(prediction["features"])


# --------------------------------------------------------------------------- ROIs, bad input


def _feature(geometry: Any, name: str | None, roiseg: bool = False, **extra: Any) -> dict:
    properties: dict[str, Any] = {"objectType": "annotation"}
    if name:
        properties["classification"] = {"name": name, "color": [0, 0, 0]}
    if roiseg:
        properties["metadata"] = {"roiseg.source": "roiseg"}
    return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": mapping(geometry),
            "properties": {**properties, **extra}}


def test_rois_are_found_by_containment_or_named(tmp_path):
    tissue = _feature(box(0, 0, 100, 100), "Tissue region")
    inner = [_feature(box(10, 10, 30, 30), GLAND, roiseg=True),
             _feature(box(40, 40, 90, 90), STROMA, roiseg=True)]
    path = _write(tmp_path / "x.geojson", {"type": "FeatureCollection",
                                           "features": [tissue, *inner]})
    side = ef.read_side(path)
    assert [o.class_name for o in side.objects] == [GLAND, STROMA]
    assert side.rois == (f"'Tissue region' {tissue['id']} (no roiseg metadata, contains every "
                         "other object)",)
    # A pathologist's object that does not hold everything is a result; --roi-class makes
    # any object of that class a ROI.
    partial = _feature(box(0, 0, 35, 35), "Tissue region")
    _write(path, {"type": "FeatureCollection", "features": [partial, *inner]})
    assert len(ef.read_side(path).objects) == 3
    side = ef.read_side(path, roi_classes=["tissue REGION"])
    assert len(side.objects) == 2 and "--roi-class" in side.rois[0]


def test_outline_tolerance_is_a_distance_between_boundaries():
    square = box(0, 0, 100, 100)
    assert not ef.outline_changed(square, affinity.translate(square, 0.5, 0.5), 1.0)
    assert ef.outline_changed(square, affinity.translate(square, 2, 0), 1.0)
    # Filling a hole moves no outer vertex, but is an edit.
    holed = square.difference(box(40, 40, 60, 60))
    assert ef.outline_changed(holed, square, 1.0)
    # The same outline from another starting vertex is unchanged.
    assert not ef.outline_changed(square, shapely.Polygon([(100, 0), (100, 100), (0, 100),
                                                            (0, 0)]), 1.0)


def test_bad_input_names_what_to_fix(tmp_path, capsys):
    good = _write(tmp_path / "a.geojson", {"type": "FeatureCollection", "features": []})
    broken = tmp_path / "b.geojson"
    broken.write_text("{not json")
    out = tmp_path / "out"
    assert roiseg_main(["effort", str(good), str(broken), "--out", str(out), "--mpp", "1"]) == 2
    assert "cannot read GeoJSON" in capsys.readouterr().err
    assert roiseg_main(["effort", str(good), str(tmp_path / "missing.geojson"), "--out",
                        str(out), "--mpp", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert roiseg_main(["effort", str(good), str(good), "--out", str(out), "--mpp", "-1"]) == 2
    assert "--mpp must be a positive number" in capsys.readouterr().err
    assert roiseg_main(["effort", str(good), str(good), "--out", str(out), "--mpp", "1",
                        "--downsample", "-2"]) == 2
    assert "--downsample must be positive" in capsys.readouterr().err
    bad_geometry = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[1]]},
                    "properties": {"classification": {"name": GLAND}}}
    _write(broken, {"type": "FeatureCollection", "features": [bad_geometry]})
    assert roiseg_main(["effort", str(good), str(broken), "--out", str(out), "--mpp", "1"]) == 2
    assert "b.geojson: object 1 has a geometry that is not GeoJSON" in capsys.readouterr().err
    assert not out.exists()
