"""Pub/sub in the core: validation and permissions around ``orisun.messaging.pubsub``."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from orisun.errors import InvalidArgument, PermissionDenied, quoted
from orisun.messaging.pubsub import ConsumerStatus, Delivery, PubSub, PubSubMessage
from orisun.model import User

_TOKEN = r"[A-Za-z0-9_-]+"
PUBLISH_SUBJECT = re.compile(rf"{_TOKEN}(\.{_TOKEN})*")
SUBSCRIBE_SUBJECT = re.compile(rf"({_TOKEN}|\*)(\.({_TOKEN}|\*))*(\.>)?|>")
CONSUMER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_SUBJECT_BYTES = 256
MAX_ID_BYTES = 256
DEFAULT_IN_FLIGHT = 100  # ConsumePubSub's max_in_flight when the client leaves it 0
MAX_IN_FLIGHT = 10_000


@dataclass(frozen=True)
class ConsumeRequest:
    """A ConsumePubSub client message: the first opens (subject, name, max_in_flight), later ones
    settle deliveries by token."""

    subject: str = ""
    consumer_name: str = ""
    max_in_flight: int = 0
    ack: tuple[int, ...] = ()
    nack: tuple[int, ...] = ()


@dataclass(eq=False)  # hashed by identity: one per open call
class _Open:
    subject: str
    consumer_name: str
    call: str  # "SubscribeToPubSub" or "ConsumePubSub"
    since: float
    delivered: int = 0


@dataclass(frozen=True)
class ServedConsumer:
    """One open SubscribeToPubSub or ConsumePubSub call of this process, for the dashboard."""

    subject: str
    consumer_name: str
    call: str  # "SubscribeToPubSub" or "ConsumePubSub"
    since: float  # Unix time the call opened
    delivered: int  # messages handed over since the call opened (redeliveries included)


def _check_subject(subject: str, pattern: re.Pattern[str], what: str) -> None:
    if not subject:
        raise InvalidArgument("subject", "is required")
    if len(subject.encode()) > MAX_SUBJECT_BYTES:
        raise InvalidArgument("subject", f"is {len(subject.encode())} bytes, more than the {MAX_SUBJECT_BYTES} allowed")
    if not pattern.fullmatch(subject):
        raise InvalidArgument("subject", f"{quoted(subject)} is not {what} "
                              "(dot-separated tokens of letters, digits, _ and -)")


class PubSubService:
    """PublishToPubSub, SubscribeToPubSub and ConsumePubSub: validation, then the JetStream topics."""

    def __init__(self, pubsub: PubSub, *, max_payload: int) -> None:
        self._pubsub = pubsub
        self._max_payload = max_payload
        self._open: set[_Open] = set()

    def served(self) -> list[ServedConsumer]:
        """The open pub/sub calls of this process, by subject and consumer name."""
        return sorted((ServedConsumer(each.subject, each.consumer_name, each.call, each.since, each.delivered)
                       for each in self._open), key=lambda each: (each.subject, each.consumer_name, each.since))

    async def consumers(self) -> list[ConsumerStatus]:
        """Every pub/sub consumer with its pending counts (any user may look)."""
        return await self._pubsub.consumers()

    async def publish(self, user: User, message: PubSubMessage) -> PubSubMessage:
        if not user.can_write:
            raise PermissionDenied(f"user {quoted(user.username)} may not publish (needs role ADMIN or OPERATIONS)")
        _check_subject(message.subject, PUBLISH_SUBJECT, "a subject to publish to (no wildcards)")
        if not message.id:
            message = PubSubMessage(str(uuid.uuid4()), message.subject, message.data, message.metadata)
        elif len(message.id.encode()) > MAX_ID_BYTES:
            raise InvalidArgument("id", f"must be at most {MAX_ID_BYTES} bytes")
        # The exact bytes NATS would get (body and headers) are checked by the messaging layer,
        # which knows them; this bound (the configured limit) applies as well.
        if len(message.data.encode()) + len(message.metadata.encode()) > self._max_payload:
            raise InvalidArgument("data", f"data and metadata take more than the {self._max_payload} bytes "
                                  "allowed (ORISUN_NATS_MAX_PAYLOAD)")
        await self._pubsub.publish(message)
        return message

    async def subscribe(self, user: User, subject: str, consumer_name: str,
                        closed: asyncio.Event | None = None) -> AsyncGenerator[PubSubMessage, None]:
        """SubscribeToPubSub; ``closed`` is set when the call ends (see PubSub.subscribe)."""
        _check_opening(subject, consumer_name)
        served = _Open(subject, consumer_name, "SubscribeToPubSub", time.time())
        self._open.add(served)
        try:
            # aclosing: a cancelled client must give back its messages now, not at GC.
            async with contextlib.aclosing(self._pubsub.subscribe(subject, consumer_name, closed)) as messages:
                async for message in messages:
                    served.delivered += 1
                    yield message
        finally:
            self._open.discard(served)

    async def consume(self, user: User, requests: AsyncIterator[ConsumeRequest]) -> AsyncGenerator[Delivery, None]:
        """ConsumePubSub: deliveries to settle, at most max_in_flight unsettled at a time, until the
        client closes its side (or goes). What is not acked when it ends is given back."""
        first = await anext(requests, None)
        if first is None:
            return  # the client closed without opening
        _check_opening(first.subject, first.consumer_name)
        if first.max_in_flight > MAX_IN_FLIGHT:
            raise InvalidArgument("max_in_flight", f"must be at most {MAX_IN_FLIGHT} (0 = {DEFAULT_IN_FLIGHT}), "
                                  f"not {first.max_in_flight}")
        if first.ack or first.nack:
            raise InvalidArgument("ack" if first.ack else "nack", "the first ConsumeRequest opens the stream "
                                  "and settles nothing")
        limit = first.max_in_flight or DEFAULT_IN_FLIGHT
        consumer = await self._pubsub.consume(first.subject, first.consumer_name)
        settled = asyncio.Event()  # the client settled something, or stopped sending: look again
        failures: list[BaseException] = []
        ended = asyncio.Event()

        async def settle() -> None:
            try:
                async for request in requests:
                    _check_settling(request)
                    await consumer.ack(request.ack)
                    await consumer.nak(request.nack)
                    settled.set()
            except Exception as exc:  # handed to the stream, which reports it
                failures.append(exc)
            finally:
                ended.set()
                settled.set()

        settler = asyncio.create_task(settle(), name=f"pubsub-consume-{first.consumer_name}")
        served = _Open(first.subject, first.consumer_name, "ConsumePubSub", time.time())
        self._open.add(served)
        try:
            while not ended.is_set():
                if consumer.in_flight >= limit:
                    settled.clear()
                    await settled.wait()
                    continue
                receiving = asyncio.ensure_future(consumer.receive(limit - consumer.in_flight))
                stopping = asyncio.ensure_future(ended.wait())
                await asyncio.wait([receiving, stopping], return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not receiving.done():
                    # An unfinished pull's messages, if any come, are redelivered after the ack wait.
                    receiving.cancel()
                    await asyncio.wait([receiving])
                    break
                for delivery in receiving.result():
                    if ended.is_set():
                        break  # given back by close() below
                    served.delivered += 1
                    yield delivery
            if failures:
                raise failures[0]
        finally:
            self._open.discard(served)
            settler.cancel()
            await asyncio.wait([settler])
            await consumer.close()


def _check_opening(subject: str, consumer_name: str) -> None:
    _check_subject(subject, SUBSCRIBE_SUBJECT, "a subject to subscribe to")
    if not CONSUMER_NAME.fullmatch(consumer_name):
        raise InvalidArgument("consumer_name", f"{quoted(consumer_name)} must be 1-64 letters, digits, _ or -")


def _check_settling(request: ConsumeRequest) -> None:
    """A ConsumePubSub message after the first: acks and nacks only."""
    for field, value in (("subject", request.subject), ("consumer_name", request.consumer_name),
                         ("max_in_flight", request.max_in_flight)):
        if value:
            raise InvalidArgument(field, "only the first ConsumeRequest opens the stream; later ones carry "
                                  "ack and nack only")
    for field, tokens in (("ack", request.ack), ("nack", request.nack)):
        if 0 in tokens:
            raise InvalidArgument(field, "0 is not a delivery token")
