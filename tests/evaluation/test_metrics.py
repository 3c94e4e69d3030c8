"""`roiseg evaluate`: metrics against hand-computed values, regions, CIs, real GeoJSON/masks."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio.errors
import rasterio.features
from affine import Affine
from conftest import GLAS, REPO
from roiseg.cli import main as roiseg_main
from roiseg.evaluation import metrics as ev
from scipy import stats
from shapely.geometry import shape

CMU_EXAMPLE = REPO / "examples" / "data" / "cmu_small_region.svs"
GLAND = "Gland epithelium"

# 0 = background, 1 = tumour (positive), 2 = stroma (negative).
TRUTH = np.array([[0, 0, 1, 1, 1, 1],
                  [0, 0, 1, 1, 1, 1],
                  [2, 2, 2, 2, 1, 1],
                  [2, 2, 2, 2, 2, 2],
                  [2, 2, 2, 2, 2, 2],
                  [0, 0, 0, 0, 0, 0]], np.uint8)
PRED = np.array([[1, 1, 1, 1, 2, 2],   # (bg bg) TP TP FN FN
                 [0, 0, 1, 1, 1, 0],   # (bg bg) TP TP TP FN (predicted background)
                 [1, 1, 2, 2, 1, 1],   # FP FP TN TN TP TP
                 [2, 2, 2, 1, 1, 2],   # TN TN TN FP FP TN
                 [0, 2, 2, 2, 2, 2],   # TN (predicted background) TN TN TN TN TN
                 [1, 1, 1, 1, 1, 1]],  # reference background: not counted
                np.uint8)
# Written out by hand from the comments above.
TP, FP, FN, TN = 7, 4, 3, 12


def _evaluate(argv: list[str]) -> int:
    return roiseg_main(["evaluate", *argv])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _write_mask(path: Path, labels: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), labels)
    return path


# --------------------------------------------------------------------------- pixel metrics


def test_confusion_counts_exclude_reference_background():
    counts = ev.confusion(PRED, TRUTH, positive=1, background=0)
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (TP, FP, FN, TN)
    assert counts.total == 26  # the non-background reference pixels
    # Whatever is predicted on reference background does not count.
    other = PRED.copy()
    other[TRUTH == 0] = 2
    assert ev.confusion(other, TRUTH, 1) == counts


def test_pixel_metrics_equal_hand_computed_values():
    m = ev.pixel_metrics(ev.Counts(TP, FP, FN, TN))
    expected = {
        "dsc": 14 / 21,                       # 2TP / (2TP + FP + FN)
        "tpr": 7 / 10, "fnr": 3 / 10,
        "tnr": 12 / 16, "fpr": 4 / 16,
        "ppv": 7 / 11, "npv": 12 / 15,
        "mcc": (7 * 12 - 4 * 3) / math.sqrt(11 * 10 * 16 * 15),
        "informedness": 7 / 10 + 12 / 16 - 1,
        "markedness": 7 / 11 + 12 / 15 - 1,
        "reference_positive_fraction": 10 / 26,
        "predicted_positive_fraction": 11 / 26,
    }
    assert set(m) == set(expected)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


def test_evaluate_labels_gives_the_counts_and_per_class_dice():
    result = ev.evaluate_labels("x", PRED, TRUTH, positive=1, n_classes=3)
    assert result.counts == ev.Counts(TP, FP, FN, TN)
    dice = result.dice(3)
    assert math.isnan(dice[0])
    assert dice[1] == pytest.approx(14 / 21)
    # stroma: 11 pixels agree; 13 predicted stroma and 16 reference stroma pixels.
    assert dice[2] == pytest.approx(22 / 29)


def test_undefined_metrics_are_nan():
    # No reference positive and none predicted: Dice, TPR, PPV, MCC are 0/0.
    truth = np.array([[2, 2], [2, 0]])
    m = ev.pixel_metrics(ev.confusion(np.array([[2, 0], [2, 1]]), truth, 1))
    for key in ("dsc", "tpr", "fnr", "ppv", "mcc", "informedness", "markedness"):
        assert math.isnan(m[key]), key
    assert m["tnr"] == 1.0 and m["npv"] == 1.0 and m["reference_positive_fraction"] == 0.0
    assert all(math.isnan(v) for v in ev.pixel_metrics(ev.Counts()).values())


# --------------------------------------------------------------------------- regions


def _box(mask: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> None:
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True


def test_regions_two_matched_one_missed_one_false():
    truth = np.zeros((20, 20), bool)
    pred = np.zeros((20, 20), bool)
    _box(truth, (1, 5), (1, 5))  # 16 vs 12: IoU 0.75
    _box(pred, (1, 5), (1, 4))
    _box(truth, (1, 5), (8, 12))  # 16 vs 12: IoU 0.75
    _box(pred, (2, 5), (8, 12))
    _box(truth, (14, 16), (14, 16))                              # missed
    _box(pred, (14, 17), (1, 3))                                 # false
    r = ev.region_metrics(pred, truth)
    assert (r["regions_reference"], r["regions_predicted"]) == (3, 3)
    assert (r["regions_matched"], r["regions_missed"], r["regions_false"]) == (2, 1, 1)
    assert r["region_dice"] == pytest.approx(2 * (12 + 12) / ((16 + 12) + (16 + 12)))
    assert r["region_recall"] == pytest.approx(2 / 3)
    assert r["region_precision"] == pytest.approx(2 / 3)


def test_iou_of_exactly_one_half_does_not_match():
    truth = np.zeros((12, 12), bool)
    pred = np.zeros((12, 12), bool)
    _box(truth, (2, 6), (2, 6))   # 16 px
    _box(pred, (2, 4), (2, 6))    # 8 px inside: IoU = 8 / 16 = 0.5
    r = ev.region_metrics(pred, truth)
    assert (r["regions_matched"], r["regions_missed"], r["regions_false"]) == (0, 1, 1)
    assert math.isnan(r["region_dice"])
    pred[4, 2] = True             # 9 / 16 > 0.5
    r = ev.region_metrics(pred, truth)
    assert r["regions_matched"] == 1
    assert r["region_dice"] == pytest.approx(18 / 25)


def test_regions_are_four_connected():
    pred = np.zeros((4, 4), bool)
    pred[0, 0] = pred[1, 1] = True  # touching only at a corner: two regions
    r = ev.region_metrics(pred, np.zeros((4, 4), bool))
    assert r["regions_predicted"] == 2 and r["regions_false"] == 2


# --------------------------------------------------------------------------- mean and CI


def test_mean_ci_is_a_bootstrap_interval_inside_what_the_metric_can_take():
    values = [0.81, 0.92, 0.74, 0.95, 0.61, 0.88]
    mean, low, high = ev.mean_ci(values + [float("nan")])  # NaN left out
    assert mean == pytest.approx(np.mean(values), abs=1e-12)
    assert min(values) <= low < mean < high <= max(values)
    normal = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (low, high) == pytest.approx(normal, abs=0.06)  # close for a well-behaved sample
    assert ev.mean_ci(values) == ev.mean_ci(values)  # reproducible
    # recall over four images: Student t gave 0.57-1.19, beyond what a recall can be
    recall = [1.0, 1.0, 0.71, 1.0]
    assert stats.t.interval(0.95, 3, loc=np.mean(recall), scale=stats.sem(recall))[1] > 1
    _, low, high = ev.mean_ci(recall)
    assert 0.71 <= low <= high <= 1.0
    # region counts never below zero
    _, low, _ = ev.mean_ci([0, 0, 3, 0, 1])
    assert low >= 0
    one = ev.mean_ci([0.5])
    assert one[0] == 0.5 and math.isnan(one[1]) and math.isnan(one[2])
    assert all(math.isnan(v) for v in ev.mean_ci([float("nan")]))
    assert ev.mean_ci([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7, 0.7))


# --------------------------------------------------------------------------- CLI on masks


def test_cli_on_mask_directories_writes_rows_summary_and_nan(tmp_path, capsys):
    pred_dir, truth_dir = tmp_path / "pred", tmp_path / "truth"
    pred_dir.mkdir(), truth_dir.mkdir()
    values = {0: 0, 1: 100, 2: 200}  # class index -> mask value
    lut = np.array([values[i] for i in range(3)], np.uint8)
    _write_mask(pred_dir / "a.png", lut[PRED])
    _write_mask(truth_dir / "a.png", lut[TRUTH])
    # b: perfect stroma, no tumour anywhere -> DSC 0/0.
    _write_mask(pred_dir / "b.png", lut[np.where(TRUTH == 0, 0, 2)])
    _write_mask(truth_dir / "b.png", lut[np.where(TRUTH == 0, 0, 2)])
    # c: tumour half found.
    truth_c = np.where(TRUTH == 0, 0, 1).astype(np.uint8)
    pred_c = truth_c.copy()
    pred_c[:, :3] = 2
    _write_mask(pred_dir / "c.png", lut[pred_c])
    _write_mask(truth_dir / "c.png", lut[truth_c])
    values_text = "0=background,100=tumour,200=stroma"
    out = tmp_path / "out"
    assert _evaluate([str(pred_dir), str(truth_dir), "--pred-values", values_text,
                      "--truth-values", values_text, "--positive", "tumour",
                      "--out", str(out), "--mpp", "0.5"]) == 0
    rows = {r["image"]: r for r in _rows(out / "metrics.csv")}
    assert list(rows) == ["a", "b", "c"]
    a = rows["a"]
    assert (int(a["tp"]), int(a["fp"]), int(a["fn"]), int(a["tn"])) == (TP, FP, FN, TN)
    assert float(a["mcc"]) == pytest.approx(72 / math.sqrt(26400))
    assert float(a["dice_stroma"]) == pytest.approx(22 / 29)
    assert float(a["reference_positive_um2"]) == pytest.approx(10 * 0.25)
    assert rows["b"]["dsc"] == "NaN" and rows["b"]["tpr"] == "NaN"
    assert float(rows["b"]["tnr"]) == 1.0
    # c: truth tumour = 26 px, cols 0..2 of it predicted stroma.
    tp_c = int(((pred_c == 1) & (truth_c == 1)).sum())
    assert float(rows["c"]["dsc"]) == pytest.approx(2 * tp_c / (tp_c + 26))
    summary = (out / "summary.md").read_text()
    dscs = [14 / 21, 2 * tp_c / (tp_c + 26)]
    mean, low, high = ev.mean_ci(dscs)
    line = next(row for row in summary.splitlines() if row.startswith("| DSC"))
    assert line.split("|")[2].strip() == f"{mean:.4f}"
    assert line.split("|")[3].strip() == f"{low:.4f} – {high:.4f}"
    assert line.split("|")[4].strip() == "2"  # b's NaN is left out, not counted as 0 or 1
    # pooled DSC over all pixels of the three images
    tp, fp, fn = TP + tp_c, FP, FN + 26 - tp_c
    assert line.split("|")[5].strip() == f"{2 * tp / (2 * tp + fp + fn):.4f}"
    assert "n/a" in summary and "| stroma |" in summary
    assert summary in capsys.readouterr().out


def test_cli_user_errors(tmp_path, capsys):
    pred_dir, truth_dir = tmp_path / "pred", tmp_path / "truth"
    pred_dir.mkdir(), truth_dir.mkdir()
    _write_mask(truth_dir / "a.png", TRUTH * 100)
    _write_mask(truth_dir / "b.png", TRUTH * 100)
    _write_mask(pred_dir / "a.png", PRED * 100)
    values = ["--pred-values", "0=background,100=t,200=s", "--truth-values",
              "0=background,100=t,200=s"]
    out = str(tmp_path / "out")
    assert _evaluate([str(pred_dir), str(truth_dir), *values, "--positive", "t",
                      "--out", out]) == 2
    assert "roiseg evaluate: error: 1 reference(s) have no prediction" in capsys.readouterr().err
    (truth_dir / "b.png").unlink()
    assert _evaluate([str(pred_dir), str(truth_dir), *values, "--out", out]) == 2
    assert "--positive" in capsys.readouterr().err
    assert _evaluate([str(pred_dir), str(truth_dir), *values, "--positive", "tumor",
                      "--out", out]) == 2
    assert "no input holds the class 'tumor'" in capsys.readouterr().err
    assert _evaluate([str(pred_dir), str(truth_dir), "--positive", "t", "--out", out]) == 2
    assert "say which class each is" in capsys.readouterr().err


def test_map_merges_classes_onto_evaluation_classes():
    classes = ev.EvalClasses(ev.parse_map(["Gland epithelium=tumour", "Stroma=stroma"]))
    assert classes.index("Gland epithelium") == classes.index("tumour") == 1
    assert classes.index("stroma") == classes.index("Stroma") == 2
    assert classes.index("Background") == classes.index("background") == 0
    assert classes.index("Necrosis") == 3  # unmapped names keep their name


# --------------------------------------------------------------------------- real GeoJSON


@pytest.fixture(scope="module")
def cmu_geojson(tmp_path_factory) -> Path:
    """The embedded default model on a real region of the CMU slide, in-process, every class
    (its catch-all "Other tissue" too)."""
    out = tmp_path_factory.mktemp("cmu") / "cmu.geojson"
    assert roiseg_main(["segment", str(CMU_EXAMPLE), "--region", "900,1200,600,600",
                        "--all-classes", "-o", str(out), "--device", "cpu"]) == 0
    return out


def _shifted(collection: dict, dx: float, dy: float) -> dict:
    data = json.loads(json.dumps(collection))
    for feature in data["features"]:
        geometry = feature["geometry"]
        polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" \
            else [geometry["coordinates"]]
        for polygon in polygons:
            for ring in polygon:
                for point in ring:
                    point[0] += dx
                    point[1] += dy
    return data


def _burn(collection: dict, names: dict[str, int], origin: tuple[int, int],
          size: int) -> np.ndarray:
    """Independent rasterisation: rasterio straight from the GeoJSON, 1 px grid."""
    shapes = [(f["geometry"], names[f["properties"]["classification"]["name"]])
              for f in collection["features"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.features.rasterize(
            shapes, out_shape=(size, size), fill=0, dtype="uint8",
            transform=Affine(1, 0, origin[0], 0, 1, origin[1]))


def test_geojson_against_itself_scores_one_for_every_class(cmu_geojson, tmp_path):
    out = tmp_path / "self"
    assert _evaluate([str(cmu_geojson), str(cmu_geojson), "--positive", GLAND,
                      "--out", str(out)]) == 0
    (row,) = _rows(out / "metrics.csv")
    assert int(row["tp"]) > 1000 and int(row["tn"]) > 1000
    for key in ("dsc", "tpr", "tnr", "ppv", "npv", "mcc", "region_dice",
                "dice_Other tissue", "dice_Gland epithelium"):
        assert float(row[key]) == 1.0, key
    assert row["regions_matched"] == row["regions_reference"] != "0"


@pytest.mark.parametrize("dx, dy", [(3, 2), (-5, 0)])
def test_shifted_copy_scores_the_independently_computed_dice(cmu_geojson, tmp_path, dx, dy):
    original = json.loads(cmu_geojson.read_text())
    shifted_path = tmp_path / "cmu.geojson"
    shifted_path.write_text(json.dumps(_shifted(original, dx, dy)))
    out = tmp_path / "out"
    assert _evaluate([str(shifted_path), str(cmu_geojson), "--positive", GLAND,
                      "--out", str(out)]) == 0
    (row,) = _rows(out / "metrics.csv")

    names = {"Other tissue": 2, GLAND: 1}
    origin, size = (880, 1180), 640  # covers the 600 px region and the shifts
    truth = _burn(original, names, origin, size)
    pred = np.zeros_like(truth)  # the raster moved by (dx, dy) whole pixels
    pred[max(0, dy):size + min(0, dy), max(0, dx):size + min(0, dx)] = \
        truth[max(0, -dy):size - max(0, dy), max(0, -dx):size - max(0, dx)]
    area = truth != 0
    for index, key in ((1, "dsc"), (1, "dice_Gland epithelium"), (2, "dice_Other tissue")):
        x, y = (pred == index) & area, truth == index
        expected = 2 * np.count_nonzero(x & y) / (np.count_nonzero(x) + np.count_nonzero(y))
        assert 0.2 < expected < 0.99
        assert float(row[key]) == pytest.approx(expected, abs=1e-6), key
    # The shifted GeoJSON rasterised on its own gives the shifted raster.
    assert np.array_equal(_burn(_shifted(original, dx, dy), names, origin, size), pred)


def test_rasterize_geojson_follows_the_grid(cmu_geojson):
    collection = json.loads(cmu_geojson.read_text())
    classes = ev.EvalClasses()
    full = ev.rasterize_geojson(collection, (600, 600), (900, 1200), 1.0, classes)
    half = ev.rasterize_geojson(collection, (300, 300), (900, 1200), 2.0, classes)
    gland = classes.index(GLAND)
    # A grid pixel takes the class at its centre: half-grid pixel i has its centre at
    # 900 + 2i + 1, the centre of pixel 2i + 1 of a 1 px grid starting at 899.5.
    centred = ev.rasterize_geojson(collection, (601, 601), (899.5, 1199.5), 1.0, classes)
    assert np.array_equal(half, centred[1::2, 1::2])
    assert not np.array_equal(half, full[::2, ::2])  # the grids do differ
    expected = sum(shape(f["geometry"]).area for f in collection["features"]
                   if f["properties"]["classification"]["name"] == GLAND)
    assert np.count_nonzero(full == gland) == pytest.approx(expected, rel=0.02)


# --------------------------------------------------------------------------- mask vs GeoJSON


def test_glas_geojson_against_its_mask(tmp_path):
    image = GLAS / "images" / "train_3.png"
    pred = tmp_path / "train_3.geojson"
    assert roiseg_main(["segment", str(image), "--mpp", "0.62", "--all-classes", "-o",
                        str(pred), "--device", "cpu"]) == 0
    mask = GLAS / "masks" / "train_3.png"
    # GlaS masks: 0 is the rest of the tissue and glass, 255 gland. Reading 0 as the model's
    # "Other tissue" keeps all pixels in the evaluation, so false glands count.
    out = tmp_path / "stroma"
    assert _evaluate([str(pred), str(mask), "--truth-values", f"0=Other tissue,255={GLAND}",
                      "--positive", GLAND, "--out", str(out)]) == 0
    (row,) = _rows(out / "metrics.csv")
    assert int(row["pixels"]) == 775 * 522
    assert float(row["dsc"]) > 0.7 and float(row["dice_Other tissue"]) > 0.7
    assert 0.7 < float(row["tnr"]) <= 1 and float(row["mcc"]) > 0.5
    assert int(row["regions_matched"]) >= 5
    # Without the mask values, reading 0 as background would score only gland pixels
    # (Dice 0.975, PPV 1.000 on GlaS): refused, with the two readings spelled out.
    out = tmp_path / "background"
    result = subprocess.run([sys.executable, "-m", "roiseg.cli", "evaluate", str(pred), str(mask),
                             "--positive", GLAND, "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and not out.exists()
    assert "--truth-values '0=\"Other tissue\",255=" in result.stderr \
        and "--truth-values '0=background,255=" in result.stderr, result.stderr
    # Asked for explicitly, 0 as background leaves only gland pixels: no negatives, TNR is
    # 0/0, and the report says loudly that precision cannot fall below 1. (Run from another
    # directory: the default model's card records that it was trained on train_3.)
    result = subprocess.run([sys.executable, "-m", "roiseg.cli", "evaluate", str(pred), str(mask),
                             "--truth-values", f"0=background,255={GLAND}", "--positive", GLAND,
                             "--out", str(out)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (row,) = _rows(out / "metrics.csv")
    assert int(row["fp"]) == 0 and int(row["tn"]) == 0
    assert row["tnr"] == "NaN" and row["mcc"] == "NaN" and float(row["ppv"]) == 1.0
    summary = (out / "summary.md").read_text()
    assert "| TNR (specificity) | n/a |" in summary
    assert "WARNING: the reference holds only the class" in summary
    assert "WARNING: the reference holds only the class" in result.stderr
    assert "WARNING: 1 of the 1 evaluated image(s) were used to train " \
        "glas-unet-mobilenetv2@0.4.0: train_3." in result.stderr
