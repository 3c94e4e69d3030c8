"""The fast track from inside real headless QuPath (docs/fast-track.md), on every QuPath
version under test, against a real server started with --dataset-dir: segment a ROI with
RoisegScripts, correct the results as a pathologist would (delete one, draw one classified
object of one's own and one unclassified), then RoisegScripts.submitCorrections, twice; the
server has stored one example of the ROI, with roiseg's kept objects and the user's one."""

from __future__ import annotations

import json
import re

import pytest
from real_qupath import roiseg_server
from test_headless import DESCRIBE, USER_OBJECTS, run_script, tissue_tiff  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def fast_track_server(tmp_path_factory):
    """A server of this module's own (its example store starts empty); yields its port and
    dataset directory."""
    directory = tmp_path_factory.mktemp("fast-track-server")
    with roiseg_server(directory) as port:
        yield port, directory / "dataset"


CORRECT_AND_SUBMIT = """
qupath.ext.roiseg.RoisegScripts.segmentAnnotations(getCurrentImageData(), [myRoi], 0)
def results = myRoi.getChildObjects().findAll { it.getMetadata().get('roiseg.source') == 'roiseg' }
println "ROISEG_SEGMENTED ${results.size()}"
getCurrentHierarchy().removeObject(results[0], true)
def drawn = qupath.lib.objects.PathObjects.createAnnotationObject(
        qupath.lib.roi.ROIs.createRectangleROI(150, 160, 40, 40, userPlane),
        qupath.lib.objects.classes.PathClass.fromString('Stroma'))
drawn.setName('my stroma')
def unclassified = qupath.lib.objects.PathObjects.createAnnotationObject(
        qupath.lib.roi.ROIs.createRectangleROI(600, 600, 30, 30, userPlane))
unclassified.setName('my unclassified object')
getCurrentHierarchy().addObjectBelowParent(myRoi, drawn, true)
getCurrentHierarchy().addObjectBelowParent(myRoi, unclassified, true)
for (int i = 0; i < 2; i++) {
    def s = qupath.ext.roiseg.RoisegScripts.submitCorrections(getCurrentImageData(), [myRoi])
    println "ROISEG_SUBMITTED ${s.submitted()} ${s.replaced()} ${s.annotations()} ${s.roisegMade()} ${s.exampleIds()[0]} ${s.modelId()}"
}
println "ROISEG_EXAMPLES ${qupath.ext.roiseg.RoisegScripts.listExamples('').count { it.roiKey() == myRoi.getID().toString() }}"
"""


def test_corrected_results_are_stored_as_one_example(qupath, fast_track_server, request,
                                                     tmp_path):
    port, dataset = fast_track_server
    image = request.getfixturevalue("tissue_tiff")
    settings = ("qupath.ext.roiseg.ui.RoisegPrefs.setServerSettings(qupath.ext.roiseg.ui.RoisegPrefs"
                f".serverSettings().withAddress('127.0.0.1', {port}))\n")
    script = settings + USER_OBJECTS + CORRECT_AND_SUBMIT + DESCRIBE
    objects, output = run_script(qupath, image, script, tmp_path)
    segmented = int(re.findall(r"ROISEG_SEGMENTED (\d+)", output)[0])
    assert segmented >= 2, output[-4000:]
    submitted = re.findall(r"ROISEG_SUBMITTED (\d+) (\d+) (\d+) (\d+) (\S+) (\S+)", output)
    assert len(submitted) == 2, output[-4000:]
    (first, second) = submitted
    # roiseg's results less the deleted one, and the user's classified object; not the unclassified
    assert first[:4] == ("1", "0", str(segmented), str(segmented - 1)), first
    assert second[:4] == ("1", "1", str(segmented), str(segmented - 1)), second
    example_id, model_id = first[4], first[5]
    assert second[4] == example_id
    # one example of this ROI (the server is shared by the QuPath versions under test)
    assert re.findall(r"ROISEG_EXAMPLES (\d+)", output) == ["1"]

    roi = [o for o in objects if o.get("name") == "my ROI"][0]
    record = json.loads((dataset / model_id / "records" / f"{example_id}.json").read_text())
    assert record["roi_key"] == roi["id"]
    assert record["image_id"].startswith("file:") and record["image_id"].endswith("cmu_region.tif")
    assert record["annotations_from"] == {"roiseg": segmented - 1, "added": 1}
    assert "Stroma" in record["classes"]
    stored = json.loads((dataset / model_id / "annotations" / f"{example_id}.geojson").read_text())
    assert len(stored["features"]) == sum(c["annotations"] for c in record["classes"].values())
    assert (dataset / model_id / "images" / f"{example_id}.png").is_file()
    # QuPath's hierarchy is as the user left it: the submission changes nothing
    names = {o.get("name") for o in objects}
    assert {"my stroma", "my unclassified object"} <= names
    assert len([o for o in objects if o.get("roiseg") == "roiseg"]) == segmented - 1
