"""Measurement (not a test): gland Dice of a model on GlaS images it did not train on,
through the whole server path.

    python benchmarks/glas_heldout.py [--models python_server/roiseg/default_model]
                                      [--val-fraction 0.18] [--seed 0] [--out out/glas-heldout]

The held-out images are `roiseg train`'s validation split (`split_by_image` with the same
fraction and seed). The script runs what a user would run, and prints each command:

1. `roiseg serve` on a free loopback port with `--models`;
2. `roiseg batch --images ../shared/data/glas-train/images --image-filter <held-out names>
   --mpp 0.62 --server ... --all-classes`: each whole image (0.62 µm/px) goes to the server
   as pixels; it resamples to the model's resolution, finds tissue, segments, post-processes
   and returns polygons in image pixels (the rest of the tissue too, which the masks' 0 is);
3. `roiseg evaluate` of those GeoJSON files against the original GlaS masks
   (0 = Other tissue, 255 = Gland epithelium), positive class "Gland epithelium".

Prints the evaluation summary (per-image mean with 95 % CI and pooled over all pixels).
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from roiseg.engine.models import DEFAULT_MODELS_DIR
from roiseg.train.training import split_by_image

REPO = Path(__file__).resolve().parents[1]
GLAS = REPO.parent / "shared" / "data" / "glas-train"
GLAS_MPP = 0.62


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _roiseg(*argv: str) -> list[str]:
    command = [sys.executable, "-m", "roiseg.cli", *argv]
    print("$ roiseg " + " ".join(argv), flush=True)
    return command


def _wait_for(port: int, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"roiseg serve exited with {server.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit("roiseg serve did not start listening in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--val-fraction", type=float, default=0.18)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "glas-heldout")
    args = parser.parse_args()

    names = sorted(p.stem for p in (GLAS / "images").glob("*.png"))
    held_out = sorted(names[i] for i in split_by_image(names, args.val_fraction, args.seed)[1])
    print(f"{len(held_out)} held-out images: {', '.join(held_out)}")
    predictions, references = args.out / "predictions", args.out / "references"
    shutil.rmtree(args.out, ignore_errors=True)
    references.mkdir(parents=True)
    for name in held_out:
        (references / f"{name}.png").symlink_to(GLAS / "masks" / f"{name}.png")

    port = _free_port()
    server = subprocess.Popen(_roiseg("serve", "--port", str(port), "--models", str(args.models),
                                      "--device", args.device),
                              stdout=subprocess.DEVNULL)
    try:
        _wait_for(port, server)
        pattern = "^(" + "|".join(re.escape(n) for n in held_out) + r")\.png$"
        subprocess.run(_roiseg("batch", "--images", str(GLAS / "images"), "--image-filter",
                               pattern, "--mpp", str(GLAS_MPP), "--server", f"127.0.0.1:{port}",
                               "--all-classes", "--out", str(predictions)), check=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    evaluation = args.out / "evaluation"
    subprocess.run(_roiseg("evaluate", str(predictions), str(references), "--positive",
                           "Gland epithelium", "--truth-values",
                           '0="Other tissue",255="Gland epithelium"', "--out", str(evaluation)),
                   check=True)
    print((evaluation / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
