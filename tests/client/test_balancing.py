"""Several servers behind one client target: two real `roiseg serve` processes on loopback, a
client given both; calls are spread, uploads stay with their server, a killed server's calls go
to the other, and a draining server (NOT_SERVING) gets no new calls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from conftest import CMU_MPP, REPO
from grpc_health.v1 import health_pb2, health_pb2_grpc
from roiseg.client.connection import Client, encode_png, pixels_source, segment_request
from roiseg.server.service import SERVICE_NAME
from roiseg.v1 import segmentation_pb2 as pb
from shapely.geometry import box

#: A small tissue window of the CMU slide and an ROI inside it (full-resolution px).
X0, Y0, SIZE = 900, 1200, 128
ROI = box(X0, Y0, X0 + 100, Y0 + 60)
START_S = 240


class Server:
    """`roiseg serve` of this checkout in its own process, its log (with the access log) in a
    file."""

    def __init__(self, log: Path, drain_s: float) -> None:
        self.log = log
        ready = log.with_suffix(".ready")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO / "python_server"), *filter(None, [os.environ.get("PYTHONPATH")])])}
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "roiseg.cli", "serve", "--port", "0", "--device", "cpu",
                 "--threads", "1", "--drain-seconds", str(drain_s), "--ready-file", str(ready)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        self._ready = ready
        self.address = ""

    def wait_ready(self) -> Server:
        end = time.monotonic() + START_S
        while not (self._ready.exists() and self._ready.read_text()):
            assert self.process.poll() is None, f"the server exited:\n{self.log.read_text()}"
            assert time.monotonic() < end, f"the server did not listen:\n{self.log.read_text()}"
            time.sleep(0.1)
        self.address = self._ready.read_text().strip()
        return self

    def segments(self) -> int:
        """Segment calls this server answered, from its access log."""
        return sum(" Segment " in line and line.endswith(" OK")
                   for line in self.log.read_text().splitlines())

    def health(self) -> int:
        """The roiseg service's health status, asked of this server alone."""
        with grpc.insecure_channel(self.address) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10).status

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)


def _servers(tmp_path: Path, drain_s: float) -> list[Server]:
    servers = [Server(tmp_path / f"server{i}.log", drain_s) for i in range(2)]
    try:
        return [s.wait_ready() for s in servers]
    except BaseException:
        for s in servers:
            s.stop()
        raise


def _serving(tmp_path, drain_s: float):
    """Two servers for a test, stopped after it."""
    servers = _servers(tmp_path, drain_s=drain_s)
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture()
def two_servers(tmp_path):
    yield from _serving(tmp_path, drain_s=0)


@pytest.fixture()
def two_draining_servers(tmp_path):
    """Two servers that keep answering calls for 60 s after SIGTERM while NOT_SERVING."""
    yield from _serving(tmp_path, drain_s=60)


@pytest.fixture(scope="module")
def png(cmu_level0) -> bytes:
    return encode_png(cmu_level0[Y0:Y0 + SIZE, X0:X0 + SIZE])


def _source(png: bytes, upload_id: str = "") -> pb.ImageSource:
    return pixels_source(encoded=b"" if upload_id else png, upload_id=upload_id, downsample=1,
                         origin_x=X0, origin_y=Y0, pixel_size_um=CMU_MPP)


def _segment(client: Client, source: pb.ImageSource) -> None:
    result = client.segment(segment_request(ROI, source))
    assert len(result.results) == 1 and next(iter(result.results.values())).feature_count >= 0


def _counts(servers: list[Server]) -> list[int]:
    return [s.segments() for s in servers]


def test_calls_are_spread_uploads_stay_with_their_server_and_a_killed_server_fails_over(
        two_servers, png):
    a, b = two_servers
    with Client(f"{a.address},{b.address}", timeout_s=120) as client:
        for _ in range(4):
            _segment(client, _source(png))
        assert all(n >= 1 for n in _counts(two_servers)), (
            f"4 calls should reach both servers: {_counts(two_servers)}")

        # An uploaded image is segmented by the server that received it, every time.
        before = _counts(two_servers)
        for _ in range(2):
            _segment(client, _source(png, upload_id=client.upload(png)))
        request = segment_request(ROI, _source(png, upload_id=client.upload(png)))
        client.segment(request)
        served = [n - m for n, m in zip(_counts(two_servers), before)]
        assert sorted(served) == [0, 3], f"uploads and their Segment calls: {served}"
        holder, other = (a, b) if served[0] else (b, a)

        # The upload's server dies: the next calls go to the other, the upload sent again.
        holder.process.send_signal(signal.SIGKILL)
        holder.process.wait(30)
        before_other = other.segments()
        client.segment(request)
        assert client.server_info().contract_major == 1
        assert len(client.list_models()) >= 1
        for _ in range(3):
            _segment(client, _source(png))
        assert other.segments() - before_other == 4


def test_a_draining_server_gets_no_new_calls(two_draining_servers, png):
    a, b = two_draining_servers
    with Client(f"{a.address},{b.address}", timeout_s=120) as client:
        for _ in range(2):
            _segment(client, _source(png))
        a.process.send_signal(signal.SIGTERM)
        end = time.monotonic() + 30
        while a.health() != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < end, "SIGTERM should make the server report NOT_SERVING"
            time.sleep(0.1)
        time.sleep(0.5)  # the client's health watch hears it as the check did
        before = _counts(two_draining_servers)
        for _ in range(4):
            _segment(client, _source(png))
        after = _counts(two_draining_servers)
    assert a.process.poll() is None, "a draining server still answers calls"
    assert (after[0] - before[0], after[1] - before[1]) == (0, 4)
