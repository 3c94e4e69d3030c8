"""Several models on the same regions, side by side, scored against a reference (paper 001).

`compare` is ``roiseg compare IMAGE [IMAGE ...] --model A --model B --out DIR``
(`roiseg.cli.compare` parses the options into `CompareOptions`). For each image every model
runs in one Segment request, through the same client path as ``roiseg segment`` (in-process,
or a server). Written to DIR:

- ``<stem>.<model>.geojson`` per image and model (QuPath GeoJSON);
- ``<stem>.compare.png``: one panel per model, plus the reference when given;
- with a reference: ``compare.csv`` (one row per model and image, the metrics of
  ``roiseg evaluate``) and ``compare.md`` (per-model mean and 95 % CI, then every row).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from roiseg.client.connection import ModelSource, ServerAddress, connect
from roiseg.client.requests import (
    ProgressBar,
    catch_all_names,
    overlay_view,
    pixel_size,
    roi_request,
)
from roiseg.errors import InvalidInput, NotFound
from roiseg.evaluation import metrics as ev
from roiseg.evaluation.training_data import (
    EMBEDDED_MODELS_DIR,
    card_trained_on,
    training_data_warnings,
)
from roiseg.io import overlay
from roiseg.io import roi as roi_module
from roiseg.io.classes import class_colors
from roiseg.io.files import write_atomic
from roiseg.io.slides import Slide
from roiseg.v1 import segmentation_pb2 as pb

#: Overlay panel title of the reference.
REFERENCE_TITLE = "reference"
#: Columns of the per-image table in compare.md.
_IMAGE_COLUMNS = ("dsc", "tpr", "tnr", "ppv", "npv", "mcc", "region_dice")
#: Metrics of the per-model table in compare.md.
_MODEL_COLUMNS = ("dsc", "tpr", "ppv", "mcc", "informedness", "markedness", "region_dice")


@dataclass(frozen=True)
class CompareOptions:
    """What `compare` runs, where, and what it scores the models against."""

    images: tuple[Path, ...]
    out: Path
    #: Model ids; none: every model.
    model_ids: tuple[str, ...] = ()
    #: ROI of every image: a GeoJSON's polygons or x, y, w, h; neither: IMAGE.geojson beside
    #: the image when present, else the whole image.
    roi: Path | None = None
    region: ev.Rectangle | None = None
    #: Full-resolution µm/px, supplying or overriding the files'.
    mpp: float | None = None
    #: Reference GeoJSON or mask: a file (one image) or a directory of files named like the
    #: images.
    reference: Path | None = None
    reference_values: Mapping[int, str] | None = None
    class_map: Mapping[str, str] = field(default_factory=dict)
    positive: str | None = None
    mask_downsample: float = 1.0
    #: Full-resolution pixels per evaluation pixel for GeoJSON references; None: the finest
    #: model's resolution.
    downsample: float | None = None
    segment: pb.SegmentOptions = field(default_factory=pb.SegmentOptions)
    #: None: in-process, over `models`.
    server: ServerAddress | None = None
    #: Also where the models' cards (their training split) are looked up, with a server too.
    models: ModelSource = ModelSource(beside_default=True)


@dataclass(frozen=True)
class Comparison:
    """What `compare` wrote; `report` is compare.md when a reference was scored, and
    `warnings` head it."""

    report: str | None
    warnings: tuple[str, ...]
    written: tuple[Path, ...]


@dataclass
class _Job:
    image: Path
    roi_path: Path | None
    reference: Path | None


def compare(options: CompareOptions) -> Comparison:
    """Segments every image with every model and scores them against the references.
    Raises InvalidInput or NotFound for unusable inputs, SegmentationError for refused
    requests."""
    try:
        return _compare(options)
    except OSError as error:
        raise InvalidInput(str(error)) from error


def _compare(options: CompareOptions) -> Comparison:
    jobs = _jobs(options)
    classes = ev.EvalClasses(options.class_map)
    area = ev.evaluation_area(options.roi, options.region)
    references = {job.image: ev.read_annotation(job.reference, options.reference_values,
                                                options.positive, options.mask_downsample,
                                                reference_option="--reference-values")
                  for job in jobs if job.reference}
    cautions = [w for w in [ev.single_class_reference(references.values(), classes)] if w]
    options.out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, ev.ImageResult]] = []
    written: list[Path] = []
    with connect(options.server, options.models) as client:
        models = _chosen_models(client.list_models(), options.model_ids)
        colors = {c.name.lower(): (c.color.r, c.color.g, c.color.b)
                  for m in models.values() for c in m.classes}
        positive = ""  # scored only against references
        if references:
            positive = ev.check_positive(
                options.positive, classes, [c.name for m in models.values() for c in m.classes]
                + [n for a in references.values() for n in a.class_names()])
        target_mpp = min(m.mpp for m in models.values())
        # scored against references class by class: the catch-all classes come back too
        segment = pb.SegmentOptions()
        segment.CopyFrom(options.segment)
        segment.all_classes = True
        outlined = catch_all_names(models.values(), options.segment.class_names)
        for job in jobs:
            reference = references.get(job.image)
            with Slide.open(job.image) as slide:
                geometry = _roi(job, area, slide)
                mpp = pixel_size(job.image.name, slide.mpp, options.mpp)
                request = roi_request(client, job.image, geometry, mpp, list(models),
                                      segment, target_mpp)
                with ProgressBar() as bar:
                    result = client.segment(request, bar.update)
                collections = {m: result.feature_collections[m] for m in models
                               if m in result.feature_collections}
                extent = geometry.intersection(box(0, 0, slide.width, slide.height))
                scored = _Scored()
                if reference is not None:
                    scored = score(job.image.stem, collections, reference, classes, positive,
                                   extent, options.downsample or max(1.0, target_mpp / mpp), mpp)
                    rows += scored.rows
                written += _write_image(options.out, job, slide, geometry, collections,
                                        reference, colors, mpp, scored, positive, outlined)
            for model_id, model_result in result.results.items():
                print(f"{job.image.stem} {model_id}: {model_result.feature_count} polygons at "
                      f"{model_result.execution.mpp_used:.3f} µm/px")
    if not rows:
        return Comparison(None, tuple(cautions), tuple(written))
    # The contract's ModelInfo has the card's trained_on text only: the split is read from
    # the cards in the model directories known here.
    card_dirs = (*options.models.directories, EMBEDDED_MODELS_DIR)
    trained = {m.id: card_trained_on(m.id, m.version, card_dirs) for m in models.values()}
    cautions += training_data_warnings({scored.name: list(trained.values())
                                        for _, scored in rows})
    report = _report(options.out, rows, classes, positive, cautions)
    written += [options.out / "compare.csv", options.out / "compare.md"]
    return Comparison(report, tuple(cautions), tuple(written))


def _chosen_models(available: Sequence[pb.ModelInfo], model_ids: Sequence[str]
                   ) -> dict[str, pb.ModelInfo]:
    """The models `model_ids` names (all when none), by id; NotFound for unknown ids."""
    models = {m.id: m for m in available}
    chosen = list(dict.fromkeys(model_ids)) or list(models)
    unknown = [m for m in chosen if m not in models]
    if unknown:
        raise NotFound(f"unknown model(s) {', '.join(unknown)}; the server has "
                       f"{', '.join(models)}")
    return {m: models[m] for m in chosen}


def _write_image(out: Path, job: _Job, slide: Slide, geometry: BaseGeometry,
                 collections: Mapping[str, dict], reference: ev.Annotation | None,
                 colors: Mapping[str, Sequence[int]], mpp: float, scored: _Scored,
                 positive: str, outlined: frozenset[str]) -> list[Path]:
    """Each model's GeoJSON and the side-by-side sheet (with the reference when given, each
    model's Dice in its title; `outlined` classes drawn as outlines); against a reference, the
    sheet of each model's errors too."""
    stem = job.image.stem
    written = [write_atomic(out / f"{stem}.{model_id}.geojson", json.dumps(collection))
               for model_id, collection in collections.items()]
    dice = {m: result.metrics()["dsc"] for m, result in scored.rows}
    panels = {f"{m}: Dice {ev.fmt(dice[m])}" if m in dice else m: collection
              for m, collection in collections.items()}
    if reference is not None and job.reference is not None:
        title = REFERENCE_TITLE if REFERENCE_TITLE not in panels \
            else f"{REFERENCE_TITLE} ({job.reference.name})"
        panels[title] = reference_collection(reference, geometry, colors)
    view, view_origin, view_downsample = overlay_view(slide, geometry)
    sheet = out / f"{stem}.compare.png"
    overlay.save_png(sheet, overlay.render(view, view_origin, view_downsample, panels, geometry,
                                           mpp=mpp, outlined=outlined))
    written.append(sheet)
    if scored.errors:
        errors = out / f"{stem}.errors.png"
        overlay.save_png(errors, overlay.render_errors(view, view_origin, view_downsample,
                                                       scored.errors, positive, mpp=mpp))
        written.append(errors)
    return written


