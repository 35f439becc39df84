"""The live feed on JetStream: each boundary's committed events, one message per event.

Every boundary has its own file-backed stream, ``ORISUN_EVENTS_<boundary>`` on subject
``orisun.events.<boundary>``, whose **stream sequence is the event's position**. Each publish
carries ``Nats-Expected-Last-Sequence: position - 1``, so JetStream itself refuses an event out of
order, a duplicate, or one from a second publisher that fell behind: whatever happens, the stream
holds positions in order, each once. Its last sequence is therefore the durable checkpoint of what
was published, kept atomically with the publish itself.

An event too large for one NATS message (possible only if ``ORISUN_NATS_MAX_PAYLOAD`` was lowered
after it was stored) is published as an empty *marker*; readers fetch it from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import nats.js.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from orisun.errors import Unavailable
from orisun.messaging._errors import NATS_ERRORS, translate_errors, unavailable
from orisun.messaging._streams import add_or_update_stream
from orisun.model import Event, Position, Tag

STREAM_PREFIX = "ORISUN_EVENTS_"
SUBJECT_PREFIX = "orisun.events."
MARKER_HEADER = "Orisun-Marker"  # set on the stand-in for an event too large to carry
_WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed Nats-Expected-Last-Sequence
_ACK_TIMEOUT = 10.0
_YIELD_EVERY = 100  # messages published between two chances for other tasks to run
# Room kept in a NATS message for the headers (Nats-Expected-Last-Sequence and framing).
_HEADER_ROOM = 256


def stream_name(boundary: str) -> str:
    return STREAM_PREFIX + boundary


def subject(boundary: str) -> str:
    return SUBJECT_PREFIX + boundary


# --- Codec ---------------------------------------------------------------------------------------
# Length-prefixed UTF-8, not JSON: data and metadata are JSON text already, and escaping them again
# could double their size past NATS's max_payload.

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FIXED = struct.Struct("!qqiqH")  # position, commit position, version, created (µs), tag count
_LONG = struct.Struct("!I")
_SHORT = struct.Struct("!H")


def encode(event: Event) -> bytes:
    # Unrolled: this runs once per published event, and the loop cost more than the packing.
    created = (event.created_at - _EPOCH) // _MICROSECOND
    event_id, event_type, stream = event.event_id.encode(), event.event_type.encode(), event.stream.encode()
    data, metadata = event.data.encode(), event.metadata.encode()
    parts = [
        _FIXED.pack(event.position.prepare, event.position.commit, event.version, created, len(event.tags)),
        _LONG.pack(len(event_id)), event_id, _LONG.pack(len(event_type)), event_type,
        _LONG.pack(len(stream)), stream, _LONG.pack(len(data)), data, _LONG.pack(len(metadata)), metadata,
    ]
    for tag in event.tags:  # keys and values are at most a few hundred bytes (validation)
        key, value = tag.key.encode(), tag.value.encode()
        parts += (_SHORT.pack(len(key)), key, _SHORT.pack(len(value)), value)
    return b"".join(parts)


def decode(payload: bytes) -> Event:
    prepare, commit, version, created, tag_count = _FIXED.unpack_from(payload)
    offset = _FIXED.size
    texts = []
    for _ in range(5):
        (size,) = _LONG.unpack_from(payload, offset)
        offset += _LONG.size
        texts.append(payload[offset:offset + size].decode())
        offset += size
    tag_texts = []
    for _ in range(2 * tag_count):
        (size,) = _SHORT.unpack_from(payload, offset)
        offset += _SHORT.size
        tag_texts.append(payload[offset:offset + size].decode())
        offset += size
    event_id, event_type, stream, data, metadata = texts
    return Event(
        event_id=event_id,
        event_type=event_type,
        data=data,
        metadata=metadata,
        tags=tuple(Tag(k, v) for k, v in zip(tag_texts[::2], tag_texts[1::2], strict=True)),
        position=Position(commit, prepare),
        created_at=_EPOCH + timedelta(microseconds=created),
        stream=stream,
        version=version,
    )


# --- Publishing ----------------------------------------------------------------------------------


class FeedOutOfStep(Exception):
    """The stream's last sequence is not the position before the batch: re-read the checkpoint."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


