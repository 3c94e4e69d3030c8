"""Soak benchmark (not a test): a `roiseg serve` process under concurrent clients, cancels,
stalled uploads, decompression bombs and malformed requests for a bounded time.

    python benchmarks/soak_server.py [--seconds 60] [--clients 4] [--budget-mb 2500]

Prints the calls made per kind, the unexpected outcomes (a status other than the one a kind
must get; INTERNAL and UNKNOWN are always unexpected), p50/p99 latency of the valid
segmentations and of health checks, and the server's resident memory after warm-up, at the
end and at its peak (VmHWM). Exits 1 when anything was unexpected or the peak exceeds
`--budget-mb`.
"""

from __future__ import annotations

import argparse
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import grpc
import numpy as np
import tifffile
from grpc_health.v1 import health_pb2, health_pb2_grpc
from roiseg.client.connection import encode_png, pixels_source, segment_request
from roiseg.v1 import segmentation_pb2 as pb
from roiseg.v1 import segmentation_pb2_grpc as pb_grpc
from shapely.geometry import box

SLIDE = Path(__file__).resolve().parents[1] / "examples" / "data" / "cmu_small_region.svs"
SLIDE_MPP = 0.499
X0, Y0, SIZE = 900, 1200, 192
S = grpc.StatusCode


