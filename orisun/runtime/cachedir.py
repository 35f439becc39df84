"""A folder of files filled once and kept: the executable's unpacked binaries, the PostgreSQL
tree copied where an unprivileged user can run it.

Each version of the contents has its own entry, ``cache/<name>``, named by a digest of what goes
in. It is filled in a staging folder renamed into place, so an interrupted start, or two nodes
starting together on one data dir, never leave a half-filled entry in use. Entries of other
versions are removed. Everything is readable by every user: as root, Orisun runs PostgreSQL as
an unprivileged one.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from orisun.errors import StartupError

_COMPLETE = ".complete"  # written last: an entry without it is an interrupted fill


def fill_once(cache: Path, name: str, fill: Callable[[Path], None], *, what: str) -> Path:
    """``cache/name``, filled by ``fill(folder)`` unless an earlier start did; ``what`` names the
    contents in the log and in errors (which name ORISUN_DATA_DIR, where caches live)."""
    target = cache / name
    if (target / _COMPLETE).is_file():
        return target
    logger.info("putting {} in {} (once per version)", what, target)
    try:
        cache.mkdir(mode=0o755, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fill-", dir=cache))
    except OSError as exc:
        raise StartupError(f"ORISUN_DATA_DIR: cannot write {cache}: {exc.strerror}") from None
    try:
        fill(staging)
        _readable_by_all(staging)
        (staging / _COMPLETE).touch()
        try:
            staging.rename(target)
        except OSError:
            if not (target / _COMPLETE).is_file():  # not a concurrent start that got there first
                shutil.rmtree(target, ignore_errors=True)  # left by an interrupted fill
                staging.rename(target)
    except OSError as exc:
        raise StartupError(f"ORISUN_DATA_DIR: cannot put {what} in {cache}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in cache.iterdir():
        if old != target and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return target


def _readable_by_all(folder: Path) -> None:
    """Folders 0755; files 0755 when executable by their owner, else 0644; links left alone."""
    folder.chmod(0o755)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & stat.S_IXUSR else 0o644)
