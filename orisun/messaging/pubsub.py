"""Pub/sub topics on JetStream (contract section 6).

One file-backed stream, ``ORISUN_PUBSUB``, holds every topic under ``orisun.pubsub.<subject>``
for ``retention`` seconds. A subscriber name maps to one durable pull consumer per subject:
clients sharing the name pull from the same consumer, so each message goes to one of them
(competing consumers); another name is another consumer and gets every message (fan-out); a
durable consumer keeps its place while nobody is connected. A message is acknowledged only once
the next one is asked for, that is after it was handed on; one fetched by a client that vanishes
is redelivered after ``ack_wait`` (at-least-once).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from orisun.errors import Unavailable
from orisun.messaging._streams import add_or_update_stream

STREAM = "ORISUN_PUBSUB"
PREFIX = "orisun.pubsub."
_FETCH_WAIT = 5.0  # seconds one pull waits for messages before asking again
_LEADERLESS_POLL = 0.25  # seconds between pulls while a clustered consumer has no leader
_LEADERLESS_FOR = 30.0  # seconds without a leader before the subscriber is told to retry


@dataclass(frozen=True)
class PubSubMessage:
    id: str
    subject: str
    data: str
    metadata: str


def durable_name(consumer_name: str, subject: str) -> str:
    """The JetStream consumer for a (name, subject) pair; durable names cannot hold dots."""
    return f"{consumer_name}_{hashlib.sha256(subject.encode()).hexdigest()[:12]}"


_DIGEST_SUFFIX = 13  # "_" and the 12 hex digits durable_name appends


@dataclass(frozen=True)
class ConsumerStatus:
    """A pub/sub consumer as JetStream sees it, for the dashboard."""

    stream: str
    subject: str
    consumer_name: str
    pending: int  # messages not yet delivered to it
    ack_pending: int  # delivered, not yet acknowledged
    redelivered: int


class PubSub:
    def __init__(self, client: Client, *, retention: float, ack_wait: float, replicas: int = 1) -> None:
        self._js = client.jetstream()
        self._retention = retention
        self._ack_wait = ack_wait
        self._replicas = replicas  # copies of the stream (and so of its consumers) in a NATS cluster

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
        try:
            infos = await self._js.consumers_info(STREAM)
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"NATS is unavailable ({exc}); retry") from exc
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
        body = json.dumps({"id": message.id, "data": message.data, "metadata": message.metadata}).encode()
        try:
            # Nats-Msg-Id makes a retried publish of the same id a no-op within the dedupe window.
            await self._js.publish(PREFIX + message.subject, body, stream=STREAM, headers={"Nats-Msg-Id": message.id})
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"NATS is unavailable ({exc}); retry") from exc

    async def subscribe(self, subject: str, consumer_name: str) -> AsyncGenerator[PubSubMessage, None]:
        """Messages for ``consumer_name`` on ``subject``, until the caller stops iterating."""
        config = ConsumerConfig(durable_name=durable_name(consumer_name, subject), ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.NEW, ack_wait=self._ack_wait,
                                filter_subject=PREFIX + subject)
        try:
            subscription = await self._js.pull_subscribe(PREFIX + subject, durable=config.durable_name,
                                                         stream=STREAM, config=config)
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"NATS is unavailable ({exc}); retry") from exc
        try:
            unavailable_since: float | None = None
            while True:
                try:
                    batch = await subscription.fetch(1, timeout=_FETCH_WAIT)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
                    # In a cluster, a new consumer (or one whose leader's node died) answers "no
                    # service" until its replicas elect a leader: wait for that, within bounds.
                    loop = asyncio.get_running_loop()
                    unavailable_since = unavailable_since or loop.time()
                    if loop.time() - unavailable_since > _LEADERLESS_FOR:
                        raise Unavailable(f"NATS is unavailable (pub/sub consumer without a leader: {exc}); "
                                          "retry") from exc
                    await asyncio.sleep(_LEADERLESS_POLL)
                    continue
                except nats.errors.Error as exc:
                    raise Unavailable(f"NATS is unavailable ({exc}); retry") from exc
                unavailable_since = None
                for msg in batch:
                    body = json.loads(msg.data)
                    yield PubSubMessage(body["id"], msg.subject.removeprefix(PREFIX), body["data"], body["metadata"])
                    # Resumed: the caller has handed the message on, so it is done.
                    await msg.ack()
        finally:
            await subscription.unsubscribe()