def _png_bomb(side: int) -> bytes:
    """A real PNG of side x side black grey pixels: a few hundred KB declaring side² bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    compressor = zlib.compressobj(9)
    rows = b"\0" * (side + 1) * 1000
    body = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0,
                                                                0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


class Soak:
    def __init__(self, address: str, seconds: float) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.SegmentationStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.until = time.monotonic() + seconds
        region = tifffile.imread(SLIDE, series=0, level=0)[Y0:Y0 + SIZE, X0:X0 + SIZE]
        self.pixels = pixels_source(encoded=encode_png(region), downsample=1, origin_x=X0,
                                    origin_y=Y0, pixel_size_um=SLIDE_MPP)
        self.bomb = _png_bomb(12_000)
        self.calls: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()

    def valid(self) -> pb.SegmentRequest:
        return segment_request(box(X0, Y0, X0 + SIZE, Y0 + SIZE), self.pixels)

    def kinds(self) -> dict[str, tuple[set[grpc.StatusCode], object]]:
        """Kind -> (the statuses it may end with, the call)."""
        bad_roi = pb.SegmentRequest(image=self.pixels, roi=pb.Roi(polygons=[pb.Polygon(
            shell=pb.Ring(xy=[X0, Y0, float("nan"), Y0, X0, Y0 + 9]))]))
        bomb = segment_request(box(X0, Y0, X0 + 16, Y0 + 16), pixels_source(
            encoded=self.bomb, downsample=1, origin_x=X0, origin_y=Y0, pixel_size_um=SLIDE_MPP))
        header = pb.UploadImageRequest(header=pb.UploadHeader(total_bytes=1 << 20))
        raw = self.channel.unary_stream("/roiseg.v1.Segmentation/Segment",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)

        def stalled_upload():
            def messages():
                yield header
                time.sleep(random.uniform(0.5, 3))
            self.stub.UploadImage(messages(), timeout=30)

        return {
            "valid segment": ({S.OK, S.RESOURCE_EXHAUSTED},
                              lambda: list(self.stub.Segment(self.valid(), timeout=120))),
            "cancelled segment": ({S.DEADLINE_EXCEEDED, S.OK, S.RESOURCE_EXHAUSTED},
                                  lambda: list(self.stub.Segment(
                                      self.valid(), timeout=random.uniform(0.05, 0.5)))),
            "NaN ROI": ({S.INVALID_ARGUMENT, S.RESOURCE_EXHAUSTED},
                        lambda: list(self.stub.Segment(bad_roi, timeout=30))),
            "PNG bomb": ({S.RESOURCE_EXHAUSTED}, lambda: list(self.stub.Segment(bomb, timeout=30))),
            "not protobuf": ({S.INVALID_ARGUMENT, S.RESOURCE_EXHAUSTED},
                             lambda: list(raw(b"\xff\xff\xff", timeout=30))),
            "stalled upload": ({S.CANCELLED, S.RESOURCE_EXHAUSTED, S.INVALID_ARGUMENT},
                               stalled_upload),
            "5000-character model id": ({S.INVALID_ARGUMENT, S.RESOURCE_EXHAUSTED},
                              lambda: list(self.stub.Segment(segment_request(
                                  box(X0, Y0, X0 + 9, Y0 + 9), self.pixels, ["x" * 5000]),
                                  timeout=30))),
        }

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        kinds = self.kinds()
        names = sorted(kinds)
        while time.monotonic() < self.until:
            name = rng.choice(names)
            allowed, call = kinds[name]
            started = time.monotonic()
            try:
                call()
                code = S.OK
            except grpc.RpcError as error:
                code = error.code()
            elapsed = time.monotonic() - started
            with self.lock:
                self.calls[name] += 1
                if code == S.OK and name == "valid segment":
                    self.latency[name].append(elapsed)
                if code not in allowed or code in (S.INTERNAL, S.UNKNOWN):
                    self.unexpected.append(f"{name}: {code.name}")

    def checker(self) -> None:
        while time.monotonic() < self.until:
            started = time.monotonic()
            try:
                self.health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                self.latency["health"].append(time.monotonic() - started)
            except grpc.RpcError as error:
                with self.lock:
                    self.unexpected.append(f"health: {error.code().name}")
            time.sleep(0.25)


def _memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def _percentile(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.2f} s" if values else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--budget-mb", type=float, default=1500,
                        help="peak resident memory the server may reach")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "address"
        server = subprocess.Popen(
            [sys.executable, "-m", "roiseg.cli", "serve", "--port", "0", "--device", "cpu",
             "--ready-file", str(ready), "--max-upload-mb", "64", "--queued-jobs", "4",
             "--concurrent-uploads", "2", "--upload-idle-seconds", "1",
             "--upload-total-seconds", "10"], stdout=subprocess.DEVNULL)
        try:
            while not ready.exists():
                if server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            soak = Soak(ready.read_text(), args.seconds)
            list(soak.stub.Segment(soak.valid(), timeout=120))  # warm-up
            warm = _memory_mb(server.pid)
            threads = [threading.Thread(target=soak.client, args=(i,))
                       for i in range(args.clients)]
            threads.append(threading.Thread(target=soak.checker))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            end = _memory_mb(server.pid)
            alive = server.poll() is None
        finally:
            server.terminate()
            server.wait(30)
    print(f"{sum(soak.calls.values())} calls in {args.seconds:g} s from {args.clients} clients: "
          + ", ".join(f"{k} {v}" for k, v in sorted(soak.calls.items())))
    print(f"valid segmentations: p50 {_percentile(soak.latency['valid segment'], 50)}, "
          f"p99 {_percentile(soak.latency['valid segment'], 99)}; health checks: p50 "
          f"{_percentile(soak.latency['health'], 50)}, "
          f"p99 {_percentile(soak.latency['health'], 99)}")
    print(f"server RSS: {warm['VmRSS']:.0f} MiB after warm-up, {end['VmRSS']:.0f} MiB at the end "
          f"(+{end['VmRSS'] - warm['VmRSS']:.0f}), peak {end['VmHWM']:.0f} MiB "
          f"(budget {args.budget_mb:g})")
    print(f"unexpected: {len(soak.unexpected)}"
          + "".join(f"\n  {u}" for u, _ in Counter(soak.unexpected).most_common(10)))
    ok = alive and not soak.unexpected and end["VmHWM"] <= args.budget_mb
    print("PASS" if ok else "FAIL" + ("" if alive else " (the server died)"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