@dataclass(frozen=True)
class _Scored:
    """The models' results against the reference on one image, and where each model's
    positive class disagrees with it: (false positives, false negatives, placement)."""

    rows: list[tuple[str, ev.ImageResult]] = field(default_factory=list)
    errors: dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]] = \
        field(default_factory=dict)


def score(name: str, collections: Mapping[str, dict], reference: ev.Annotation,
          classes: ev.EvalClasses, positive: str, roi: BaseGeometry,
          downsample: float, mpp: float | None = None) -> _Scored:
    """Every model's FeatureCollection against the reference, inside the ROI: on the reference
    mask's grid, else on a grid at `downsample` over the ROI."""
    grid = _mask_window(reference.mask, roi) if reference.mask is not None \
        else ev.Grid.covering(roi.bounds, downsample)
    valid = grid.roi_mask(roi)
    truth = ev.labels_on_grid(reference, grid, classes)
    preds = {m: ev.labels_on_grid(ev.Annotation(None, features=ev.geojson_features(c)), grid,
                                  classes) for m, c in collections.items()}
    positive_index = classes.index(positive)
    placement = (grid.origin_x, grid.origin_y, grid.downsample, grid.downsample)
    expected = (truth == positive_index) & valid
    return _Scored(
        [(m, ev.evaluate_labels(name, labels, truth, positive_index, len(classes), valid,
                                grid.pixel_area_um2(mpp))) for m, labels in preds.items()],
        {m: ((labels == positive_index) & valid & ~expected,
             expected & (labels != positive_index), placement) for m, labels in preds.items()})


