"""Several models on the same regions, side by side, scored against a reference (paper 001).

Mounted by the CLI as ``roiseg compare IMAGE [IMAGE ...] --model A --model B --out DIR``
(`add_arguments` + `run`). For each image every model runs in one Segment request, through
the same client path as ``roiseg segment`` (in-process, or ``--server``). Written to DIR:

- ``<stem>.<model>.geojson`` per image and model (QuPath GeoJSON);
- ``<stem>.compare.png``: one panel per model, plus the reference when given;
- with ``--reference``: ``compare.csv`` (one row per model and image, the metrics of
  ``roiseg evaluate``) and ``compare.md`` (per-model mean and 95 % CI, then every row).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from roiseg.client import requests as commands
from roiseg.client.connection import SegmentationError
from roiseg.errors import RoisegError
from roiseg.evaluation import metrics as ev
from roiseg.io import overlay
from roiseg.io import roi as roi_module
from roiseg.io.classes import class_colors
from roiseg.io.files import write_atomic
from roiseg.io.slides import Slide

#: Overlay panel title of the reference.
REFERENCE_TITLE = "reference"
#: Columns of the per-image table in compare.md.
_IMAGE_COLUMNS = ("dsc", "tpr", "tnr", "ppv", "npv", "mcc", "region_dice")
#: Metrics of the per-model table in compare.md.
_MODEL_COLUMNS = ("dsc", "tpr", "ppv", "mcc", "informedness", "markedness", "region_dice")


@dataclass
class _Job:
    image: Path
    roi_path: Path | None
    reference: Path | None


def run(args: argparse.Namespace) -> int:
    """Compare as ``args`` says; returns the exit status."""
    try:
        return _run(args)
    except (SegmentationError, RoisegError, ValueError, OSError) as error:
        print(f"roiseg: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    jobs = _jobs(args)
    classes = ev.EvalClasses(ev.parse_map(args.map))
    region = ev.region_from_args(args)
    references = {job.image: ev.read_annotation(job.reference, args.reference_values,
                                                args.positive, args.mask_downsample,
                                                reference_option="--reference-values")
                  for job in jobs if job.reference}
    warning = ev.single_class_reference(references.values(), classes)
    if warning:
        print(f"roiseg: {warning}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, ev.ImageResult]] = []
    written: list[Path] = []
    with commands.connect(args) as client:
        models = {m.id: m for m in client.list_models()}
        chosen = list(dict.fromkeys(args.model_ids)) or list(models)
        unknown = [m for m in chosen if m not in models]
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(unknown)}; the server has "
                             f"{', '.join(models)}")
        colors = {c.name.lower(): (c.color.r, c.color.g, c.color.b)
                  for m in chosen for c in models[m].classes}
        if references:
            ev.check_positive(args.positive, classes,
                              [c.name for m in chosen for c in models[m].classes]
                              + [n for a in references.values() for n in a.class_names()])
        target_mpp = min(models[m].mpp for m in chosen)
        for job in jobs:
            with Slide.open(job.image) as slide:
                geometry = _roi(job, region, slide)
                mpp = commands.pixel_size(job.image.name, slide.mpp, args.mpp)
                request = commands.roi_request(client, job.image, geometry, mpp, chosen,
                                               commands.segment_options(args), target_mpp)
                with commands.ProgressBar() as bar:
                    result = client.segment(request, bar.update)
                collections = {m: result.feature_collections[m] for m in chosen
                               if m in result.feature_collections}
                stem = job.image.stem
                for model_id, collection in collections.items():
                    written.append(_write_json(args.out / f"{stem}.{model_id}.geojson",
                                               collection))
                reference = references.get(job.image)
                panels = dict(collections)
                if reference is not None:
                    title = REFERENCE_TITLE if REFERENCE_TITLE not in panels \
                        else f"{REFERENCE_TITLE} ({job.reference.name})"
                    panels[title] = reference_collection(reference, geometry, colors)
                view, view_origin, view_downsample = commands.overlay_view(slide, geometry)
                sheet = args.out / f"{stem}.compare.png"
                overlay.save_png(sheet, overlay.render(view, view_origin, view_downsample,
                                                       panels, geometry))
                written.append(sheet)
                extent = geometry.intersection(box(0, 0, slide.width, slide.height))
            for model_id, model_result in result.results.items():
                print(f"{stem} {model_id}: {model_result.feature_count} polygons at "
                      f"{model_result.execution.mpp_used:.3f} µm/px")
            if reference is not None:
                eval_downsample = args.downsample or max(1.0, target_mpp / mpp)
                rows += score(stem, collections, reference, classes, args.positive, extent,
                              eval_downsample, mpp)
    if rows:
        _report(args.out, rows, classes, args.positive, written, warning)
    print("wrote " + ", ".join(map(str, written)))
    return 0


def score(name: str, collections: Mapping[str, dict], reference: ev.Annotation,
          classes: ev.EvalClasses, positive: str, roi: BaseGeometry,
          downsample: float, mpp: float | None = None) -> list[tuple[str, ev.ImageResult]]:
    """(model, result) for every model's FeatureCollection against the reference, inside
    the ROI: on the reference mask's grid, else on a grid at `downsample` over the ROI."""
    if reference.is_mask:
        g = reference.grid
        grid = ev.Grid.covering(roi.bounds, g.downsample, (g.origin_x, g.origin_y))
    else:
        grid = ev.Grid.covering(roi.bounds, downsample)
    valid = grid.roi_mask(roi)
    truth = ev.labels_on_grid(reference, grid, classes)
    preds = {m: ev.labels_on_grid(ev.Annotation(None, features=ev.geojson_features(c)), grid,
                                  classes) for m, c in collections.items()}
    positive_index = classes.index(positive)
    return [(m, ev.evaluate_labels(name, labels, truth, positive_index, len(classes), valid,
                                   grid.pixel_area_um2(mpp))) for m, labels in preds.items()]


