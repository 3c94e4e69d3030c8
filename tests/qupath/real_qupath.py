"""The QuPath installations under test (ROISEG_QUPATH_HOMES) and throw-away QuPath profiles
with the roiseg extension installed: shared by the fixtures and the tests of this folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLIDES = REPO.parent / "shared" / "data" / "slides"
CMU = SLIDES / "cmu_small_region.svs"
HERE = Path(__file__).resolve().parent


def _homes() -> dict[str, Path]:
    text = os.environ.get("ROISEG_QUPATH_HOMES", "")
    homes = dict(item.split("=", 1) for item in text.split() if "=" in item)
    return {version: Path(home) for version, home in homes.items()}


@dataclass
class QuPath:
    """One QuPath installation with a fresh user profile holding the extension jar."""

    version: str
    home: Path
    profile: Path

    @property
    def launcher(self) -> Path:
        return self.home / "bin" / "QuPath"

    def java_options(self, *extra: str) -> str:
        return " ".join(["-Xmx2g", f"-Djava.util.prefs.userRoot={self.profile / 'prefs'}",
                         f"-Duser.home={self.profile / 'home'}", *extra])

    def run(self, args: list[str], *, timeout: float, java_options: tuple[str, ...] = (),
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Runs bin/QuPath with this profile; stdout and stderr together in .stdout."""
        environment = {**os.environ, **(env or {}),
                       "QUPATH_JAVA_OPTS": self.java_options(*java_options)}
        return subprocess.run([str(self.launcher), *args], env=environment, cwd=self.profile,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, check=False)


def versions() -> list[str]:
    """The QuPath versions under test."""
    return sorted(_homes())


def install_profile(version: str, jar: Path, directory: Path) -> QuPath:
    """QuPath `version` with a fresh profile in `directory` whose extensions folder holds the
    jar, as dragging the jar onto QuPath leaves it."""
    home = _homes()[version]
    if not (home / "bin" / "QuPath").is_file():
        raise pytest.UsageError(f"no QuPath {version} at {home}")
    profile = directory / f"qupath-{version}-profile"
    (profile / "user" / "extensions").mkdir(parents=True)
    (profile / "home").mkdir()
    shutil.copy(jar, profile / "user" / "extensions")
    installed = QuPath(version, home, profile)
    user_dir = str(profile / "user")
    result = installed.run(["script", "-c",
                            f'qupath.lib.gui.prefs.PathPrefs.userPathProperty().set("{user_dir}")'],
                           timeout=120)
    assert result.returncode == 0, result.stdout
    return installed


@contextmanager
def roiseg_server(directory: Path) -> Iterator[int]:
    """A real roiseg server (embedded default model, CPU) on 127.0.0.1 that may read the shared
    slides and keeps fast-track examples in DIRECTORY/dataset; yields its port."""
    ready = directory / "ready"
    with open(directory / "server.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "roiseg.cli", "serve", "--port", "0", "--device", "cpu",
             "--slide-root", str(SLIDES), "--dataset-dir", str(directory / "dataset"),
             "--ready-file", str(ready)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not ready.exists() or not ready.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the roiseg server did not start: "
                                   + (directory / "server.log").read_text())
            time.sleep(0.2)
        try:
            yield int(ready.read_text().strip().rsplit(":", 1)[1])
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
