"""The server's record of what it predicted, kept so that a submitted correction can be
measured against the pre-annotations it corrects (`CorrectionEffort`).

One QuPath GeoJSON FeatureCollection per Segment call, named by the call's run id (the
``roiseg.run_id`` metadata of every feature roiseg returns); the models of a call add their
features to the same file. The oldest records go when the record outgrows `max_bytes`.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from roiseg.io.files import write_atomic

log = logging.getLogger(__name__)

#: Bytes of predictions kept by default; the oldest records go first.
DEFAULT_MAX_BYTES = 2 << 30


class PredictionRecord:
    """Predictions under `root`, one file per run id."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)
        self._bytes = sum(p.stat().st_size for p in root.glob("*.geojson"))

    def _path(self, run_id: str) -> Path | None:
        """The run's file; None for a text that is not a run id (a UUID)."""
        try:
            return self.root / f"{uuid.UUID(run_id)}.geojson"
        except ValueError:
            return None

    def add(self, run_id: str, features: Iterable[Mapping[str, Any]]) -> None:
        """Adds one model's features to the run's record (a failure to write is logged: the
        segmentation itself has succeeded)."""
        path = self._path(run_id)
        if path is None:
            return
        with self._lock:
            try:
                before = path.stat().st_size if path.exists() else 0
                kept = self._features(path) or []
                text = json.dumps({"type": "FeatureCollection",
                                   "features": [*kept, *features]},
                                  separators=(",", ":"), ensure_ascii=False)
                write_atomic(path, text)
                self._bytes += len(text.encode("utf-8")) - before
                self._prune()
            except OSError as error:
                log.warning("could not record the prediction of run %s: %s", run_id, error)

    def features(self, run_ids: Iterable[str]) -> tuple[list[dict[str, Any]], list[str]]:
        """The recorded features of these runs, and the run ids that have no record."""
        found: list[dict[str, Any]] = []
        missing: list[str] = []
        with self._lock:
            for run_id in sorted(set(run_ids)):
                path = self._path(run_id)
                features = self._features(path) if path is not None else None
                if features is None:
                    missing.append(run_id)
                else:
                    found += features
        return found, missing

    @staticmethod
    def _features(path: Path | None) -> list[dict[str, Any]] | None:
        if path is None or not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return list(data["features"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("the prediction record %s is unreadable: %s", path.name, error)
            return None

    def _prune(self) -> None:
        if self._bytes <= self.max_bytes:
            return
        records = sorted(self.root.glob("*.geojson"), key=lambda p: p.stat().st_mtime)
        for path in records[:-1]:  # the newest record stays, however large
            if self._bytes <= self.max_bytes:
                break
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            self._bytes -= size
