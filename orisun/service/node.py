"""One whole node across its processes: its subscriptions (for the dashboard) and its failed logins.

With ``ORISUN_WORKERS`` above 1 a node is a supervisor and its worker processes, and each worker
serves its own SubscribeToEvents calls. ``NodeSubscriptions`` sums them: the supervisor asks the
workers over NATS (``messaging.gather``) and adds its own (the dashboard's live tails). With one
process it is that process's ``Subscriptions``.

``share_logins`` makes the failed-login throttle one per node again: each process tells the
others of every failure and success it counts, so that spreading password guesses over the
workers (and the dashboard) goes no faster than sending them all to one process.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from orisun.messaging import gather
from orisun.model import Position
from orisun.service.pubsub import PubSubService, ServedConsumer
from orisun.service.subscriptions import NamedSubscription, ServedSubscription, Subscriptions
from orisun.service.throttle import LoginThrottle
from orisun.service.users import Users

# How long the dashboard waits for the workers' answers; a worker that is restarting is left out.
GATHER_TIMEOUT = 1.0


def figures_subject(node: str) -> str:
    """The NATS subject a node's workers answer on (``node``: the supervisor's random id)."""
    return f"_orisun.node.{node}.subscriptions"


def logins_subject(node: str) -> str:
    return f"_orisun.node.{node}.logins"


def users_subject(node: str) -> str:
    return f"_orisun.node.{node}.users"


async def share_user_changes(client: Client, node: str, users: Users, processes: Callable[[], int]) -> Subscription:
    """Make a user change made through one process of the node hold on all of them when it is
    answered: the changing process asks every process (``processes()``, itself included) to forget
    the user and waits for their answers, at most GATHER_TIMEOUT (a process restarting has no
    cache to forget). Without this, a user deleted through one worker still passed on another for
    as long as PostgreSQL's notification took. Unsubscribe the returned subscription to stop."""

    def forget(body: Any) -> bool:
        if isinstance(body, str):
            users.forget(body)
        return True

    subscription = await gather.respond(client, users_subject(node), forget)

    async def tell(username: str) -> None:
        try:
            await gather.gather(client, users_subject(node), processes(), GATHER_TIMEOUT, body=username)
        except Exception as exc:  # NATS away: the others still learn through PostgreSQL's notification
            logger.warning("Could not tell the node's other processes that user {!r} changed: {!r}", username, exc)

    users.tell_node = tell
    return subscription


async def share_logins(client: Client, node: str, throttle: LoginThrottle) -> gather.Broadcast:
    """Count the failed and successful logins of the node's other processes in ``throttle``, and
    tell them of this one's; close the returned broadcast to stop."""
    broadcast = gather.Broadcast(client, logins_subject(node))

    def counted(body: Any) -> None:
        if not (isinstance(body, list) and len(body) == 3):
            return
        outcome, username, address = body
        if not isinstance(username, str) or not isinstance(address, (str, type(None))):
            return
        if outcome == "failed" and address is not None:
            throttle.failed(username, address, announce=False)
        elif outcome == "succeeded":
            throttle.succeeded(username, address, announce=False)

    await broadcast.listen(counted)
    throttle.announce = lambda outcome, username, address: broadcast.send([outcome, username, address])
    return broadcast


def _position(position: Position | None) -> list[int]:
    return [position.commit, position.prepare] if position else []


def figures(subscriptions: Subscriptions, pubsub: PubSubService | None = None) -> dict[str, Any]:
    """One process's subscriptions as plain data (what a worker answers)."""
    return {
        "active": [[each.boundary, each.subscriber_name, *_position(each.position)]
                   for each in subscriptions.active()],
        "live": subscriptions.live(),
        "served": [[each.boundary, each.subscriber_name, each.stream, each.since, each.examined, each.delivered,
                    *_position(each.position)]
                   for each in subscriptions.served()],
        "pubsub": [[each.subject, each.consumer_name, each.call, each.since, each.delivered]
                   for each in (pubsub.served() if pubsub is not None else [])],
    }


async def answer_figures(client: Client, node: str, subscriptions: Subscriptions,
                         pubsub: PubSubService | None = None) -> Subscription:
    """Answer the supervisor's requests for this worker's subscriptions."""
    return await gather.answer(client, figures_subject(node), lambda: figures(subscriptions, pubsub))


@dataclass(frozen=True)
class NodeSnapshot:
    """The subscriptions and pub/sub calls open on the whole node (every process) at one moment."""

    active: list[NamedSubscription]
    live: dict[str, int]  # boundary -> subscriptions served
    served: list[ServedSubscription] = field(default_factory=list)  # every open subscription call
    pubsub: list[ServedConsumer] = field(default_factory=list)  # every open pub/sub call


class NodeSubscriptions:
    """The named subscriptions and live subscriber counts of this process and, when ``workers``
    says how many there are, of the node's worker processes."""

    def __init__(self, local: Subscriptions, client: Client | None = None, node: str = "",
                 workers: Callable[[], int] = lambda: 0, pubsub: PubSubService | None = None) -> None:
        self._local = local
        self._pubsub = pubsub
        self._client = client
        self._node = node
        self._workers = workers

    async def _all(self) -> list[dict[str, Any]]:
        everyone = [figures(self._local, self._pubsub)]
        if self._client is not None and self._workers() > 0:
            everyone += await gather.gather(self._client, figures_subject(self._node), self._workers(), GATHER_TIMEOUT)
        return everyone

    async def snapshot(self) -> NodeSnapshot:
        """The named subscriptions served (by boundary and name) and how many subscriptions (named
        or not) are served per boundary, from one round of answers."""
        found = []
        served = []
        consumers = []
        total: collections.Counter[str] = collections.Counter()
        for each in await self._all():
            for entry in each.get("active", []):
                boundary, name, *position = entry
                found.append(NamedSubscription(boundary, name, Position(*position) if position else None))
            total.update({boundary: int(count) for boundary, count in each.get("live", {}).items()})
            for entry in each.get("served", []):
                boundary, name, stream, since, examined, delivered, *position = entry
                served.append(ServedSubscription(boundary, name, stream, since, examined,
                                                 Position(*position) if position else None, delivered))
            consumers += [ServedConsumer(*entry) for entry in each.get("pubsub", [])]
        return NodeSnapshot(sorted(found, key=lambda each: (each.boundary, each.subscriber_name)),
                            {boundary: total[boundary] for boundary in self._local.live()},
                            sorted(served, key=lambda each: (each.boundary, each.subscriber_name, each.since)),
                            sorted(consumers, key=lambda each: (each.subject, each.consumer_name, each.since)))
