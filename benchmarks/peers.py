"""Benchmark (not a test): roiseg against the tools its users compare it with, on the same
model and the same region of a real slide.

    python benchmarks/peers.py [--rounds 3] [--no-tiatoolbox] [--out build/peers]

The region: the TCGA frozen section in ../shared/data/slides (level 1, about 1 µm/px: the
file has no calibration, level 0 being a 20x Aperio scan), 2048 x 1536 px around the tissue,
written once as a tiled, losslessly compressed TIFF calibrated at the model's 1 µm/px, so that
every contender reads the same file at the model's resolution. The network: the embedded
default model (both members of its ensemble), built by roiseg's own `load_model` for every
contender, so the weights are identical.

Contenders, run interleaved (a busy machine slows them alike), best of `--rounds` each; the
model is built and warmed up before timing (a server does that once):

(a) roiseg, in process (`pipeline.run`, what `roiseg segment` and the server run), default
    options and runtime (`auto`: ONNX Runtime on the CPU): opens the TIFF, reads the region,
    finds tissue, runs the tiles of the card's plan that hold tissue (overlap blending), post-
    processes and vectorises: file to QuPath polygons.
(b) the script a paper's user writes: tifffile reads the file, 512 px tiles without overlap,
    torch forward pass (batch 1), argmax, stitched into a class map: file to class map, no
    tissue detection, no polygons.
(c) TIAToolbox 2.1.3's SemanticSegmentor (WSI mode: its own reader, tissue mask, patches of
    the card's tile size and stride with its merging of overlaps, class map saved as zarr):
    file to class map on disk, no polygons. It runs in its own virtual environment
    (build/peers-venv: TIAToolbox pins an older torch, so the venv sees this one's torch
    through a .pth file and gets TIAToolbox with --no-deps plus its other dependencies),
    created on first use, in a subprocess.

Prints each contender's seconds and Mpx/s (pixels of the region per second), the ratios, and
the naive script's seams: the share of tissue pixels within 16 px of its tile borders whose
class differs from roiseg's blended class map, against the share elsewhere.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from roiseg.engine import pipeline, postprocess
from roiseg.engine.models import DEFAULT_MODELS_DIR, LoadedModel, ModelRegistry
from roiseg.engine.tiling import plan_tiles
from shapely.geometry import box

REPO = Path(__file__).resolve().parents[1]
SLIDE = REPO.parent / "shared" / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
#: (top, left, height, width) of the region in the slide's level 1.
REGION = (128, 86, 1536, 2048)
VENV = REPO / "build" / "peers-venv"
TIATOOLBOX = "tiatoolbox==2.1.3"
#: TIAToolbox's dependencies that the project's venv lacks (its pins; torch, numpy, opencv,
#: shapely, tifffile ... come from the project's venv).
TIATOOLBOX_DEPS = [
    "umap-learn<0.5.12", "dask>=2026.1.2,<2026.7.1", "zarr>=3.0.8,<3.2.0", "glymur<0.14.8",
    "openslide-python<1.4.6", "openslide-bin<4.0.1.2", "pandas<3.0.3",
    "scikit-image>=0.26.0,<0.26.1", "scikit-learn<1.9", "numba<0.66", "matplotlib<3.11.1",
    "transformers<5.14.1", "pydicom<3.0.2", "wsidicom<0.34", "defusedxml==0.7.1",
    "joblib<1.5.3", "flask<3.1.3", "flask-cors<6.0.5", "bokeh>=3.8.2,<3.9.1",
    "SimpleITK<2.5.5", "aiohttp<3.14.2", "s3fs<2026.6.0", "psutil"]
NAIVE_TILE = 512
SEAM_PX = 16


def write_region(path: Path) -> np.ndarray:
    """The region as (H, W, 3) uint8, written to `path` as a tiled TIFF at 1 µm/px."""
    top, left, height, width = REGION
    with tifffile.TiffFile(SLIDE) as tiff:
        level1 = tiff.series[0].levels[1].asarray()
    region = np.ascontiguousarray(level1[top:top + height, left:left + width])
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, region, tile=(512, 512), photometric="rgb", compression="zlib",
                         resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    return region


# --- (a) roiseg ---------------------------------------------------------------------------

def roiseg_run(registry: ModelRegistry, path: Path, shape: tuple[int, int]
               ) -> pipeline.ModelOutput:
    job = pipeline.Job((registry.default_id,), pipeline.SlideSource(path),
                       box(0, 0, shape[1], shape[0]))
    (output,) = pipeline.run(job, registry, max_roi_pixels=1 << 34, keep_class_map=True)
    return output


# --- (b) the naive script -----------------------------------------------------------------

def naive_script(model: torch.nn.Module, path: Path) -> np.ndarray:
    """What a paper's user writes: read, cut 512 px tiles, forward, argmax, stitch."""
    image = tifffile.imread(path)
    height, width = image.shape[:2]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = np.zeros((height, width), np.uint8)
    with torch.no_grad():
        for y in range(0, height, NAIVE_TILE):
            for x in range(0, width, NAIVE_TILE):
                tile = image[y:y + NAIVE_TILE, x:x + NAIVE_TILE]
                h, w = tile.shape[:2]
                if (h, w) != (NAIVE_TILE, NAIVE_TILE):
                    tile = np.pad(tile, ((0, NAIVE_TILE - h), (0, NAIVE_TILE - w), (0, 0)))
                x_in = torch.from_numpy(tile).permute(2, 0, 1)[None].float() / 255
                logits = model((x_in - mean) / std)
                out[y:y + h, x:x + w] = logits.argmax(1)[0, :h, :w].numpy()
    return out