class FeedPublisher:
    """Publishes events to the boundaries' feed streams in order, pipelined.

    nats-py's ``publish_async`` leaves its future pending when JetStream answers with an error,
    so acknowledgements are collected here, on one inbox subscription, by position.
    """

    def __init__(self, client: Client, *, retention: float, max_backlog: int, replicas: int = 1) -> None:
        self._client = client
        self._js = client.jetstream()
        self._retention = retention
        self._max_backlog = max_backlog
        self._replicas = replicas  # copies of each feed stream in a NATS cluster
        self._inbox: str | None = None
        self._acks: dict[str, asyncio.Future[dict[str, object]]] = {}
        self._next_token = 0

    async def checkpoint(self, boundary: str, head: int) -> int:
        """Make sure the boundary's stream exists; return the last position it holds.

        A stream that is missing or far behind ``head`` (a new or wiped NATS store) starts or is
        moved forward to hold at most ``max_backlog`` events before ``head``: readers take older
        events from PostgreSQL anyway. A stream ahead of ``head`` (the database was restored to an
        earlier state) is recreated, since its positions no longer name the same events.
        """
        name = stream_name(boundary)
        floor = max(0, head - self._max_backlog)
        with translate_errors(f"checking the live feed of boundary {boundary!r}"):
            try:
                info = await self._js.stream_info(name)
            except nats.js.errors.NotFoundError:
                await add_or_update_stream(self._js, self._config(boundary, first=floor + 1), self._replicas,
                                           update=False)
                return floor
            last = info.state.last_seq
            if last > head:
                logger.warning("The live feed of boundary {!r} is at position {}, ahead of the database's {}; "
                               "recreating it", boundary, last, head)
                await self._js.delete_stream(name)
                await add_or_update_stream(self._js, self._config(boundary, first=floor + 1), self._replicas,
                                           update=False)
                return floor
            if info.config.max_age != self._retention or (info.config.num_replicas or 1) < self._replicas:
                await add_or_update_stream(self._js, self._config(boundary, first=None), self._replicas, update=True)
            if last < floor:
                logger.info("The live feed of boundary {!r} is {} events behind; moving it to position {}",
                            boundary, head - last, floor)
                await self._js.purge_stream(name, seq=floor + 1)
                return floor
            return last

    def _config(self, boundary: str, *, first: int | None) -> StreamConfig:
        return StreamConfig(name=stream_name(boundary), subjects=[subject(boundary)], storage=StorageType.FILE,
                            max_age=self._retention, first_seq=first if first and first > 1 else None)

    async def publish(self, boundary: str, events: Sequence[Event], *, confirm: bool = True) -> None:
        """Publish consecutive events; the stream must end just before the first of them.

        Raises FeedOutOfStep when it does not (another publisher got there first, or the
        checkpoint is stale) and Unavailable when NATS does not answer. With ``confirm=False``
        nothing is awaited: a message JetStream refuses is dropped without a word, and the next
        confirmed publish (or ``last``) tells where the stream really ends.
        """
        if not events:
            return
        limit = self._client.max_payload - _HEADER_ROOM
        # Only the last message asks for an acknowledgement: each message is stored only if the
        # one before it was (Nats-Expected-Last-Sequence), so the last one's answer speaks for
        # the whole batch, and acknowledging every message cost as much as publishing it.
        action = f"publishing the live feed of boundary {boundary!r}"
        token = ""
        future: asyncio.Future[dict[str, object]] | None = None
        if confirm:
            with translate_errors(action):  # the first publish subscribes to the acknowledgements
                inbox = await self._ensure_inbox()
            self._next_token += 1
            token = f"{inbox}.{self._next_token}"
            future = self._acks[token] = asyncio.get_running_loop().create_future()
        try:
            for i, event in enumerate(events):
                if i and not i % _YIELD_EVERY:
                    await asyncio.sleep(0)  # nats-py's publish rarely yields: let calls in meanwhile
                position = event.position.prepare
                headers = {"Nats-Expected-Last-Sequence": str(position - 1)}
                payload = encode(event)
                if len(payload) > limit:
                    payload = b""
                    headers[MARKER_HEADER] = "too-large"
                reply = token if i == len(events) - 1 else ""
                await self._client.publish(subject(boundary), payload, reply=reply, headers=headers)
            if future is None:
                return
            async with asyncio.timeout(_ACK_TIMEOUT):
                answer = await future
        except TimeoutError:
            raise Unavailable(f"NATS did not acknowledge the live feed within {_ACK_TIMEOUT:g}s") from None
        except NATS_ERRORS as exc:
            raise unavailable(action, exc) from exc
        finally:
            if token:
                self._acks.pop(token, None)
        error = answer.get("error")
        if isinstance(error, dict):
            if error.get("err_code") == _WRONG_LAST_SEQUENCE:
                raise FeedOutOfStep(str(error.get("description")))
            raise Unavailable(f"JetStream refused a live-feed message: {error.get('description')}")

    async def last(self, boundary: str) -> int | None:
        """The last position the boundary's stream holds; None when the stream is gone."""
        with translate_errors(f"reading where the live feed of boundary {boundary!r} ends"):
            try:
                info = await self._js.stream_info(stream_name(boundary))
            except nats.js.errors.NotFoundError:  # a NATS error too: caught first
                return None
        return int(info.state.last_seq)

    async def _ensure_inbox(self) -> str:
        if self._inbox is None:
            inbox = self._client.new_inbox()
            await self._client.subscribe(inbox + ".*", cb=self._on_ack)
            self._inbox = inbox
        return self._inbox

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.get(msg.subject)
        if future is None or future.done():
            return
        try:
            answer = json.loads(msg.data)
        except ValueError:
            answer = {"error": {"description": f"unreadable acknowledgement {msg.data[:100]!r}"}}
        future.set_result(answer if isinstance(answer, dict) else {"error": {"description": repr(answer)}})


# --- Following -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedItem:
    """One message of a feed. Decoded only on request: a reader that already has the position
    (from its own node's writer) skips it for free."""

    position: int
    payload: bytes | None  # None for a marker: read the event from PostgreSQL

    def event(self) -> Event | None:
        return decode(self.payload) if self.payload is not None else None


async def follow(client: Client, boundary: str, after: int, *, heartbeat: float = 1.0) -> AsyncIterator[FeedItem]:
    """The feed's messages from position ``after + 1`` on, as JetStream stores them.

    An ordered consumer: flow-controlled, and re-created by nats-py from the last message seen
    when it notices a gap or a lost heartbeat. Raises Unavailable when NATS is gone; the caller
    starts again from the last position it has.
    """
    js = client.jetstream()
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1,
                            ack_policy=AckPolicy.NONE, idle_heartbeat=heartbeat)
    action = f"following the live feed of boundary {boundary!r}"
    with translate_errors(action):
        subscription = await js.subscribe(subject(boundary), stream=stream_name(boundary), ordered_consumer=True,
                                          config=config, pending_bytes_limit=64 * 1024 * 1024)
    try:
        while True:
            with translate_errors(action):
                msg = await subscription.next_msg(timeout=None)
            position = msg.metadata.sequence.stream
            marker = bool(msg.headers and MARKER_HEADER in msg.headers)
            yield FeedItem(position, None if marker else msg.data)
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
