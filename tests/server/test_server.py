"""The gRPC service end to end: a real loopback server, the real default model, real tissue."""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import uuid

import cv2
import grpc
import numpy as np
import pytest
import shapely
import shapely.affinity
from conftest import CMU, CMU_MPP, SLIDES
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from roiseg import CONTRACT_MAJOR
from roiseg.client.connection import (
    Client,
    SegmentationError,
    collect,
    encode_png,
    pixels_source,
    segment_request,
    slide_source,
)
from roiseg.engine.models import sha256_file
from roiseg.errors import Cancelled
from roiseg.io import classes, qupath_geojson
from roiseg.server import service as service_module
from roiseg.server.service import SERVICE_NAME, SegmentationService, create_server
from roiseg.v1 import segmentation_pb2 as pb
from roiseg.v1 import segmentation_pb2_grpc as pb_grpc
from shapely.geometry import Polygon, box, shape

#: A tissue-rich window of the CMU slide (full-resolution px).
X0, Y0, SIZE = 900, 1200, 800


def _pixels(cmu_level0, x0=X0, y0=Y0, size=SIZE, downsample=1):
    region = cmu_level0[y0:y0 + size, x0:x0 + size]
    if downsample != 1:
        n = size // downsample
        region = cv2.resize(region, (n, n), interpolation=cv2.INTER_AREA)
    return pixels_source(encoded=encode_png(region), downsample=downsample, origin_x=x0,
                         origin_y=y0, pixel_size_um=CMU_MPP, image_width=cmu_level0.shape[1],
                         image_height=cmu_level0.shape[0])


def _union(collection: dict, exclude: str | None = None):
    return shapely.union_all([shape(f["geometry"]) for f in collection["features"]
                              if f["properties"]["classification"]["name"] != exclude])


def _by_class(collection: dict) -> dict[str, object]:
    classes: dict[str, list] = {}
    for f in collection["features"]:
        classes.setdefault(f["properties"]["classification"]["name"], []).append(
            shape(f["geometry"]))
    return {name: shapely.union_all(parts) for name, parts in classes.items()}


def _iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


def _segment(client, image, geometry, **options):
    request = segment_request(geometry, image, options.pop("models", ()),
                              pb.SegmentOptions(**options))
    return client.segment(request)


def _only(result):
    assert len(result.feature_collections) == 1
    return next(iter(result.feature_collections.values()))


# ---------------------------------------------------------------------- discovery

