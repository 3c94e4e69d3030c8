"""`roiseg batch`'s journal, what it has done, and the summary CSV made from it."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from roiseg.io.files import write_atomic

log = logging.getLogger("roiseg.batch")

#: Version of the journal records.
JOURNAL_VERSION = 1
#: Status of a record.
OK, ERROR, NO_ROI = "ok", "error", "no-roi"

_SUMMARY_COLUMNS = ("image", "roi", "roi_name", "roi_class", "model", "model_version", "status",
                    "error", "seconds", "features", "server", "time")


class Journal:
    """The append-only JSON Lines record of what was done, one record per (image, ROI) per
    run, written after the image's outputs. A torn last line (a kill while appending) is
    ignored when read."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: list[dict] = []
        self._done: dict[tuple[str, str], dict[str, str]] = {}
        if self.path.exists():
            skipped = 0
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                if isinstance(record, dict):
                    self._remember(record)
            if skipped:
                log.warning("%s: ignored %d unreadable line(s)", self.path, skipped)

    def done(self, image_id: str, roi: str) -> dict[str, str]:
        """Model id -> version of the models whose latest record for this ROI is ok."""
        return dict(self._done.get((image_id, roi), {}))

    def append(self, records: Sequence[dict]) -> None:
        """Appends `records` and makes them durable (fsync) before returning."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        with open(self.path, "a+b") as file:
            file.seek(0, os.SEEK_END)
            if file.tell():
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":
                    text = b"\n" + text
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        for record in records:
            self._remember(record)

    def _remember(self, record: dict) -> None:
        self.records.append(record)
        roi = record.get("roi")
        if not roi:
            return
        done = self._done.setdefault((str(record.get("image_id")), str(roi)), {})
        for model in record.get("models") or []:
            if record.get("status") == OK:
                done[model["id"]] = model.get("version", "")
            else:
                done.pop(model.get("id"), None)


def summary_rows(records: Iterable[Mapping[str, Any]]) -> tuple[list[dict], list[str]]:
    """The summary's rows (the latest record per image, ROI and model; an image's
    image-level error disappears once one of its ROIs is recorded) and its class names."""
    rows: dict[tuple[str, str, str], dict] = {}
    classes: dict[str, None] = {}
    for record in records:
        image, roi = str(record.get("image_id")), str(record.get("roi") or "")
        if roi:
            rows.pop((image, "", ""), None)
        base = {"image": record.get("image", ""), "roi": roi,
                "roi_name": record.get("roi_name", ""), "roi_class": record.get("roi_class", ""),
                "status": record.get("status", ""), "error": record.get("error", ""),
                "seconds": record.get("seconds", ""), "server": record.get("server", ""),
                "time": record.get("time", "")}
        models = record.get("models") or []
        if not models:
            rows[(image, roi, "")] = {**base, "model": "", "model_version": "", "features": ""}
            continue
        for model in models:
            areas = model.get("areas_um2") or {}
            classes.update(dict.fromkeys(areas))
            rows[(image, roi, model["id"])] = {
                **base, "model": model["id"], "model_version": model.get("version", ""),
                "features": model.get("features", ""),
                **{f"area_um2:{name}": area for name, area in areas.items()}}
    return list(rows.values()), sorted(classes)


def write_summary(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Writes the summary CSV atomically: image, ROI, model, status/error, seconds, and one
    `area_um2:<class>` column per class."""
    rows, classes = summary_rows(records)
    columns = list(_SUMMARY_COLUMNS) + [f"area_um2:{name}" for name in classes]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in row.items()})
    write_atomic(path, text.getvalue().encode("utf-8"))


def utc_now() -> str:
    """The time, UTC, to the second, as the journal and QuPath metadata record it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
