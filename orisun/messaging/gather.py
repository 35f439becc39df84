"""Between the processes of a node over NATS: scatter-gather (ask every process for a JSON answer
and collect them) and broadcast (tell every other process something, in JSON).

A supervisor's dashboard shows the whole node, but each worker process knows only its own calls
(its subscriptions, its live subscribers). Each worker answers on the node's subject; the
supervisor publishes one request and collects the answers until it has one per worker or its
deadline passes (a worker restarting is then simply missing from that one answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


async def answer(client: Client, subject: str, figures: Callable[[], Any]) -> Subscription:
    """Answer every request on ``subject`` with ``figures()`` as JSON; unsubscribe to stop."""
    return await respond(client, subject, lambda body: figures())


async def respond(client: Client, subject: str, handle: Callable[[Any], Any]) -> Subscription:
    """Answer every request on ``subject`` with ``handle(body)`` as JSON (``body``: the request's
    JSON, None when it has none); unsubscribe to stop."""

    async def reply(msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            body = json.loads(msg.data) if msg.data else None
        except ValueError:
            return
        try:
            await client.publish(msg.reply, json.dumps(handle(body), separators=(",", ":")).encode())
        except Exception as exc:  # NATS away: the asker counts this process as missing
            logger.debug("cannot answer {}: {!r}", subject, exc)

    return await client.subscribe(subject, cb=reply)


async def gather(client: Client, subject: str, expected: int, within: float, body: Any = None) -> list[Any]:
    """The JSON answers to one request on ``subject`` (carrying ``body`` as JSON, if not None):
    ``expected`` of them, or fewer when ``within`` seconds pass first."""
    if expected <= 0:
        return []
    answers: list[Any] = []
    complete = asyncio.Event()

    async def collect(msg: Msg) -> None:
        try:
            answers.append(json.loads(msg.data))
        except ValueError:
            return
        if len(answers) >= expected:
            complete.set()

    inbox = client.new_inbox()
    subscription = await client.subscribe(inbox, cb=collect)
    try:
        payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        await client.publish(subject, payload, reply=inbox)
        try:
            await asyncio.wait_for(complete.wait(), within)
        except TimeoutError:
            logger.debug("{}: {} of {} answers within {:g} s", subject, len(answers), expected, within)
    finally:
        await subscription.unsubscribe()
    return answers[:expected]


class Broadcast:
    """JSON messages on ``subject`` to every other process listening on it (not back to this one)."""

    def __init__(self, client: Client, subject: str) -> None:
        self._client = client
        self._subject = subject
        self._origin = uuid.uuid4().hex  # this process: its own messages come back and are skipped
        self._sending: set[asyncio.Task[None]] = set()
        self._subscription: Subscription | None = None

    async def listen(self, on_message: Callable[[Any], None]) -> None:
        async def receive(msg: Msg) -> None:
            try:
                origin, body = json.loads(msg.data)
            except ValueError:
                return
            if origin != self._origin:
                on_message(body)

        self._subscription = await self._client.subscribe(self._subject, cb=receive)

    def send(self, body: Any) -> None:
        """Send without waiting (callable from synchronous code on the event loop)."""
        payload = json.dumps([self._origin, body], separators=(",", ":")).encode()
        task = asyncio.get_running_loop().create_task(self._publish(payload))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, payload: bytes) -> None:
        try:
            await self._client.publish(self._subject, payload)
        except Exception as exc:  # NATS away: the other processes miss this one report
            logger.debug("cannot broadcast on {}: {!r}", self._subject, exc)

    async def close(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
