"""The run dir: private scratch space for the children's configuration files, which hold secrets.

Made at start and removed at stop. Named by pid, so that the next start can remove what a
SIGKILLed Orisun left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from loguru import logger

RUN_DIR_PREFIX = "orisun-run-"


def make_run_dir() -> Path:
    """A new run dir for this process (0700), after removing those of Orisun processes now gone."""
    _remove_stale_run_dirs()
    return Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))


def _remove_stale_run_dirs() -> None:
    """Remove this user's run dirs whose Orisun process is gone (killed before it could)."""
    for path in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*-*"):
        pid_text = path.name.removeprefix(RUN_DIR_PREFIX).split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            if path.stat().st_uid != os.geteuid():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            logger.info("removing {}, left by an Orisun process that no longer runs", path)
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue  # alive under another user, or unreadable: not ours to judge
