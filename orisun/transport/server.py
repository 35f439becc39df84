"""Builds the grpc.aio server: EventStore, Admin, health and reflection, behind the auth interceptor."""

from __future__ import annotations

import logging
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from orisun._proto import admin_pb2_grpc
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.errors import StartupError
from orisun.service.admin import Admin
from orisun.service.events import EventStore
from orisun.service.pubsub import PubSubService
from orisun.service.subscriptions import Subscriptions
from orisun.service.users import Users
from orisun.tls import TlsMaterial
from orisun.transport.admin import ADMIN_SERVICE_NAME, AdminServicer
from orisun.transport.auth import AuthInterceptor, Gate
from orisun.transport.convert import PAGE_ROOM, SEND_HEADROOM
from orisun.transport.servicer import SERVICE_NAME, EventStoreServicer

KEEPALIVE_TIME_MS = 4_000
KEEPALIVE_TIMEOUT_MS = 4_000
# What grpc.aio logs, at ERROR with a traceback, when a write to a call fails in gRPC's core: in
# practice a client that went away (cancelled, disconnected) while a streamed response was being
# written, which the server can neither prevent nor act on. The call itself ends as CANCELLED.
_WRITE_FAILED = "ExecuteBatchError raised in core by servicer method"


class _ClientGoneFilter(logging.Filter):
    """gRPC's "ExecuteBatchError raised in core" record made one DEBUG line: routine, not a fault
    (an operator's ERROR alerts would fire for every subscriber that disconnects mid-write)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_WRITE_FAILED):
            record.msg = "a client went away while a streamed response was written to it: " + record.getMessage()
            record.args = None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = record.exc_text = None
            # Its logger lets ERROR pass; a record turned DEBUG must still respect the level it is set to.
            return logging.getLogger("grpc").getEffectiveLevel() <= logging.DEBUG
        return True


def quiet_client_gone() -> None:
    """Install _ClientGoneFilter on grpc.aio's logger once per process."""
    cygrpc = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(each, _ClientGoneFilter) for each in cygrpc.filters):
        cygrpc.addFilter(_ClientGoneFilter())


class GrpcServer:
    """The gRPC server: EventStore, Admin, health and reflection, with auth, TLS and keepalives."""

    def __init__(
        self,
        users: Users,
        events: EventStore,
        subscriptions: Subscriptions,
        pubsub: PubSubService,
        admin: Admin,
        *,
        host: str,
        port: int,
        max_message_size: int,
        tls: TlsMaterial | None = None,
        reuse_port: bool = False,
    ) -> None:
        """``reuse_port``: share the port with the other workers of this node (SO_REUSEPORT; the
        supervisor checked that nothing else listens on it)."""
        self._host = host
        self._tls = tls
        self._requested_port = port
        self.port = 0
        self._gate = Gate()
        quiet_client_gone()
        self.server = grpc.aio.server(
            interceptors=[AuthInterceptor(users, self._gate)],
            options=[
                ("grpc.max_receive_message_length", max_message_size),
                ("grpc.max_send_message_length", max_message_size + SEND_HEADROOM),
                # gRPC sets SO_REUSEPORT by default, which lets a second server bind the same port
                # silently and steal half the connections. A port in use must be an error, except
                # among the workers of one node, which share it on purpose.
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                # Keepalive pings on connections with calls in progress: a client whose host
                # vanished without closing its connection is noticed within KEEPALIVE_TIME +
                # KEEPALIVE_TIMEOUT, which ends its calls: a subscriber_name is freed, and
                # SubscribeToPubSub gives back its unacknowledged messages before its ack delay
                # (messaging.pubsub.ACK_DELAY, longer than this) would acknowledge them.
                ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                # This gRPC closes the connection on an unanswered ping only after the ping
                # timeout (a minute by default), whatever the keepalive timeout says (measured).
                ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                # ... also while the server has no data to send (by default it stops pinging after
                # two pings without data, and a silent subscription would go unchecked).
                ("grpc.http2.max_pings_without_data", 0),
                # Clients may ping as often as every 5 s, also between calls, without being told
                # "too many pings" (gRPC's default allows one ping in 5 minutes without data).
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ],
        )
        servicer = EventStoreServicer(events, subscriptions, pubsub, page_bytes=max(1, max_message_size - PAGE_ROOM))
        pb_grpc.add_EventStoreServicer_to_server(servicer, self.server)  # type: ignore[no-untyped-call]
        # Authenticated by the same interceptor as EventStore: every method but health's needs it.
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(admin), self.server)  # type: ignore[no-untyped-call]
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, ADMIN_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )

    async def start(self) -> None:
        address = f"{self._host}:{self._requested_port}"
        problem = (f"ORISUN_GRPC_PORT: cannot listen on {address}: the port is in use, "
                   "or ORISUN_GRPC_HOST is not an address of this machine")
        try:
            if self._tls is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, _credentials(self._tls))
        except RuntimeError:
            raise StartupError(problem) from None
        if self.port == 0:
            raise StartupError(problem)
        await self.server.start()
        for service in ("", SERVICE_NAME, ADMIN_SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """Stop accepting calls, let in-flight ones finish within ``grace`` seconds, cancel the rest."""
        began = time.monotonic()
        await self.health.enter_graceful_shutdown()
        await self._gate.close(grace)
        # Unary calls are done (or out of grace); what still runs are subscriptions, which have no
        # end to wait for: they get a moment to flush, then are cancelled.
        await self.server.stop(max(0.1, min(1.0, grace - (time.monotonic() - began))))


def _credentials(tls: TlsMaterial) -> grpc.ServerCredentials:
    """TLS only on the port (gRPC then refuses plaintext); with a client CA, also mTLS: a client
    without a certificate signed by that CA fails the handshake, before any call or password."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.cert_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None,
    )
