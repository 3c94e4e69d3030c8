"""Files written whole or not at all: the data goes to a temporary file beside the target,
reaches the disk, and is then renamed over the target, so neither a reader nor a crash ever
sees half a file (GeoJSON results, overlays, summaries, model cards and checkpoints)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write; renamed over `path` when the
    block ends without an error, removed when it fails. The temporary path is this process's
    and thread's own, so that writers of the same file (the Ray workers of a batch caching a
    model's ONNX export) never rename each other's half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        yield partial
        with open(partial, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Writes `data` (text as UTF-8) to `path` atomically; returns the path."""
    with atomic_path(path) as partial:
        partial.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
