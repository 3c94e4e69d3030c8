"""`roiseg batch --ray` on a real local Ray cluster (2 CPUs), real inference: the same outputs
as a plain run, in folder and project mode; a worker killed mid-job loses nothing; a re-run
resumes; without Ray, a clear error.

The cluster is started once for the module; each run starts its own actors on it (models
loaded in each), as on a cluster the user operates.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import CMU, same_segmentation
from roiseg.batch import ray_workers
from roiseg.io.qupath_project import ROI_MODELS_KEY, load_paquo, roi_key
from shapely.geometry import box
from test_batch import (
    GLAS_MPP,
    GLAS_NAMES,
    REGION_A,
    REGION_B,
    batch,
    check_features,
    glas,
    journal_lines,
    read_csv,
    slide_crop,
    stat,
)

pytestmark = pytest.mark.ray

#: What differs between two runs of the same job in the journal and the summary.
RUN_FIELDS = ("time", "seconds", "server")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs, as `ray start --head --num-cpus 2` makes one."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 << 20,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture()
def pools(monkeypatch) -> list[ray_workers.RayPool]:
    """The Ray pools the runs start, as they start them."""
    started: list[ray_workers.RayPool] = []
    start_pool = ray_workers.start_pool

    def recorded(*args, **kwargs):
        started.append(start_pool(*args, **kwargs))
        return started[-1]
    monkeypatch.setattr(ray_workers, "start_pool", recorded)
    return started


def canonical_geojson(path: Path) -> str:
    """The GeoJSON file as written, without its random object and run ids."""
    return json.dumps(same_segmentation(json.loads(path.read_text(encoding="utf-8"))),
                      ensure_ascii=False)


def without_run_fields(rows: list[dict]) -> list[dict]:
    """Journal records or summary rows without when, how fast and where, in a fixed order."""
    rows = [{k: v for k, v in row.items() if k not in RUN_FIELDS} for row in rows]
    return sorted(rows, key=lambda row: json.dumps(row, sort_keys=True))


def test_ray_folder_mode_writes_what_a_plain_run_writes(ray_cluster, pools, tmp_path, cmu_level0,
                                                       capsys):
    images = tmp_path / "images"
    glas(images, GLAS_NAMES[:3])
    slide_crop(images, cmu_level0)  # two "Region" ROIs in one image
    plain, on_ray = tmp_path / "plain", tmp_path / "ray"
    common = ("--images", images, "--mpp", GLAS_MPP, "--roi-class", "Region", "--device", "cpu")
    assert batch(*common, "--out", plain) == 0
    capsys.readouterr()
    assert batch(*common, "--out", on_ray, "--ray", "--ray-workers", "2") == 0
    printed = capsys.readouterr().out
    assert "5 ROI(s) segmented" in printed, printed
    jobs = re.findall(r"\bray:([01]) (\d+)\b", printed)  # the jobs each worker did
    assert sum(int(n) for _, n in jobs) == 5, printed
    (pool,) = pools
    assert pool.shape == ray_workers.WorkerShape(count=2, gpus=0, cpus=1, threads=1)

    written = sorted(p.name for p in plain.iterdir())
    assert sorted(p.name for p in on_ray.iterdir()) == written
    for name in written:
        if name.endswith(".overlay.png"):
            assert (on_ray / name).read_bytes() == (plain / name).read_bytes(), name
        elif name.endswith(".geojson"):
            check_features(on_ray / name)
            assert canonical_geojson(on_ray / name) == canonical_geojson(plain / name), name
    records = journal_lines(on_ray / "roiseg-journal.jsonl")
    assert without_run_fields(records) == \
        without_run_fields(journal_lines(plain / "roiseg-journal.jsonl"))
    assert {r["server"] for r in records} <= {"ray:0", "ray:1"}
    assert without_run_fields(read_csv(on_ray / "summary.csv")) == \
        without_run_fields(read_csv(plain / "summary.csv"))
    # the crop's two ROIs in the order of its GeoJSON, whichever worker finished first
    assert [r["roi"] for r in records if r["image"] == "cmu_crop.ome.tif"] == \
        [roi_key(REGION_A), roi_key(REGION_B)]


def test_an_interrupted_ray_run_resumes_and_a_rerun_skips_what_is_done(ray_cluster, tmp_path,
                                                                        capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    glas(images)
    journal = out / "roiseg-journal.jsonl"
    common = ("--images", images, "--out", out, "--mpp", GLAS_MPP, "--ray", "--ray-workers", "1")
    # the command in a process of its own, which starts a local Ray cluster for the run;
    # SIGTERM (as Slurm sends at the end of an allocation) stops it resumably
    process = subprocess.Popen([sys.executable, "-m", "roiseg.cli", "batch", *map(str, common)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (journal.exists() and journal.read_text().count("\n") >= 1):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "no image was finished in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Run the same command again to resume" in err
    done = journal_lines(journal)
    assert 1 <= len(done) < len(GLAS_NAMES), "the run ended before it could be stopped"
    first = out / f"{Path(done[0]['image']).stem}.geojson"
    first_stat = stat(first), stat(first.with_suffix(".overlay.png"))

    assert batch(*common) == 0
    assert f"{len(GLAS_NAMES) - len(done)} ROI(s) segmented, {len(done)} skipped" in \
        capsys.readouterr().out
    assert (stat(first), stat(first.with_suffix(".overlay.png"))) == first_stat
    records = journal_lines(journal)
    assert sorted(r["image"] for r in records) == sorted(GLAS_NAMES)  # each exactly once
    assert all(r["status"] == "ok" for r in records)
    assert batch(*common) == 0
    assert f"0 ROI(s) segmented, {len(GLAS_NAMES)} skipped" in capsys.readouterr().out
    assert len(journal_lines(journal)) == len(GLAS_NAMES)


def test_a_ray_worker_killed_mid_job_loses_nothing(ray_cluster, pools, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    names = GLAS_NAMES + ("train_1.png",)
    glas(images, names)
    killed: list[tuple[str, int]] = []

    def kill_a_busy_worker() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            busy = [c for pool in pools for c in pool.clients if c.in_flight and c.pid]
            if busy:
                os.kill(busy[0].pid, signal.SIGKILL)  # the actor's process, mid-job
                killed.append((busy[0].address, busy[0].pid))
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    assert batch("--images", images, "--out", out, "--mpp", GLAS_MPP, "--ray",
                 "--ray-workers", "2") == 0
    killer.join(timeout=5)
    assert killed, "no worker was seen running a job"
    address, pid = killed[0]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    records = journal_lines(out / "roiseg-journal.jsonl")
    assert sorted(r["image"] for r in records) == sorted(names)  # every job, exactly once
    assert all(r["status"] == "ok" for r in records), records
    assert address in {r["server"] for r in records}  # its job was re-run on it, restarted
    for name in names:
        check_features(out / f"{Path(name).stem}.geojson")
    assert sorted(r["image"] for r in read_csv(out / "summary.csv")) == sorted(names)


def _needs_qupath(test):
    return pytest.mark.skipif(not os.environ.get("PAQUO_QUPATH_DIR"),
                              reason="needs an installed QuPath: set PAQUO_QUPATH_DIR "
                                     "(make test does)")(pytest.mark.qupath(test))


def _project(directory: Path, slide: Path) -> Path:
    """A QuPath project of the slide with two "Region" ROIs and one of another class."""
    QuPathProject, QuPathPathClass, _, _ = load_paquo()
    from paquo.images import QuPathImageType

    with QuPathProject(directory, mode="x") as qp:
        entry = qp.add_image(slide, image_type=QuPathImageType.BRIGHTFIELD_H_E)
        for name, class_name, geometry in (("R1", "Region", box(1000, 1200, 1400, 1500)),
                                           ("R2", "Region", box(1200, 1800, 1550, 2100)),
                                           ("O1", "Other", box(100, 100, 300, 300))):
            annotation = entry.hierarchy.add_annotation(
                geometry, path_class=QuPathPathClass(class_name, (0, 0, 180)))
            annotation.name = name
    return directory / "project.qpproj"


def _results(project: Path) -> dict[str, tuple[str, list]]:
    """Per ROI name: its roiseg models metadata and its children (class, geometry in WKT)."""
    QuPathProject, _, _, _ = load_paquo()
    with QuPathProject(project, mode="r") as qp:
        (entry,) = qp.images
        results = {}
        for annotation in entry.hierarchy.annotations:
            java = annotation.java_object
            if java.getParent() is None or java.getParent().isRootObject():
                metadata = java.getMetadata()
                children = sorted(
                    (str(c.getPathClass().getName()), str(c.getROI().getGeometry()))
                    for c in java.getChildObjects())
                results[annotation.name] = (str(metadata.get(ROI_MODELS_KEY)), children)
    return results


@_needs_qupath
def test_ray_project_mode_annotates_as_a_plain_run(ray_cluster, tmp_path):
    slide = tmp_path / "slides" / CMU.name
    slide.parent.mkdir()
    shutil.copy(CMU, slide)
    plain = _project(tmp_path / "plain", slide)
    on_ray = _project(tmp_path / "ray", slide)
    assert batch(plain, "--roi-class", "Region", "--device", "cpu") == 0
    assert batch(on_ray, "--roi-class", "Region", "--ray", "--ray-workers", "2") == 0
    results = _results(on_ray)
    assert results == _results(plain)
    assert results["R1"][1] and results["R2"][1] and results["O1"][1] == []
    journal = journal_lines(on_ray.parent / "roiseg-batch.jsonl")
    assert sorted((r["roi_name"], r["status"]) for r in journal) == [("R1", "ok"), ("R2", "ok")]
    assert {r["server"] for r in journal} <= {"ray:0", "ray:1"}
    assert batch(on_ray, "--roi-class", "Region", "--ray") == 0  # done: nothing to redo
    assert len(journal_lines(on_ray.parent / "roiseg-batch.jsonl")) == 2


def test_without_ray_or_a_cluster_the_error_says_what_to_do(tmp_path, monkeypatch, capsys):
    code = ("import sys, roiseg.batch.runner, roiseg.cli.batch; "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as when not installed
    glas(tmp_path / "images", GLAS_NAMES[:1])
    assert batch("--images", tmp_path / "images", "--out", tmp_path / "out", "--mpp", GLAS_MPP,
                 "--ray") == 2
    assert "pip install 'roiseg[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert batch("--images", tmp_path / "images", "--out", tmp_path / "out", "--ray",
                 "--server", "127.0.0.1:1") == 2
    assert "--ray and --server" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        batch("--images", tmp_path / "images", "--out", tmp_path / "out", "--ray",
              "--ray-workers", "0")
    # with Ray, an address where no cluster is: an error at once (Ray retries for minutes)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    result = subprocess.run([sys.executable, "-m", "roiseg.cli", "batch", "--images",
                             str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--mpp",
                             GLAS_MPP, "--ray", closed], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"cannot reach the Ray cluster at {closed}" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_pool_takes_a_gpu_per_worker_else_shares_out_the_cores():
    plan = ray_workers.plan_workers
    assert plan({"CPU": 64.0, "GPU": 4.0}, 64) == ray_workers.WorkerShape(4, 1, 0, 16)
    assert plan({"CPU": 64.0, "GPU": 4.0}, 64, requested=2) == ray_workers.WorkerShape(2, 1, 0, 16)
    assert plan({"CPU": 2.0}, 2) == ray_workers.WorkerShape(2, 0, 1, 1)
    assert plan({"CPU": 2.0}, 2, requested=1) == ray_workers.WorkerShape(1, 0, 2, 2)
    # at most one node's cores per worker, so that every worker fits on a node
    assert plan({"CPU": 16.0}, 8, requested=1) == ray_workers.WorkerShape(1, 0, 8, 8)
    assert plan({"CPU": 4.0}, 4, requested=2, threads=1) == ray_workers.WorkerShape(2, 0, 2, 1)
