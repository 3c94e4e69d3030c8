"""The server's record of its predictions (for correction effort): per run, bounded in bytes."""

from __future__ import annotations

import json
import os
import uuid

from roiseg.server.predictions import PredictionRecord


def features(count: int, tag: str) -> list[dict]:
    return [{"type": "Feature", "id": f"{tag}-{i}", "geometry": None,
             "properties": {"padding": "x" * 200}} for i in range(count)]


def test_models_of_a_run_add_up_and_unknown_runs_are_named(tmp_path):
    record = PredictionRecord(tmp_path / "p")
    run = str(uuid.uuid4())
    record.add(run, features(2, "a"))
    record.add(run, features(1, "b"))  # a second model of the same call
    found, missing = record.features([run, str(uuid.uuid4()), "not-a-uuid"])
    assert [f["id"] for f in found] == ["a-0", "a-1", "b-0"]
    assert len(missing) == 2 and "not-a-uuid" in missing
    record.add("../escape", features(1, "c"))  # not a run id: nothing written
    assert [p.name for p in (tmp_path / "p").iterdir()] == [f"{run}.geojson"]


def test_the_oldest_runs_go_when_the_record_outgrows_its_budget(tmp_path):
    record = PredictionRecord(tmp_path / "p", max_bytes=20_000)
    runs = [str(uuid.uuid4()) for _ in range(6)]
    for age, run in enumerate(runs):
        record.add(run, features(20, run[:4]))  # ~5 kB each
        path = tmp_path / "p" / f"{run}.geojson"
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    kept = sorted(p.stem for p in (tmp_path / "p").glob("*.geojson"))
    assert sum(p.stat().st_size for p in (tmp_path / "p").glob("*.geojson")) <= 20_000
    assert runs[-1] in kept and runs[0] not in kept and len(kept) < len(runs)
    # a new server over the same directory counts what is there
    again = PredictionRecord(tmp_path / "p", max_bytes=20_000)
    assert again.features([runs[-1]])[1] == []
    assert json.loads((tmp_path / "p" / f"{runs[-1]}.geojson").read_text())["features"]
