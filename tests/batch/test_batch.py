"""`roiseg batch` in folder mode: real images, real loopback servers, real inference.

Small inputs only: GlaS images (about 570 x 440 px at 0.62 µm/px) and a 900 x 700 px crop
of the CMU slide, so each ROI is one 512 px tile at the model's 1 µm/px.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import tifffile
from conftest import CMU_MPP, GLAS, REPO, same_segmentation, swatch_is_hollow
from roiseg import cli
from roiseg.batch.journal import Journal, summary_rows
from roiseg.engine.models import DEFAULT_MODELS_DIR
from roiseg.io import qupath_geojson
from roiseg.io.qupath_geojson import MODEL_ID_KEY, is_roiseg_object
from roiseg.io.qupath_project import ROI_KEY, roi_key
from roiseg.server.service import SegmentationService, create_server
from shapely.geometry import box, mapping, shape

#: The smallest GlaS images (fast on CPU).
GLAS_NAMES = ("train_41.png", "train_7.png", "train_12.png", "train_36.png", "train_84.png")
GLAS_MPP = "0.62"
DEFAULT_MODEL = "glas-unet-mobilenetv2"
DEFAULT_CARD = json.loads((DEFAULT_MODELS_DIR / "model.json").read_text())
DEFAULT_VERSION = DEFAULT_CARD["version"]
STROMA_COLOR, GLAND_COLOR = (tuple(c["color"]) for c in DEFAULT_CARD["classes"])
REGION_A = box(60, 60, 420, 380)
REGION_B = box(480, 200, 860, 660).difference(box(600, 350, 700, 450))


def batch(*argv) -> int:
    return cli.main(["batch", *map(str, argv)])


def glas(folder: Path, names=GLAS_NAMES) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(GLAS / "images" / name, folder / name)) for name in names]


def slide_crop(folder: Path, cmu_level0, rois: bool = True) -> Path:
    """A 900 x 700 px OME-TIFF crop of the CMU slide (calibrated, 0.499 µm/px) with two
    "Region" ROIs beside it, plus a ROI of another class and a roiseg object that must not
    be segmented."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cmu_crop.ome.tif"
    tifffile.imwrite(path, cmu_level0[1000:1700, 800:1700], ome=True, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": CMU_MPP, "PhysicalSizeY": CMU_MPP,
                               "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    if rois:
        def feature(geometry, name, metadata=None):
            return {"type": "Feature", "geometry": mapping(geometry),
                    "properties": {"objectType": "annotation", "metadata": metadata or {},
                                   "classification": {"name": name, "color": [0, 0, 180]}}}
        (folder / "cmu_crop.geojson").write_text(json.dumps({
            "type": "FeatureCollection", "features": [
                feature(REGION_A, "Region"), feature(REGION_B, "Region"),
                feature(box(0, 0, 50, 50), "Other"),
                feature(box(10, 600, 90, 690), "Stroma", {"roiseg.source": "roiseg"})]}))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def journal_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stat(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns


def check_features(path: Path) -> list[dict]:
    """QuPath-importable roiseg features: classified, coloured, with roiseg's metadata."""
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection" and collection["features"]
    for feature in collection["features"]:
        properties = feature["properties"]
        assert feature["type"] == "Feature"
        assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
        assert properties["objectType"] == "annotation"
        assert properties["classification"]["name"] in ("Other tissue", "Gland epithelium")
        assert len(properties["classification"]["color"]) == 3
        assert is_roiseg_object(properties)
        assert properties["metadata"][MODEL_ID_KEY] == DEFAULT_MODEL
        assert properties["measurements"][qupath_geojson.AREA_MEASUREMENT] > 0
    return collection["features"]


@pytest.fixture(scope="module")
def extra_servers(registry, tmp_path_factory):
    """Two more loopback servers sharing the session's models, allowed to read slides under
    a temporary root, and a closed port."""
    root = tmp_path_factory.mktemp("shared-slides")
    servers, addresses = [], []
    for _ in range(2):
        server, port = create_server(SegmentationService(registry, slide_roots=[root]),
                                     "127.0.0.1:0")
        server.start()
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    yield root, addresses, closed
    for server in servers:
        server.stop(grace=None)


def test_folder_mode_end_to_end_through_a_server(address, tmp_path, cmu_level0, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    glas(images, GLAS_NAMES[:3])
    crop = slide_crop(images, cmu_level0)
    # every class: the default model's catch-all "Other tissue" too (left out by default)
    assert batch("--images", images, "--out", out, "--mpp", GLAS_MPP, "--server", address,
                 "--roi-class", "Region", "--all-classes") == 0
    # no terminal here (as under cron or Slurm): one line per finished ROI as it finishes
    err = capsys.readouterr().err
    lines = re.findall(r"^roiseg batch: .+: \d+ objects in [\d.]+ s \(\d of \d planned\)$", err,
                       flags=re.M)
    assert len(lines) == 5, err

    for name in GLAS_NAMES[:3]:
        stem = Path(name).stem
        features = check_features(out / f"{stem}.geojson")
        assert {f["properties"]["metadata"][ROI_KEY] for f in features} == {"image"}
        picture = cv2.imread(str(out / f"{stem}.overlay.png"))
        assert picture is not None and picture.shape[0] > 400 and picture.shape[1] > 500
        # the default model's catch-all (the rest of the tissue) is outlined, glands filled
        assert swatch_is_hollow(picture[..., ::-1], STROMA_COLOR)
        assert not swatch_is_hollow(picture[..., ::-1], GLAND_COLOR)
    # The crop: only roiseg's features (the ROIs are not copied), each inside its ROI.
    features = check_features(out / "cmu_crop.geojson")
    keys = {roi_key(REGION_A): REGION_A, roi_key(REGION_B): REGION_B}
    assert {f["properties"]["metadata"][ROI_KEY] for f in features} == set(keys)
    for feature in features:
        region = keys[feature["properties"]["metadata"][ROI_KEY]]
        assert region.buffer(1.0).covers(shape(feature["geometry"]))
    assert cv2.imread(str(out / "cmu_crop.overlay.png")) is not None
    assert crop.exists() and not (out / "cmu_crop.ome.geojson").exists()

    rows = read_csv(out / "summary.csv")
    assert sorted((r["image"], r["roi"]) for r in rows) == sorted(
        [(n, "image") for n in GLAS_NAMES[:3]] + [("cmu_crop.ome.tif", k) for k in keys])
    for row in rows:
        assert row["status"] == "ok" and row["error"] == "" and row["server"] == address
        assert row["model"] == DEFAULT_MODEL and row["model_version"] == DEFAULT_VERSION
        assert float(row["seconds"]) > 0
        assert float(row.get("area_um2:Other tissue") or 0) \
            + float(row.get("area_um2:Gland epithelium") or 0) > 0
    crop_rows = [r for r in rows if r["image"] == "cmu_crop.ome.tif"]
    assert {r["roi_class"] for r in crop_rows} == {"Region"}
    records = journal_lines(out / "roiseg-journal.jsonl")
    assert len(records) == 5 and all(r["status"] == "ok" for r in records)

    # The output folder is what `roiseg evaluate` takes: paired with the masks by name.
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in GLAS_NAMES[:3]:
        shutil.copy(GLAS / "masks" / name, masks / name)
    assert cli.main(["evaluate", str(out), str(masks), "--positive", "Gland epithelium",
                     "--truth-values", '0=Stroma,255="Gland epithelium"',
                     "--out", str(tmp_path / "evaluation")]) == 0
    scores = read_csv(tmp_path / "evaluation" / "metrics.csv")
    assert sorted(r["image"] for r in scores) == sorted(Path(n).stem for n in GLAS_NAMES[:3])
    assert all(float(r["dsc"]) > 0.7 for r in scores), scores

    # A re-run does nothing and rewrites no output.
    before = {p.name: stat(p) for p in out.iterdir() if p.suffix in (".geojson", ".png")}
    capsys.readouterr()
    assert batch("--images", images, "--out", out, "--mpp", GLAS_MPP, "--server", address,
                 "--roi-class", "Region", "--all-classes") == 0
    assert "0 ROI(s) segmented, 5 skipped" in capsys.readouterr().out
    assert {p.name: stat(p) for p in out.iterdir() if p.suffix in (".geojson", ".png")} == before
    assert len(journal_lines(out / "roiseg-journal.jsonl")) == 5

    # --replace redoes the chosen image: its file is rewritten, its features replaced, not added.
    assert batch("--images", images, "--out", out, "--mpp", GLAS_MPP, "--server", address,
                 "--roi-class", "Region", "--all-classes", "--replace", "--image-filter",
                 "^cmu") == 0
    assert stat(out / "cmu_crop.geojson") != before["cmu_crop.geojson"]
    assert stat(out / "train_41.geojson") == before["train_41.geojson"]
    replaced = check_features(out / "cmu_crop.geojson")
    assert sorted(json.dumps(f, sort_keys=True)
                  for f in same_segmentation({"features": replaced})["features"]) == \
        sorted(json.dumps(f, sort_keys=True)
               for f in same_segmentation({"features": features})["features"])
    assert len(journal_lines(out / "roiseg-journal.jsonl")) == 7
    assert len(read_csv(out / "summary.csv")) == 5

    # An output deleted by hand is made again, whatever the journal says.
    (out / "train_7.overlay.png").unlink()
    assert batch("--images", images, "--out", out, "--mpp", GLAS_MPP, "--server", address,
                 "--roi-class", "Region", "--all-classes") == 0
    assert (out / "train_7.overlay.png").is_file()
    assert stat(out / "train_41.geojson") == before["train_41.geojson"]
    assert len(journal_lines(out / "roiseg-journal.jsonl")) == 8


def test_dry_run_lists_the_work_and_writes_nothing(address, tmp_path, cmu_level0, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    glas(images, GLAS_NAMES[:1])
    slide_crop(images, cmu_level0)
    assert batch("--images", images, "--out", out, "--mpp", GLAS_MPP, "--server", address,
                 "--dry-run") == 0
    printed = capsys.readouterr().out
    assert "train_41.png / whole image [image]: segment glas-unet-mobilenetv2" in printed
    # Default ROIs: the top-level annotations not made by roiseg ("Region" x 2, "Other").
    assert printed.count("cmu_crop.ome.tif / ") == 3
    assert not out.exists()


def test_kill_mid_run_then_resume_does_every_image_once(address, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    glas(images)
    journal = out / "roiseg-journal.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "roiseg.cli", "batch", "--images", str(images), "--out", str(out),
         "--mpp", GLAS_MPP, "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not (journal.exists() and journal.read_text().count("\n") >= 1):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no image was finished in time"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    killed = journal_lines(journal)
    assert 1 <= len(killed) < len(GLAS_NAMES), "the run ended before it could be killed"
    first = out / f"{Path(killed[0]['image']).stem}.geojson"
    first_stat, first_png = stat(first), stat(first.with_suffix(".overlay.png"))

    assert batch("--images", images, "--out", out, "--mpp", GLAS_MPP, "--server", address) == 0
    records = journal_lines(journal)
    assert sorted(r["image"] for r in records) == sorted(GLAS_NAMES)  # each exactly once
    assert all(r["status"] == "ok" for r in records)
    assert stat(first) == first_stat and stat(first.with_suffix(".overlay.png")) == first_png
    for name in GLAS_NAMES:
        check_features(out / f"{Path(name).stem}.geojson")
        assert (out / f"{Path(name).stem}.overlay.png").stat().st_size > 0
    assert sorted(r["image"] for r in read_csv(out / "summary.csv")) == sorted(GLAS_NAMES)


def test_ctrl_c_stops_cleanly_and_the_run_resumes(address, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    # enough images (0.2 s each) that Ctrl+C lands while some are left
    names = [f"{k}_{name}" for k in range(4) for name in GLAS_NAMES]
    for name in names:
        shutil.copy(GLAS / "images" / name.split("_", 1)[1], images / name)
    journal = out / "roiseg-journal.jsonl"
    # Ctrl+C as in a terminal, even when the tests run in the background (where a shell
    # starts jobs with SIGINT ignored, and Python then keeps ignoring it)
    process = subprocess.Popen(
        [sys.executable, "-m", "roiseg.cli", "batch", "--images", str(images), "--out", str(out),
         "--mpp", GLAS_MPP, "--server", address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (journal.exists() and journal.read_text().count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Run the same command again to resume" in err
    done = journal_lines(journal)
    assert len(done) < len(names)
    assert sorted(r["image"] for r in read_csv(out / "summary.csv")) == \
        sorted(r["image"] for r in done)
    assert batch("--images", images, "--out", out, "--mpp", GLAS_MPP, "--server", address) == 0
    assert sorted(r["image"] for r in journal_lines(journal)) == sorted(names)


def test_two_servers_share_the_work_and_a_down_one_loses_nothing(extra_servers, capsys):
    root, (first, second), closed = extra_servers
    images, out = root / "images", root / "out"
    names = GLAS_NAMES[:4]
    glas(images, names)
    assert batch("--images", images, "--out", out, "--mpp", GLAS_MPP, "--server-reads-slide",
                 "--server", closed, "--server", first, "--server", second) == 0
    rows = read_csv(out / "summary.csv")
    assert sorted(r["image"] for r in rows) == sorted(names)
    assert all(r["status"] == "ok" for r in rows)
    assert {r["server"] for r in rows} == {first, second}
    for name in names:
        check_features(out / f"{Path(name).stem}.geojson")
    err = capsys.readouterr().err
    assert f"server {closed} is unavailable" in err and "went back to the queue" in err


def test_only_unreachable_servers_is_a_clear_error(extra_servers, tmp_path, capsys):
    _, _, closed = extra_servers
    glas(tmp_path / "images", GLAS_NAMES[:1])
    assert batch("--images", tmp_path / "images", "--out", tmp_path / "out", "--mpp", GLAS_MPP,
                 "--server", closed) == 2
    assert "no roiseg server is reachable" in capsys.readouterr().err


def test_unreadable_and_uncalibrated_images_are_recorded_and_the_rest_completes(
        address, tmp_path, cmu_level0):
    images, out = tmp_path / "images", tmp_path / "out"
    (images).mkdir()
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    glas(images, GLAS_NAMES[:1])
    slide_crop(images, cmu_level0, rois=False)
    assert batch("--images", images, "--out", out, "--server", address) == 1
    rows = {r["image"]: r for r in read_csv(out / "summary.csv")}
    assert rows["broken.png"]["status"] == "error"
    assert "could not be decoded" in rows["broken.png"]["error"]
    assert rows["train_41.png"]["status"] == "error" and "--mpp" in rows["train_41.png"]["error"]
    assert rows["cmu_crop.ome.tif"]["status"] == "ok"
    check_features(out / "cmu_crop.geojson")
    assert not (out / "broken.geojson").exists() and not (out / "train_41.geojson").exists()

    # With --mpp the uncalibrated image is done on the next run; the crop is not redone.
    crop = stat(out / "cmu_crop.geojson")
    assert batch("--images", images, "--out", out, "--server", address, "--mpp", GLAS_MPP) == 1
    rows = read_csv(out / "summary.csv")
    assert sorted((r["image"], r["status"]) for r in rows) == [
        ("broken.png", "error"), ("cmu_crop.ome.tif", "ok"), ("train_41.png", "ok")]
    assert stat(out / "cmu_crop.geojson") == crop


def test_journal_ignores_a_torn_line_and_tracks_done_models(tmp_path):
    path = tmp_path / "journal.jsonl"
    record = {"image_id": "a.png", "image": "a.png", "roi": "image", "status": "ok",
              "models": [{"id": "m1", "version": "1"}, {"id": "m2", "version": "2"}]}
    path.write_text(json.dumps(record) + "\n" + '{"image_id": "b.png", "roi": "ima')  # torn
    journal = Journal(path)
    assert journal.done("a.png", "image") == {"m1": "1", "m2": "2"}
    assert journal.done("b.png", "image") == {}
    journal.append([{**record, "status": "error", "models": [{"id": "m2"}]}])
    assert Journal(path).done("a.png", "image") == {"m1": "1"}
    assert path.read_text().splitlines()[2].startswith('{"image_id": "a.png"')


def test_summary_keeps_the_latest_record_per_roi_and_model():
    records = [
        {"image_id": "a", "image": "a", "roi": "", "status": "error", "error": "no pixel size"},
        {"image_id": "a", "image": "a", "roi": "r1", "status": "error", "models": [{"id": "m"}]},
        {"image_id": "a", "image": "a", "roi": "r1", "status": "ok",
         "models": [{"id": "m", "version": "1", "areas_um2": {"Stroma": 5.0}}]},
        {"image_id": "b", "image": "b", "roi": "r1", "status": "ok",
         "models": [{"id": "m", "areas_um2": {"Tumor": 2.0}}]},
    ]
    rows, classes = summary_rows(records)
    assert classes == ["Stroma", "Tumor"]
    assert [(r["image"], r["roi"], r["status"]) for r in rows] == \
        [("a", "r1", "ok"), ("b", "r1", "ok")]
    assert rows[0]["area_um2:Stroma"] == 5.0


def test_arguments_are_checked(tmp_path, capsys):
    assert batch("--images", tmp_path, "--out", tmp_path) == 2
    assert "another directory" in capsys.readouterr().err
    assert batch("--out", tmp_path / "o") == 2
    assert "either a QuPath project or --images" in capsys.readouterr().err
    assert batch("--images", tmp_path, "--out", tmp_path / "o", "--image-filter", "(") == 2
    assert "--image-filter" in capsys.readouterr().err


def test_submit_needs_a_server_that_keeps_examples(address, tmp_path, capsys):
    assert batch(tmp_path / "project.qpproj", "--submit", "--server", address) == 2
    assert "does not keep examples: start it with --dataset-dir" in capsys.readouterr().err
    assert batch(tmp_path / "project.qpproj", "--submit") == 2
    assert "needs the one --server" in capsys.readouterr().err
    assert batch(tmp_path / "project.qpproj", "--submit", "--replace", "--server", address) == 2
    assert "neither --replace nor --dry-run" in capsys.readouterr().err


def test_client_example_prints_class_areas(address):
    result = subprocess.run([sys.executable, str(REPO / "examples" / "client_example.py"),
                             "--server", address, "--region", "1000,1200,500,400"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert DEFAULT_MODEL in result.stdout and "µm²" in result.stdout
    assert "Gland epithelium" in result.stdout
