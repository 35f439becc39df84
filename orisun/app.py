"""The Orisun server's lifecycle: start its parts in order, run, stop them in reverse.

Start-up order is NATS → PostgreSQL → migrations → users → gRPC, so that nothing serves before
what it depends on is up. ``stop`` undoes whatever was started, also after a failed start. A
child process that dies for good (``fatal``) stops the whole server with exit status 1: Orisun
never keeps serving half-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import shutil
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

from loguru import logger
from nats.aio.client import Client as NatsClient

from orisun import __version__, tls
from orisun.aio import cancel_and_wait
from orisun.config import DEFAULT_ADMIN_PASSWORD, Settings
from orisun.dashboard import Dashboard
from orisun.errors import ConfigError, StartupError
from orisun.messaging.feed import FeedPublisher
from orisun.messaging.pubsub import PubSub
from orisun.model import Event
from orisun.runtime.bundle import unpack_bundled_binaries
from orisun.runtime.nats_server import ClusterOptions, EmbeddedNats, NatsServerOptions, find_nats_server
from orisun.runtime.postgres import EmbeddedPostgres, find_postgres_bindir
from orisun.service.events import EventStore
from orisun.service.feed import LiveFeed
from orisun.service.monitor import Monitor
from orisun.service.pubsub import PubSubService
from orisun.service.subscriptions import Subscriptions
from orisun.service.users import Users
from orisun.storage.database import Database, describe
from orisun.storage.locks import SessionLocks
from orisun.storage.migrations import migrate
from orisun.storage.notifications import listen
from orisun.storage.users import UserStore, listen_for_user_changes
from orisun.transport.server import GrpcServer

# At most this many committed events are republished to a live feed that lost its store (the rest
# is read from PostgreSQL by whoever needs it).
MAX_FEED_BACKLOG = 10_000
# PostgreSQL's channel for "a boundary's head moved" (notified by append_events, at commit).
APPENDED_CHANNEL = "orisun_appended"


RUN_DIR_PREFIX = "orisun-run-"


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


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Orisun:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.exit_code = 0
        self.started_in = 0.0
        self.nats: EmbeddedNats | None = None
        self.nats_client: NatsClient | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.db: Database | None = None
        self.users: Users | None = None
        self.events: EventStore | None = None
        self.locks: SessionLocks | None = None
        self.feed: LiveFeed | None = None
        self.subscriptions: Subscriptions | None = None
        self.grpc: GrpcServer | None = None
        self.monitor: Monitor | None = None
        self.dashboard: Dashboard | None = None
        self._run_dir: Path | None = None
        self._listener: asyncio.Task[None] | None = None
        self._appended_listener: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._stopped = False

    @property
    def grpc_port(self) -> int:
        return self.grpc.port if self.grpc else 0

    @property
    def dashboard_port(self) -> int:
        return self.dashboard.port if self.dashboard else 0

    async def start(self) -> None:
        """Start every part; on failure, stop what started and re-raise."""
        began = time.monotonic()
        self._stopping = asyncio.Event()
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self.started_in = time.monotonic() - began
        logger.info("Orisun started in {:.2f}s", self.started_in)

    async def _start(self) -> None:
        s = self.settings
        # Private to this user; as root only traversable, so the embedded PostgreSQL's unprivileged
        # user can reach its own directory below it.
        s.data_dir.mkdir(mode=0o711 if os.geteuid() == 0 else 0o700, parents=True, exist_ok=True)
        # Private scratch space for child configuration files holding secrets; removed at stop.
        # Named by pid, so that the next start can remove what a SIGKILLed Orisun left behind.
        _remove_stale_run_dirs()
        self._run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
        cluster = ClusterOptions(
            name=s.nats_cluster_name, host=s.nats_cluster_host, port=s.nats_cluster_port,
            username=s.nats_cluster_username, password=s.nats_cluster_password, routes=s.nats_cluster_routes,
            timeout=s.nats_cluster_timeout,
        ) if s.nats_cluster_enabled else None
        replicas = cluster.replicas if cluster else 1
        # Run from the executable: its nats-server and PostgreSQL, unpacked once into the data dir.
        bundled = await asyncio.to_thread(unpack_bundled_binaries, s.data_dir)

        self.nats = EmbeddedNats(
            NatsServerOptions(
                host=s.nats_host,
                port=s.nats_port,
                store_dir=s.nats_store,
                max_payload=s.nats_max_payload,
                username=s.nats_username,
                password=s.nats_password or secrets.token_urlsafe(24),
                cluster=cluster,
            ),
            self._run_dir,
            on_fatal=self.fatal,
            binary=find_nats_server(bundled) if bundled else None,
        )
        await self.nats.start()
        self.nats_client = await self.nats.connect()
        logger.info("NATS JetStream listening on {}", self.nats.url)

        conninfo = s.pg_conninfo
        if conninfo is None:
            self.postgres = EmbeddedPostgres(s.data_dir, s.pg_embedded_port, on_fatal=self.fatal,
                                             bindir=find_postgres_bindir(bundled) if bundled else None)
            await self.postgres.start()
            conninfo = self.postgres.conninfo
            logger.info("Embedded PostgreSQL listening on 127.0.0.1:{} (data in {})", self.postgres.port,
                        s.data_dir / "postgres")
        self.db = Database(conninfo, s.boundaries, pool_size=s.pg_pool_size)
        await self.db.open(s.pg_startup_timeout)
        logger.info("Connected to PostgreSQL at {}", describe(conninfo))
        await migrate(self.db, s.admin_boundary)

        self.users = Users(UserStore(self.db, s.admin_schema))
        listening = asyncio.Event()
        self._listener = asyncio.create_task(
            listen_for_user_changes(conninfo, s.admin_schema, self.users.forget, ready=listening),
            name="orisun-user-changes",
        )
        await asyncio.wait_for(listening.wait(), timeout=s.pg_startup_timeout)
        await self.users.ensure_admin(s.admin_username, s.admin_password)
        if await self.users.uses_default_password(s.admin_username):
            logger.warning(
                "The admin user {!r} still has the default password {!r}: anyone can use it. "
                "Set ORISUN_ADMIN_PASSWORD before the first start, or change the password.",
                s.admin_username,
                DEFAULT_ADMIN_PASSWORD,
            )

        # The live feed: the writer (this node's commits) and LISTEN (every node's) wake the
        # publisher of the boundary and this node's subscribers.
        self.locks = SessionLocks(conninfo, on_lost=self._locks_lost)
        self.feed = LiveFeed(self.db, FeedPublisher(self.nats_client, retention=s.live_feed_retention,
                                                    max_backlog=MAX_FEED_BACKLOG, replicas=replicas), self.locks,
                             on_published=self._published,
                             writing=lambda schema: self.events is not None and self.events.writing(schema))
        self.subscriptions = Subscriptions(self.db, self.nats_client, self.locks, publishing=self.feed.owns)
        self.events = EventStore(self.db, max_event_bytes=s.nats_max_payload, on_commit=self._wrote)
        listening = asyncio.Event()
        self._appended_listener = asyncio.create_task(
            listen(conninfo, APPENDED_CHANNEL, self._appended, ready=listening), name="orisun-appended"
        )
        await asyncio.wait_for(listening.wait(), timeout=s.pg_startup_timeout)
        self.feed.start()

        pubsub = PubSub(self.nats_client, retention=s.pubsub_retention, ack_wait=s.pubsub_ack_wait,
                        replicas=replicas)
        await pubsub.setup()
        pubsub_service = PubSubService(pubsub, max_payload=s.nats_max_payload)
        material, ssl_context = self._tls()
        self.grpc = GrpcServer(
            self.users,
            self.events,
            self.subscriptions,
            pubsub_service,
            host=s.grpc_host,
            port=s.grpc_port,
            max_message_size=s.grpc_max_message_size,
            tls=material,
        )
        await self.grpc.start()

        self.monitor = Monitor(self.db, self.nats_client, self.subscriptions)
        self.monitor.start()
        self.dashboard = Dashboard(users=self.users, events=self.events, subscriptions=self.subscriptions,
                                   pubsub=pubsub_service, monitor=self.monitor, version=__version__,
                                   host=s.grpc_host, port=s.admin_port, ssl_context=ssl_context)
        await self.dashboard.start()

    def _tls(self) -> tuple[tls.TlsMaterial | None, ssl.SSLContext | None]:
        """The TLS files, read now (load_settings checked them; they may have changed since)."""
        files = self.settings.tls
        if files is None:
            if not _loopback(self.settings.grpc_host):
                logger.warning("TLS is off: passwords (Basic auth, dashboard login) cross the network in clear. "
                               "Set ORISUN_TLS_CERT_FILE and ORISUN_TLS_KEY_FILE, or keep ORISUN_GRPC_HOST on "
                               "127.0.0.1 behind a TLS proxy.")
            return None, None
        try:
            return tls.load(files), tls.server_context(files)
        except ConfigError as exc:
            raise StartupError(str(exc)) from None

    def _wrote(self, schema: str, events: list[Event]) -> None:
        """This node's writer committed ``events`` (in position order)."""
        assert self.feed is not None and self.subscriptions is not None
        self.feed.committed(schema, events)
        self.subscriptions.committed(schema, events[-1].position.prepare, events)

    def _published(self, schema: str, events: list[Event]) -> None:
        """This node published ``events`` to the live feed (its own writes or other nodes')."""
        assert self.subscriptions is not None
        self.subscriptions.committed(schema, events[-1].position.prepare, events)

    def _committed(self, schema: str, head: int | None) -> None:
        """Some node committed events up to ``head`` (None: maybe; check)."""
        assert self.feed is not None and self.subscriptions is not None
        self.feed.committed(schema, head=head)
        self.subscriptions.committed(schema, head)

    def _appended(self, payload: dict[str, Any] | None) -> None:
        """A notification on APPENDED_CHANNEL (None: the listener reconnected, anything may have moved)."""
        if self.feed is None or self.subscriptions is None:
            return
        if payload is None:
            for each in self.settings.boundaries.values():
                self._committed(each, None)
            return
        schema, head = payload.get("schema"), payload.get("head")
        if isinstance(schema, str) and isinstance(head, int):
            self._committed(schema, head)

    def _locks_lost(self) -> None:
        if self.subscriptions is not None:
            self.subscriptions.locks_lost()

    def fatal(self, reason: str) -> None:
        """A part failed for good: stop serving and exit non-zero."""
        logger.critical("Stopping Orisun: {}", reason)
        self.exit_code = 1
        self.request_stop()

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def wait(self) -> int:
        """Wait for a stop request (signal or fatal error), stop, and return the exit status."""
        assert self._stopping is not None, "start() first"
        await self._stopping.wait()
        await self.stop()
        return self.exit_code

    async def stop(self) -> None:
        """Stop accepting calls, drain in-flight ones, then stop the children. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.dashboard is not None:
            await self.dashboard.stop()
        if self.monitor is not None:
            await self.monitor.close()
        if self.grpc is not None:
            logger.info("Stopping: draining in-flight calls (up to {:g}s)", self.settings.shutdown_timeout)
            await self.grpc.stop(self.settings.shutdown_timeout)
        if self.events is not None:
            await self.events.close()
        if self.subscriptions is not None:
            await self.subscriptions.close()
        if self.feed is not None:
            await self.feed.close()  # after the writers: what they committed is published first
        if self.locks is not None:
            await self.locks.close()
        await cancel_and_wait([self._appended_listener, self._listener])
        if self.users is not None:
            await self.users.close()
        # The client goes before its server, or it keeps trying to reconnect while NATS stops.
        if self.nats_client is not None:
            with contextlib.suppress(Exception):
                await self.nats_client.close()
        if self.db is not None:
            await self.db.close()
        if self.postgres is not None:
            await self.postgres.stop()
        if self.nats is not None:
            await self.nats.stop()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        logger.info("Orisun stopped")
