"""A lost NATS reads the same wherever it is noticed (#16): every messaging call a client's request
goes through answers ``Unavailable`` "NATS is unavailable (what was being done: why); retry later",
translated in one place (orisun/messaging/_errors.py). Real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
import pytest

from orisun.errors import Unavailable
from orisun.messaging._errors import translate_errors
from orisun.messaging.feed import FeedPublisher, follow
from orisun.messaging.pubsub import PubSub, PubSubMessage
from orisun.model import Event, Position
from orisun.runtime.nats_server import EmbeddedNats, NatsServerOptions

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("raised", "detail"), [
    (nats.errors.ConnectionClosedError(), "nats: connection closed"),
    (nats.errors.NoServersError(), "nats: no servers available for connection"),
    (TimeoutError(), "no answer in time"),
    (ConnectionResetError("peer reset"), "peer reset"),
])
def test_nats_failures_become_unavailable(raised: BaseException, detail: str) -> None:
    with pytest.raises(Unavailable) as caught, translate_errors("publishing a pub/sub message"):
        raise raised
    assert str(caught.value) == f"NATS is unavailable (publishing a pub/sub message: {detail}); retry later"
    assert caught.value.__cause__ is raised


def test_other_errors_pass_through() -> None:
    with pytest.raises(ValueError, match="a bug"), translate_errors("anything"):
        raise ValueError("a bug")


async def _first(iterator: Any) -> Any:
    return await anext(iterator)


def test_every_messaging_call_answers_unavailable_once_nats_is_gone(tmp_path: Path) -> None:
    event = Event(event_id="00000000-0000-4000-8000-000000000001", event_type="Happened", data="{}", metadata="",
                  tags=(), position=Position(1, 1), created_at=datetime.now(UTC), stream="s", version=0)
    message = PubSubMessage(id="m-1", subject="orders", data="{}", metadata="")

    async def run() -> dict[str, str]:
        server = EmbeddedNats(NatsServerOptions(host="127.0.0.1", port=0, store_dir=tmp_path / "store",
                                                max_payload=1 << 20, username="orisun", password="secret"),
                              tmp_path / "run")
        await server.start()
        try:
            client = await server.connect()
            pubsub = PubSub(client, retention=60, ack_wait=30)
            await pubsub.setup()
            feed = FeedPublisher(client, retention=60, max_backlog=100)
            assert await feed.checkpoint("orders", 0) == 0
            # An answer of NATS that means "no such thing" is no failure (JetStream's errors are
            # nats-py errors too: the translation must not swallow them).
            assert await feed.last("no_such_boundary") is None
            await client.close()  # NATS is gone for everything below
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "pubsub.publish": lambda: pubsub.publish(message),
                "pubsub.consumers": pubsub.consumers,
                "pubsub.subscribe": lambda: _first(pubsub.subscribe("orders", "reader")),
                "feed.checkpoint": lambda: feed.checkpoint("orders", 1),
                "feed.last": lambda: feed.last("orders"),
                "feed.publish": lambda: feed.publish("orders", [event]),
                "follow": lambda: _first(follow(client, "orders", 0)),
            }
            answers = {}
            for name, call in calls.items():
                with pytest.raises(Unavailable) as caught:
                    await asyncio.wait_for(call(), 20)
                answers[name] = str(caught.value)
            return answers
        finally:
            await server.stop()

    answers = asyncio.run(run())
    for name, text in answers.items():
        assert text.startswith("NATS is unavailable (") and text.endswith("); retry later"), (name, text)
        assert "nats: connection closed" in text, (name, text)