def reference_collection(reference: ev.Annotation, roi: BaseGeometry,
                         colors: Mapping[str, Sequence[int]]) -> dict:
    """The reference as a FeatureCollection to draw (its own class names; colours of the
    models' classes of the same name, else known colours, else a palette). Background is
    not drawn."""
    if reference.mask is not None:
        features = _mask_features(reference.mask, roi)
    else:
        features = [(g, n) for g, n in reference.features if n.lower() != ev.BACKGROUND]
    names = list(dict.fromkeys(n for _, n in features))
    palette = class_colors(names, colors)
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": shapely.geometry.mapping(g),
         "properties": {"classification": {"name": n, "color": list(palette[n])}}}
        for g, n in features]}


def _mask_window(mask: ev.LabelMask, roi: BaseGeometry) -> ev.Grid:
    """The grid of the mask's pixels that covers the ROI."""
    g = mask.grid
    return ev.Grid.covering(roi.bounds, g.downsample, (g.origin_x, g.origin_y))


def _mask_features(mask: ev.LabelMask, roi: BaseGeometry) -> list[tuple[BaseGeometry, str]]:
    from roiseg.engine.postprocess import NO_CLASS
    from roiseg.engine.vectorize import class_regions

    grid = _mask_window(mask, roi)
    names = sorted({n for n in mask.values.values() if n.lower() != ev.BACKGROUND})[:255]
    table = np.full(int(mask.pixels.max()) + 1, NO_CLASS, np.uint8)
    for value, name in mask.values.items():
        if name in names and value < table.size:
            table[value] = names.index(name)
    class_map = ev.cut_to_grid(table[mask.pixels], mask.grid, grid)
    if grid.shape != class_map.shape or class_map.size == 0:
        return []
    inside = ev.cut_to_grid(np.ones(mask.pixels.shape, np.bool_), mask.grid, grid)
    class_map[~inside] = NO_CLASS
    regions = class_regions(class_map, np.zeros(class_map.shape, np.uint8),
                            grid.transform.geometry_to_raster(roi), 0.0)
    return [(grid.transform.geometry_to_full(r.geometry), names[r.class_index])
            for r in regions]


