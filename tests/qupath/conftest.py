"""Fixtures for the tests that run the roiseg extension inside real QuPath: the QuPath
installations (laid out from ../shared/qupath), the extension jar, a throw-away QuPath user
profile with the jar in its extensions folder, a real roiseg server on loopback, and an X
display (Xvfb + openbox) for the GUI.

`make test` (qupath_extension/build-qupath-module.sh) runs them with
ROISEG_QUPATH_HOMES="0.5.1=DIR 0.6.0=DIR 0.7.0=DIR" and ROISEG_QUPATH_JAR=JAR; the main test run
leaves this folder out (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from real_qupath import QuPath, install_profile, roiseg_server, versions


def pytest_generate_tests(metafunc):
    if "qupath" in metafunc.fixturenames:
        metafunc.parametrize("qupath", versions(), indirect=True,
                             ids=[f"qupath-{v}" for v in versions()])


@pytest.fixture(scope="session")
def extension_jar() -> Path:
    jar = Path(os.environ.get("ROISEG_QUPATH_JAR", ""))
    if not jar.is_file():
        raise pytest.UsageError("set ROISEG_QUPATH_JAR to the built extension jar "
                                "(make test-qupath does)")
    return jar


@pytest.fixture
def qupath(request, extension_jar, tmp_path) -> QuPath:
    """QuPath of the test's version with the extension installed in a fresh profile."""
    return install_profile(request.param, extension_jar, tmp_path)


@pytest.fixture(scope="session")
def server_port(tmp_path_factory) -> Iterator[int]:
    """A real roiseg server that may read the shared slides and stores corrections
    (--dataset-dir, for the fast-track commands)."""
    with roiseg_server(tmp_path_factory.mktemp("server")) as port:
        yield port


@pytest.fixture(scope="session")
def display() -> str:
    """An X display: Xvfb with the openbox window manager (without one, QuPath's menus close
    as soon as they open)."""
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1600x1000x24",
                             "-nolisten", "tcp"], pass_fds=(write,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    if not number:
        xvfb.kill()
        raise RuntimeError("Xvfb did not start (Debian package xvfb)")
    name = f":{number}"
    openbox = subprocess.Popen(["openbox"], env={**os.environ, "DISPLAY": name},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    yield name
    for process in (openbox, xvfb):
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