# --- (c) TIAToolbox -----------------------------------------------------------------------

def tiatoolbox_venv() -> Path:
    """TIAToolbox's virtual environment's python, created on first use."""
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import tiatoolbox.models.engine.semantic_segmentor"]
    if python.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {VENV.relative_to(REPO)} for {TIATOOLBOX} (once; a few minutes): the "
          "project's venv through a .pth file, TIAToolbox --no-deps, its other dependencies",
          flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    here = subprocess.run([sys.executable, "-c",
                           "import site; print(site.getsitepackages()[0])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "project-venv.pth").write_text(here + "\n")
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", TIATOOLBOX], check=True)
    subprocess.run([*pip, *TIATOOLBOX_DEPS], check=True)
    subprocess.run(probe, check=True)
    return python


class TiatoolboxWorker:
    """benchmarks/peers_tiatoolbox.py in TIAToolbox's venv, answering "run" with seconds."""

    def __init__(self, path: Path, tile: int, stride: int, batch: int, out: Path) -> None:
        python = tiatoolbox_venv()
        env = {**__import__("os").environ, "PYTHONPATH": str(REPO / "python_server")}
        self.process = subprocess.Popen(
            [str(python), str(REPO / "benchmarks" / "peers_tiatoolbox.py"), str(path),
             str(tile), str(stride), str(batch), str(out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env)
        self._expect("ready")

    def _ask(self, command: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._expect(None)

    def _expect(self, word: str | None) -> str:
        assert self.process.stdout is not None
        line = "- "
        while line and not line.startswith("= "):  # TIAToolbox logs to stdout too
            line = self.process.stdout.readline()
        line = line.strip()[2:]
        if not line or (word is not None and line != word):
            raise SystemExit(f"the TIAToolbox worker failed (got {line!r}); run "
                             "benchmarks/peers_tiatoolbox.py by hand to see why")
        return line

    def run(self) -> float:
        return float(self._ask("run"))

    def class_map(self) -> np.ndarray:
        return np.load(self._ask("save"))

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait()


# --- comparison ---------------------------------------------------------------------------

def seams(naive: np.ndarray, blended: np.ndarray) -> tuple[float, float]:
    """Shares of roiseg's tissue pixels whose naive class differs from roiseg's: within
    SEAM_PX of the naive script's inner tile borders, and elsewhere."""
    height, width = naive.shape
    near = np.zeros_like(naive, bool)
    for y in range(NAIVE_TILE, height, NAIVE_TILE):
        near[max(0, y - SEAM_PX):y + SEAM_PX] = True
    for x in range(NAIVE_TILE, width, NAIVE_TILE):
        near[:, max(0, x - SEAM_PX):x + SEAM_PX] = True
    tissue = blended != postprocess.NO_CLASS
    differ = naive != blended
    return (float(differ[near & tissue].mean()), float(differ[~near & tissue].mean()))


def best(times: list[float]) -> str:
    return f"best {min(times):.2f} s (all: {', '.join(f'{t:.1f}' for t in times)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-tiatoolbox", action="store_true")
    parser.add_argument("--reduced-precision", action="store_true",
                        help="also time roiseg with --reduced-precision (the card's checked "
                             "bfloat16)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "peers")
    args = parser.parse_args()

    path = args.out / "region.tif"
    region = write_region(path)
    shape = region.shape[:2]
    megapixels = shape[0] * shape[1] / 1e6
    registry = ModelRegistry([DEFAULT_MODELS_DIR], torch.device("cpu"), runtime="auto")
    loaded: LoadedModel = registry.get(registry.default_id)
    card = loaded.card
    network = loaded.module  # the ensemble of both members, as roiseg builds it
    print(f"region: {shape[1]} x {shape[0]} px ({megapixels:.2f} Mpx) of {SLIDE.name} at "
          f"{card.mpp} µm/px; model {card.id} {card.version} "
          f"({1 + len(card.ensemble)} network(s)); torch threads {torch.get_num_threads()}")
    plan = plan_tiles(shape[0], shape[1], card)
    print(f"roiseg: {'ONNX Runtime' if loaded.onnx is not None else 'torch'}, "
          f"{len(plan.ys) * len(plan.xs)} tiles of {plan.tile_w} x {plan.tile_h} px (card: "
          f"{card.tile_size} to {card.max_tile_size or card.tile_size} px), overlap >= "
          f"{card.overlap}, batch {plan.batch_size}", flush=True)

    worker = None
    if not args.no_tiatoolbox:
        worker = TiatoolboxWorker(path, card.tile_size, card.tile_size - card.overlap,
                                  card.batch_size, args.out)
    reduced = ModelRegistry([DEFAULT_MODELS_DIR], torch.device("cpu"), runtime="auto",
                            reduced_precision=True) if args.reduced_precision else None
    roiseg_run(registry, path, shape)  # warm-up
    if reduced is not None:
        roiseg_run(reduced, path, shape)
    naive_script(network, path)
    times: dict[str, list[float]] = {"roiseg": [], "roiseg bf16": [], "naive": [],
                                     "tiatoolbox": []}
    output = naive = None
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        output = roiseg_run(registry, path, shape)
        times["roiseg"].append(time.perf_counter() - t0)
        if reduced is not None:
            t0 = time.perf_counter()
            roiseg_run(reduced, path, shape)
            times["roiseg bf16"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive = naive_script(network, path)
        times["naive"].append(time.perf_counter() - t0)
        if worker is not None:
            times["tiatoolbox"].append(worker.run())
        print("  round:", ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items() if v),
              flush=True)
    assert output is not None and naive is not None

    what = {"roiseg": f"file -> polygons ({output.tiles} tiles with tissue, "
                      f"{len(output.features)} polygons)",
            "roiseg bf16": "the same, --reduced-precision (torch, bfloat16 autocast)",
            "naive": f"file -> class map (512 px tiles, no overlap, torch batch 1, "
                     f"{-(-shape[0] // 512) * -(-shape[1] // 512)} tiles)",
            "tiatoolbox": f"file -> class map in zarr ({card.tile_size} px patches, stride "
                          f"{card.tile_size - card.overlap}, batch {card.batch_size}, torch)"}
    print()
    fastest = {name: min(seconds) for name, seconds in times.items() if seconds}
    for name, seconds in fastest.items():
        print(f"{name:>10}: {seconds:6.2f} s, {megapixels / seconds:5.3f} Mpx/s  "
              f"[{what[name]}; {best(times[name])}]")
    print(f"roiseg / naive script throughput: {fastest['naive'] / fastest['roiseg']:.2f}x "
          "(goal 1.5x)")
    if "roiseg bf16" in fastest:
        print(f"roiseg --reduced-precision / naive script throughput: "
              f"{fastest['naive'] / fastest['roiseg bf16']:.2f}x; / TIAToolbox: "
              f"{fastest.get('tiatoolbox', float('nan')) / fastest['roiseg bf16']:.2f}x")
    if "tiatoolbox" in fastest:
        print(f"roiseg / TIAToolbox throughput: {fastest['tiatoolbox'] / fastest['roiseg']:.2f}x "
              "(goal 3x)")
    near, elsewhere = seams(naive, output.class_map)
    print(f"naive script vs roiseg's blended classes, tissue pixels: {near:.1%} differ within "
          f"{SEAM_PX} px of its tile borders, {elsewhere:.1%} elsewhere")
    if worker is not None:
        tia = worker.class_map()[:shape[0], :shape[1]]
        tissue = output.class_map != postprocess.NO_CLASS
        if tia.shape == shape:
            print(f"TIAToolbox vs roiseg, tissue pixels: "
                  f"{(tia != output.class_map)[tissue].mean():.1%} differ")
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
