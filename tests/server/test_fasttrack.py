"""The fast track end to end (docs/fast-track.md): a real loopback server with a dataset
directory, the real default model, real GlaS images and their gland masks as the corrections."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time

import cv2
import grpc
import numpy as np
import pytest
import rasterio.features
import shapely
import torch
from conftest import GLAS, SLIDES
from roiseg import CONTRACT_MAJOR
from roiseg.cli import main
from roiseg.client.connection import (
    Client,
    SegmentationError,
    corrections_request,
    encode_png,
    pixels_source,
    segment_request,
    slide_source,
)
from roiseg.engine.models import ModelCard, ModelRegistry, select_device, sha256_file
from roiseg.io import qupath_geojson
from roiseg.server.service import Limits, SegmentationService, create_server
from roiseg.train.data import find_annotated, load_annotated_sample
from roiseg.v1 import segmentation_pb2 as pb
from shapely.geometry import Polygon, box, mapping, shape

GLAS_MPP = 0.62
GLAND, OTHER = "Gland epithelium", "Other tissue"


@pytest.fixture(scope="module")
def fast_registry(models_dir, registry) -> ModelRegistry:
    """A registry of its own: these tests register, choose and retire versions."""
    return ModelRegistry([models_dir], select_device("cpu"), registry.default_id)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dataset")


@pytest.fixture(scope="module")
def fast_service(fast_registry, dataset_dir) -> SegmentationService:
    return SegmentationService(fast_registry, slide_roots=[GLAS / "images"],
                               limits=Limits(max_message_bytes=4 << 20,
                                             max_roi_pixels=12_000_000),
                               dataset_dir=dataset_dir)


@pytest.fixture(scope="module")
def fast_address(fast_service):
    server, port = create_server(fast_service, "127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture()
def fast(fast_address):
    with Client(fast_address, max_message_bytes=4 << 20, timeout_s=300) as c:
        yield c


def glas(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A GlaS image (RGB) and its gland mask (bool)."""
    image = cv2.cvtColor(cv2.imread(str(GLAS / "images" / f"{name}.png")), cv2.COLOR_BGR2RGB)
    mask = cv2.imread(str(GLAS / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED) > 0
    return image, mask


def corrections(mask: np.ndarray, roi, *, extra: list[dict] | None = None,
                roiseg_made: bool = True, other: bool = True) -> str:
    """The mask's glands and the rest of the tissue (unless not `other`) as QuPath annotations
    in full-resolution pixels, as a pathologist's corrections would be; the glands carry
    roiseg's metadata (pre-annotations kept), the rest does not (drawn by the user)."""
    features = []
    for geometry, value in rasterio.features.shapes(mask.astype(np.uint8)):
        polygon = shape(geometry).intersection(roi.buffer(40))
        if polygon.is_empty or not (value or other):
            continue
        name = GLAND if value else OTHER
        properties = {"objectType": "annotation",
                      "classification": qupath_geojson.classification(name, (0, 170, 200))}
        if value and roiseg_made:
            properties["metadata"] = {
                qupath_geojson.ROISEG_SOURCE_KEY: qupath_geojson.ROISEG_SOURCE_VALUE,
                **qupath_geojson.model_metadata("glas-unet-mobilenetv2", "0.4.0", "run-1")}
        features.append({"type": "Feature", "geometry": mapping(polygon),
                         "properties": properties})
    features += extra or []
    return json.dumps(qupath_geojson.feature_collection(features))


def pixels_of(image: np.ndarray) -> pb.ImageSource:
    return pixels_source(encoded=encode_png(image), downsample=1.0, origin_x=0, origin_y=0,
                         pixel_size_um=GLAS_MPP, image_width=image.shape[1],
                         image_height=image.shape[0])


def submit(client, image_source, roi, geojson, **fields):
    return client.submit_corrections(corrections_request(roi, image_source, geojson, **fields))


def refused(call) -> SegmentationError:
    with pytest.raises(SegmentationError) as info:
        call()
    return info.value


ROI_A = box(100, 80, 500, 400)
COPIES = itertools.count(1)
ROI_B = shapely.Polygon([(300, 100), (760, 120), (700, 500), (320, 480)])


def test_submit_list_resubmit_and_remove(fast, fast_registry, dataset_dir):
    image, mask = glas("train_2")
    unclassified = {"type": "Feature", "geometry": mapping(box(120, 90, 200, 150)),
                    "properties": {"objectType": "annotation"}}
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [150, 100]},
             "properties": {"classification": {"name": GLAND}}}
    first = submit(fast, pixels_of(image), ROI_A, corrections(mask, ROI_A,
                                                              extra=[unclassified, point]),
                   image_id="glas/train_2")
    example = first.example
    assert not first.replaced and len(example.example_id) == 20
    card = fast_registry.card(fast_registry.default_id)
    assert example.model_id == card.id and example.mpp == card.mpp
    assert example.image_id == "glas/train_2" and example.roi_key.startswith("outline:")
    assert example.predicted_by == "glas-unet-mobilenetv2@0.4.0"  # from the metadata
    # the ROI's 400 x 320 px at 0.62 µm/px, read at the model's 1 µm/px
    assert abs(example.raster_width - 400 * GLAS_MPP) <= 2
    assert abs(example.raster_height - 320 * GLAS_MPP) <= 2
    areas = {a.name: a for a in example.class_areas}
    assert set(areas) == {GLAND, OTHER}
    total = sum(a.area_um2 for a in areas.values())
    assert total == pytest.approx(ROI_A.area * GLAS_MPP ** 2, rel=1e-6)  # clipped to the ROI
    gland_fraction = mask[80:400, 100:500].mean()
    assert areas[GLAND].area_um2 / total == pytest.approx(gland_fraction, abs=0.01)

    # the files, as `roiseg train --annotations` reads them
    store = dataset_dir / card.id
    record = json.loads((store / "records" / f"{example.example_id}.json").read_text())
    assert record["skipped"]["not a polygon"] == 1 and record["skipped"]["unclassified"] == 1
    assert record["rest_of_roi"] is None  # the corrections hold some Other tissue: as they are
    assert record["annotations_from"]["added"] >= 1 and record["annotations_from"]["roiseg"] >= 1
    assert record["source"]["pixels"]["pixel_size_um"] == GLAS_MPP
    pairs = find_annotated(store / "images", store / "annotations")
    assert [p.stem for p, _ in pairs] == [example.example_id]
    sample = load_annotated_sample(*pairs[0], [OTHER, GLAND], card.mpp, source_mpp=card.mpp)
    assert sample.image.shape[:2] == (example.raster_height, example.raster_width)
    # labels line up with the mask read at the model's resolution
    h, w = sample.labels.shape
    reference = cv2.resize(mask[80:400, 100:500].astype(np.uint8), (w, h),
                           interpolation=cv2.INTER_NEAREST)
    labelled = sample.labels != 255
    assert labelled.mean() > 0.95
    assert (sample.labels[labelled] == reference[labelled]).mean() > 0.97

    # the same image and ROI again, corrected otherwise: replaced, not added
    all_other = corrections(mask & False, ROI_A)
    again = submit(fast, pixels_of(image), ROI_A, all_other, image_id="glas/train_2",
                   predicted_by="glas-unet-mobilenetv2@0.4.0")
    assert again.replaced and again.example.example_id == example.example_id
    assert [a.name for a in again.example.class_areas] == [OTHER]
    assert [e.example_id for e in fast.list_examples()] == [example.example_id]

    # another ROI, the server reading the image file itself: the path is its identity
    path = GLAS / "images" / "train_2.png"
    second = submit(fast, slide_source(str(path), GLAS_MPP), ROI_B, corrections(mask, ROI_B),
                    roi_key="qupath-object-7")
    assert not second.replaced and second.example.image_id == str(path.resolve())
    assert second.example.roi_key == "qupath-object-7"
    listed = fast.list_examples(card.id)
    assert [e.example_id for e in listed] == [example.example_id, second.example.example_id]
    assert fast.list_examples(f"{card.id}@{card.version}") == listed

    removed = fast.remove_example(example.example_id)
    assert removed.example_id == example.example_id
    assert [e.example_id for e in fast.list_examples()] == [second.example.example_id]
    assert not (store / "images" / f"{example.example_id}.png").exists()
    error = refused(lambda: fast.remove_example(example.example_id))
    assert error.code == grpc.StatusCode.NOT_FOUND and example.example_id in error.message
    fast.remove_example(second.example.example_id)
    assert fast.list_examples() == []


