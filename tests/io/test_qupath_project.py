"""The QuPath side of `roiseg batch`: ROI selection, ROI keys and replacement rules on plain
dicts and shapely geometries (always), and project mode through paquo against a real
QuPath (only where one is installed: PAQUO_QUPATH_DIR)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CMU, GLAS
from roiseg.cli import main
from roiseg.cli.batch import add_arguments, run
from roiseg.engine.models import DEFAULT_MODELS_DIR
from roiseg.io.qupath_geojson import MODEL_ID_KEY, ROISEG_SOURCE_KEY, is_roiseg_object
from roiseg.io.qupath_project import (
    ROI_KEY,
    ROI_MODELS_KEY,
    Annotation,
    load_paquo,
    merge_features,
    read_geojson_annotations,
    replaceable,
    roi_key,
    select_rois,
    tag_features,
)
from shapely.geometry import LineString, Point, box, mapping

ROISEG = {ROISEG_SOURCE_KEY: "roiseg", MODEL_ID_KEY: "m1"}


def annotation(geometry, class_name="", level=1, metadata=None, object_id=None):
    properties = {"metadata": metadata or {}}
    if class_name:
        properties["classification"] = {"name": class_name, "color": [0, 0, 180]}
    return Annotation(properties, geometry, level, object_id)


def feature(geometry, class_name, metadata):
    return {"type": "Feature", "geometry": mapping(geometry),
            "properties": {"classification": {"name": class_name, "color": [1, 2, 3]},
                           "metadata": metadata}}


def batch(*argv) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args([str(a) for a in argv]))


# --------------------------------------------------------------------------- pure rules


def test_default_rois_are_top_level_annotations_not_made_by_roiseg():
    region = annotation(box(0, 0, 100, 100), "Region")
    unclassified = annotation(box(200, 0, 300, 100))
    nested = annotation(box(10, 10, 20, 20), "Region", level=2)
    made_by_roiseg = annotation(box(0, 0, 50, 50), "Stroma", metadata=ROISEG)
    point = annotation(Point(5, 5), "Region")
    line = annotation(LineString([(0, 0), (10, 10)]), "Region")
    chosen = select_rois([region, unclassified, nested, made_by_roiseg, point, line])
    assert chosen == [region, unclassified]


def test_roi_classes_choose_annotations_of_those_classes_at_any_level():
    region = annotation(box(0, 0, 100, 100), "Region")
    nested = annotation(box(10, 10, 20, 20), "Tumor area", level=3)
    other = annotation(box(200, 0, 300, 100), "Other")
    roiseg_stroma = annotation(box(0, 0, 50, 50), "Stroma", level=2, metadata=ROISEG)
    assert select_rois([region, nested, other, roiseg_stroma], ["Region", "Tumor area"]) == \
        [region, nested]
    assert select_rois([roiseg_stroma], ["Stroma"]) == []


def test_roi_key_is_stable_but_changes_when_the_roi_is_edited():
    square = box(100, 100, 200, 200)
    same = box(100.001, 100, 200, 200.002)
    assert roi_key(square) == roi_key(same) == roi_key(square.reverse())
    assert roi_key(square) != roi_key(box(100, 100, 200, 201))
    uid = "0b5f4b2e-1c1e-4e0a-9c55-0d6f8f7e8a11"
    assert roi_key(square, uid).startswith(uid + ":")
    assert roi_key(square, uid) != roi_key(box(100, 100, 200, 201), uid)
    assert annotation(square, object_id=uid).key == roi_key(square, uid)


def test_replace_only_roiseg_objects_of_the_models_run():
    assert replaceable({"metadata": ROISEG}, ["m1"])
    assert not replaceable({"metadata": ROISEG}, ["m2"])
    assert replaceable({"metadata": {ROISEG_SOURCE_KEY: "roiseg"}}, ["m2"])  # no model named
    assert not replaceable({"metadata": {MODEL_ID_KEY: "m1"}}, ["m1"])  # not roiseg's
    assert not replaceable({}, ["m1"])


def test_merge_replaces_the_redone_roi_and_model_and_keeps_everything_else():
    roi_a, roi_b = annotation(box(0, 0, 100, 100)), annotation(box(200, 0, 300, 100))
    old_a_m1 = tag_features([feature(box(0, 0, 10, 10), "Stroma", ROISEG)], roi_a)[0]
    old_a_m2 = tag_features([feature(box(0, 0, 10, 10), "Tumor",
                                     {**ROISEG, MODEL_ID_KEY: "m2"})], roi_a)[0]
    old_b_m1 = tag_features([feature(box(200, 0, 210, 10), "Stroma", ROISEG)], roi_b)[0]
    users = feature(box(0, 0, 5, 5), "Note", {ROI_KEY: roi_a.key})
    new_a_m1 = tag_features([feature(box(0, 0, 20, 20), "Stroma", ROISEG)], roi_a)
    merged = merge_features([old_a_m1, old_a_m2, old_b_m1, users], {roi_a.key: ["m1"]}, new_a_m1)
    assert merged == [old_a_m2, old_b_m1, users] + new_a_m1
    assert new_a_m1[0]["properties"]["metadata"][ROI_KEY] == roi_a.key
    assert is_roiseg_object(new_a_m1[0]["properties"])


def test_geojson_rois_keep_levels_ids_and_classes(tmp_path):
    child = {"type": "Feature", "geometry": mapping(box(10, 10, 20, 20)),
             "properties": {"classification": {"name": "Tumor area", "color": [1, 1, 1]}}}
    parent = {"type": "Feature", "id": "c0ffee00-0000-4000-8000-000000000001",
              "geometry": mapping(box(0, 0, 100, 100)),
              "properties": {"name": "first", "classification": {"name": "Region",
                                                                 "color": [0, 0, 180]},
                             "childObjects": [child]}}
    path = tmp_path / "rois.geojson"
    path.write_text(json.dumps([{"type": "FeatureCollection", "features": [parent]},
                                mapping(box(300, 0, 400, 100))]))
    rois = read_geojson_annotations(path)
    assert [(r.class_name, r.level, r.name) for r in rois] == [
        ("Region", 1, "first"), ("Tumor area", 2, ""), ("", 1, "")]
    assert rois[0].id == parent["id"] and rois[0].key.startswith(parent["id"])
    assert select_rois(rois) == [rois[0], rois[2]]


def test_roiseg_runs_without_paquo_imported():
    code = ("import sys, roiseg.batch.runner, roiseg.io.qupath_project; "
            "assert 'paquo' not in sys.modules and 'jpype' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_project_mode_without_paquo_says_what_to_install(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "project.qpproj").write_text("{}")
    # a Python where paquo cannot be imported, whether or not this one has it
    code = ("import sys; sys.modules['paquo'] = None; from roiseg.cli import main; "
            f"sys.exit(main(['batch', {str(project / 'project.qpproj')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    assert "pip install paquo" in result.stderr and "PAQUO_QUPATH_DIR" in result.stderr \
        and "--images" in result.stderr


# --------------------------------------------------------------------------- paquo + QuPath

def needs_qupath(test):
    """A test against a real QuPath through paquo (marked `qupath`; make test runs them on
    QuPath 0.5.1, 0.6.0 and 0.7.0)."""
    skip = pytest.mark.skipif(not os.environ.get("PAQUO_QUPATH_DIR"),
                              reason="needs an installed QuPath: set PAQUO_QUPATH_DIR "
                                     "(make test does, from ../shared/qupath)")
    return pytest.mark.qupath(skip(test))


def _metadata(java) -> dict:
    metadata = java.getMetadata()
    return {str(k): str(metadata.get(k)) for k in metadata.keySet()}


def _children(project_dir, class_name):
    """{ROI class: [(child class, metadata, id)]} read back with paquo, read-only."""
    from paquo.projects import QuPathProject

    with QuPathProject(project_dir / "project.qpproj", mode="r") as qp:
        (entry,) = qp.images
        result = {}
        for a in entry.hierarchy.annotations:
            if a.path_class is None or a.path_class.name != class_name:
                continue
            result[a.name or class_name] = (
                _metadata(a.java_object),
                [(str(c.getPathClass().getName()), _metadata(c), str(c.getID()))
                 for c in a.java_object.getChildObjects()])
        classes = {pc.name for pc in qp.path_classes}
    return result, classes


_ADD_SVS = """
import sys
{load}
from paquo.images import QuPathImageType
from paquo.projects import QuPathProject
with QuPathProject(sys.argv[1], mode="x") as qp:
    qp.add_image(sys.argv[2], image_type=QuPathImageType.BRIGHTFIELD_H_E)
