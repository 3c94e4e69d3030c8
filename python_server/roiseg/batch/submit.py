"""``roiseg batch PROJECT --submit``: the corrected ROIs of a QuPath project become training
examples on a roiseg server (the fast track, docs/fast-track.md), as Extensions > roiseg >
Submit corrections makes them in QuPath.

For each image and each ROI (chosen as `roiseg batch` chooses them), the ROI's classified
child annotations with an area (roiseg's pre-annotations as corrected, and the pathologist's
own) go to the server with the ROI's pixels, keyed by the image's URI and the ROI's QuPath id:
the keys QuPath's extension uses, so a ROI submitted from either place replaces its example.
The project is opened read-only; the server measures each correction's effort.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from shapely.geometry import mapping

from roiseg.batch.options import BatchOptions
from roiseg.batch.sources import roi_name
from roiseg.client import requests
from roiseg.client.connection import (
    Client,
    InProcessClient,
    SegmentationError,
    connect,
    corrections_request,
    slide_source,
)
from roiseg.errors import FailedPrecondition, InvalidInput
from roiseg.io import qupath_geojson
from roiseg.io.qupath_project import Annotation, Project, ProjectImage, select_rois
from roiseg.io.slides import Slide

log = logging.getLogger("roiseg.batch")


@dataclass(frozen=True)
class SubmitResult:
    """How many ROIs were stored (of them, replacing an earlier example), had nothing to
    submit, or failed."""

    submitted: int
    replaced: int
    empty: int
    errors: int


def submit(options: BatchOptions) -> SubmitResult:
    """Submits every chosen ROI of `options.project` to `options.servers[0]`, printing a line
    and the correction effort per ROI; a ROI that fails is reported and the rest go on."""
    if options.project is None or options.images is not None:
        raise InvalidInput("--submit sends the corrections of a QuPath project: give the "
                           "project, not --images")
    if len(options.servers) != 1:
        raise InvalidInput("--submit needs the one --server that keeps the examples (started "
                           "with --dataset-dir)")
    counts: Counter[str] = Counter()
    with connect(options.servers[0], options.models) as client:
        if not client.server_info().examples_enabled:
            raise FailedPrecondition(f"the server at {options.servers[0].target} does not keep "
                                     "examples: start it with --dataset-dir DIR")
        mpp_of_model = {m.id: m.mpp for m in client.list_models()}
        project = Project(options.project, readonly=True)
        try:
            for image in project.images():
                if options.image_filter is None or options.image_filter.search(image.name):
                    _submit_image(client, project, image, options, mpp_of_model, counts)
                    project.release(image)
        finally:
            project.close()
    return SubmitResult(counts["submitted"], counts["replaced"], counts["empty"],
                        counts["errors"])


def _submit_image(client: Client | InProcessClient, project: Project, image: ProjectImage,
                  options: BatchOptions, mpp_of_model: dict[str, float],
                  counts: Counter[str]) -> None:
    rois = select_rois(project.annotations(image, options.roi_classes), options.roi_classes)
    for roi in rois:
        where = f"{image.name} / {roi_name(roi)}"
        labels = [_feature(c) for c in project.children(roi)
                  if c.class_name and not c.geometry.is_empty]
        if not labels:
            print(f"{where}: no classified annotation inside it, nothing to submit")
            counts["empty"] += 1
            continue
        model_id = options.model_ids[0] if options.model_ids else _made_by(labels)
        try:
            mpp = project.pixel_size_um(image) or options.mpp
            if not mpp:
                raise InvalidInput(f"{image.name} has no pixel size: set it in QuPath or pass "
                                   "--mpp")
            if image.path is None:
                raise InvalidInput(f"{image.name}: its image file ({image.uri}) is not "
                                   "reachable from here")
            if options.server_reads_slide:
                source = slide_source(str(image.path.resolve()), mpp)
            else:
                target = mpp_of_model.get(model_id.partition("@")[0]) or min(
                    mpp_of_model.values())
                with Slide.open(image.path) as slide:
                    source = requests.region_source(client, slide, roi.geometry, mpp, target)
            response = client.submit_corrections(corrections_request(
                roi.geometry, source, json.dumps(qupath_geojson.feature_collection(labels)),
                model_id=model_id, image_id=image.uri or str(image.path),
                roi_key=roi.id or roi.key))
        except (SegmentationError, InvalidInput, OSError) as error:
            print(f"{where}: not submitted: {error}")
            counts["errors"] += 1
            continue
        example = response.example
        counts["submitted"] += 1
        counts["replaced"] += response.replaced
        print(f"{where}: {'replaced' if response.replaced else 'stored'} example "
              f"{example.example_id} of {example.model_id} ({len(labels)} annotation(s))")
        print(requests.effort_text(example.effort))


def _feature(child: Annotation) -> dict[str, Any]:
    """A child annotation as QuPath GeoJSON, with its QuPath id and metadata."""
    feature: dict[str, Any] = {
        "type": "Feature", "geometry": mapping(child.geometry),
        "properties": {"objectType": "annotation", **child.properties}}
    if child.id:
        feature["id"] = child.id
    return feature


def _made_by(labels: list[dict[str, Any]]) -> str:
    """The model that made most of roiseg's objects among the labels; "" (the server's
    default) when none did."""
    models = Counter(f["properties"]["metadata"].get(qupath_geojson.MODEL_ID_KEY)
                     for f in labels
                     if qupath_geojson.is_roiseg_object(f["properties"]))
    models.pop(None, None)
    return models.most_common(1)[0][0] if models else ""
