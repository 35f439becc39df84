"""Pub/sub in the core: validation and permissions around ``orisun.messaging.pubsub``."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncGenerator

from orisun.errors import InvalidArgument, PermissionDenied, quoted
from orisun.messaging.pubsub import ConsumerStatus, PubSub, PubSubMessage
from orisun.model import User

_TOKEN = r"[A-Za-z0-9_-]+"
PUBLISH_SUBJECT = re.compile(rf"{_TOKEN}(\.{_TOKEN})*")
SUBSCRIBE_SUBJECT = re.compile(rf"({_TOKEN}|\*)(\.({_TOKEN}|\*))*(\.>)?|>")
CONSUMER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_SUBJECT_BYTES = 256


def _check_subject(subject: str, pattern: re.Pattern[str], what: str) -> None:
    if not subject:
        raise InvalidArgument("subject: is required")
    if len(subject.encode()) > MAX_SUBJECT_BYTES:
        raise InvalidArgument(f"subject: is {len(subject.encode())} bytes, more than the {MAX_SUBJECT_BYTES} allowed")
    if not pattern.fullmatch(subject):
        raise InvalidArgument(f"subject: {quoted(subject)} is not {what} "
                              "(dot-separated tokens of letters, digits, _ and -)")


class PubSubService:
    def __init__(self, pubsub: PubSub, *, max_payload: int) -> None:
        self._pubsub = pubsub
        self._max_payload = max_payload

    async def consumers(self) -> list[ConsumerStatus]:
        """Every pub/sub consumer with its pending counts (any user may look)."""
        return await self._pubsub.consumers()

    async def publish(self, user: User, message: PubSubMessage) -> PubSubMessage:
        if not user.can_write:
            raise PermissionDenied(f"user {quoted(user.username)} may not publish (needs role ADMIN or OPERATIONS)")
        _check_subject(message.subject, PUBLISH_SUBJECT, "a subject to publish to (no wildcards)")
        size = len(message.data.encode()) + len(message.metadata.encode()) + len(message.id.encode()) + 256
        if size > self._max_payload:
            raise InvalidArgument(f"data: the message is about {size} bytes, more than the {self._max_payload} "
                                  "allowed (ORISUN_NATS_MAX_PAYLOAD)")
        if not message.id:
            message = PubSubMessage(str(uuid.uuid4()), message.subject, message.data, message.metadata)
        elif len(message.id.encode()) > 256:
            raise InvalidArgument("id: must be at most 256 bytes")
        await self._pubsub.publish(message)
        return message

    async def subscribe(self, user: User, subject: str, consumer_name: str) -> AsyncGenerator[PubSubMessage, None]:
        _check_subject(subject, SUBSCRIBE_SUBJECT, "a subject to subscribe to")
        if not CONSUMER_NAME.fullmatch(consumer_name):
            raise InvalidArgument(f"consumer_name: {quoted(consumer_name)} must be 1-64 letters, digits, _ or -")
        # aclosing: a cancelled client must release its pull subscription now, not at GC.
        async with contextlib.aclosing(self._pubsub.subscribe(subject, consumer_name)) as messages:
            async for message in messages:
                yield message
