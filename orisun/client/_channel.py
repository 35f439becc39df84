"""Channels and credentials: what both clients open their calls on."""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

#: Orisun sends messages up to ORISUN_GRPC_MAX_MESSAGE_SIZE (64 MiB by default) plus 64 KiB: a page
#: of GetEvents, one large event. gRPC's default of 4 MiB would fail such reads.
MAX_RECEIVE_MESSAGE_LENGTH = 64 * 1024 * 1024 + 64 * 1024

#: Where a client connects when given no target: the server's default ORISUN_GRPC_PORT on this
#: machine. The client is installed without the server's configuration, so the port is written
#: here too; tests/test_defaults.py holds the two together.
DEFAULT_TARGET = "localhost:50051"

KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000

# gRPC waits up to 120 s between attempts to reconnect a channel whose server went away, failing
# every call in the meantime: a subscription would resume long after the server is back.
_DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_LENGTH),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Keepalive pings while calls are open, also when no data flows: a subscription whose server
    # vanished without closing the connection (a host gone, a network partition) fails instead of
    # waiting forever, and reconnects. Orisun accepts client pings every 5 s.
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Without it, an unanswered ping closes the connection only after a minute (as on the server).
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.max_pings_without_data", 0),
)

PemSource = bytes | str | os.PathLike[str]


def _pem(value: PemSource | None) -> bytes | None:
    """PEM bytes as given, or read from a path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class _BasicAuth(grpc.AuthMetadataPlugin):  # type: ignore[misc]  # grpc has no type hints
    """Adds the Basic auth header to every call of a TLS channel (gRPC sends call credentials only
    over a secure channel)."""

    def __init__(self, header: str) -> None:
        self._metadata = (("authorization", header),)

    def __call__(self, context: Any, callback: Any) -> None:
        callback(self._metadata, None)


@dataclass(frozen=True)
class ChannelConfig:
    """Everything needed to open a channel to Orisun, sync or asyncio."""

    target: str
    username: str | None
    password: str | None
    tls: bool
    root_certificates: bytes | None
    certificate_chain: bytes | None
    private_key: bytes | None
    server_name: str | None
    options: tuple[tuple[str, Any], ...]

    @classmethod
    def make(
        cls,
        target: str,
        *,
        username: str | None,
        password: str | None,
        tls: bool,
        root_certificates: PemSource | None,
        certificate_chain: PemSource | None,
        private_key: PemSource | None,
        server_name: str | None,
        options: Sequence[tuple[str, Any]],
    ) -> ChannelConfig:
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("certificate_chain and private_key go together (mutual TLS)")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        secure = tls or root_certificates is not None or certificate_chain is not None
        name_override = (("grpc.ssl_target_name_override", server_name),) if server_name else ()
        return cls(
            target=target, username=username, password=password, tls=secure,
            root_certificates=_pem(root_certificates), certificate_chain=_pem(certificate_chain),
            private_key=_pem(private_key), server_name=server_name,
            options=(*_DEFAULT_OPTIONS, *name_override, *options),
        )

    @property
    def authorization(self) -> str | None:
        if self.username is None or self.password is None:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    @property
    def call_metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The metadata each call sends itself: the auth header over plaintext (over TLS the
        channel's call credentials add it)."""
        header = self.authorization
        return None if self.tls or header is None else (("authorization", header),)

    def credentials(self) -> Any:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates, private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )
        header = self.authorization
        if header is None:
            return credentials
        return grpc.composite_channel_credentials(credentials, grpc.metadata_call_credentials(_BasicAuth(header)))

    def sync_channel(self) -> grpc.Channel:
        if self.tls:
            return grpc.secure_channel(self.target, self.credentials(), options=self.options)
        return grpc.insecure_channel(self.target, options=self.options)

    def aio_channel(self) -> grpc.aio.Channel:
        if self.tls:
            return grpc.aio.secure_channel(self.target, self.credentials(), options=self.options)
        return grpc.aio.insecure_channel(self.target, options=self.options)
