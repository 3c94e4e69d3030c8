"""The fast track from inside real headless QuPath (docs/fast-track.md), on every QuPath
version under test, against a real server started with --dataset-dir: segment a ROI with
RoisegScripts (the default model's glands only), correct the results as a pathologist would
(delete one, draw one "Other tissue" object of one's own and one unclassified), then
RoisegScripts.submitCorrections; then delete the drawn "Other tissue" and submit again: the
server has stored one example of the ROI, of roiseg's kept glands, with the rest of the ROI
labelled "Other tissue" for training."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import rasterio.features
from real_qupath import roiseg_server
from roiseg.train.data import load_annotated_sample
from shapely.geometry import shape
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
        qupath.lib.objects.classes.PathClass.fromString('Other tissue'))
drawn.setName('my other tissue')
def unclassified = qupath.lib.objects.PathObjects.createAnnotationObject(
        qupath.lib.roi.ROIs.createRectangleROI(600, 600, 30, 30, userPlane))
unclassified.setName('my unclassified object')
getCurrentHierarchy().addObjectBelowParent(myRoi, drawn, true)
getCurrentHierarchy().addObjectBelowParent(myRoi, unclassified, true)
for (int i = 0; i < 2; i++) {
    if (i == 1) {
        getCurrentHierarchy().removeObject(drawn, true)  // the glands alone
    }
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
    # then roiseg's glands alone
    assert second[:4] == ("1", "1", str(segmented - 1), str(segmented - 1)), second
    example_id, model_id = first[4], first[5]
    assert second[4] == example_id
    # one example of this ROI (the server is shared by the QuPath versions under test)
    assert re.findall(r"ROISEG_EXAMPLES (\d+)", output) == ["1"]

    roi = [o for o in objects if o.get("name") == "my ROI"][0]
    record = json.loads((dataset / model_id / "records" / f"{example_id}.json").read_text())
    assert record["roi_key"] == roi["id"]
    assert record["image_id"].startswith("file:") and record["image_id"].endswith("cmu_region.tif")
    assert record["annotations_from"] == {"roiseg": segmented - 1, "added": 0}
    # the glands, and the rest of the ROI as the model's catch-all
    assert record["rest_of_roi"] == "Other tissue"
    assert record["classes"]["Gland epithelium"]["annotations"] == segmented - 1
    assert record["classes"]["Other tissue"]["annotations"] == 1
    stored = json.loads((dataset / model_id / "annotations" / f"{example_id}.geojson").read_text())
    assert len(stored["features"]) == segmented
    image = dataset / model_id / "images" / f"{example_id}.png"
    assert image.is_file()
    # the training labels, as fine-tuning reads them: the ROI labelled throughout (glands, the
    # rest "Other tissue"), its hole and what lies outside it unlabelled
    r = record["raster"]
    sample = load_annotated_sample(image, dataset / model_id / "annotations"
                                   / f"{example_id}.geojson", ["Other tissue", "Gland epithelium"],
                                   record["mpp"], source_mpp=record["mpp"])
    labels = sample.labels
    assert labels.shape == (r["height"], r["width"])
    transform = rasterio.Affine(r["scale_x"], 0, r["origin_x"], 0, r["scale_y"], r["origin_y"])
    roi_shape = shape(record["roi"])
    margin = 2 * r["scale_x"]
    inside = rasterio.features.rasterize([roi_shape.buffer(-margin)], out_shape=labels.shape,
                                         transform=transform).astype(bool)
    outside = ~rasterio.features.rasterize([roi_shape.buffer(margin)], out_shape=labels.shape,
                                           transform=transform).astype(bool)
    assert inside.sum() > 10_000 and outside.sum() > 500  # the hole at least
    assert (labels[outside] == 255).all()
    assert (labels[inside] != 255).all()
    glands = rasterio.features.rasterize(
        [f["geometry"] for f in stored["features"]
         if f["properties"]["classification"]["name"] == "Gland epithelium"],
        out_shape=labels.shape).astype(bool)  # stored in raster pixels
    assert 0 < (labels[inside] == 1).mean() < 0.5 and (labels[inside] == 0).mean() > 0.5
    assert ((labels == 1) == glands)[inside].mean() > 0.99
    assert np.isin(labels, (0, 1, 255)).all()
    # QuPath's hierarchy is as the user left it: the submission changes nothing
    names = {o.get("name") for o in objects}
    assert "my unclassified object" in names and "my other tissue" not in names
    assert len([o for o in objects if o.get("roiseg") == "roiseg"]) == segmented - 1