print("added")
"""


@needs_qupath
@pytest.mark.parametrize("through_roiseg", [False, True], ids=["plain-paquo", "roiseg"])
def test_roisegs_paquo_layer_lets_headless_qupath_open_openslide_slides(tmp_path, through_roiseg):
    """Headless QuPath 0.5 reads SVS only once OpenSlide is loaded, which its GUI does; roiseg's
    paquo layer loads it, so a project made in QuPath's GUI with SVS slides works in batch."""
    load = "from roiseg.io.qupath_project import load_paquo; load_paquo()" if through_roiseg else ""
    result = subprocess.run([sys.executable, "-c", _ADD_SVS.format(load=load),
                             str(tmp_path / "project"), str(CMU)],
                            capture_output=True, text=True, timeout=300)
    version = (Path(os.environ["PAQUO_QUPATH_DIR"]) / "lib" / "app" / "VERSION").read_text().strip()
    if through_roiseg or not version.startswith("0.5"):
        assert result.returncode == 0 and "added" in result.stdout, result.stderr[-3000:]
    else:
        assert result.returncode != 0 and "can't open" in result.stderr, result.stderr[-3000:]


def _project(project_dir, image, *annotations) -> Path:
    """A QuPath project of one H&E image with annotations given as (name, class, geometry),
    made as QuPath's GUI would (roiseg's paquo layer, so QuPath opens SVS too)."""
    QuPathProject, QuPathPathClass, _, _ = load_paquo()
    from paquo.images import QuPathImageType

    with QuPathProject(project_dir, mode="x") as qp:
        entry = qp.add_image(image, image_type=QuPathImageType.BRIGHTFIELD_H_E)
        for name, class_name, geometry in annotations:
            color = (0, 0, 180) if class_name == "Region" else None
            annotation = entry.hierarchy.add_annotation(
                geometry, path_class=QuPathPathClass(class_name, color))
            annotation.name = name
    return project_dir / "project.qpproj"


