"""One atomic file writer for every output roiseg writes (roiseg.io.files)."""

from __future__ import annotations

import pytest
from roiseg.io.files import atomic_path, write_atomic


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out" / "result.geojson"
    assert write_atomic(path, '{"type": "FeatureCollection"}') == path
    write_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["result.geojson"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old weights")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as partial:
            partial.write_bytes(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_writers_of_the_same_file_in_several_processes_do_not_collide(tmp_path):
    """As the Ray workers of a batch do, each recording the same cached model's check."""
    import subprocess
    import sys

    path = tmp_path / "record.json"
    code = ("import sys\nfrom roiseg.io.files import write_atomic\n"
            "for _ in range(300):\n    write_atomic(sys.argv[1], sys.argv[2] * 20000)\n")
    writers = [subprocess.Popen([sys.executable, "-c", code, str(path), letter],
                                stderr=subprocess.PIPE, text=True) for letter in "ab"]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    assert path.read_text() in ("a" * 20000, "b" * 20000)
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