def test_a_correction_of_glands_only_trains_the_rest_of_the_roi_as_other_tissue(
        fast, fast_registry, dataset_dir):
    """The default model returns only its glands (its "Other tissue" is a catch-all, left out
    by default), so corrections hold glands only: what they leave of the ROI is labelled
    "Other tissue" for training; outside the ROI stays unlabelled. Corrections that hold some
    "Other tissue" are taken as they are (test_submit_list_resubmit_and_remove)."""
    image, mask = glas("train_5")
    geojson = corrections(mask, ROI_B, other=False)
    assert OTHER not in geojson and GLAND in geojson
    response = submit(fast, pixels_of(image), ROI_B, geojson, image_id="glas/train_5")
    example = response.example
    areas = {a.name: a.area_um2 for a in example.class_areas}
    assert set(areas) == {GLAND, OTHER}
    # no overlap: the rest is the ROI less the glands
    assert sum(areas.values()) == pytest.approx(ROI_B.area * GLAS_MPP ** 2, rel=1e-6)
    card = fast_registry.card(fast_registry.default_id)
    store = dataset_dir / card.id
    record = json.loads((store / "records" / f"{example.example_id}.json").read_text())
    assert record["rest_of_roi"] == OTHER

    # the training labels, as fine-tuning reads them
    pairs = [p for p in find_annotated(store / "images", store / "annotations")
             if p[0].stem == example.example_id]
    sample = load_annotated_sample(*pairs[0], [OTHER, GLAND], card.mpp, source_mpp=card.mpp)
    labels = sample.labels
    assert labels.shape == (example.raster_height, example.raster_width)
    r = record["raster"]
    transform = rasterio.Affine(r["scale_x"], 0, r["origin_x"], 0, r["scale_y"], r["origin_y"])
    ys, xs = np.mgrid[0:labels.shape[0], 0:labels.shape[1]]
    full_x = np.clip((r["origin_x"] + (xs + 0.5) * r["scale_x"]).astype(int), 0, mask.shape[1] - 1)
    full_y = np.clip((r["origin_y"] + (ys + 0.5) * r["scale_y"]).astype(int), 0, mask.shape[0] - 1)
    reference = mask[full_y, full_x].astype(np.uint8)  # 1: gland, 0: the rest
    margin = 2 * r["scale_x"]
    inside = rasterio.features.rasterize([ROI_B.buffer(-margin)], out_shape=labels.shape,
                                         transform=transform).astype(bool)
    outside = ~rasterio.features.rasterize([ROI_B.buffer(margin)], out_shape=labels.shape,
                                           transform=transform).astype(bool)
    assert inside.sum() > 10_000 and outside.sum() > 1_000
    assert (labels[outside] == 255).all(), "outside the ROI is not labelled"
    assert (labels[inside] != 255).all(), "the ROI is labelled throughout"
    assert (labels[inside] == 0).mean() > 0.2, "the rest of the ROI is Other tissue"
    assert (labels[inside] == reference[inside]).mean() > 0.97
    fast.remove_example(example.example_id)
    assert fast.list_examples() == []