def _imagej_tiff(tmp_path) -> Path:
    """GlaS train_1 as a calibrated ImageJ TIFF (0.62 µm/px), which QuPath opens with its own
    readers."""
    import tifffile
    from PIL import Image

    pixels = np.asarray(Image.open(GLAS / "images" / "train_1.png").convert("RGB"))
    image = tmp_path / "images" / "train_1.tif"
    image.parent.mkdir()
    tifffile.imwrite(image, pixels, imagej=True, resolution=(1 / 0.62, 1 / 0.62),
                     metadata={"unit": "micron"})
    return image


def _journal(project_dir) -> list[dict]:
    return [json.loads(line) for line in
            (project_dir / "roiseg-batch.jsonl").read_text().splitlines()]


@needs_qupath
def test_project_mode_on_an_imagej_tiff(address, tmp_path, monkeypatch):
    """A calibrated ImageJ TIFF, which QuPath opens with its own readers (no OpenSlide):
    results land under the ROI and the model's classes in the project's class list, each
    object with the id the server gave its feature."""
    from roiseg.io import qupath_geojson

    server_ids = []
    write_feature = qupath_geojson.annotation_feature

    def recorded(*args, **kwargs):
        feature = write_feature(*args, **kwargs)
        server_ids.append(feature["id"])
        return feature
    monkeypatch.setattr(qupath_geojson, "annotation_feature", recorded)

    image = _imagej_tiff(tmp_path)
    project_dir = tmp_path / "project"
    project = _project(project_dir, image, ("R1", "Region", box(50, 50, 600, 450)))
    assert batch(project, "--roi-class", "Region", "--server", address) == 0
    rois, classes = _children(project_dir, "Region")
    _, children = rois["R1"]
    # the default model's glands: its catch-all "Other tissue" only when asked for
    assert children and {c for c, _, _ in children} == {"Gland epithelium"}
    assert "Gland epithelium" in classes
    assert {object_id for _, _, object_id in children} <= set(server_ids)
    assert [(r["roi_name"], r["status"]) for r in _journal(project_dir)] == [("R1", "ok")]


@needs_qupath
def test_project_mode_with_qupath(address, tmp_path):
    from paquo.classes import QuPathPathClass
    from paquo.pathobjects import QuPathPathAnnotationObject
    from paquo.projects import QuPathProject

    slide = tmp_path / "slides" / CMU.name
    slide.parent.mkdir()
    shutil.copy(CMU, slide)
    project_dir = tmp_path / "project"
    project = _project(project_dir, slide, ("R1", "Region", box(1000, 1200, 1500, 1600)),
                       ("O1", "Other", box(100, 100, 300, 300)))

    assert batch(project, "--roi-class", "Region", "--server", address) == 0
    rois, classes = _children(project_dir, "Region")
    metadata, children = rois["R1"]
    assert children and all(m.get(ROISEG_SOURCE_KEY) == "roiseg" for _, m, _ in children)
    assert {c for c, _, _ in children} == {"Gland epithelium"}
    assert "Gland epithelium" in classes and "Other tissue" not in classes
    default = json.loads((DEFAULT_MODELS_DIR / "model.json").read_text())
    assert metadata[ROI_MODELS_KEY] == f"{default['id']}@{default['version']}"
    assert _children(project_dir, "Other")[0]["O1"][1] == []
    assert [(r["roi_name"], r["status"]) for r in _journal(project_dir)] == [("R1", "ok")]

    # A re-run skips the done ROI: nothing added, nothing saved.
    assert batch(project, "--roi-class", "Region", "--server", address) == 0
    assert _children(project_dir, "Region")[0]["R1"][1] == children
    assert len((project_dir / "roiseg-batch.jsonl").read_text().splitlines()) == 1

    # A user's own child survives --replace; roiseg's children are replaced, not duplicated.
    with QuPathProject(project, mode="r+") as qp:
        (entry,) = qp.images
        (r1,) = [a for a in entry.hierarchy.annotations if a.name == "R1"]
        note = QuPathPathAnnotationObject.from_shapely(box(1010, 1210, 1020, 1220),
                                                       QuPathPathClass("Note"))
        r1.java_object.addChildObjects([note.java_object])
        entry.hierarchy.flush()
    assert batch(project, "--roi-class", "Region", "--server", address, "--replace") == 0
    _, replaced = _children(project_dir, "Region")[0]["R1"]
    assert sorted(c for c, _, _ in replaced) == sorted([c for c, _, _ in children] + ["Note"])
    assert not {i for _, _, i in replaced} & {i for _, _, i in children}


