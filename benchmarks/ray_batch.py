"""Benchmark (not a test): `roiseg batch` in-process against `roiseg batch --ray` with 1 and 2
workers, on the same images, on a local Ray cluster of this machine's cores.

    python benchmarks/ray_batch.py [--images 24] [--workers 1 2] [--keep DIR]

For each run: wall time and images/s (whole run, and after the Ray workers have started), the
Ray workers' start (processes, models loaded), the mean time of a job as the driver saw it, and
the driver's CPU time per job (planning, reading back results, writing outputs and journal:
all the driver does besides waiting, Ray's own threads in it included). Then it checks that
every run wrote the same outputs: overlays byte for byte, GeoJSON byte for byte once each
object's random id and the random run id are set aside, journal and summary but for times and
worker names.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from roiseg.batch import ray_workers, runner
from roiseg.batch.options import BatchOptions
from roiseg.client.connection import ModelSource

GLAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "glas-train" / "images"
GLAS_MPP = 0.62
#: Journal fields that differ between two runs of the same job.
RUN_FIELDS = ("time", "seconds", "server")


@dataclass
class Run:
    name: str
    out: Path
    wall_s: float
    start_s: float
    driver_cpu_s: float
    jobs: int
    job_s: float

    def line(self) -> str:
        after = self.jobs / (self.wall_s - self.start_s)
        return (f"{self.name:<14} {self.wall_s:6.1f} s  {self.jobs / self.wall_s:5.2f} images/s  "
                f"(after start {after:5.2f})  start {self.start_s:4.1f} s  job {self.job_s:.2f} s"
                f"  driver CPU {1000 * self.driver_cpu_s / self.jobs:5.0f} ms/job")


def _run(name: str, images: Path, out: Path, ray: str | None, workers: int) -> Run:
    started: list[float] = []
    start_pool = ray_workers.start_pool

    def timed(*args, **kwargs):
        began = time.perf_counter()
        pool = start_pool(*args, **kwargs)
        started.append(time.perf_counter() - began)
        return pool
    ray_workers.start_pool = timed  # type: ignore[assignment]
    options = BatchOptions(images=images, out=out, mpp=GLAS_MPP, ray=ray, ray_workers=workers,
                           models=ModelSource(device="cpu"))
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        result = runner.run(options)
    finally:
        ray_workers.start_pool = start_pool  # type: ignore[assignment]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert result.errors == 0 and result.segmented, result
    records = _journal(out)
    return Run(name, out, wall, sum(started), cpu, result.segmented,
               statistics.mean(r["seconds"] for r in records))


def _journal(out: Path) -> list[dict]:
    return [json.loads(line) for line in
            (out / "roiseg-journal.jsonl").read_text(encoding="utf-8").splitlines()]


def _canonical_geojson(path: Path) -> str:
    collection = json.loads(path.read_text(encoding="utf-8"))
    for feature in collection["features"]:
        feature.pop("id", None)
        feature["properties"]["metadata"].pop("roiseg.run_id", None)
    return json.dumps(collection, ensure_ascii=False)


def _without_run_fields(records: list[dict]) -> list[str]:
    return sorted(json.dumps({k: v for k, v in r.items() if k not in RUN_FIELDS},
                             sort_keys=True) for r in records)


def _check_same(reference: Run, other: Run) -> None:
    """Raises AssertionError unless `other` wrote what `reference` wrote."""
    names = sorted(p.name for p in reference.out.iterdir())
    assert sorted(p.name for p in other.out.iterdir()) == names
    for name in names:
        mine, theirs = reference.out / name, other.out / name
        if name.endswith(".png"):
            assert mine.read_bytes() == theirs.read_bytes(), name
        elif name.endswith(".geojson"):
            assert _canonical_geojson(mine) == _canonical_geojson(theirs), name
    assert _without_run_fields(_journal(reference.out)) == _without_run_fields(_journal(other.out))
    assert _without_run_fields(_summary(reference.out)) == \
        _without_run_fields(_summary(other.out)), "summary"


def _summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="GlaS images to segment")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep", type=Path, help="keep the outputs in this directory")
    args = parser.parse_args()
    import ray

    root = Path(tempfile.mkdtemp(prefix="roiseg-ray-bench-"))
    images = root / "images"
    images.mkdir()
    for path in sorted(GLAS.glob("*.png"))[:args.images]:
        shutil.copy(path, images / path.name)
    began = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    cores = int(ray.cluster_resources()["CPU"])
    print(f"{args.images} GlaS images; local Ray cluster of {cores} cores started in "
          f"{time.perf_counter() - began:.1f} s (not counted below)")
    try:
        plain = _run("plain", images, root / "plain", None, 0)
        runs = [plain] + [_run(f"ray, {n} worker{'s' if n > 1 else ''}", images,
                               root / f"ray-{n}", ray_workers.AUTO, n) for n in args.workers]
    finally:
        ray.shutdown()
    for run in runs:
        print(run.line())
    for run in runs[1:]:
        print(f"{run.name}: {plain.wall_s / run.wall_s:.2f} x the plain run's throughput "
              f"({(plain.wall_s - plain.start_s) / (run.wall_s - run.start_s):.2f} x after "
              "start)")
        _check_same(plain, run)
    print("outputs: the same in every run (overlays byte for byte; GeoJSON but for object "
          "and run ids; journal and summary but for times and worker names)")
    if args.keep:
        shutil.copytree(root, args.keep, dirs_exist_ok=True)
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
