"""`roiseg compare`: several models on one region, side-by-side sheet, metrics per model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from conftest import GLAS, REPO, same_segmentation, swatch_is_hollow
from roiseg.cli import main as roiseg_main
from roiseg.engine.models import DEFAULT_MODELS_DIR
from roiseg.io import overlay
from shapely.geometry import box, shape

CMU_EXAMPLE = REPO / "examples" / "data" / "cmu_small_region.svs"
DEFAULT_ID, COARSE_ID = "glas-unet-mobilenetv2", "glas-coarse"
TITLE_PX = 28  # overlay's title bar
LEGEND_PX = overlay.LEGEND_PX  # and its key of the classes under each panel
GLAND = "Gland epithelium"
STROMA_COLOR, GLAND_COLOR = (tuple(c["color"]) for c in json.loads(
    (DEFAULT_MODELS_DIR / "model.json").read_text())["classes"])


def _compare(argv: list[str]) -> int:
    return roiseg_main(["compare", *argv])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _panels(sheet: Path, count: int) -> list[np.ndarray]:
    picture = cv2.imread(str(sheet))
    assert picture is not None
    width = picture.shape[1] // count
    assert picture.shape[1] == count * width
    return [picture[TITLE_PX:, i * width:(i + 1) * width] for i in range(count)]


def test_two_models_and_a_reference_on_a_real_region(models_dir, tmp_path, capsys):
    region = "900,1200,600,600"
    reference = tmp_path / "reference.geojson"
    # compare returns every class (the catch-all "Other tissue" too): so does this reference
    assert roiseg_main(["segment", str(CMU_EXAMPLE), "--region", region, "-o", str(reference),
                        "--all-classes", "--device", "cpu"]) == 0
    out = tmp_path / "out"
    assert _compare([str(CMU_EXAMPLE), "--model", DEFAULT_ID, "--model", COARSE_ID,
                     "--region", region, "--models", str(models_dir / "default"),
                     "--models", str(models_dir / "coarse"), "--device", "cpu",
                     "--reference", str(reference), "--positive", GLAND,
                     "--out", str(out)]) == 0
    stem = CMU_EXAMPLE.stem
    # Per-model GeoJSON; the default model's is what `roiseg segment` wrote.
    default = json.loads((out / f"{stem}.{DEFAULT_ID}.geojson").read_text())
    coarse = json.loads((out / f"{stem}.{COARSE_ID}.geojson").read_text())
    assert same_segmentation(default) == same_segmentation(json.loads(reference.read_text()))
    assert coarse["features"] and coarse != default
    assert {f["properties"]["metadata"]["roiseg.model_id"] for f in coarse["features"]} \
        == {COARSE_ID}
    # Sheet: 2 models + the reference, side by side, 600 px each at full resolution.
    picture = cv2.imread(str(out / f"{stem}.compare.png"))
    assert picture.shape[:2] == (600 + TITLE_PX + LEGEND_PX, 3 * 600)
    # the models' catch-all (the rest of the tissue) is outlined, the glands filled
    assert swatch_is_hollow(picture[:, :600, ::-1], STROMA_COLOR)
    assert not swatch_is_hollow(picture[:, :600, ::-1], GLAND_COLOR)
    first, second, third = _panels(out / f"{stem}.compare.png", 3)
    # Panel order follows --model; the reference (same polygons and colours as the default
    # model's) is drawn exactly like it, the coarse model differently.
    assert np.array_equal(first, third)
    assert np.mean(np.abs(first.astype(int) - second.astype(int))) > 5
    # The errors against the reference, a panel per model: none for the default model (its own
    # output is the reference), some for the coarse one.
    errors = cv2.imread(str(out / f"{stem}.errors.png"))
    assert errors.shape[:2] == (600 + TITLE_PX + LEGEND_PX, 2 * 600)
    default_errors, coarse_errors = _panels(out / f"{stem}.errors.png", 2)
    differ = np.abs(default_errors.astype(int) - coarse_errors.astype(int)).max(axis=2) > 40
    assert differ.mean() > 0.01
    # Metrics: one row per model; the default model scores 1 against its own output.
    rows = {r["model"]: r for r in _rows(out / "compare.csv")}
    assert list(rows) == [DEFAULT_ID, COARSE_ID]
    assert all(r["image"] == stem for r in rows.values())
    assert float(rows[DEFAULT_ID]["dsc"]) == 1.0
    # compare scores every class: the catch-all "Other tissue" too
    assert float(rows[DEFAULT_ID]["dice_Other tissue"]) == 1.0
    assert 0 < float(rows[COARSE_ID]["dsc"]) < 0.95
    table = (out / "compare.md").read_text()
    assert f"| {DEFAULT_ID} | 1 | 1.0000 |" in table and f"| {COARSE_ID} | 1 |" in table
    assert table in capsys.readouterr().out


def test_through_a_server_with_a_sidecar_roi(address, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    image = images / "train_3.png"
    shutil.copy(GLAS / "images" / "train_3.png", image)
    roi = box(100, 80, 500, 400)
    (images / "train_3.geojson").write_text(json.dumps(
        {"type": "Feature", "geometry": roi.__geo_interface__, "properties": {}}))
    out = tmp_path / "out"
    assert _compare([str(image), "--mpp", "0.62", "--server", address, "--out", str(out)]) == 0
    for model_id in (DEFAULT_ID, COARSE_ID):  # default: every model the server has
        collection = json.loads((out / f"train_3.{model_id}.geojson").read_text())
        assert collection["features"]
        for feature in collection["features"]:
            assert roi.buffer(1e-6).contains(shape(feature["geometry"]))
    # 400 x 320 ROI at full resolution, two panels, no reference and no metrics.
    picture = cv2.imread(str(out / "train_3.compare.png"))
    assert picture.shape[:2] == (320 + TITLE_PX + LEGEND_PX, 2 * 400)
    assert not (out / "compare.csv").exists()


def test_mask_references_over_several_images(models_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the cards record their split: any directory will do
    images = [GLAS / "images" / f"train_{i}.png" for i in (3, 4)]
    out = tmp_path / "out"
    assert _compare([*map(str, images), "--mpp", "0.62", "--models", str(models_dir),
                     "--device", "cpu", "--reference", str(GLAS / "masks"),
                     "--reference-values", f"0=Other tissue,255={GLAND}",
                     "--map", f"{GLAND}=gland", "--map", "Other tissue=other",
                     "--positive", "gland", "--out", str(out)]) == 0
    rows = _rows(out / "compare.csv")
    assert sorted((r["model"], r["image"]) for r in rows) == sorted(
        (m, s) for m in (DEFAULT_ID, COARSE_ID) for s in ("train_3", "train_4"))
    default = [r for r in rows if r["model"] == DEFAULT_ID]
    assert all(float(r["dsc"]) > 0.7 for r in default)
    assert "dice_gland" in rows[0] and "dice_other" in rows[0]
    for image in images:
        height, width = cv2.imread(str(image)).shape[:2]
        assert int(next(r for r in rows if r["image"] == image.stem)["pixels"]) \
            == height * width
        picture = cv2.imread(str(out / f"{image.stem}.compare.png"))
        assert picture.shape[:2] == (height + TITLE_PX + LEGEND_PX, 3 * width)
    table = (out / "compare.md").read_text()
    line = next(row for row in table.splitlines() if row.startswith(f"| {DEFAULT_ID} | 2 |"))
    assert "–" in line  # a confidence interval over the two images
    # both images are among those the default model (and its copy) was trained on
    for model in (DEFAULT_ID, COARSE_ID):
        assert f"2 of the 2 evaluated image(s) were used to train {model}@0.4.0: train_3, " \
            "train_4." in table


def test_user_errors(models_dir, tmp_path, capsys):
    image = GLAS / "images" / "train_3.png"
    base = [str(image), "--mpp", "0.62", "--models", str(models_dir), "--device", "cpu",
            "--out", str(tmp_path / "out")]
    assert _compare([*base, "--model", "nope"]) == 2
    assert "roiseg compare: error: unknown model(s) nope" in capsys.readouterr().err
    assert _compare([*base, "--reference", str(GLAS / "masks" / "train_3.png"),
                     "--reference-values", f"0=Stroma,255={GLAND}"]) == 2
    assert "--positive" in capsys.readouterr().err
    assert _compare([str(image), "--models", str(models_dir), "--device", "cpu",
                     "--out", str(tmp_path / "out")]) == 2
    assert "--mpp" in capsys.readouterr().err


def test_models_dir_adds_to_the_default_model_and_a_single_class_reference_is_flagged(
        models_dir, tmp_path, capsys):
    region = "900,1200,300,300"
    reference = tmp_path / "reference.geojson"
    assert roiseg_main(["segment", str(CMU_EXAMPLE), "--region", region, "-o", str(reference),
                        "--device", "cpu", "--classes", GLAND]) == 0
    out = tmp_path / "out"
    # --models names only the coarse model: side by side still means the default model too
    assert _compare([str(CMU_EXAMPLE), "--region", region, "--models", str(models_dir / "coarse"),
                     "--device", "cpu", "--reference", str(reference), "--positive", GLAND,
                     "--out", str(out)]) == 0
    stem = CMU_EXAMPLE.stem
    assert (out / f"{stem}.{DEFAULT_ID}.geojson").is_file()
    assert (out / f"{stem}.{COARSE_ID}.geojson").is_file()
    assert {r["model"] for r in _rows(out / "compare.csv")} == {DEFAULT_ID, COARSE_ID}
    # the reference holds glands only: every score would flatter, and the report says so
    assert "WARNING: the reference holds only the class" in capsys.readouterr().err
    assert "WARNING: the reference holds only the class" in (out / "compare.md").read_text()


def test_error_maps_are_the_pixels_where_a_model_and_the_reference_disagree():
    from roiseg.evaluation import compare
    from roiseg.evaluation import metrics as ev
    from shapely.geometry import box, mapping

    def collection(*boxes):
        return {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": mapping(b),
             "properties": {"classification": {"name": "Gland", "color": [0, 170, 200]}}}
            for b in boxes]}

    reference = ev.Annotation(None, features=[(box(10, 10, 50, 50), "Gland")])
    classes = ev.EvalClasses()
    scored = compare.score("img", {"same": collection(box(10, 10, 50, 50)),
                                   "shifted": collection(box(20, 10, 60, 50))},
                           reference, classes, "Gland", box(0, 0, 100, 100), 1.0, 0.5)
    (fp_same, fn_same, _), (fp, fn, placement) = scored.errors["same"], scored.errors["shifted"]
    assert not fp_same.any() and not fn_same.any()
    assert (fp.sum(), fn.sum()) == (400, 400) and placement == (0.0, 0.0, 1.0, 1.0)
    assert fp[30, 55] and fn[30, 15] and not fp[30, 30]
    assert dict(scored.rows)["same"].metrics()["dsc"] == 1.0
