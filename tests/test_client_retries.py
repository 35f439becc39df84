"""The synchronous Python client retries after UNAVAILABLE: a save whose answer a real TCP proxy lost
is retried with the same event ids and stored once. Shared fixtures and helpers:
tests/client_support.py.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from orisun.client import NO_STREAM, Client, EventData, RetryPolicy, Unavailable, WriteResult
from tests import client_support
from tests.client_support import TcpProxy, connect, unique
from tests.support import ServerThread, wait_for

# Fixtures of tests/client_support.py, bound to names of this module so that pytest finds them here.
orisun = client_support.orisun
client = client_support.client


pytestmark = pytest.mark.timeout(120)


def lose_the_answer(client: Client, direct: Client, proxy: TcpProxy, stream: str,
                    events: list[EventData]) -> tuple[WriteResult | None, BaseException | None]:
    """Save ``events`` through the proxy, which passes the request on and swallows the answer; once
    the write is stored, cut the connection. What the client's save_events returned or raised."""
    outcome: list[Any] = []

    def save() -> None:
        try:
            outcome.append(client.save_events(stream, events, expected_version=NO_STREAM))
        except BaseException as exc:
            outcome.append(exc)

    proxy.holding.set()
    saver = threading.Thread(target=save, daemon=True)
    saver.start()
    wait_for(lambda: list(direct.get_events(stream=stream)), 30, "the write to be stored")
    proxy.holding.clear()
    proxy.cut()
    saver.join(60)
    assert not saver.is_alive()
    result = outcome[0]
    return (None, result) if isinstance(result, BaseException) else (result, None)


def test_a_save_whose_answer_was_lost_is_retried_with_the_same_ids_and_stored_once(
    client: Client, orisun: ServerThread
) -> None:
    proxy = TcpProxy(orisun.app.grpc_port)
    try:
        # Without retries the lost answer is an error: the proxy really fails the call UNAVAILABLE.
        with connect(f"127.0.0.1:{proxy.port}", retry=RetryPolicy(max_attempts=1)) as once:
            once.save_events(unique("warm-up"), [EventData("W", {})])  # the connection is up
            result, error = lose_the_answer(once, client, proxy, unique("once"), [EventData("E", {})])
            assert isinstance(error, Unavailable), (result, error)
        # With retries (the default) the same write is sent again, the same ids: the server
        # recognises it and answers the original result (with new ids, NO_STREAM would conflict).
        with connect(f"127.0.0.1:{proxy.port}") as retrying:
            retrying.save_events(unique("warm-up"), [EventData("W", {})])
            stream = unique("retried")
            events = [EventData("A", {"n": 1}), EventData("B", {"n": 2})]
            result, error = lose_the_answer(retrying, client, proxy, stream, events)
            assert error is None, error
            stored = list(client.get_events(stream=stream))
            assert [e.event_id for e in stored] == [e.event_id for e in events]  # stored once
            assert result == WriteResult(stored[-1].position, 1)
    finally:
        proxy.close()

