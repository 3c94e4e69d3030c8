"""Segment the "Region" annotations of a QuPath project through a running roiseg server and
add the results as their child annotations: a short paquo script to adapt.

    pip install roiseg paquo     # paquo needs an installed QuPath: set PAQUO_QUPATH_DIR
    roiseg serve &               # on a GPU machine: roiseg serve --host 0.0.0.0 --device cuda
    python examples/batch_paquo.py PROJECT.qpproj [--server HOST:PORT] [--mpp 0.5]

Close the project in QuPath first. Regions that already have roiseg children are skipped.
`roiseg batch PROJECT.qpproj --roi-class Region --server HOST:PORT` does the same with a
journal, resuming, --replace, several servers and a summary CSV.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from paquo.classes import QuPathPathClass
from paquo.images import ImageProvider
from paquo.pathobjects import QuPathPathAnnotationObject
from paquo.projects import QuPathProject
from roiseg.client.connection import Client, encode_png, segment_request
from roiseg.io.qupath_geojson import is_roiseg_object
from roiseg.io.slides import Slide, read_slide_region

ROI_CLASS = "Region"


def metadata(java_object) -> dict:
    """A QuPath object's metadata (QuPath >= 0.5) as a dict."""
    values = java_object.getMetadata()
    return {str(key): str(values.get(key)) for key in values.keySet()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--model", help="model id (default: the server's default model)")
    parser.add_argument("--mpp", type=float, help="µm/px of images without a pixel size")
    args = parser.parse_args()

    with Client(args.server) as client:
        info = client.server_info()
        model = {m.id: m for m in client.list_models()}[args.model or info.default_model_id]
        project = QuPathProject(args.project, mode="r+")
        classes = {pc.name: pc for pc in project.path_classes}
        for entry in project.images:
            regions = [a for a in entry.hierarchy.annotations
                       if a.path_class is not None and a.path_class.name == ROI_CLASS
                       and not any(is_roiseg_object({"metadata": metadata(child)})
                                   for child in a.java_object.getChildObjects())]
            if not regions:
                continue
            with Slide.open(Path(ImageProvider.path_from_uri(entry.uri))) as slide:
                mpp = slide.mpp or args.mpp
                for region in regions:
                    roi = region.roi  # shapely, full-resolution pixels
                    # The client reads the pixels at the model's resolution and sends them.
                    read = read_slide_region(slide, roi.bounds, mpp, model.mpp)
                    source = client.pixels_source(
                        encode_png(read.image), downsample=read.transform.scale_x,
                        origin_x=read.transform.origin_x, origin_y=read.transform.origin_y,
                        pixel_size_um=mpp, image_width=slide.width, image_height=slide.height)
                    result = client.segment(segment_request(roi, source, [model.id]))
                    children = []
                    for feature in result.feature_collections[model.id]["features"]:
                        child = QuPathPathAnnotationObject.from_geojson(feature)
                        for key, value in feature["properties"]["metadata"].items():
                            child.java_object.getMetadata().put(key, value)
                        children.append(child.java_object)
                        name = feature["properties"]["classification"]["name"]
                        color = feature["properties"]["classification"]["color"]
                        classes.setdefault(name, QuPathPathClass(name, color=tuple(color)))
                    region.java_object.addChildObjects(children)
                    areas = ", ".join(f"{a.name} {a.area_um2:,.0f} µm²"
                                      for a in result.results[model.id].class_areas)
                    print(f"{entry.image_name} / {region.name or ROI_CLASS}: {areas}")
            entry.hierarchy.flush()  # one change event: QuPath marks the image as changed
            entry.save()             # skipped by paquo (a warning only) if the image is unreachable
        project.path_classes = list(classes.values())
        project.save(images=False)


if __name__ == "__main__":
    main()