def reference_collection(reference: ev.Annotation, roi: BaseGeometry,
                         colors: Mapping[str, Sequence[int]]) -> dict:
    """The reference as a FeatureCollection to draw (its own class names; colours of the
    models' classes of the same name, else known colours, else a palette). Background is
    not drawn."""
    if reference.is_mask:
        features = _mask_features(reference, roi)
    else:
        features = [(g, n) for g, n in reference.features or []
                    if n.lower() != ev.BACKGROUND]
    names = list(dict.fromkeys(n for _, n in features))
    palette = class_colors(names, colors)
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": shapely.geometry.mapping(g),
         "properties": {"classification": {"name": n, "color": list(palette[n])}}}
        for g, n in features]}


def _mask_features(reference: ev.Annotation, roi: BaseGeometry
                   ) -> list[tuple[BaseGeometry, str]]:
    from roiseg.engine.postprocess import NO_CLASS
    from roiseg.engine.vectorize import class_regions

    g = reference.grid
    grid = ev.Grid.covering(roi.bounds, g.downsample, (g.origin_x, g.origin_y))
    names = sorted({n for n in reference.values.values() if n.lower() != ev.BACKGROUND})[:255]
    table = np.full(int(reference.mask.max()) + 1, NO_CLASS, np.uint8)
    for value, name in reference.values.items():
        if name in names and value < table.size:
            table[value] = names.index(name)
    source = ev.Grid(g.origin_x, g.origin_y, g.downsample, g.width, g.height)
    class_map = ev._window(table[reference.mask], source, grid)
    if grid.shape != class_map.shape or class_map.size == 0:
        return []
    class_map[ev._window(np.ones(reference.mask.shape, bool), source, grid) == 0] = NO_CLASS
    regions = class_regions(class_map, np.zeros(class_map.shape, np.uint8),
                            grid.transform.geometry_to_raster(roi), 0.0)
    return [(grid.transform.geometry_to_full(r.geometry), names[r.class_index])
            for r in regions]


def _jobs(args: argparse.Namespace) -> list[_Job]:
    images = list(dict.fromkeys(args.images))
    stems = [p.stem for p in images]
    duplicate = sorted({s for s in stems if stems.count(s) > 1})
    if duplicate:
        raise ValueError(f"images share the name {duplicate[0]}: their outputs would collide")
    for image in images:
        if not image.is_file():
            raise ValueError(f"{image} is not a file")
    references: dict[Path, Path | None] = {p: None for p in images}
    if args.reference:
        if not args.reference.exists():
            raise ValueError(f"--reference {args.reference} does not exist")
        if args.reference.is_file():
            if len(images) > 1:
                raise ValueError("--reference is one file but there are several images: give "
                                 "a directory of references named like the images")
            references[images[0]] = args.reference
        else:
            found = ev._annotation_files(args.reference)
            for image in images:
                references[image] = found.get(image.stem)
                if references[image] is None:
                    print(f"roiseg compare: no reference for {image.name} in "
                          f"{args.reference}: not scored", file=sys.stderr)
    jobs = []
    for image in images:
        roi_path = args.roi
        if roi_path is None and args.region is None:
            for candidate in (image.with_name(image.name + ".geojson"),
                              image.with_suffix(".geojson")):
                if candidate.is_file() and candidate != image and (
                        references[image] is None
                        or candidate.resolve() != references[image].resolve()):
                    roi_path = candidate
                    break
        jobs.append(_Job(image, roi_path, references[image]))
    return jobs


def _roi(job: _Job, region: BaseGeometry | None, slide: Slide) -> BaseGeometry:
    if region is not None and job.roi_path is None:
        return region
    if job.roi_path is not None:
        return roi_module.read_geojson(job.roi_path)
    return box(0, 0, slide.width, slide.height)


def _write_json(path: Path, data: dict) -> Path:
    return write_atomic(path, json.dumps(data))


def _report(out: Path, rows: Sequence[tuple[str, ev.ImageResult]], classes: ev.EvalClasses,
            positive: str, written: list[Path], warning: str | None = None) -> None:
    """compare.csv (model x image) and compare.md (per model, then per row); prints it.
    `warning` (a single-class reference) heads the report."""
    csv_rows = [{"model": model, **result.row(classes.names)} for model, result in rows]
    ev.write_csv(out / "compare.csv", csv_rows)
    models = list(dict.fromkeys(model for model, _ in rows))
    labels = {**ev.PIXEL_METRICS, **ev.REGION_METRICS}
    class_names = classes.names[1:]
    header = ["model", "n images"] + [labels[k] for k in _MODEL_COLUMNS] + \
        ["pooled DSC"] + [f"Dice {n}" for n in class_names]
    lines = ["# roiseg compare", "", *([f"**{warning}**", ""] if warning else []),
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
    written += [out / "compare.csv", out / "compare.md"]
    print(text)


def _mean_ci(row: ev.SummaryRow) -> str:
    ci = ev.fmt_ci(row.low, row.high, row.key)
    return ev.fmt(row.mean, row.key) + ("" if ci == "n/a" else f" ({ci})")
