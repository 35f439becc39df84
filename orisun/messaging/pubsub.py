"""Pub/sub topics on JetStream (docs/contract.md §6).

One file-backed stream, ``ORISUN_PUBSUB``, holds every topic under ``orisun.pubsub.<subject>``
for ``retention`` seconds. A subscriber name maps to one durable pull consumer per subject:
clients sharing the name pull from the same consumer, so each message goes to one of them
(competing consumers); another name is another consumer and gets every message (fan-out); a
durable consumer keeps its place while nobody is connected.

gRPC gives a server stream no delivery confirmation: a handler's ``yield`` returns once gRPC has
buffered the message, and HTTP/2 windows hold many. So ``subscribe`` (SubscribeToPubSub) does not
acknowledge a message when it is handed on: it acknowledges it only once the stream has stayed
open ``ack_delay`` seconds after sending it, and not while a write is blocked (the client is not
reading), keeps at most ``MAX_UNACKED`` such messages per stream, and gives back (nak) every one
not yet acknowledged when the stream ends for any reason, so that JetStream redelivers them at
once. ``consume`` (ConsumePubSub) acknowledges a message only when the
client says so. A message neither acknowledged nor given back (a crashed server) comes back after
``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import struct
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header, StorageType, StreamConfig

from orisun.errors import InvalidArgument
from orisun.messaging._errors import NATS_ERRORS, translate_errors, unavailable
from orisun.messaging._streams import add_or_update_stream
from orisun.metrics import Counts

STREAM = "ORISUN_PUBSUB"
PREFIX = "orisun.pubsub."
# Seconds one pull waits for messages before asking again. Short: a pull outlives a stream that
# ends, and a message JetStream hands to it then comes back only after the ack wait.
_FETCH_WAIT = 2.0
_LEADERLESS_POLL = 0.25  # seconds between pulls while a clustered consumer has no leader
_LEADERLESS_FOR = 30.0  # seconds without a leader before the subscriber is told to retry

# SubscribeToPubSub: a message is acknowledged once its stream stayed open this long after sending
# it (at most half the ack wait, so that JetStream never redelivers it meanwhile). Longer than the
# gRPC server's keepalive time plus timeout (8 s, transport/server.py), so that a client whose
# host vanished is noticed, and its messages given back, before they are acknowledged...
ACK_DELAY = 10.0
# ...and one stream has at most this many sent, unacknowledged messages: what it may get twice
# after a disconnect. It also caps a stream at MAX_UNACKED / ACK_DELAY messages a second, here
# 2,000, about what one stream reaches anyway (measured: ~2,000/s with 100-byte messages).
MAX_UNACKED = 20_000
# A consumer's own bound on unacknowledged messages, over all its streams (JetStream's default,
# 1,000, would throttle competing streams that each hold up to MAX_UNACKED).
_CONSUMER_MAX_ACK_PENDING = 100_000
_ACK_TIMEOUT = 2  # seconds to wait for JetStream to confirm an acknowledgement

# The envelope of a message body: this magic, the id and the metadata each preceded by their
# length (4 bytes, big-endian), then the data. Unlike JSON (which wrote "é" as 6 bytes) it adds
# a fixed 11 bytes, so what fits the limit can be published. A JSON body starts with "{": bodies
# stored by earlier versions, in JSON, are still read.
_MAGIC = b"\x00o1"
_LENGTH = struct.Struct(">I")
_ENVELOPE_BYTES = len(_MAGIC) + 2 * _LENGTH.size


@dataclass(frozen=True)
class PubSubMessage:
    """A pub/sub message as published and delivered (docs/contract.md §6)."""

    id: str
    subject: str
    data: str
    metadata: str


@dataclass(frozen=True)
class Delivery:
    """A message handed to a ConsumePubSub client, to be acknowledged by ``token``."""

    message: PubSubMessage
    token: int  # the message's sequence in the stream: unique, and the same when redelivered
    delivery_count: int  # 1 the first time, more when delivered again


def durable_name(consumer_name: str, subject: str) -> str:
    """The JetStream consumer for a (name, subject) pair; durable names cannot hold dots."""
    return f"{consumer_name}_{hashlib.sha256(subject.encode()).hexdigest()[:12]}"


_DIGEST_SUFFIX = 13  # "_" and the 12 hex digits durable_name appends


def encode(message: PubSubMessage) -> bytes:
    """The body stored in JetStream for ``message`` (its subject is the NATS subject)."""
    id_bytes, metadata = message.id.encode(), message.metadata.encode()
    return b"".join((_MAGIC, _LENGTH.pack(len(id_bytes)), id_bytes, _LENGTH.pack(len(metadata)), metadata,
                     message.data.encode()))


def decode(subject: str, body: bytes) -> PubSubMessage:
    """The message of a body written by ``encode``, or by earlier versions in JSON."""
    subject = subject.removeprefix(PREFIX)
    if not body.startswith(_MAGIC):
        legacy = json.loads(body)
        return PubSubMessage(legacy["id"], subject, legacy["data"], legacy["metadata"])
    at = len(_MAGIC)
    fields: list[str] = []
    for _ in range(2):
        (length,) = _LENGTH.unpack_from(body, at)
        at += _LENGTH.size
        fields.append(body[at:at + length].decode())
        at += length
    return PubSubMessage(fields[0], subject, body[at:].decode(), fields[1])


def headers(message: PubSubMessage) -> dict[str, str]:
    """The NATS headers published with ``message``.

    Nats-Msg-Id makes a retried publish of the same id a no-op within the duplicate window. NATS
    trims header values and turns line breaks into spaces, so raw ids "x" and " x " collided and
    one of the two messages was dropped: the header holds a digest of the id instead (the id itself
    travels in the body)."""
    return {"Nats-Msg-Id": hashlib.sha256(message.id.encode()).hexdigest(), Header.EXPECTED_STREAM.value: STREAM}


def wire_size(message: PubSubMessage) -> int:
    """The bytes NATS counts against its max payload: the body and the header block, exactly as
    nats-py writes it ("NATS/1.0\\r\\n", "key: value\\r\\n" per header, "\\r\\n")."""
    header_block = len(b"NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in headers(message).items())
    return header_block + _ENVELOPE_BYTES + len(message.id.encode()) + len(message.metadata.encode()) + len(
        message.data.encode())


@dataclass(frozen=True)
class ConsumerStatus:
    """A pub/sub consumer as JetStream sees it, for the dashboard."""

    stream: str
    subject: str
    consumer_name: str
    pending: int  # messages not yet delivered to it
    ack_pending: int  # delivered (or given back for redelivery), not yet acknowledged
    redelivered: int


async def _give_back(client: Client, messages: Iterable[Msg]) -> None:
    """Nak ``messages`` so that JetStream redelivers them now, and make sure the naks left."""
    try:
        for msg in messages:
            await msg.nak()
        await client.flush(timeout=_ACK_TIMEOUT)
    except NATS_ERRORS as exc:
        # They come back after ack_wait instead.
        logger.debug("Could not give pub/sub messages back ({}): they are redelivered after the ack wait", exc)


async def _acknowledge(msg: Msg) -> None:
    """Acknowledge ``msg`` and wait until JetStream recorded it (so that pending figures are true)."""
    try:
        await msg.ack_sync(timeout=_ACK_TIMEOUT)
    except NATS_ERRORS as exc:
        # Not lost: JetStream delivers it again after ack_wait (a duplicate).
        logger.debug("Could not acknowledge a pub/sub message ({}): it will be delivered again", exc)


_finishing: set[asyncio.Task[None]] = set()  # pulls outliving their stream, until they are given back


def _finish_later(client: Client, subscription: JetStreamContext.PullSubscription,
                  fetching: asyncio.Future[list[Msg]] | None) -> None:
    """Unsubscribe once the pull in progress (if any) is over, giving back what it brings.

    A stream that ends while it waits for a message leaves its pull request in JetStream, which
    may still hand it a message: given back at once, that message is redelivered now rather than
    after the ack wait. Done in the background: the pull lasts up to ``_FETCH_WAIT``."""

    async def finish() -> None:
        try:
            if fetching is not None:
                await asyncio.wait([fetching])
                if not fetching.cancelled() and fetching.exception() is None:
                    await _give_back(client, fetching.result())
        finally:
            with contextlib.suppress(*NATS_ERRORS):
                await subscription.unsubscribe()

    task = asyncio.create_task(finish(), name="pubsub-finish-pull")
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)


class _SentWindow:
    """The messages a server stream sent and has not acknowledged yet, oldest first."""

    def __init__(self, client: Client, delay: float, limit: int, closed: asyncio.Event) -> None:
        self._client = client
        self._delay = delay
        self._limit = limit
        self._closed = closed
        self._sent: deque[tuple[float, Msg]] = deque()
        self._changed = asyncio.Event()
        self._writing = False

    def writing(self) -> None:
        """The stream is handing a message to gRPC (until ``add``)."""
        self._writing = True

    def add(self, msg: Msg) -> None:
        """gRPC took ``msg``: its ack delay starts now."""
        self._writing = False
        self._sent.append((asyncio.get_running_loop().time(), msg))
        self._changed.set()

    async def room(self) -> None:
        """Until the stream may send another message."""
        while len(self._sent) >= self._limit:
            self._changed.clear()
            await self._changed.wait()

    def take_all(self) -> list[Msg]:
        taken = [msg for _, msg in self._sent]
        self._sent.clear()
        self._changed.set()
        return taken

    async def run(self) -> None:
        """Acknowledge each message once the stream stayed open ``delay`` after sending it; when the
        call ends (``closed``), give back everything still unacknowledged at once."""
        loop = asyncio.get_running_loop()
        closing: asyncio.Future[bool] = asyncio.ensure_future(self._closed.wait())
        try:
            while not self._closed.is_set():
                if not self._sent:
                    self._changed.clear()
                    waiting: asyncio.Future[bool] = asyncio.ensure_future(self._changed.wait())
                    await asyncio.wait([waiting, closing], return_when=asyncio.FIRST_COMPLETED)
                    waiting.cancel()
                    continue
                sent_at, msg = self._sent[0]
                due = sent_at + self._delay - loop.time()
                if due > 0:
                    # Waiting for a deadline (not synchronising on a guess): the ack delay itself.
                    await asyncio.wait([closing], timeout=due)
                    continue
                if self._writing:
                    # A write that does not complete at once means the client's HTTP/2 window is
                    # full: it is not reading, and what was sent may still sit unread in its
                    # buffers. Acknowledge nothing until it reads again (JetStream redelivers the
                    # messages after ack_wait if it never does).
                    self._changed.clear()
                    written: asyncio.Future[bool] = asyncio.ensure_future(self._changed.wait())
                    await asyncio.wait([written, closing], return_when=asyncio.FIRST_COMPLETED)
                    written.cancel()
                    continue
                self._sent.popleft()
                self._changed.set()
                await _acknowledge(msg)
            await _give_back(self._client, self.take_all())
        finally:
            closing.cancel()


def _redeliveries(counts: Counts, subject: str, consumer_name: str) -> dict[str, int]:
    """The redelivery counts of ``subject``, kept by a stream (``_count_redelivery``)."""
    consumers = counts.redelivered.get(subject)
    if consumers is None:
        consumers = counts.redelivered[subject] = {}
    consumers.setdefault(consumer_name, 0)
    return consumers


def _count_redelivery(redelivered: dict[str, int], consumer_name: str, msg: Msg) -> None:
    """Count ``msg`` in orisun_pubsub_redelivered_total if JetStream delivered it before."""
    if msg.metadata.num_delivered > 1:
        redelivered[consumer_name] += 1


class AckedConsumer:
    """A ConsumePubSub stream's hold on a durable consumer: messages are acknowledged only when
    the client acknowledges them; ``close`` gives back whatever is still in flight."""

    def __init__(self, client: Client, subscription: JetStreamContext.PullSubscription,
                 redelivered: dict[str, int] | None = None, consumer_name: str = "") -> None:
        self._client = client
        self._subscription = subscription
        self._redelivered = redelivered if redelivered is not None else {consumer_name: 0}
        self._consumer_name = consumer_name
        self._in_flight: dict[int, Msg] = {}
        self._fetching: asyncio.Future[list[Msg]] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def receive(self, most: int) -> list[Delivery]:
        """Up to ``most`` messages; none if nothing came within a few seconds."""
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(_fetch(self._subscription, most))
        # Shielded: if the caller gives up (the stream ends), close() gives back what it brings.
        fetched = await asyncio.shield(self._fetching)
        self._fetching = None
        deliveries = []
        for msg in fetched:
            metadata = msg.metadata
            token = metadata.sequence.stream
            message = decode(msg.subject, msg.data)
            msg.data = b""  # only the reply subject is needed from now on: hold no payloads
            self._in_flight[token] = msg
            if metadata.num_delivered > 1:
                self._redelivered[self._consumer_name] += 1
            deliveries.append(Delivery(message, token, metadata.num_delivered))
        return deliveries

    async def ack(self, tokens: Iterable[int]) -> None:
        """Acknowledge the messages in flight with these tokens; other tokens are ignored (an ack
        repeated, or of a message given back meanwhile)."""
        held = [msg for token in tokens if (msg := self._in_flight.pop(token, None)) is not None]
        await asyncio.gather(*(_acknowledge(msg) for msg in held))

    async def nak(self, tokens: Iterable[int]) -> None:
        """Give back the messages in flight with these tokens, for redelivery now."""
        held = [msg for token in tokens if (msg := self._in_flight.pop(token, None)) is not None]
        await _give_back(self._client, held)

    async def close(self) -> None:
        held = list(self._in_flight.values())
        self._in_flight.clear()
        try:
            await _give_back(self._client, held)
        finally:
            _finish_later(self._client, self._subscription, self._fetching)


async def _fetch(subscription: JetStreamContext.PullSubscription, most: int) -> list[Msg]:
    """Up to ``most`` messages, or none after waiting ``_FETCH_WAIT``; Unavailable if NATS is."""
    unavailable_since: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await subscription.fetch(most, timeout=_FETCH_WAIT)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            # In a cluster, a new consumer (or one whose leader's node died) answers "no
            # service" until its replicas elect a leader: wait for that, within bounds.
            unavailable_since = unavailable_since or loop.time()
            if loop.time() - unavailable_since > _LEADERLESS_FOR:
                raise unavailable(f"the pub/sub consumer has had no leader for {_LEADERLESS_FOR:g} s",
                                  exc) from exc
            await asyncio.sleep(_LEADERLESS_POLL)
        except NATS_ERRORS as exc:
            raise unavailable("pulling pub/sub messages", exc) from exc


class PubSub:
    """Pub/sub topics on JetStream: publishing, and durable consumers for SubscribeToPubSub and ConsumePubSub."""

    def __init__(self, client: Client, *, retention: float, ack_wait: float, replicas: int = 1,
                 ack_delay: float = ACK_DELAY, max_unacked: int = MAX_UNACKED, counts: Counts | None = None) -> None:
        """``counts``: where redeliveries are counted (orisun_pubsub_redelivered_total)."""
        self._client = client
        self._counts = counts if counts is not None else Counts()
        self._js = client.jetstream()
        self._retention = retention
        self._ack_wait = ack_wait
        self._replicas = replicas  # copies of the stream (and so of its consumers) in a NATS cluster
        # Half the ack wait at most: an unacknowledged message must not be redelivered (to another
        # stream of the name) while its stream still waits to acknowledge it.
        self.ack_delay = min(ack_delay, ack_wait / 2)
        self.max_unacked = max_unacked

    @property
    def max_payload(self) -> int:
        """The largest message NATS accepts (body and headers), as the server announced it."""
        return self._client.max_payload

    async def setup(self) -> None:
        """Create the stream, or bring its retention and replicas up to date."""
        config = StreamConfig(name=STREAM, subjects=[PREFIX + ">"], storage=StorageType.FILE,
                              max_age=self._retention)
        try:
            await add_or_update_stream(self._js, config, self._replicas, update=False)
        except nats.js.errors.BadRequestError:
            await add_or_update_stream(self._js, config, self._replicas, update=True)

    async def consumers(self) -> list[ConsumerStatus]:
        """Every pub/sub consumer (of every node sharing this NATS), by subject and name."""
        with translate_errors("listing the pub/sub consumers"):
            infos = await self._js.consumers_info(STREAM)
        found = [
            ConsumerStatus(
                stream=STREAM,
                subject=(info.config.filter_subject or "").removeprefix(PREFIX),
                consumer_name=info.name[:-_DIGEST_SUFFIX] if len(info.name) > _DIGEST_SUFFIX else info.name,
                pending=info.num_pending or 0,
                ack_pending=info.num_ack_pending or 0,
                redelivered=info.num_redelivered or 0,
            )
            for info in infos
        ]
        return sorted(found, key=lambda each: (each.subject, each.consumer_name))

    async def publish(self, message: PubSubMessage) -> None:
        size = wire_size(message)
        if size > self.max_payload:
            # NATS would close the connection over it (a max payload violation): refuse it here.
            raise InvalidArgument("data", f"the message takes {size} bytes with its id, metadata and envelope, "
                                  f"more than the {self.max_payload} NATS accepts (ORISUN_NATS_MAX_PAYLOAD)")
        with translate_errors("publishing a pub/sub message"):
            await self._js.publish(PREFIX + message.subject, encode(message), headers=headers(message))

    async def _pull(self, subject: str, consumer_name: str) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(durable_name=durable_name(consumer_name, subject), ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.NEW, ack_wait=self._ack_wait,
                                max_ack_pending=_CONSUMER_MAX_ACK_PENDING, filter_subject=PREFIX + subject)
        with translate_errors("opening a pub/sub consumer"):
            return await self._js.pull_subscribe(PREFIX + subject, durable=config.durable_name, stream=STREAM,
                                                 config=config)

    async def subscribe(self, subject: str, consumer_name: str,
                        closed: asyncio.Event | None = None) -> AsyncGenerator[PubSubMessage, None]:
        """Messages for ``consumer_name`` on ``subject``, until the caller stops iterating.

        ``closed`` is set when the caller's stream ends (the client went, the server stops): from
        then on nothing more is acknowledged and what was not is given back at once, even before
        the caller closes this generator."""
        subscription = await self._pull(subject, consumer_name)
        closed = closed or asyncio.Event()
        window = _SentWindow(self._client, self.ack_delay, self.max_unacked, closed)
        redelivered = _redeliveries(self._counts, subject, consumer_name)
        acknowledger = asyncio.create_task(window.run(), name=f"pubsub-acks-{consumer_name}")
        handing: Msg | None = None  # fetched, being handed on
        fetching: asyncio.Future[list[Msg]] | None = None
        try:
            while True:
                await window.room()
                fetching = asyncio.ensure_future(_fetch(subscription, 1))
                # Shielded: if the stream ends meanwhile, what this pull brings is given back.
                fetched = await asyncio.shield(fetching)
                fetching = None
                for msg in fetched:
                    handing = msg
                    _count_redelivery(redelivered, consumer_name, msg)
                    message = decode(msg.subject, msg.data)
                    msg.data = b""  # only the reply subject is needed from now on: hold no payloads
                    window.writing()
                    yield message
                    window.add(msg)  # gRPC has it: the ack delay starts now
                    handing = None
        finally:
            # Not cancelled (it could be half-way through giving the messages back): told to stop,
            # it gives back what is unacknowledged and ends.
            closed.set()
            await asyncio.wait([acknowledger])
            if not acknowledger.cancelled() and (failure := acknowledger.exception()) is not None:
                # A bug; the messages it held come back after ack_wait.
                logger.opt(exception=failure).error("Pub/sub acknowledgements of {} failed", consumer_name)
            try:
                await _give_back(self._client, [*window.take_all(), *([handing] if handing else [])])
            finally:
                _finish_later(self._client, subscription, fetching)

    async def consume(self, subject: str, consumer_name: str) -> AckedConsumer:
        """A hold on the consumer for ConsumePubSub; the caller must ``close`` it."""
        return AckedConsumer(self._client, await self._pull(subject, consumer_name),
                             _redeliveries(self._counts, subject, consumer_name), consumer_name)
