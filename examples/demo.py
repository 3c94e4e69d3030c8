"""The README's demo: start a roiseg server on loopback with the embedded default model,
segment a polygon ROI of a real slide through gRPC, write GeoJSON and an overlay, stop.

Run it with `make demo` (which installs roiseg first) or `python examples/demo.py`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLIDE = HERE / "data" / "cmu_small_region.svs"
ROI = HERE / "data" / "demo_roi.geojson"
OUT = HERE.parent / "out"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "address"
        server = subprocess.Popen([sys.executable, "-m", "roiseg.cli", "serve", "--port", "0",
                                   "--ready-file", str(ready)])
        try:
            address = _wait_for(ready, server)
            print(f"server listening on {address}")
            return subprocess.call([
                sys.executable, "-m", "roiseg.cli", "segment", str(SLIDE), "--roi", str(ROI),
                "--server", address, "-o", str(OUT / "demo.geojson"),
                "--overlay", str(OUT / "demo.png"), "--include-background"])
        finally:
            server.terminate()
            server.wait(timeout=30)


def _wait_for(ready: Path, server: subprocess.Popen, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text():
            return ready.read_text()
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        time.sleep(0.2)
    raise SystemExit("the server did not start in time")


if __name__ == "__main__":
    sys.exit(main())