def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(reflection.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert SERVICE_NAME == "roiseg.v1.Segmentation" and SERVICE_NAME in names


def test_server_info_and_models(client, registry):
    info = client.server_info()
    assert info.contract_major == CONTRACT_MAJOR
    assert info.default_model_id == registry.default_id
    assert info.slide_paths_allowed
    models = {m.id: m for m in client.list_models()}
    assert set(models) == {registry.default_id, "glas-coarse"}
    default = models[registry.default_id]
    card = registry.card(default.id)
    assert default.checkpoint_sha256 == sha256_file(card.checkpoint)
    assert [c.name for c in default.classes] == ["Other tissue", "Gland epithelium"]
    assert [c.catch_all for c in default.classes] == [True, False]  # the rest of the tissue
    assert all(0 <= v <= 255 for c in default.classes for v in (c.color.r, c.color.g, c.color.b))
    assert default.mpp == pytest.approx(1.0) and default.tile_size % 32 == 0
    assert default.trained_on and default.version


# ---------------------------------------------------------------------- geometry

def test_features_are_qupath_annotations_in_full_resolution(client, cmu_level0, registry):
    geometry = box(X0, Y0, X0 + SIZE, Y0 + SIZE)
    result = _segment(client, _pixels(cmu_level0), geometry, include_background=True,
                      all_classes=True)
    collection = _only(result)
    card = registry.card(registry.default_id)
    colors = {c.name: list(c.color) for c in card.classes}
    colors[classes.BACKGROUND_CLASS] = list(classes.BACKGROUND_COLOR)
    assert collection["features"], "no polygons returned"
    for feature in collection["features"]:
        props = feature["properties"]
        assert props["objectType"] == "annotation" and props["isLocked"] is False
        assert props["classification"]["color"] == colors[props["classification"]["name"]]
        assert props["metadata"][qupath_geojson.MODEL_ID_KEY] == card.id
        assert props["metadata"][qupath_geojson.MODEL_VERSION_KEY] == card.version
        assert props["measurements"][qupath_geojson.AREA_MEASUREMENT] > 0
        assert shape(feature["geometry"]).is_valid
    # classes plus background tile the ROI exactly, in full-resolution coordinates
    union = _union(collection)
    assert union.symmetric_difference(geometry).area < 0.002 * geometry.area
    tissue = _union(collection, exclude=classes.BACKGROUND_CLASS)
    assert 0.2 * geometry.area < tissue.area < geometry.area
    model_result = result.results[card.id]
    assert model_result.feature_count == len(collection["features"])
    assert model_result.execution.source_mpp == pytest.approx(CMU_MPP)
    assert model_result.execution.mpp_used == pytest.approx(1.0, rel=0.01)
    areas = {a.name: a.area_um2 for a in model_result.class_areas}
    assert sum(areas.values()) == pytest.approx(geometry.area * CMU_MPP ** 2, rel=0.01)


def test_every_object_has_its_own_id_and_the_run_it_came_from(client, cmu_level0, registry):
    """Feature-level UUIDs (as QuPath writes them) and one run id per Segment call, so a
    corrected object can be matched to its prediction and re-imports do not duplicate."""
    geometry = box(X0, Y0, X0 + 256, Y0 + 256)
    runs, ids = [], []
    for _ in range(2):
        features = _only(_segment(client, _pixels(cmu_level0), geometry,
                                  include_background=True, all_classes=True))["features"]
        assert features
        assert all(str(uuid.UUID(f["id"])) == f["id"] for f in features)
        ids.append({f["id"] for f in features})
        run_ids = {f["properties"]["metadata"][qupath_geojson.RUN_ID_KEY] for f in features}
        assert len(run_ids) == 1
        runs.append(run_ids.pop())
        assert len(ids[-1]) == len(features)
    assert runs[0] != runs[1] and not ids[0] & ids[1]


def test_confidence_map_and_review_flags_show_where_the_model_is_unsure(client, cmu_level0):
    """The map is 255 - the class probability inside the ROI (0 outside), placed on the ROI's
    box; objects under the review threshold carry the flag and a name suffix."""
    from roiseg.client.requests import confidence_raster
    from roiseg.engine.pipeline import REVIEW_KEY, REVIEW_SUFFIX
    roi = Polygon([(X0, Y0), (X0 + 400, Y0), (X0, Y0 + 400)])  # a triangle: half its box
    result = _segment(client, _pixels(cmu_level0), roi, confidence_map=True, review_below=0.9)
    model_result = next(iter(result.results.values()))
    unsure, (x0, y0, dx, dy) = confidence_raster(model_result.confidence)
    assert (x0, y0) == pytest.approx((X0, Y0), abs=1) and dx == pytest.approx(dy)
    assert unsure.shape[1] * dx == pytest.approx(400, rel=0.02)
    rows, cols = np.indices(unsure.shape)
    local = (cols + 0.5) * dx + x0 - X0 + (rows + 0.5) * dy + y0 - Y0  # x + y from the corner
    assert unsure[local < 400 - 2 * dx].max() > 0  # somewhere inside it is unsure
    assert unsure[local > 400 + 2 * dx].max() == 0  # outside the triangle: nothing
    features = _only(result)["features"]
    probability = {f["id"]: f["properties"]["measurements"][qupath_geojson.PROBABILITY_MEASUREMENT]
                   for f in features}
    flagged = {f["id"] for f in features if REVIEW_KEY in f["properties"]["metadata"]}
    assert flagged == {i for i, p in probability.items() if p < 0.9}
    for feature in features:
        name = feature["properties"].get("name")
        assert (name == feature["properties"]["classification"]["name"] + REVIEW_SUFFIX) \
            == (feature["id"] in flagged)
    plain = _segment(client, _pixels(cmu_level0), roi)
    assert not next(iter(plain.results.values())).HasField("confidence")
    assert not any("name" in f["properties"] for f in _only(plain)["features"])


def test_every_call_leaves_an_access_log_line(client, cmu_level0, caplog):
    caplog.set_level(logging.INFO, logger="roiseg.access")
    _segment(client, _pixels(cmu_level0, size=128), box(X0, Y0, X0 + 100, Y0 + 60))
    with pytest.raises(SegmentationError):
        _segment(client, _pixels(cmu_level0, size=128), box(X0, Y0, X0 + 100, Y0 + 60),
                 models=["nope"])
    lines = [r.getMessage() for r in caplog.records if r.name == "roiseg.access"]
    assert re.search(r"ipv4:127\.0\.0\.1:\d+ Segment models default ROI 100x60 px "
                     r"[\d.]+ s OK$", lines[-2]), lines
    assert re.search(r"Segment models 'nope' ROI 100x60 px [\d.]+ s NOT_FOUND$", lines[-1])


def test_origin_and_downsample_map_to_the_same_place(client, cmu_level0):
    """Pixels at downsample 2 with a non-zero origin, and the server reading the slide
    itself, give the same classes in the same full-resolution places."""
    geometry = box(X0 + 50, Y0 + 50, X0 + SIZE - 50, Y0 + SIZE - 50)
    at_1 = _by_class(_only(_segment(client, _pixels(cmu_level0), geometry,
                                    include_background=True, all_classes=True)))
    at_2 = _by_class(_only(_segment(client, _pixels(cmu_level0, downsample=2), geometry,
                                    include_background=True, all_classes=True)))
    by_server = _by_class(_only(_segment(client, slide_source(str(CMU)), geometry,
                                         include_background=True, all_classes=True)))
    for other in (at_2, by_server):
        for name in ("Other tissue", classes.BACKGROUND_CLASS):
            assert _iou(at_1[name], other[name]) > 0.85, name
    # a shifted copy of the same pixels must not agree as well: the origin matters
    other_1, other_2 = at_1["Other tissue"], at_2["Other tissue"]
    shifted = shapely.affinity.translate(other_1, 120, 0)
    assert _iou(shifted, other_2) < _iou(other_1, other_2) - 0.1


def test_holes_and_non_rectangular_roi_clip_results(client, cmu_level0):
    shell = [(X0, Y0), (X0 + SIZE, Y0 + 100), (X0 + 400, Y0 + SIZE)]
    hole = [(X0 + 300, Y0 + 250), (X0 + 450, Y0 + 250), (X0 + 450, Y0 + 400),
            (X0 + 300, Y0 + 400)]
    geometry = Polygon(shell, [hole])
    collection = _only(_segment(client, _pixels(cmu_level0), geometry, include_background=True,
                                all_classes=True))
    for feature in collection["features"]:
        assert geometry.buffer(1e-3).contains(shape(feature["geometry"]))  # 1e-3 px rounding
    union = _union(collection)
    assert union.symmetric_difference(geometry).area < 0.005 * geometry.area
    assert union.intersection(Polygon(hole)).area < 1.0
    assert any(len(part.interiors) for part in shapely.get_parts(union)), "hole lost"


def test_multi_model_side_by_side(client, cmu_level0, registry):
    geometry = box(X0, Y0, X0 + SIZE, Y0 + SIZE)
    result = _segment(client, _pixels(cmu_level0), geometry,
                      models=[registry.default_id, "glas-coarse"])
    assert set(result.feature_collections) == {registry.default_id, "glas-coarse"}
    assert result.results["glas-coarse"].execution.mpp_used == pytest.approx(2.0, rel=0.01)
    assert result.results[registry.default_id].execution.mpp_used == pytest.approx(1.0, rel=0.01)
    for model_id, collection in result.feature_collections.items():
        ids = {f["properties"]["metadata"][qupath_geojson.MODEL_ID_KEY]
               for f in collection["features"]}
        assert ids == {model_id}


def _names(collection: dict) -> set[str]:
    return {f["properties"]["classification"]["name"] for f in collection["features"]}


def test_the_catch_all_class_comes_back_only_when_asked_for(client, cmu_level0):
    """The default model's "Other tissue" (its catch-all: all that is not gland) is left out
    by default; all_classes, or naming it, brings it back; a client of contract 1.3 (which
    knows no catch-all) still gets every class."""
    geometry = box(X0, Y0, X0 + SIZE, Y0 + SIZE)
    glands = _only(_segment(client, _pixels(cmu_level0), geometry))
    assert _names(glands) == {"Gland epithelium"}
    every = _only(_segment(client, _pixels(cmu_level0), geometry, all_classes=True))
    assert _names(every) == {"Other tissue", "Gland epithelium"}
    assert _by_class(every)["Gland epithelium"].symmetric_difference(
        _by_class(glands)["Gland epithelium"]).area < 1.0  # the same glands
    assert _by_class(every)["Other tissue"].area > 0.3 * geometry.area  # most of this tissue
    other_only = _only(_segment(client, _pixels(cmu_level0), geometry, classes=["Other tissue"]))
    assert _names(other_only) == {"Other tissue"}
    # renamed: still the catch-all, still left out unless asked for
    renamed = _only(_segment(client, _pixels(cmu_level0), geometry, all_classes=True,
                             class_names={"Other tissue": "Stroma"}))
    assert _names(renamed) == {"Stroma", "Gland epithelium"}
    older = segment_request(geometry, _pixels(cmu_level0), (), pb.SegmentOptions())
    older.client_contract_minor = 3
    assert _names(_only(client.segment(older))) == {"Other tissue", "Gland epithelium"}


def test_class_subset_and_min_area(client, cmu_level0):
    geometry = box(X0, Y0, X0 + SIZE, Y0 + SIZE)
    everything = _only(_segment(client, _pixels(cmu_level0), geometry, all_classes=True))
    min_area = 2000.0
    filtered = _only(_segment(client, _pixels(cmu_level0), geometry, min_area_um2=min_area))
    areas = [f["properties"]["measurements"][qupath_geojson.AREA_MEASUREMENT]
             for f in everything["features"]]
    assert min(areas) < min_area, "the test region needs small objects"
    assert len(filtered["features"]) < len(everything["features"])


def test_uncalibrated_slide_needs_a_pixel_size(client):
    tcga = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"
    geometry = box(1000, 1000, 1600, 1600)
    with pytest.raises(SegmentationError) as refused:
        _segment(client, slide_source(str(tcga)), geometry)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "pixel size" in refused.value.message
    collection = _only(_segment(client, slide_source(str(tcga), pixel_size_um=0.5), geometry))
    assert collection["features"]


# ---------------------------------------------------------------------- size and streaming

def test_large_image_is_uploaded_in_chunks_and_results_streamed(client, cmu_level0, monkeypatch):
    """A whole slide level as PNG (> 4 MB) goes through UploadImage to a server and client
    limited to 4 MB messages; the GeoJSON comes back in several chunks."""
    monkeypatch.setattr(service_module, "GEOJSON_CHUNK_BYTES", 16 << 10)
    encoded = encode_png(cmu_level0)
    assert len(encoded) > 4 << 20
    height, width = cmu_level0.shape[:2]
    source = client.pixels_source(encoded, downsample=1, origin_x=0, origin_y=0,
                                  pixel_size_um=CMU_MPP)
    assert source.pixels.upload_id, "a > 4 MB image must be uploaded"
    geometry = box(0, 0, width, height)
    events = list(pb_grpc.SegmentationStub(client._channel).Segment(
        segment_request(geometry, source, (), pb.SegmentOptions(include_background=True,
                                                                all_classes=True))))
    chunks = [e for e in events if e.WhichOneof("event") == "geojson_chunk"]
    assert len(chunks) > 2
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    tiles = [p for p in progress if p.stage == pb.STAGE_INFERENCE and p.tiles_total]
    assert tiles and tiles[-1].tiles_done == tiles[-1].tiles_total > 1
    collection = next(iter(collect(events).feature_collections.values()))
    assert _union(collection).symmetric_difference(geometry).area < 0.002 * geometry.area


def test_too_large_roi_and_upload_are_refused(client, cmu_level0):
    with pytest.raises(SegmentationError) as refused:
        _segment(client, slide_source(str(CMU), pixel_size_um=10), box(0, 0, 2220, 2967))
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "megapixels" in refused.value.message
    with pytest.raises(SegmentationError) as refused:
        client.upload(b"\0" * ((64 << 20) + 1))
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


# ---------------------------------------------------------------------- errors

BAD_REQUESTS = {
    "unknown model": (grpc.StatusCode.NOT_FOUND, "unknown model",
                      lambda px: segment_request(box(X0, Y0, X0 + 64, Y0 + 64), px, ["nope"])),
    "malformed image": (grpc.StatusCode.INVALID_ARGUMENT, "decoded",
                        lambda px: segment_request(box(X0, Y0, X0 + 64, Y0 + 64), pixels_source(
                            encoded=b"not an image", downsample=1, origin_x=X0, origin_y=Y0,
                            pixel_size_um=CMU_MPP))),
    "empty ROI": (grpc.StatusCode.INVALID_ARGUMENT, "ROI is empty",
                  lambda px: pb.SegmentRequest(image=px)),
    "degenerate ROI": (grpc.StatusCode.INVALID_ARGUMENT, "ROI",
                       lambda px: pb.SegmentRequest(image=px, roi=pb.Roi(polygons=[pb.Polygon(
                           shell=pb.Ring(xy=[X0, Y0, X0 + 10, Y0 + 10, X0 + 20, Y0 + 20]))]))),
    "ROI outside the image": (grpc.StatusCode.INVALID_ARGUMENT, "outside",
                              lambda px: segment_request(box(9000, 9000, 9100, 9100), px)),
    "missing pixel size": (grpc.StatusCode.INVALID_ARGUMENT, "pixel size",
                           lambda px: segment_request(box(X0, Y0, X0 + 64, Y0 + 64),
                                                      pixels_source(encoded=px.pixels.encoded,
                                                                    downsample=1, origin_x=X0,
                                                                    origin_y=Y0,
                                                                    pixel_size_um=0))),
    "no image": (grpc.StatusCode.INVALID_ARGUMENT, "no image",
                 lambda px: segment_request(box(X0, Y0, X0 + 64, Y0 + 64), pb.ImageSource())),
    "unknown class": (grpc.StatusCode.INVALID_ARGUMENT, "unknown class",
                      lambda px: segment_request(box(X0, Y0, X0 + 64, Y0 + 64), px, (),
                                                 pb.SegmentOptions(classes=["Tumour"]))),
    "hysteresis without tumour class": (
        grpc.StatusCode.INVALID_ARGUMENT, "tumour class",
        lambda px: segment_request(box(X0, Y0, X0 + 64, Y0 + 64), px, (), pb.SegmentOptions(
            hysteresis=pb.Hysteresis(enabled=True)))),
    "slide outside the allowed roots": (
        grpc.StatusCode.PERMISSION_DENIED, "outside the directories",
        lambda px: segment_request(box(0, 0, 64, 64), slide_source("/etc/passwd"))),
    "missing slide": (grpc.StatusCode.NOT_FOUND, "does not exist",
                      lambda px: segment_request(box(0, 0, 64, 64),
                                                 slide_source(str(SLIDES / "missing.svs")))),
    "newer client": (grpc.StatusCode.FAILED_PRECONDITION, "update the server",
                     lambda px: pb.SegmentRequest(image=px, client_contract_major=2,
                                                  roi=segment_request(box(X0, Y0, X0 + 64,
                                                                          Y0 + 64), px).roi)),
    "upsampling": (grpc.StatusCode.INVALID_ARGUMENT, "upsampling",
                   lambda px: segment_request(box(X0, Y0, X0 + 64, Y0 + 64), pixels_source(
                       encoded=px.pixels.encoded, downsample=4, origin_x=X0, origin_y=Y0,
                       pixel_size_um=CMU_MPP))),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_a_clear_status_and_the_server_keeps_serving(case, client, cmu_level0):
    code, words, build = BAD_REQUESTS[case]
    pixels = _pixels(cmu_level0, size=128)
    with pytest.raises(SegmentationError) as refused:
        client.segment(build(pixels))
    assert refused.value.code == code, refused.value.message
    assert words in refused.value.message
    geometry = box(X0, Y0, X0 + 128, Y0 + 128)
    assert _only(_segment(client, pixels, geometry, all_classes=True))["features"]


def test_cancel_stops_the_work_and_the_server_keeps_serving(address, service, cmu_level0):
    stub = pb_grpc.SegmentationStub(grpc.insecure_channel(address))
    source = slide_source(str(CMU))
    call = stub.Segment(segment_request(box(0, 0, 2220, 2967), source))
    seen = []
    for event in call:
        if event.WhichOneof("event") == "progress" and event.progress.stage == pb.STAGE_INFERENCE \
                and event.progress.tiles_total:
            seen.append(event.progress)
            call.cancel()
            break
    assert seen and seen[0].tiles_done < seen[0].tiles_total
    with pytest.raises(grpc.RpcError) as ended:
        for _ in call:
            pass
    assert ended.value.code() == grpc.StatusCode.CANCELLED
    # the job slot is released once the cancelled work stops (well before it could finish)
    released = threading.Event()

    def wait_for_slot():
        if service._jobs.acquire(timeout=60):
            service._jobs.release()
            released.set()
    waiter = threading.Thread(target=wait_for_slot)
    waiter.start()
    waiter.join()
    assert released.is_set()
    with Client(address) as client:
        assert _only(_segment(client, _pixels(cmu_level0, size=128),
                              box(X0, Y0, X0 + 128, Y0 + 128), all_classes=True))["features"]


def test_cancelled_job_processes_fewer_tiles(service):
    """should_stop is honoured between tile batches, not only at the end."""
    request = segment_request(box(0, 0, 2220, 2967), slide_source(str(CMU)))
    tiles = []

    def stop() -> bool:
        return len(tiles) >= 1

    with pytest.raises(Cancelled):
        for event in service.segment_events(request, stop):
            p = event.progress
            if p.stage == pb.STAGE_INFERENCE and p.tiles_total:
                tiles.append((p.tiles_done, p.tiles_total))
    assert tiles and tiles[-1][0] < tiles[-1][1]


def test_tls_and_bearer_token(registry, tmp_path):
    """A server started with a certificate and a token refuses calls without the token
    (UNAUTHENTICATED) and answers a TLS client that sends it."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server, port = create_server(SegmentationService(registry), "127.0.0.1:0",
                                 tls=(cert.read_bytes(), key.read_bytes()), token="s3cret")
    server.start()
    try:
        target = f"localhost:{port}"
        with Client(target, root_certificates=cert.read_bytes(), token="s3cret") as good:
            assert good.server_info().contract_major == CONTRACT_MAJOR
        for token in (None, "wrong"):
            with Client(target, root_certificates=cert.read_bytes(), token=token) as bad:
                with pytest.raises(SegmentationError) as refused:
                    bad.list_models()
                assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
                assert "token" in refused.value.message
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(cert.read_bytes())) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            assert health.Check(health_pb2.HealthCheckRequest()).status == \
                health_pb2.HealthCheckResponse.SERVING
        with Client(target, token="s3cret") as plaintext, pytest.raises(SegmentationError):
            plaintext.server_info()
    finally:
        server.stop(None)
