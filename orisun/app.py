"""The Orisun server's lifecycle: start its parts in order, run, stop them in reverse.

Start-up runs named phases — run dir → NATS → PostgreSQL → database (and migrations) → users →
live feed → pub/sub → gRPC → monitor → dashboard — so that nothing serves before what it depends
on is up. Each phase registers its stops on one ``AsyncExitStack`` as it starts them; ``stop``
closes that stack, so it undoes exactly what started, in reverse, also after a failed start. A
child process that dies for good (``fatal``) stops the whole server with exit status 1: Orisun
never keeps serving half-alive.

One ``Orisun`` plays one of three roles (``ORISUN_WORKERS``, see orisun.runtime.workers):

- **the whole node** (1 worker): every phase, in this process;
- **the supervisor** (2 or more): every phase but gRPC, then a ``workers`` phase that starts the
  worker processes on the gRPC port. It keeps the dashboard, and its live feed publishes the
  boundaries' feeds (it starts before the workers, so it takes the publisher locks first; the
  workers' feeds wait as stand-bys), off the loops that serve the writes;
- **a worker** (``WorkerSpec``): connects to the supervisor's NATS and PostgreSQL, serves gRPC
  with SO_REUSEPORT, and answers the supervisor's questions about its subscriptions.

The workers of a node are to each other what the nodes of a cluster are: one database orders
every write, session locks make a subscriber_name and a feed publisher unique, LISTEN/NOTIFY
carries commits and user changes between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import pickle
import secrets
import shutil
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from loguru import logger
from nats.aio.client import Client as NatsClient

from orisun import __version__, tls
from orisun.aio import cancel_and_wait
from orisun.config import DEFAULT_ADMIN_PASSWORD, Settings
from orisun.dashboard import Dashboard
from orisun.dashboard._metrics import metrics_handler
from orisun.errors import ConfigError, StartupError
from orisun.messaging.feed import FeedPublisher
from orisun.messaging.pubsub import PubSub
from orisun.metrics import Counts
from orisun.runtime.bundle import unpack_bundled_binaries
from orisun.runtime.nats_server import ClusterOptions, EmbeddedNats, NatsServerOptions, find_nats_server
from orisun.runtime.nats_server import connect as connect_nats
from orisun.runtime.postgres import EmbeddedPostgres, find_postgres_bindir
from orisun.runtime.process import check_port
from orisun.runtime.rundir import make_run_dir
from orisun.runtime.workers import Workers
from orisun.service.admin import Admin
from orisun.service.boundaries import Boundaries
from orisun.service.commits import Commits
from orisun.service.events import EventStore
from orisun.service.feed import LiveFeed
from orisun.service.metrics import NodeMetrics, answer_metrics
from orisun.service.monitor import Monitor
from orisun.service.node import NodeSubscriptions, answer_figures, share_logins, share_user_changes
from orisun.service.pubsub import PubSubService
from orisun.service.subscriptions import Subscriptions
from orisun.service.users import Users
from orisun.storage.catalog import record_configured
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


# A start-up phase: starts its parts, pushing the stop of each on the stack it is given.
Phase = Callable[[contextlib.AsyncExitStack], Awaitable[None]]
# PostgreSQL connections one Orisun process opens besides its pool: a writer per boundary (counted
# apart), the session locks, three LISTENs, and room for a pool's connection being replaced.
CONNECTIONS_BESIDES_POOL = 7


@dataclass(frozen=True)
class WorkerSpec:
    """What a supervisor hands each worker process (pickled, on its standard input)."""

    index: int  # 1 to ORISUN_WORKERS, for the logs
    node: str  # the supervisor's id: the subject its questions come on
    settings: Settings  # the supervisor's, with pg_conninfo and grpc_port resolved
    nats_url: str
    nats_password: str
    replicas: int  # of the JetStream streams (a cluster's)


def connections_needed(settings: Settings) -> int:
    """PostgreSQL connections a node may open: every process's pool and own connections."""
    processes = settings.workers + 1 if settings.workers > 1 else 1
    return processes * (settings.pg_pool_size + CONNECTIONS_BESIDES_POOL + len(settings.boundaries))


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Orisun:
    """One Orisun process: the whole node, the supervisor of its workers, or one worker; starts and stops every part."""

    def __init__(self, settings: Settings, worker: WorkerSpec | None = None) -> None:
        """The whole node or its supervisor (by ``settings.workers``), or the worker ``worker``."""
        self.settings = settings
        self.worker = worker
        self.supervising = worker is None and settings.workers > 1
        self.workers: Workers | None = None
        # The supervisor's id, naming the NATS subject its workers answer on.
        self.node = worker.node if worker is not None else uuid.uuid4().hex
        self._grpc_port = 0
        self.exit_code = 0
        self.started_in = 0.0
        self.nats: EmbeddedNats | None = None
        self.nats_client: NatsClient | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.db: Database | None = None
        self.boundaries: Boundaries | None = None
        self.users: Users | None = None
        self.events: EventStore | None = None
        self.locks: SessionLocks | None = None
        self.feed: LiveFeed | None = None
        self.subscriptions: Subscriptions | None = None
        self.grpc: GrpcServer | None = None
        self.monitor: Monitor | None = None
        self.dashboard: Dashboard | None = None
        self.pubsub: PubSubService | None = None
        # What this process counts for GET /metrics (orisun.metrics); the supervisor adds its
        # workers' (``metrics``, made with the dashboard).
        self.counts = Counts()
        self.metrics: NodeMetrics | None = None
        self._publisher: FeedPublisher | None = None
        self._node_subscriptions: NodeSubscriptions | None = None
        # Where the writer, the feed publisher and LISTEN report commits; routed to the feed and
        # the subscriptions once the live-feed phase has made them.
        self.commits = Commits(settings.boundaries.values())
        self._run_dir: Path | None = None
        self._bundled: Path | None = None
        self._conninfo = ""
        self._replicas = 1
        self._tls_read: tuple[tls.TlsMaterial | None, ssl.SSLContext | None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._appended_listener: asyncio.Task[None] | None = None
        # Each phase's stops, pushed as it starts; ``stop`` closes it (in reverse, also after a failed start).
        self._stack = contextlib.AsyncExitStack()
        self._stopping: asyncio.Event | None = None
        self._stopped = False

    @property
    def grpc_port(self) -> int:
        """The port gRPC is served on (by this process or, for a supervisor, by its workers)."""
        return self.grpc.port if self.grpc else self._grpc_port

    @property
    def dashboard_port(self) -> int:
        return self.dashboard.port if self.dashboard else 0

    async def start(self) -> None:
        """Start every phase in order; on failure, stop the phases that started and re-raise."""
        began = time.monotonic()
        self._stopping = asyncio.Event()
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self.started_in = time.monotonic() - began
        logger.info("Orisun started in {:.2f}s", self.started_in)

    def _phases(self) -> list[tuple[str, Phase]]:
        if self.worker is not None:
            return [
                ("nats", self._connect_nats),
                ("postgres", self._start_postgres),
                ("database", self._start_database),
                ("users", self._start_users),
                ("live-feed", self._start_live_feed),
                ("pubsub", self._start_pubsub),
                ("grpc", self._start_grpc),
                ("node", self._start_node),
            ]
        serving = [("grpc", self._start_grpc)] if not self.supervising else []
        workers = [("node", self._start_node), ("workers", self._start_workers)] if self.supervising else []
        return [
            ("run-dir", self._start_run_dir),
            ("nats", self._start_nats),
            ("postgres", self._start_postgres),
            ("database", self._start_database),
            ("users", self._start_users),
            ("live-feed", self._start_live_feed),
            ("pubsub", self._start_pubsub),
            *serving,
            ("monitor", self._start_monitor),
            ("dashboard", self._start_dashboard),
            *workers,
        ]

    async def _start(self) -> None:
        for name, phase in self._phases():
            await self._stack.enter_async_context(self._phase(name, phase))

    @contextlib.asynccontextmanager
    async def _phase(self, name: str, start: Phase) -> AsyncIterator[None]:
        """Run the phase ``start``, which registers each stop on ``stops`` right after (or, for a part
        that can fail half-started, right before) starting what it stops. A phase that fails undoes
        its own started parts here; the phases before it are undone by ``stop`` closing the stack."""
        async with contextlib.AsyncExitStack() as stops:
            logger.debug("Starting phase {}", name)
            await start(stops)
            logger.debug("Started phase {}", name)
            try:
                yield
            finally:
                logger.debug("Stopping phase {}", name)
        logger.debug("Stopped phase {}", name)

    async def _start_run_dir(self, stops: contextlib.AsyncExitStack) -> None:
        s = self.settings
        # Private to this user; as root only traversable, so the embedded PostgreSQL's unprivileged
        # user can reach its own directory below it.
        s.data_dir.mkdir(mode=0o711 if os.geteuid() == 0 else 0o700, parents=True, exist_ok=True)
        self._run_dir = make_run_dir()
        stops.callback(shutil.rmtree, self._run_dir, ignore_errors=True)

    async def _start_nats(self, stops: contextlib.AsyncExitStack) -> None:
        s = self.settings
        assert self._run_dir is not None
        cluster = self._cluster()
        self._replicas = cluster.replicas if cluster else 1
        # Run from the executable: its nats-server and PostgreSQL, unpacked once into the data dir.
        self._bundled = await asyncio.to_thread(unpack_bundled_binaries, s.data_dir)
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
            binary=find_nats_server(self._bundled) if self._bundled else None,
        )
        # Registered before start: a server that fails half-started (spawned, never ready) is stopped too.
        stops.push_async_callback(self.nats.stop)
        await self.nats.start()
        self.nats_client = await self.nats.connect()
        # The client goes before its server, or it keeps trying to reconnect while NATS stops.
        stops.push_async_callback(self._close_nats_client)
        logger.info("NATS JetStream listening on {}", self.nats.url)

    async def _connect_nats(self, stops: contextlib.AsyncExitStack) -> None:
        """A worker's NATS: the supervisor's server, as Orisun's user."""
        assert self.worker is not None
        self._replicas = self.worker.replicas
        self.nats_client = await connect_nats(self.worker.nats_url, self.settings.nats_username,
                                              self.worker.nats_password)
        stops.push_async_callback(self._close_nats_client)

    def _cluster(self) -> ClusterOptions | None:
        s = self.settings
        if not s.nats_cluster_enabled:
            return None
        return ClusterOptions(
            name=s.nats_cluster_name, host=s.nats_cluster_host, port=s.nats_cluster_port,
            username=s.nats_cluster_username, password=s.nats_cluster_password, routes=s.nats_cluster_routes,
            timeout=s.nats_cluster_timeout,
        )

    async def _close_nats_client(self) -> None:
        if self.nats_client is not None:
            with contextlib.suppress(Exception):
                await self.nats_client.close()

    async def _start_postgres(self, stops: contextlib.AsyncExitStack) -> None:
        s = self.settings
        if s.pg_conninfo is not None:
            self._conninfo = s.pg_conninfo
            return
        self.postgres = EmbeddedPostgres(s.data_dir, s.pg_embedded_port, on_fatal=self.fatal,
                                         bindir=find_postgres_bindir(self._bundled) if self._bundled else None,
                                         max_connections=max(100, connections_needed(s) + 10))
        stops.push_async_callback(self.postgres.stop)  # before start, as for NATS
        await self.postgres.start()
        self._conninfo = self.postgres.conninfo
        logger.info("Embedded PostgreSQL listening on 127.0.0.1:{} (data in {})", self.postgres.port,
                    s.data_dir / "postgres")

    async def _start_database(self, stops: contextlib.AsyncExitStack) -> None:
        s = self.settings
        self.db = Database(self._conninfo, s.boundaries, pool_size=s.pg_pool_size)
        stops.push_async_callback(self.db.close)  # before open: the pool may hold connections already
        await self.db.open(s.pg_startup_timeout)
        logger.info("Connected to PostgreSQL at {}", describe(self._conninfo))
        if self.worker is None:  # the supervisor migrated before it started the workers
            await migrate(self.db, s.admin_boundary)
            await record_configured(self.db, s.admin_schema, s.boundaries)
        # Every process serves the boundaries of the catalog, also those created later (by any node).
        self.boundaries = Boundaries(self.db, s.admin_schema)
        stops.push_async_callback(self.boundaries.close)
        await self.boundaries.start(s.pg_startup_timeout)
        if self.worker is None:
            # Those created at runtime: brought up to date like the configured ones (an upgrade may
            # bring migrations). Under the same per-schema lock, so other nodes may start at once.
            created = {b: schema for b, schema in self.db.boundaries.items() if b not in s.boundaries}
            await migrate(self.db, s.admin_boundary, created)

    async def _start_users(self, stops: contextlib.AsyncExitStack) -> None:
        s = self.settings
        self.users = Users(UserStore(self.db_or_fail, s.admin_schema), counts=self.counts)
        stops.push_async_callback(self.users.close)
        listening = asyncio.Event()
        self._listener = asyncio.create_task(
            listen_for_user_changes(self._conninfo, s.admin_schema, self.users.forget, ready=listening),
            name="orisun-user-changes",
        )
        stops.push_async_callback(cancel_and_wait, [self._listener])
        await asyncio.wait_for(listening.wait(), timeout=s.pg_startup_timeout)
        if self.worker is not None:
            return  # the supervisor made the admin user and warned about its password
        await self.users.ensure_admin(s.admin_username, s.admin_password)
        if await self.users.uses_default_password(s.admin_username):
            logger.warning(
                "The admin user {!r} still has the default password {!r}: anyone can use it. "
                "Set ORISUN_ADMIN_PASSWORD before the first start, or change the password.",
                s.admin_username,
                DEFAULT_ADMIN_PASSWORD,
            )

    async def _start_live_feed(self, stops: contextlib.AsyncExitStack) -> None:
        # The live feed: the writer (this node's commits) and LISTEN (every node's) wake the
        # publisher of the boundary and this node's subscribers, through ``self.commits``.
        s = self.settings
        db, nats_client = self.db_or_fail, self.nats_client
        assert nats_client is not None
        self.locks = SessionLocks(self._conninfo, on_lost=self._locks_lost)
        self._publisher = FeedPublisher(nats_client, retention=s.live_feed_retention, max_backlog=MAX_FEED_BACKLOG,
                                        replicas=self._replicas)
        self.feed = LiveFeed(db, self._publisher, self.locks,
                             on_published=self.commits.published,
                             writing=lambda schema: self.events is not None and self.events.writing(schema),
                             stand_by=self.worker is not None)
        self.subscriptions = Subscriptions(db, nats_client, self.locks, publishing=self.feed.owns)
        self.events = EventStore(db, max_event_bytes=s.nats_max_payload, on_commit=self.commits.written,
                                 counts=self.counts)
        self.commits.route_to(self.feed, self.subscriptions)
        feed, subscriptions, commits = self.feed, self.subscriptions, self.commits
        for schema in db.boundaries.values():
            commits.add(schema)  # those of the catalog (the configured ones it has already)

        def added(boundary: str, schema: str) -> None:  # a boundary created at runtime, by any node
            commits.add(schema)
            subscriptions.add(boundary, schema)
            feed.add(boundary, schema)

        db.on_added(added)
        # None of these started anything yet; their stops are registered now so that they run in
        # this order: the writers first, then the subscriptions, then the feed (what the writers
        # committed is published first), the locks, and last the LISTEN that wakes them.
        stops.push_async_callback(lambda: cancel_and_wait([self._appended_listener]))
        stops.push_async_callback(self.locks.close)
        stops.push_async_callback(self.feed.close)
        stops.push_async_callback(self.subscriptions.close)
        stops.push_async_callback(self.events.close)
        listening = asyncio.Event()
        self._appended_listener = asyncio.create_task(
            listen(self._conninfo, APPENDED_CHANNEL, self.commits.notified, ready=listening), name="orisun-appended"
        )
        await asyncio.wait_for(listening.wait(), timeout=s.pg_startup_timeout)
        self.feed.start()

    async def _start_pubsub(self, stops: contextlib.AsyncExitStack) -> None:
        # Nothing to stop: its streams and consumers live in NATS.
        s = self.settings
        assert self.nats_client is not None
        pubsub = PubSub(self.nats_client, retention=s.pubsub_retention, ack_wait=s.pubsub_ack_wait,
                        replicas=self._replicas, counts=self.counts)
        await pubsub.setup()
        self.pubsub = PubSubService(pubsub, max_payload=s.nats_max_payload)

    async def _start_grpc(self, stops: contextlib.AsyncExitStack) -> None:
        s = self.settings
        assert self.users is not None and self.events is not None and self.subscriptions is not None
        assert self.pubsub is not None and self.boundaries is not None
        material, _ = self._tls()
        self.grpc = GrpcServer(
            self.users,
            self.events,
            self.subscriptions,
            self.pubsub,
            Admin(self.users, self.boundaries, self.db_or_fail),
            host=s.grpc_host,
            port=s.grpc_port,
            max_message_size=s.grpc_max_message_size,
            tls=material,
            reuse_port=self.worker is not None,
        )
        stops.push_async_callback(self._stop_grpc, self.grpc)  # before start: a failed bind is stopped too
        await self.grpc.start()

    async def _stop_grpc(self, grpc: GrpcServer) -> None:
        logger.info("Stopping: draining in-flight calls (up to {:g}s)", self.settings.shutdown_timeout)
        await grpc.stop(self.settings.shutdown_timeout)

    async def _start_node(self, stops: contextlib.AsyncExitStack) -> None:
        """What makes a supervisor and its workers one node: a worker answers the supervisor's
        questions about its subscriptions (for the dashboard), and every process counts the
        node's failed logins (they throttle logins node-wide, as in one process)."""
        assert self.nats_client is not None and self.users is not None
        if self.worker is not None:
            assert self.subscriptions is not None
            answering = await answer_figures(self.nats_client, self.node, self.subscriptions, self.pubsub)
            stops.push_async_callback(self._unsubscribe, answering)
            counting = await answer_metrics(self.nats_client, self.node, self.worker.index, self.counts,
                                            self.db_or_fail)
            stops.push_async_callback(self._unsubscribe, counting)
        sharing = await share_logins(self.nats_client, self.node, self.users.throttle)
        stops.push_async_callback(sharing.close)
        changes = await share_user_changes(self.nats_client, self.node, self.users, self._node_processes)
        stops.push_async_callback(self._unsubscribe, changes)

    def _node_processes(self) -> int:
        """The processes of this node: the supervisor and its workers (those running, as the supervisor sees them)."""
        if self.worker is not None:
            return self.settings.workers + 1
        return 1 + (self.workers.running if self.workers is not None else 0)

    @staticmethod
    async def _unsubscribe(subscription: object) -> None:
        with contextlib.suppress(Exception):  # NATS already closed: nothing left to undo
            await subscription.unsubscribe()  # type: ignore[attr-defined]

    async def _start_workers(self, stops: contextlib.AsyncExitStack) -> None:
        """The supervisor's last phase: the worker processes, serving gRPC on one port."""
        s = self.settings
        assert self.nats is not None
        # A port in use must fail here, naming the variable: with SO_REUSEPORT a worker would not
        # notice another program's listener, only share the port with it (if it too asked for that).
        self._grpc_port = check_port(s.grpc_host, s.grpc_port, port_variable="ORISUN_GRPC_PORT",
                                     host_variable="ORISUN_GRPC_HOST")
        settings = replace(s, pg_conninfo=self._conninfo, grpc_port=self._grpc_port)
        nats_url, nats_password = self.nats.url, self.nats.password

        def instructions(index: int) -> bytes:
            spec = WorkerSpec(index, self.node, settings, nats_url, nats_password, self._replicas)
            return pickle.dumps(spec)

        self.workers = Workers(s.workers, instructions, stop_timeout=s.shutdown_timeout + 10.0, on_fatal=self.fatal)
        stops.push_async_callback(self._stop_workers, self.workers)  # before start: some may be up
        await self.workers.start()
        logger.info("{} workers serving gRPC on {}:{} (pids {})", s.workers, s.grpc_host, self._grpc_port,
                    ", ".join(str(pid) for pid in self.workers.pids))

    async def _stop_workers(self, workers: Workers) -> None:
        logger.info("Stopping the workers: each drains its in-flight calls (up to {:g}s)",
                    self.settings.shutdown_timeout)
        await workers.stop()

    async def _start_monitor(self, stops: contextlib.AsyncExitStack) -> None:
        assert self.nats_client is not None and self.subscriptions is not None
        node = NodeSubscriptions(self.subscriptions, self.nats_client, self.node,
                                 lambda: self.workers.running if self.workers is not None else 0, self.pubsub)
        self._node_subscriptions = node
        self.monitor = Monitor(self.db_or_fail, self.nats_client, node)
        stops.push_async_callback(self.monitor.close)
        self.monitor.start()

    async def _start_dashboard(self, stops: contextlib.AsyncExitStack) -> None:
        s = self.settings
        assert self.users is not None and self.events is not None and self.subscriptions is not None
        assert self.pubsub is not None and self.monitor is not None and self.boundaries is not None
        assert self.nats_client is not None and self._node_subscriptions is not None
        self.metrics = NodeMetrics(self.counts, self.db_or_fail, self._node_subscriptions, self.pubsub,
                                   self.nats_client, feed=self.feed, publisher=self._publisher, node=self.node,
                                   workers=lambda: self.workers.pids if self.workers is not None else [])
        self.dashboard = Dashboard(users=self.users, events=self.events, subscriptions=self.subscriptions,
                                   pubsub=self.pubsub, monitor=self.monitor, boundaries=self.boundaries,
                                   version=__version__,
                                   host=s.grpc_host, port=s.admin_port, ssl_context=self._tls()[1],
                                   metrics=metrics_handler(self.metrics.scrape,
                                                           self.users if s.metrics_auth else None),
                                   admin_username=s.admin_username, admin_boundary=s.admin_boundary)
        stops.push_async_callback(self.dashboard.stop)
        await self.dashboard.start()

    @property
    def db_or_fail(self) -> Database:
        assert self.db is not None, "the database phase runs first"
        return self.db

    def _tls(self) -> tuple[tls.TlsMaterial | None, ssl.SSLContext | None]:
        """The TLS files, read at the first call (load_settings checked them; they may have changed
        since), for gRPC and the dashboard."""
        if self._tls_read is None:
            self._tls_read = self._read_tls()
        return self._tls_read

    def _read_tls(self) -> tuple[tls.TlsMaterial | None, ssl.SSLContext | None]:
        files = self.settings.tls
        if files is None:
            # Said once per node, by the process that owns the dashboard, not again by each worker.
            if not _loopback(self.settings.grpc_host) and self.worker is None:
                logger.warning("TLS is off: passwords (Basic auth, dashboard login) cross the network in clear. "
                               "Set ORISUN_TLS_CERT_FILE and ORISUN_TLS_KEY_FILE, or keep ORISUN_GRPC_HOST on "
                               "127.0.0.1 behind a TLS proxy.")
            return None, None
        try:
            return tls.load(files), tls.server_context(files)
        except ConfigError as exc:
            raise StartupError(str(exc)) from None

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
        """Stop accepting calls, drain in-flight ones, then stop the children: the phases that
        started, in reverse (the dashboard first, NATS last). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await self._stack.aclose()
        logger.info("Orisun stopped")
