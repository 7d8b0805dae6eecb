"""The worker's cache of ready local files (server/localfile.py SmallFiles): never an old copy,
and no descriptor kept for a file that is gone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pypi_mirror.server import localfile
from pypi_mirror.server.localfile import SMALL_FILE, SmallFiles


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _replace(path: Path, data: bytes) -> None:
    """As sync and the cache manager do: a new file renamed over the old one."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


def _read(local: localfile.LocalFile) -> bytes:
    if local.body is not None:
        return local.body
    return os.pread(local.fd, local.st.st_size, 0)


@pytest.mark.parametrize("size", [100, SMALL_FILE + 1])
def test_a_replaced_file_is_never_served_from_the_old_copy(tmp_path: Path, size: int) -> None:
    files = SmallFiles()
    path = tmp_path / "f.whl"
    path.write_bytes(b"a" * size)
    first = files.open(str(path))
    assert first is not None and _read(first) == b"a" * size
    first.close()
    _replace(path, b"b" * size)
    second = files.open(str(path))
    assert second is not None and _read(second) == b"b" * size
    second.close()


def test_held_descriptors_are_shared_and_closed_once_retired(tmp_path: Path) -> None:
    files = SmallFiles()
    path = tmp_path / "big.whl"
    path.write_bytes(b"x" * (SMALL_FILE + 10))
    before = _open_fds()
    one, two = files.open(str(path)), files.open(str(path))
    assert one is not None and two is not None
    assert one.fd == two.fd  # one descriptor, lent twice
    assert len(_open_fds() - before) == 1
    _replace(path, b"y" * (SMALL_FILE + 10))
    three = files.open(str(path))  # retires the old descriptor: still lent, so still open
    assert three is not None and three.fd != one.fd
    assert _read(one) == b"x" * (SMALL_FILE + 10)  # an answer under way keeps its bytes
    one.close()
    two.close()  # the last user of the retired descriptor: now it closes
    three.close()
    assert len(_open_fds() - before) == 1  # only the current one stays held


def test_a_deleted_file_does_not_keep_its_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localfile, "SWEEP_INTERVAL", 0.0)
    files = SmallFiles()
    before = _open_fds()
    gone = tmp_path / "gone.whl"
    gone.write_bytes(b"g" * (SMALL_FILE + 1))
    local = files.open(str(gone))
    assert local is not None
    local.close()
    gone.unlink()
    other = tmp_path / "other.whl"
    other.write_bytes(b"o" * (SMALL_FILE + 1))
    kept = files.open(str(other))  # holding another one sweeps the deleted file's out
    assert kept is not None
    kept.close()
    assert len(_open_fds() - before) == 1
    assert files.open(str(gone)) is None


def test_held_descriptors_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localfile, "HELD_FILES", 4)
    files = SmallFiles()
    before = _open_fds()
    for i in range(20):
        path = tmp_path / f"f{i}.whl"
        path.write_bytes(b"z" * (SMALL_FILE + 1))
        local = files.open(str(path))
        assert local is not None
        local.close()
    assert len(_open_fds() - before) == 4