@pytest.fixture()
def fast_track_address(registry, tmp_path):
    """A server that keeps examples (--dataset-dir) and its dataset directory."""
    from roiseg.server.service import SegmentationService, create_server

    service = SegmentationService(registry, dataset_dir=tmp_path / "dataset")
    server, port = create_server(service, "127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", service
    server.stop(grace=None)


@needs_qupath
def test_batch_submit_sends_a_projects_corrections_with_their_effort(fast_track_address, tmp_path,
                                                                     capsys):
    """Segment a project, correct it with paquo as a pathologist would in QuPath (delete one of
    roiseg's objects, draw a missed one), then `roiseg batch --submit`: one example per ROI,
    keyed as QuPath's extension keys it, with the effort measured; again: replaced, and the
    project is left as it was."""
    from paquo.classes import QuPathPathClass
    from paquo.pathobjects import QuPathPathAnnotationObject
    from paquo.projects import QuPathProject
    from roiseg.client.connection import Client

    address, service = fast_track_address
    image = _imagej_tiff(tmp_path)
    project_dir = tmp_path / "project"
    project = _project(project_dir, image, ("R1", "Region", box(50, 50, 600, 450)),
                       ("Empty", "Region", box(650, 20, 700, 60)))
    assert batch(project, "--roi-class", "Region", "--server", address) == 0
    with QuPathProject(project, mode="r+") as qp:
        (entry,) = qp.images
        uri = str(entry.uri)
        (r1,) = [a for a in entry.hierarchy.annotations if a.name == "R1"]
        r1_id = str(r1.java_object.getID())
        (empty,) = [a for a in entry.hierarchy.annotations if a.name == "Empty"]
        entry.hierarchy.java_object.removeObjects(list(empty.java_object.getChildObjects()), True)
        children = list(r1.java_object.getChildObjects())
        predicted = len(children)
        entry.hierarchy.java_object.removeObject(children[0], True)
        drawn = QuPathPathAnnotationObject.from_shapely(box(60, 60, 90, 90),
                                                        QuPathPathClass("Gland epithelium"))
        r1.java_object.addChildObjects([drawn.java_object])
        entry.hierarchy.flush()
    project_file = (project_dir / "data").rglob("data.qpdata")
    before = {p: p.read_bytes() for p in project_file}
    capsys.readouterr()

    assert batch(project, "--roi-class", "Region", "--submit", "--server", address) == 0
    out = capsys.readouterr().out
    assert "train_1.tif / R1: stored example" in out, out
    assert "no classified annotation inside it, nothing to submit" in out  # "Empty"
    assert "1 ROI(s) submitted (0 replaced" in out
    with Client(address) as client:
        (example,) = client.list_examples()
    assert (example.image_id, example.roi_key) == (uri, r1_id)  # what QuPath's extension sends
    total = example.effort.classes[-1]
    assert example.effort.measured and example.effort.matched_by == "id"
    assert (total.predicted_objects, total.deleted, total.added) == (predicted, 1, 1)
    assert total.kept + total.edited == predicted - 1
    assert f"{predicted} predicted: " in out and "1 deleted; 1 added" in out

    assert batch(project, "--roi-class", "Region", "--submit", "--server", address) == 0
    out = capsys.readouterr().out
    assert "R1: replaced example" in out and "1 ROI(s) submitted (1 replaced" in out
    with Client(address) as client:
        assert len(client.list_examples()) == 1
    assert {p: p.read_bytes() for p in (project_dir / "data").rglob("data.qpdata")} == before

    # folder mode, or a server that keeps no examples, is told plainly
    assert main(["batch", "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--submit",
                 "--server", address]) == 2
    assert "give the project, not --images" in capsys.readouterr().err
