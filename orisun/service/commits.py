"""Commit routing in one place: every report that events were committed reaches the live feed
and this node's subscriptions through ``Commits.committed``.

Three sources report commits, each knowing a different amount:

- ``WRITER``: this node's writer committed ``events`` (in position order). The feed publisher of
  their boundary takes them from memory, and local subscribers get them at once.
- ``FEED``: this node published ``events`` to the live feed (its own writes or other nodes'); local
  subscribers take them from here rather than read their own feed back from NATS. The feed itself
  is not told: it is the one reporting.
- ``NOTIFY``: PostgreSQL's NOTIFY on the appended channel says some node committed up to ``head``
  (None: maybe; check). Both the feed and the subscriptions look for themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Protocol

from orisun.model import Event


class Source(StrEnum):
    """Who reports a commit (see the module's docstring): this node's writer, its feed, or NOTIFY."""

    WRITER = "writer"
    FEED = "feed"
    NOTIFY = "notify"


class FeedSink(Protocol):
    """What the routing needs of the live feed (``orisun.service.feed.LiveFeed``)."""

    def committed(self, schema: str, events: list[Event] | None = None, head: int | None = None) -> None: ...


class SubscriptionsSink(Protocol):
    """What the routing needs of the subscriptions (``orisun.service.subscriptions.Subscriptions``)."""

    def committed(self, schema: str, head: int | None, events: list[Event] | None = None) -> None: ...


class Commits:
    """Routes commit reports (see the module's doc) to the live feed and the subscriptions.

    Made before them (the feed reports to it), then told where to route with ``route_to``; until
    then, and after ``route_to(None, None)``, reports go nowhere.
    """

    def __init__(self, schemas: Iterable[str]) -> None:
        self._schemas = tuple(schemas)
        self._feed: FeedSink | None = None
        self._subscriptions: SubscriptionsSink | None = None

    def add(self, schema: str) -> None:
        """Route the reports of ``schema`` (a boundary created at runtime) too."""
        if schema not in self._schemas:
            self._schemas = (*self._schemas, schema)

    def route_to(self, feed: FeedSink | None, subscriptions: SubscriptionsSink | None) -> None:
        self._feed, self._subscriptions = feed, subscriptions

    def committed(self, schema: str, head: int | None, events: list[Event] | None = None, *,
                  source: Source) -> None:
        """Events of ``schema`` up to ``head`` were committed (None: maybe; check); ``events`` when
        this node has them (from ``WRITER`` and ``FEED``, in position order, ending at ``head``)."""
        feed, subscriptions = self._feed, self._subscriptions
        if feed is None or subscriptions is None:
            return
        if source is Source.WRITER:
            feed.committed(schema, events)
            subscriptions.committed(schema, head, events)
        elif source is Source.FEED:
            subscriptions.committed(schema, head, events)
        else:
            feed.committed(schema, head=head)
            subscriptions.committed(schema, head)

    def written(self, schema: str, events: list[Event]) -> None:
        """The writer's hand-over (``BoundaryWriter``'s ``on_commit``), as a ``WRITER`` report."""
        self.committed(schema, events[-1].position.prepare, events, source=Source.WRITER)

    def published(self, schema: str, events: list[Event]) -> None:
        """The live feed's hand-over (``LiveFeed``'s ``on_published``), as a ``FEED`` report."""
        self.committed(schema, events[-1].position.prepare, events, source=Source.FEED)

    def notified(self, payload: dict[str, Any] | None) -> None:
        """A notification on the appended channel, as a ``NOTIFY`` report (None: the listener
        reconnected, so anything may have moved in any boundary)."""
        if payload is None:
            for each in self._schemas:
                self.committed(each, None, source=Source.NOTIFY)
            return
        schema, head = payload.get("schema"), payload.get("head")
        if isinstance(schema, str) and isinstance(head, int):
            self.committed(schema, head, source=Source.NOTIFY)