def test_refusals(fast, client):
    image, mask = glas("train_3")
    good = corrections(mask, ROI_A)
    pixels = pixels_of(image)

    def code(call, status, *words):
        error = refused(call)
        assert error.code == status, error
        for word in words:
            assert word in error.message, error.message
        assert len(error.message) < 1000

    # the session server keeps no examples
    assert fast.server_info().examples_enabled and not client.server_info().examples_enabled
    code(lambda: submit(client, pixels, ROI_A, good, image_id="x"),
         grpc.StatusCode.FAILED_PRECONDITION, "--dataset-dir")
    code(lambda: client.list_examples(), grpc.StatusCode.FAILED_PRECONDITION, "--dataset-dir")
    renamed = good.replace(GLAND, "Tumour").replace(OTHER, "Tumor stroma")
    code(lambda: submit(fast, pixels, ROI_A, renamed, image_id="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "'Tumor stroma'", "'Tumour'", GLAND)
    code(lambda: submit(fast, pixels, ROI_A, good), grpc.StatusCode.INVALID_ARGUMENT, "image_id")
    code(lambda: submit(fast, pixels, ROI_A, " ", image_id="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "no corrections")
    code(lambda: submit(fast, pixels, ROI_A, "{not json", image_id="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "not JSON")
    code(lambda: submit(fast, pixels, ROI_A, '{"type": "Topology"}', image_id="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "FeatureCollection")
    code(lambda: submit(fast, pixels, ROI_A, "[" * 100_000, image_id="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "not JSON")
    crossing = np.random.default_rng(0).uniform(ROI_A.bounds[0], ROI_A.bounds[2], (5000, 2))
    knot = json.dumps({"type": "Feature", "geometry": mapping(Polygon(crossing)),
                       "properties": {"classification": {"name": GLAND}}})
    started = time.monotonic()
    code(lambda: submit(fast, pixels, ROI_A, knot, image_id="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "crosses itself")
    assert time.monotonic() - started < 5
    far = corrections(mask, box(600, 420, 700, 500))
    code(lambda: submit(fast, pixels, box(10, 10, 60, 60), far, image_id="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "inside the ROI")
    code(lambda: submit(fast, pixels, ROI_A, good, image_id="x", model_id="nope"),
         grpc.StatusCode.NOT_FOUND, "nope")
    code(lambda: submit(fast, pixels, box(900, 900, 1000, 1000), good, image_id="x"),
         grpc.StatusCode.INVALID_ARGUMENT, "outside")
    code(lambda: submit(fast, slide_source(str(SLIDES / "cmu_small_region.svs")), ROI_A, good),
         grpc.StatusCode.PERMISSION_DENIED, "outside")
    code(lambda: submit(fast, pixels, ROI_A, good, image_id="x", roi_key="k" * 300),
         grpc.StatusCode.INVALID_ARGUMENT, "ROI key")
    request = corrections_request(ROI_A, pixels, good, image_id="x")
    request.client_contract_major = CONTRACT_MAJOR + 1
    code(lambda: fast.submit_corrections(request), grpc.StatusCode.FAILED_PRECONDITION,
         "update the server")
    request = corrections_request(ROI_A, pixels, good, image_id="x")
    request.roi.Clear()
    code(lambda: fast.submit_corrections(request), grpc.StatusCode.INVALID_ARGUMENT, "ROI")
    code(lambda: fast.remove_example("../../etc/passwd"), grpc.StatusCode.INVALID_ARGUMENT,
         "not an example id")
    code(lambda: fast.list_examples("nope@1"), grpc.StatusCode.NOT_FOUND, "nope")
    assert fast.list_examples() == []


def test_the_submit_command(fast_address, tmp_path, capsys):
    _, mask = glas("train_4")
    roi_file = tmp_path / "roi.geojson"
    roi_file.write_text(json.dumps({"type": "Feature", "geometry": mapping(ROI_A),
                                    "properties": {}}))
    corrected = tmp_path / "corrected.geojson"
    corrected.write_text(corrections(mask, ROI_A))
    image = GLAS / "images" / "train_4.png"
    base = ["submit", "--server", fast_address]
    assert main([*base[:1], str(image), "--roi", str(roi_file), "--corrections",
                 str(corrected), "--mpp", str(GLAS_MPP), *base[1:]]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stored ") and str(image.resolve()) in out
    example_id = out.split()[1]
    assert main([*base[:1], str(image), "--region", "100,80,400,320", "--corrections",
                 str(corrected), "--mpp", str(GLAS_MPP), *base[1:]]) == 0
    assert capsys.readouterr().out.startswith(f"replaced {example_id}")  # same outline
    assert main([*base, "--list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 example(s)"
    assert main([*base, "--remove", example_id]) == 0
    assert capsys.readouterr().out.startswith(f"removed {example_id}")
    assert main([*base, "--remove", example_id]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["submit", "--list"]) == 2
    assert "--dataset-dir" in capsys.readouterr().err
    assert main([*base, str(image)]) == 2
    assert "--corrections" in capsys.readouterr().err


def _glands_of(features):
    return [f for f in features if qupath_geojson.class_name(f["properties"]) == GLAND]


def test_the_loop_measures_the_correction_effort(fast, fast_registry, capsys, fast_address,
                                                 tmp_path):
    """Segment -> correct the GeoJSON as a pathologist would (delete two false positives,
    shrink one outline, draw a missed gland) -> submit: the server measures the effort against
    its record of the run, and the numbers are those computed here by hand."""
    image, _ = glas("train_10")
    family = fast_registry.default_id
    predicted = segment_crop(fast, [], image).feature_collections[family]["features"]
    glands = sorted(_glands_of(predicted), key=lambda f: -shape(f["geometry"]).area)
    assert len(glands) >= 4
    deleted, shrunk = glands[-2:], glands[0]
    kept = [f for f in predicted if f not in deleted and f is not shrunk]
    outline = shape(shrunk["geometry"])
    smaller = outline.buffer(-4)
    edited = {**shrunk, "geometry": mapping(smaller)}
    taken = shapely.union_all([shape(f["geometry"]) for f in glands]).buffer(2)
    missed = next(b for b in (box(x, y, x + 30, y + 30) for y in range(90, 360, 10)
                              for x in range(110, 460, 10)) if not b.intersects(taken))
    drawn = {"type": "Feature", "id": "9b3f8a52-user-drawn", "geometry": mapping(missed),
             "properties": {"objectType": "annotation",
                            "classification": qupath_geojson.classification(GLAND, (0, 1, 2))}}
    corrected = json.dumps(qupath_geojson.feature_collection([*kept, edited, drawn]))

    response = submit(fast, pixels_of(image), ROI_A, corrected, image_id="glas/train_10")
    effort = response.example.effort
    assert effort.measured and effort.matched_by == "id"
    assert list(effort.run_ids) == [predicted[0]["properties"]["metadata"]["roiseg.run_id"]]
    classes = {c.name: c for c in effort.classes}
    assert list(classes)[-1] == "(all)"
    gland = classes[GLAND]
    assert (gland.predicted_objects, gland.kept, gland.edited, gland.deleted, gland.added) == \
        (len(glands), len(glands) - 3, 1, 2, 1)
    um2 = GLAS_MPP ** 2
    removed = sum(shape(f["geometry"]).intersection(ROI_A).area for f in deleted) \
        + outline.difference(smaller).intersection(ROI_A).area
    assert gland.removed_um2 == pytest.approx(removed * um2, rel=1e-6)
    assert gland.added_um2 == pytest.approx(missed.area * um2, rel=1e-6)
    before = shapely.union_all([shape(f["geometry"]) for f in glands]).intersection(ROI_A).area
    after = before - removed + missed.area
    both = before - removed
    assert gland.dice == pytest.approx(2 * both / (before + after), abs=0.01)
    stroma = classes.get(OTHER)
    if stroma is not None:  # untouched: all kept
        assert stroma.kept == stroma.predicted_objects and stroma.dice == pytest.approx(1.0)
        assert stroma.added_um2 == stroma.removed_um2 == 0
    assert classes["(all)"].deleted == 2 and classes["(all)"].added == 1
    listed = {e.example_id: e for e in fast.list_examples()}[response.example.example_id]
    assert listed.effort == effort

    # the pre-annotations given explicitly measure the same
    again = submit(fast, pixels_of(image), ROI_A, corrected, image_id="glas/train_10",
                   predicted_geojson=json.dumps(qupath_geojson.feature_collection(predicted)))
    assert again.replaced and not again.example.effort.run_ids
    assert [c.deleted for c in again.example.effort.classes] == \
        [c.deleted for c in effort.classes]
    assert again.example.effort.classes[0].removed_um2 == pytest.approx(
        effort.classes[0].removed_um2)

    # without a roiseg object left, or from an unknown run: stored, effort not measured
    only_drawn = json.dumps(qupath_geojson.feature_collection([drawn]))
    alone = submit(fast, pixels_of(image), ROI_A, only_drawn, image_id="glas/train_10")
    assert not alone.example.effort.measured
    assert "nothing to compare" in alone.example.effort.not_measured_why
    unknown_run = json.loads(corrected)
    for feature in unknown_run["features"]:
        if "metadata" in feature["properties"]:
            feature["properties"]["metadata"]["roiseg.run_id"] = \
                "00000000-0000-4000-8000-000000000000"
    stranger = submit(fast, pixels_of(image), ROI_A, json.dumps(unknown_run),
                      image_id="glas/train_10")
    assert "no record of run(s) 00000000-0000-4000-8000-000000000000" in \
        stranger.example.effort.not_measured_why

    # the command line prints it
    image_file = GLAS / "images" / "train_10.png"
    (tmp_path / "c.geojson").write_text(corrected)
    assert main(["submit", str(image_file), "--region", "100,80,400,320", "--corrections",
                 str(tmp_path / "c.geojson"), "--mpp", str(GLAS_MPP), "--server",
                 fast_address]) == 0
    out = capsys.readouterr().out
    assert "correction effort (objects matched by id)" in out
    assert f"{GLAND}: Dice {gland.dice:.3f}" in out and "2 deleted; 1 added" in out
    fast.remove_example(response.example.example_id)
    for example in fast.list_examples():
        fast.remove_example(example.example_id)


def test_classes_renamed_at_segment_come_back_as_corrections_of_the_models_classes(fast):
    """--rename: the result names the model's classes as asked, its class areas too; the
    corrections in those names, sent with the same renaming, train the model's classes."""
    image, _ = glas("train_5")
    renaming = {OTHER: "Stroma", GLAND: "My gland"}
    options = pb.SegmentOptions(class_names=renaming, all_classes=True)
    result = fast.segment(segment_request(ROI_A, pixels_of(image), (), options))
    (collection,) = result.feature_collections.values()
    names = {qupath_geojson.class_name(f["properties"]) for f in collection["features"]}
    assert names == {"Stroma", "My gland"}
    (model_result,) = result.results.values()
    assert {a.name for a in model_result.class_areas} == {"Stroma", "My gland"}
    corrected = json.dumps(collection)
    refused_ = refused(lambda: submit(fast, pixels_of(image), ROI_A, corrected,
                                      image_id="glas/train_5"))
    assert refused_.code == grpc.StatusCode.INVALID_ARGUMENT and "My gland" in refused_.message
    stored = submit(fast, pixels_of(image), ROI_A, corrected, image_id="glas/train_5",
                    class_names=renaming).example
    assert {a.name for a in stored.class_areas} == {OTHER, GLAND}
    assert stored.effort.measured and stored.effort.classes[-1].kept == \
        stored.effort.classes[-1].predicted_objects
    fast.remove_example(stored.example_id)
    # an unknown class, or two classes to one name on the way back: clear refusals
    unknown = refused(lambda: fast.segment(segment_request(
        ROI_A, pixels_of(image), (), pb.SegmentOptions(class_names={"Tumour": "x"}))))
    assert unknown.code == grpc.StatusCode.INVALID_ARGUMENT and "Tumour" in unknown.message \
        and OTHER in unknown.message
    merged = refused(lambda: submit(fast, pixels_of(image), ROI_A, corrected,
                                    image_id="glas/train_5",
                                    class_names={OTHER: "Tissue", GLAND: "Tissue"}))
    assert "the same name 'Tissue'" in merged.message


# ---------------------------------------------------------------------- versions


@pytest.fixture()
def second_version(fast_registry, tmp_path):
    """The default model again as version `0.4.0-copyN`, registered at run time; the default
    version is restored afterwards."""
    family = fast_registry.default_id
    card = fast_registry.card(family)
    copy = tmp_path / "copy"
    shutil.copytree(card.card_path.parent, copy)
    fields = json.loads((copy / "model.json").read_text())
    fields["version"] = f"0.4.0-copy{next(COPIES)}"
    (copy / "model.json").write_text(json.dumps(fields))
    registered = fast_registry.register(ModelCard.from_file(copy / "model.json"))
    yield registered
    fast_registry.set_default(f"{family}@{card.version}")


def segment_crop(client, model_ids, image):
    request = segment_request(ROI_A, pixels_of(image), model_ids)
    return client.segment(request)


def test_versions_are_listed_chosen_and_retired_without_a_restart(fast, second_version,
                                                                  fast_registry, dataset_dir):
    family, _, version = second_version.id.partition("@")
    original = fast_registry.card(family).version
    models = {m.id: m for m in fast.list_models()}
    assert set(models) == {family, "glas-coarse"}  # one entry per model, as before
    listed = models[family]
    assert listed.version == original and listed.is_default_version
    assert [(v.id, v.is_default_version) for v in listed.versions] == [
        (f"{family}@{original}", True), (second_version.id, False)]
    assert [v.id for v in models["glas-coarse"].versions] == [f"glas-coarse@{original}"]

    image, _ = glas("train_5")
    result = segment_crop(fast, [family, second_version.id], image)
    assert set(result.results) == {family, second_version.id}
    assert result.results[second_version.id].model_version == version
    assert result.results[family].model_version == original
    features = result.feature_collections[second_version.id]["features"]
    assert features and all(f["properties"]["metadata"]["roiseg.model_version"] == version
                            for f in features)

    info = fast.set_default_version(second_version.id)
    assert info.id == family and info.version == version
    assert fast.server_info().default_model_id == family
    assert {m.id: m for m in fast.list_models()}[family].version == version
    assert segment_crop(fast, [], image).results[family].model_version == version
    assert json.loads((dataset_dir / family / "versions.json").read_text())["default"] == version

    def code(call, status, *words):
        error = refused(call)
        assert error.code == status, error
        assert all(word in error.message for word in words), error.message

    code(lambda: fast.retire_version(second_version.id), grpc.StatusCode.FAILED_PRECONDITION,
         "default version")
    code(lambda: fast.retire_version(family), grpc.StatusCode.INVALID_ARGUMENT, "version")
    code(lambda: fast.set_default_version(f"{family}@9.9"), grpc.StatusCode.NOT_FOUND, "9.9")
    code(lambda: fast.set_default_version("nope@1"), grpc.StatusCode.NOT_FOUND, "nope")

    fast.set_default_version(f"{family}@{original}")
    retired = fast.retire_version(second_version.id)
    assert [v.id for v in retired.versions] == [f"{family}@{original}"]
    code(lambda: segment_crop(fast, [second_version.id], image), grpc.StatusCode.NOT_FOUND,
         "retired", f"{family}@{original}")
    code(lambda: fast.set_default_version(second_version.id), grpc.StatusCode.NOT_FOUND,
         "retired")
    assert json.loads((dataset_dir / family / "versions.json").read_text())["retired"] == [
        version]


def test_the_models_command_lists_chooses_and_retires_versions(fast_address, second_version,
                                                                capsys):
    family = second_version.id.partition("@")[0]
    base = ["models", "--server", fast_address]
    assert main(base) == 0
    assert f"  {second_version.id}" in capsys.readouterr().out
    assert main([*base, "--set-default", second_version.id]) == 0
    assert f"* {second_version.id}" in capsys.readouterr().out
    assert main([*base, "--retire", second_version.id]) == 2
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
    assert main(["models", "--retire", second_version.id]) == 2
    assert "--server" in capsys.readouterr().err
    assert main([*base, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["id"] for v in next(m for m in listed if m["id"] == family)["versions"]] == [
        f"{family}@0.4.0", second_version.id]


# ---------------------------------------------------------------------- fine-tuning

ROI_C = box(100, 60, 420, 380)
SHORT = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "crop": 128}


@pytest.fixture(scope="module")
def three_examples(fast_address) -> list[str]:
    """Three corrected ROIs of GlaS images, submitted."""
    with Client(fast_address, max_message_bytes=4 << 20, timeout_s=300) as client:
        ids = []
        for name in ("train_6", "train_7", "train_8"):
            image, mask = glas(name)
            ids.append(submit(client, pixels_of(image), ROI_C, corrections(mask, ROI_C),
                              image_id=f"glas/{name}").example.example_id)
        return ids


def test_fine_tuning_serves_a_new_version_at_once(fast, fast_registry, three_examples,
                                                  dataset_dir, models_dir):
    family = fast_registry.default_id
    start = fast_registry.card(family)
    events: list[pb.FineTuneProgress] = []
    result = fast.fine_tune(pb.FineTuneRequest(model_id=family, example_ids=three_examples,
                                               val_fraction=0.34, **SHORT), events.append)
    stages = [e.stage for e in events]
    assert stages[0] == pb.FINE_TUNE_STAGE_PREPARING
    assert stages.count(pb.FINE_TUNE_STAGE_TRAINING) == 4
    validated = [e for e in events if e.stage == pb.FINE_TUNE_STAGE_VALIDATED]
    assert [(e.epoch, e.step) for e in validated] == [(1, 2), (2, 4)]
    assert all(e.HasField("val_dice") and 0 <= e.val_dice <= 1 for e in validated)
    assert stages[-2:] == [pb.FINE_TUNE_STAGE_EXPORTING, pb.FINE_TUNE_STAGE_REGISTERING]
    # the training's torch thread count does not stay with the threads segmentation starts
    seen: list[int] = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    assert seen == [torch.get_num_threads()]

    version = f"{start.version}-ft1"
    new_id = f"{family}@{version}"
    assert result.model.id == new_id and result.model.version == version
    assert not result.model.is_default_version
    assert sorted(result.example_ids) == sorted(three_examples)
    assert (result.epochs, result.steps, result.stop_reason) == (2, 4, "epochs done")
    assert result.model.fine_tuned_from == f"{family}@{start.version} ({start.sha256})"
    assert "3 corrected ROIs" in result.model.trained_on

    listed = {m.id: m for m in fast.list_models()}[family]
    assert listed.version == start.version  # the default stays until chosen
    assert new_id in [v.id for v in listed.versions]

    image, _ = glas("train_9")
    both = segment_crop(fast, [family, new_id], image)
    assert both.results[new_id].model_version == version
    assert both.results[family].model_version == start.version
    assert both.feature_collections[new_id]["features"]
    assert both.feature_collections[family]["features"]

    written = json.loads((dataset_dir / family / "models" / version / "model.json").read_text())
    assert written["fine_tuned_from"]["examples"] == 3
    # an ensemble stays one: its further members are kept as they were, only its own is tuned
    assert [m["sha256"] for m in written["ensemble"]] == [m.sha256 for m in start.ensemble]
    assert start.ensemble and written["sha256"] != start.sha256
    new_card = fast_registry.card(new_id)
    assert [sha256_file(m.checkpoint) for m in new_card.ensemble] == \
        [m.sha256 for m in start.ensemble]
    assert sorted(written["fine_tuned_from"]["example_ids"]) == sorted(three_examples)
    split = written["training_split"]
    assert sorted(split["training"] + split["held_out"]) == sorted(three_examples)
    assert not list(dataset_dir.glob(".fine-tune-*"))

    # a restarted server serves the fine-tuned version again
    restarted = SegmentationService(
        ModelRegistry([models_dir], select_device("cpu"), family), dataset_dir=dataset_dir)
    assert new_id in [c.id for c, _ in restarted.registry.versions(family)]


def test_a_cancelled_fine_tuning_registers_nothing_and_segmentation_goes_on(
        fast, fast_service, fast_registry, three_examples, dataset_dir):
    family = fast_registry.default_id
    before = [c.id for c, _ in fast_registry.versions(family)]
    call = fast.fine_tune_events(pb.FineTuneRequest(
        model_id=family, example_ids=three_examples, version="never", epochs=100,
        steps_per_epoch=50, batch_size=2, crop=128))
    for event in call:
        if event.progress.stage == pb.FINE_TUNE_STAGE_TRAINING:
            break
    error = refused(lambda: fast.fine_tune(pb.FineTuneRequest(model_id=family, **SHORT)))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "running" in error.message
    image, _ = glas("train_9")
    assert segment_crop(fast, [family], image).feature_collections[family]["features"]
    assert fast_service.fast_track.fine_tuning

    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.CANCELLED
    deadline = time.monotonic() + 60
    while fast_service.fast_track.fine_tuning:
        assert time.monotonic() < deadline, "the training did not stop"
        time.sleep(0.2)
    assert [c.id for c, _ in fast_registry.versions(family)] == before
    assert not (dataset_dir / family / "models" / "never").exists()
    assert not list(dataset_dir.glob(".fine-tune-*"))


def test_fine_tuning_refusals(fast, client, fast_registry, three_examples):
    family = fast_registry.default_id
    version = fast_registry.card(family).version

    def code(request, status, *words, on=fast):
        error = refused(lambda: on.fine_tune(request))
        assert error.code == status, error
        assert all(word in error.message for word in words), error.message

    code(pb.FineTuneRequest(**SHORT), grpc.StatusCode.FAILED_PRECONDITION, "--dataset-dir",
         on=client)
    code(pb.FineTuneRequest(model_id="nope", **SHORT), grpc.StatusCode.NOT_FOUND, "nope")
    code(pb.FineTuneRequest(model_id=family, crop=100), grpc.StatusCode.INVALID_ARGUMENT,
         "crop")
    code(pb.FineTuneRequest(model_id=family, learning_rate=0), grpc.StatusCode.INVALID_ARGUMENT,
         "learning_rate")
    code(pb.FineTuneRequest(model_id=family, version=version), grpc.StatusCode.INVALID_ARGUMENT,
         "already has a version")
    code(pb.FineTuneRequest(model_id=family, version="../escape"),
         grpc.StatusCode.INVALID_ARGUMENT, "version")
    code(pb.FineTuneRequest(model_id=family, example_ids=["0" * 20], **SHORT),
         grpc.StatusCode.NOT_FOUND, "0" * 20)
    code(pb.FineTuneRequest(model_id=family, example_ids=["x"]),
         grpc.StatusCode.INVALID_ARGUMENT, "not an example id")
