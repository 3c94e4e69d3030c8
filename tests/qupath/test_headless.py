"""The extension's scripting side inside real headless QuPath (`QuPath script -i IMAGE
SCRIPT.groovy`), on every QuPath version under test, against the real server: the shipped
example examples/qupath/segment_selected.groovy and the workflow's one-liner
RoisegScripts.segmentAnnotations. The image is a calibrated ImageJ TIFF of real tissue, which
headless QuPath opens with its own readers."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile
from real_qupath import CMU, REPO

EXAMPLE = REPO / "examples" / "qupath" / "segment_selected.groovy"
MPP = 0.499

#: Groovy: the user's own objects before a run: an annotation elsewhere, the ROI (a polygon with
#: a hole), selected.
USER_OBJECTS = """
def userHierarchy = getCurrentHierarchy()
def userFactory = qupath.lib.roi.GeometryTools.getDefaultFactory()
def userPlane = qupath.lib.regions.ImagePlane.getDefaultPlane()
def mine = qupath.lib.objects.PathObjects.createAnnotationObject(qupath.lib.roi.ROIs.createRectangleROI(10, 10, 60, 60, userPlane))
mine.setName('my earlier annotation')
def shell = userFactory.toGeometry(new org.locationtech.jts.geom.Envelope(100, 800, 150, 750))
def hole = userFactory.toGeometry(new org.locationtech.jts.geom.Envelope(350, 500, 350, 500))
def myRoi = qupath.lib.objects.PathObjects.createAnnotationObject(qupath.lib.roi.GeometryTools.geometryToROI(shell.difference(hole), userPlane))
myRoi.setName('my ROI')
userHierarchy.addObjects([mine, myRoi])
userHierarchy.getSelectionModel().setSelectedObject(myRoi)
"""

#: Groovy: prints the hierarchy as one JSON line after "ROISEG_RESULT ".
DESCRIBE = """
def described = getCurrentHierarchy().getFlattenedObjectList(null).findAll { !it.isRootObject() }.collect {
    [name: it.getName(), parent: it.getParent()?.isRootObject() ? null : it.getParent()?.getName(),
     class: it.getPathClass()?.toString(), colour: it.getPathClass()?.getColor(),
     roiseg: it.getMetadata()?.get('roiseg.source'), model: it.getMetadata()?.get('roiseg.model_id'),
     run: it.getMetadata()?.get('roiseg.run_id'), id: it.getID().toString(),
     precision: it.getROI().getGeometry().getPrecisionModel() == qupath.lib.roi.GeometryTools.getDefaultFactory().getPrecisionModel()]
}
println 'ROISEG_RESULT ' + qupath.lib.io.GsonTools.getInstance().toJson(described)
"""


@pytest.fixture(scope="module")
def tissue_tiff(tmp_path_factory):
    """A 1000 x 1000 px tissue region of the CMU slide as an ImageJ TIFF at 0.499 µm/px."""
    pixels = tifffile.imread(CMU, series=0, level=0)[1000:2000, 1100:2100]
    path = tmp_path_factory.mktemp("images") / "cmu_region.tif"
    tifffile.imwrite(path, np.ascontiguousarray(pixels), imagej=True,
                     resolution=(1 / MPP, 1 / MPP), metadata={"unit": "micron"})
    return path


def run_script(qupath, image, script_text, tmp_path) -> tuple[list[dict], str]:
    script = tmp_path / "script.groovy"
    script.write_text(script_text)
    result = qupath.run(["script", "-i", str(image), str(script)], timeout=300)
    found = re.findall(r"^.*ROISEG_RESULT (.*)$", result.stdout, flags=re.M)
    assert result.returncode == 0 and found, result.stdout[-6000:]
    return json.loads(found[-1]), result.stdout


def check_results(objects: list[dict], output: str) -> list[dict]:
    results = [o for o in objects if o.get("roiseg") == "roiseg"]
    assert results and all(o.get("parent") == "my ROI" for o in results), objects
    # the default model's glands only: its catch-all "Other tissue" comes back only when asked for
    assert {o.get("class") for o in results} == {"Gland epithelium"}
    assert all(o["precision"] for o in results), "results not in QuPath's precision model"
    assert "does not match default precision model" not in output
    mine = [o for o in objects if o.get("name") == "my earlier annotation"]
    assert mine and mine[0].get("parent") is None
    # roiseg's own class in the model's colour (0, 170, 200)
    assert all(o["colour"] & 0xFFFFFF == (0 << 16 | 170 << 8 | 200) for o in results), results
    return results


def test_shipped_example_segments_the_selected_annotation(qupath, server_port, tissue_tiff,
                                                          tmp_path):
    text = EXAMPLE.read_text()
    assert text.count("def port = 50051\n") == 1
    text = text.replace("def port = 50051\n", f"def port = {server_port}\n")
    imports_end = max(m.end() for m in re.finditer(r"^import .*$", text, flags=re.M))
    script = text[:imports_end] + "\n" + USER_OBJECTS + text[imports_end:] + DESCRIBE
    objects, output = run_script(qupath, tissue_tiff, script, tmp_path)
    check_results(objects, output)
    assert re.search(r"roiseg: \d+ objects added, 0 earlier roiseg objects replaced", output)


def test_workflow_one_liner_segments_and_replaces_only_its_own_results(qupath, server_port,
                                                                      tissue_tiff, tmp_path):
    settings = ("qupath.ext.roiseg.ui.RoisegPrefs.setServerSettings(qupath.ext.roiseg.ui.RoisegPrefs"
                f".serverSettings().withAddress('127.0.0.1', {server_port}))\n")
    one_liner = ("qupath.ext.roiseg.RoisegScripts.segmentAnnotations(getCurrentImageData(), "
                 "getAnnotationObjects().findAll { it.getName() == 'my ROI' }, 0)"
                 ".with { println \"ROISEG_SUMMARY ${it.added()} ${it.removed()}\" }\n")
    inside = """
def firstResult = myRoi.getChildObjects().find { it.getMetadata().get('roiseg.source') == 'roiseg' }
def inside = qupath.lib.objects.PathObjects.createAnnotationObject(qupath.lib.roi.ROIs.createEllipseROI(
        firstResult.getROI().getCentroidX() - 5, firstResult.getROI().getCentroidY() - 5, 10, 10, userPlane))
inside.setName('my object inside a result')
getCurrentHierarchy().addObjectBelowParent(firstResult, inside, true)
"""
    script = settings + USER_OBJECTS + one_liner + inside + one_liner + DESCRIBE
    objects, output = run_script(qupath, tissue_tiff, script, tmp_path)
    results = check_results(objects, output)
    (first, second) = [tuple(map(int, m)) for m in re.findall(r"ROISEG_SUMMARY (\d+) (\d+)", output)]
    assert first[0] > 0 and first[1] == 0
    assert second == (len(results), first[0]), "the re-run replaces exactly the first run's objects"
    # the objects of the re-run carry its one run id and their own ids (UUIDs from the server)
    assert len({o.get("run") for o in results}) == 1 and None not in {o.get("run") for o in results}
    assert len({o["id"] for o in results}) == len(results)
    inside = [o for o in objects if o.get("name") == "my object inside a result"]
    assert inside and inside[0].get("parent") == "my ROI", inside
