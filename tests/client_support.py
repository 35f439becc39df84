"""Fixtures and helpers shared by the Python client's tests (tests/test_client*.py,
tests/test_readme_client.py, tests/test_client_install.py): the module's server (``orisun``), a
connected ``client``, a ``Collector`` of what a subscription callback receives, a ``TcpProxy``
that can lose answers or go silent, and TLS ``certificates``.

The test files bind the fixtures here (`certificates`, `client`, `orisun`) to module names of their
own, so that pytest finds them there (importing a fixture that a test takes as a parameter is a lint
error, F811).
"""

from __future__ import annotations

import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from orisun.client import Client
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import ADMIN, CHANNEL_OPTIONS, ServerThread, running_server, shared_tmpdir, wait_for

BOUNDARIES = {"orisun_admin": "orisun_admin", "orders": "orders", "payments": "payments"}


@pytest.fixture(scope="module")
def orisun(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_client", boundaries=BOUNDARIES) as server:
        yield server


def connect(address: str, **overrides: Any) -> Client:
    settings: dict[str, Any] = {"username": ADMIN[0], "password": ADMIN[1], "boundary": "orders",
                                "options": CHANNEL_OPTIONS}
    return Client(address, **{**settings, **overrides})


@pytest.fixture
def client(orisun: ServerThread) -> Iterator[Client]:
    with connect(orisun.address) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Collector(threading.Thread):
    """Iterates ``items`` (a subscription, a consumer) in a thread into a list, as an application's
    consumer loop would; ``on_item`` may act on each item (ack it)."""

    def __init__(self, items: Any, on_item: Callable[[Any], None] | None = None) -> None:
        super().__init__(daemon=True)
        self.source = items
        self.on_item = on_item
        self.items: list[Any] = []
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            for item in self.source:
                self.items.append(item)
                if self.on_item is not None:
                    self.on_item(item)
        except BaseException as exc:
            self.error = exc

    def wait_count(self, count: int, timeout: float = 30) -> list[Any]:
        def enough() -> bool:
            if self.error is not None:
                raise AssertionError(f"the iteration failed: {self.error!r}")
            return len(self.items) >= count

        wait_for(enough, timeout, f"{count} items (have {len(self.items)})")
        return list(self.items)


# --- retries after UNAVAILABLE ---------------------------------------------------------------------


class TcpProxy:
    """A real TCP proxy in front of a server. While ``holding`` is set it drops what the server
    sends (its answers never reach the client); `cut` closes every connection, as a network
    failure or a restarting load balancer would: the client's calls in flight fail UNAVAILABLE."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.holding = threading.Event()
        self._sockets: list[socket.socket] = []
        self._abandoned: set[socket.socket] = set()
        self._frozen: set[socket.socket] = set()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [downstream, upstream]
                self._pairs.append((downstream, upstream))
            threading.Thread(target=self._pump, args=(downstream, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, to_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if not (to_client and self.holding.is_set()) and source not in self._frozen:
                    target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                if sock not in self._abandoned and sock not in self._frozen:
                    with _suppress_oserror():
                        sock.shutdown(socket.SHUT_RDWR)

    def abandon(self) -> None:
        """Close the client's side of every connection but leave the server's open and unread, as
        when a client's host vanishes: the server notices only by its keepalive pings."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self._abandoned.update(upstream for _, upstream in pairs)
        for downstream, _ in pairs:
            with _suppress_oserror():
                downstream.shutdown(socket.SHUT_RDWR)
            downstream.close()

    def freeze(self) -> None:
        """Stop passing anything on the current connections, both ways, and keep them open: the
        server looks gone (a host that vanished, a partition) but nothing closes. New connections
        work."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self._frozen.update(sock for pair in pairs for sock in pair)

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets, self._pairs = self._sockets, [], []
        for sock in sockets:
            with _suppress_oserror():
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


# --- TLS --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates() -> Iterator[tuple[Path, trustme.CA]]:
    directory = shared_tmpdir("orisun-client-tls-")
    ca = trustme.CA()
    server = ca.issue_cert("orisun.test")  # not 127.0.0.1: the client overrides the name it checks
    server.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(directory / "chain.pem"), append=i > 0)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    yield directory, ca
    shutil.rmtree(directory, ignore_errors=True)

