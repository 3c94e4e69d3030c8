"""What a `roiseg batch` run is asked to do."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from roiseg.client.connection import ModelSource, ServerAddress
from roiseg.v1 import segmentation_pb2 as pb


@dataclass(frozen=True)
class BatchOptions:
    """A batch's source (a QuPath `project`, or a folder of `images` and an `out` folder),
    the ROIs and models to run, the servers to run them on, and how."""

    project: Path | None = None
    images: Path | None = None
    out: Path | None = None
    #: Only the images whose name this matches.
    image_filter: re.Pattern[str] | None = None
    #: Segment the annotations of these classes, at any level; none: the top-level
    #: annotations not made by roiseg.
    roi_classes: tuple[str, ...] = ()
    #: None: the server's default model.
    model_ids: tuple[str, ...] = ()
    #: Full-resolution µm/px of images that have none in their metadata.
    mpp: float | None = None
    #: The work is spread across these servers; none: in-process, over `models`.
    servers: tuple[ServerAddress, ...] = ()
    #: Run the jobs on Ray actors instead (each over `models`): a cluster's address, or
    #: "auto" (`roiseg.batch.ray_workers.AUTO`); None: not on Ray.
    ray: str | None = None
    #: How many Ray actors; 0: one per GPU of the cluster, else one per CPU core.
    ray_workers: int = 0
    models: ModelSource = ModelSource()
    #: The servers read the image files themselves (always so in-process).
    server_reads_slide: bool = False
    #: Redo ROIs already done, replacing roiseg's objects of the models run.
    replace: bool = False
    #: Show what would be done; segment and write nothing.
    dry_run: bool = False
    #: Default: in OUT, or beside the project (`roiseg.batch.outputs`).
    journal: Path | None = None
    summary: Path | None = None
    segment: pb.SegmentOptions = field(default_factory=pb.SegmentOptions)