def _jobs(options: CompareOptions) -> list[_Job]:
    images = list(dict.fromkeys(options.images))
    stems = [p.stem for p in images]
    duplicate = sorted({s for s in stems if stems.count(s) > 1})
    if duplicate:
        raise InvalidInput(f"images share the name {duplicate[0]}: their outputs would collide")
    for image in images:
        if not image.is_file():
            raise NotFound(f"{image} is not a file")
    references = _references(images, options.reference)
    jobs = []
    for image in images:
        reference = references.get(image)
        roi_path = options.roi
        if roi_path is None and options.region is None:
            roi_path = next((c for c in (image.with_name(image.name + ".geojson"),
                                         image.with_suffix(".geojson"))
                             if c.is_file() and c != image and (
                                 reference is None or c.resolve() != reference.resolve())),
                            None)
        jobs.append(_Job(image, roi_path, reference))
    return jobs


def _references(images: Sequence[Path], reference: Path | None) -> dict[Path, Path]:
    """Each image's reference: `reference` itself for one image, else its file named like
    the image in the directory `reference` (images without one are not scored)."""
    if reference is None:
        return {}
    if not reference.exists():
        raise NotFound(f"--reference {reference} does not exist")
    if reference.is_file():
        if len(images) > 1:
            raise InvalidInput("--reference is one file but there are several images: give "
                               "a directory of references named like the images")
        return {images[0]: reference}
    found = ev.annotation_files(reference)
    for image in images:
        if image.stem not in found:
            print(f"roiseg compare: no reference for {image.name} in {reference}: not scored",
                  file=sys.stderr)
    return {image: found[image.stem] for image in images if image.stem in found}


def _roi(job: _Job, area: BaseGeometry | None, slide: Slide) -> BaseGeometry:
    """The job's ROI file, else the ROI given for every image, else the whole image."""
    if job.roi_path is not None:
        return roi_module.read_geojson(job.roi_path)
    return area if area is not None else box(0, 0, slide.width, slide.height)


def _report(out: Path, rows: Sequence[tuple[str, ev.ImageResult]], classes: ev.EvalClasses,
            positive: str, cautions: Sequence[str]) -> str:
    """Writes compare.csv (model x image) and compare.md (per model, then per row), headed by
    `cautions`; returns compare.md."""
    csv_rows = [{"model": model, **result.row(classes.names)} for model, result in rows]
    ev.write_csv(out / "compare.csv", csv_rows)
    models = list(dict.fromkeys(model for model, _ in rows))
    labels = {**ev.PIXEL_METRICS, **ev.REGION_METRICS}
    class_names = classes.names[1:]
    header = ["model", "n images"] + [labels[k] for k in _MODEL_COLUMNS] + \
        ["pooled DSC"] + [f"Dice {n}" for n in class_names]
    lines = ["# roiseg compare", "", *(line for c in cautions for line in (f"**{c}**", "")),
             ev.describe(classes, positive, f"{len(models)} model(s), "
                                            f"{len({r.name for _, r in rows})} image(s)"), "",
             "## Per model: mean (95 % CI) over images", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        results = [r for m, r in rows if m == model]
        summary, class_summary = ev.summarize(results, classes.names)
        by_key = {s.key: s for s in summary}
        cells = [model, str(len(results))]
        cells += [_mean_ci(by_key[k]) for k in _MODEL_COLUMNS]
        cells.append(ev.fmt(by_key["dsc"].pooled))
        cells += [_mean_ci(s) for s in class_summary]
        lines.append("| " + " | ".join(cells) + " |")
    header = ["model", "image"] + [labels[k] for k in _IMAGE_COLUMNS] + \
        ["regions matched / missed / false"]
    lines += ["", "## Per model and image", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for model, result in rows:
        m = result.metrics()
        cells = [model, result.name] + [ev.fmt(m[k], k) for k in _IMAGE_COLUMNS]
        cells.append(f"{m['regions_matched']} / {m['regions_missed']} / {m['regions_false']}")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "compare.md").write_text(text, encoding="utf-8")
    return text


def _mean_ci(row: ev.SummaryRow) -> str:
    ci = ev.fmt_ci(row.low, row.high, row.key)
    return ev.fmt(row.mean, row.key) + ("" if ci == "n/a" else f" ({ci})")
