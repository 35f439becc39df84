"""SubscribeToEvents: subscriber_name exclusivity per boundary, across both RPC names and across two
nodes on one database, its release when the client or the node goes, no exclusivity for an empty
name; and that a live event is encoded once for all its subscribers. Fixtures and helpers:
tests/subscriptions_support.py.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from tests import subscriptions_support
from tests.subscriptions_support import (
    BOUNDARIES,
    DELIVERY_TIMEOUT,
    RPCS,
    Subscription,
    assert_same_events,
    ev,
    head,
    pos,
    query,
    read_all,
    refusal,
    save,
)
from tests.support import ServerThread, server_settings, shared_tmpdir, wait_for

# Fixtures of tests/subscriptions_support.py, bound to names of this module so that pytest finds them here.
sub_server = subscriptions_support.sub_server
stub = subscriptions_support.stub
subscribe = subscriptions_support.subscribe


pytestmark = pytest.mark.timeout(120)


# --- subscriber_name -------------------------------------------------------------------------------


def _established(server: ServerThread, boundary: str, name: str, rpc: str) -> Subscription:
    """A named subscription holding its name, retried while the name is still taken (a previous
    holder's release happens on the server after it sees the cancellation). It holds the name once
    it has delivered an event: the boundary has history."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        subscription = Subscription(server, boundary, name=name, rpc=rpc)

        def answered(subscription: Subscription = subscription) -> bool:
            return bool(subscription.events) or subscription.error is not None

        try:
            wait_for(answered, DELIVERY_TIMEOUT, f"{name} to get an answer")
        except BaseException:
            subscription.close()
            raise
        if subscription.events:
            return subscription
        subscription.close()
        error = subscription.error
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.ALREADY_EXISTS, error
        assert time.monotonic() < deadline, f"the subscriber name {name!r} stayed taken"


def test_second_subscription_with_the_same_name_is_refused(
    sub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription]
) -> None:
    save(stub, "sub_names", "s", [ev()])
    save(stub, "sub_names_other", "s", [ev()])
    name = "projector-1"
    holder = subscribe("sub_names", name=name)
    holder.wait_for_count(1)

    started = time.monotonic()
    code, details = refusal(sub_server, pb.CatchUpSubscribeToEventStoreRequest(boundary="sub_names",
                                                                               subscriber_name=name))
    assert code == grpc.StatusCode.ALREADY_EXISTS, details
    assert name in details
    assert time.monotonic() - started < 5, "refused at once, not after a wait"
    # A different query or position does not make it another subscriber.
    code, details = refusal(sub_server, pb.CatchUpSubscribeToEventStoreRequest(
        boundary="sub_names", subscriber_name=name, query=query([("x", "y")]), position=pos(1, 1)))
    assert code == grpc.StatusCode.ALREADY_EXISTS, details

    # The same name on another boundary is another subscriber.
    other = subscribe("sub_names_other", name=name)
    other.wait_for_count(1)
    # A different name on the same boundary too.
    different = subscribe("sub_names", name="projector-2")
    different.wait_for_count(1)

    # The holder was not disturbed by the refused attempts.
    last = save(stub, "sub_names", "s", [ev()]).log_position.prepare_position
    for subscription in (holder, different):
        subscription.wait_for_position(last)
        assert subscription.positions() == [1, 2]
    assert other.positions() == [1]


@pytest.mark.parametrize("holder_rpc", RPCS)
def test_the_name_is_shared_by_both_rpc_names(
    sub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription], holder_rpc: str
) -> None:
    if head(stub, "sub_rpc_names") == 0:
        save(stub, "sub_rpc_names", "s", [ev()])
    name = f"held-by-{holder_rpc}"
    holder = subscribe("sub_rpc_names", name=name, rpc=holder_rpc)
    holder.wait_for_count(1)
    for rpc in RPCS:
        code, details = refusal(sub_server, pb.CatchUpSubscribeToEventStoreRequest(
            boundary="sub_rpc_names", subscriber_name=name), rpc)
        assert code == grpc.StatusCode.ALREADY_EXISTS, (rpc, details)
        assert name in details


def test_the_name_frees_when_its_client_goes(sub_server: ServerThread, stub: pb_grpc.EventStoreStub) -> None:
    boundary = "sub_release"
    save(stub, boundary, "s", [ev(), ev()])
    request = pb.CatchUpSubscribeToEventStoreRequest(boundary=boundary, subscriber_name="released")
    holder = Subscription(sub_server, boundary, name="released")
    try:
        holder.wait_for_count(2)
        for round_ in range(4):
            code, details = refusal(sub_server, request, RPCS[round_ % 2])
            assert code == grpc.StatusCode.ALREADY_EXISTS, details
            holder.close()
            # Free again once the server has seen the client go: _established waits for it.
            holder = _established(sub_server, boundary, "released", RPCS[(round_ + 1) % 2])
            holder.wait_for_count(2)
            assert holder.positions() == [1, 2]
    finally:
        holder.close()


def test_the_name_is_exclusive_across_nodes(sub_server: ServerThread, stub: pb_grpc.EventStoreStub) -> None:
    """A second node on the same database (its own NATS and data dir) refuses a name the first
    node serves, serves the same name on another boundary, and the name frees when its node stops.
    Its subscriber also gets what the first node commits (the database is the source of truth)."""
    save(stub, "sub_nodes", "s", [ev()])
    save(stub, "sub_nodes_other", "s", [ev()])
    data_dir = shared_tmpdir("orisun-test-second-node-")
    second = ServerThread(server_settings(data_dir, sub_server.settings.pg_conninfo, boundaries=BOUNDARIES))
    held: list[Subscription] = []
    try:
        second.start()
        held.append(_established(second, "sub_nodes", "across-nodes", "SubscribeToEvents"))
        request = pb.CatchUpSubscribeToEventStoreRequest(boundary="sub_nodes", subscriber_name="across-nodes")
        for rpc in RPCS:
            code, details = refusal(sub_server, request, rpc)
            assert code == grpc.StatusCode.ALREADY_EXISTS, details
            assert "across-nodes" in details
        # The name is per boundary on every node.
        held.append(_established(sub_server, "sub_nodes_other", "across-nodes", "SubscribeToEvents"))
        last = save(stub, "sub_nodes", "s", [ev(), ev()]).log_position.prepare_position
        held[0].wait_for_position(last)
        assert_same_events(held[0].events, read_all(stub, "sub_nodes"), "written on the other node")
        # The node serving the name goes away: the first node may now serve it.
        for subscription in held:
            subscription.close()
        second.stop()
        held.append(_established(sub_server, "sub_nodes", "across-nodes", "CatchUpSubscribeToEvents"))
    finally:
        for subscription in held:
            subscription.close()
        second.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_empty_name_means_no_exclusivity(stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription]) -> None:
    boundary = "sub_anonymous"
    save(stub, boundary, "s", [ev(), ev()])
    anonymous = [subscribe(boundary, rpc=RPCS[n % 2]) for n in range(3)]
    for subscription in anonymous:
        subscription.wait_for_count(2)
    last = save(stub, boundary, "s", [ev()]).log_position.prepare_position
    for subscription in anonymous:
        subscription.wait_for_position(last)
        assert subscription.positions() == [1, 2, 3]


def test_a_live_event_is_encoded_once_for_all_its_subscribers(
    sub_server: ServerThread, stub: pb_grpc.EventStoreStub, subscribe: Callable[..., Subscription],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #13: an event is serialised once however many subscribers receive it (once per
    worker process with workers, where each serves its own subscribers)."""
    if sub_server.settings.workers > 1:
        pytest.skip("counts the encodings done in this process, which serves no calls with workers")
    from orisun.transport import convert

    encoded: list[str] = []
    original = convert.event_to_proto

    def counting(event: Any) -> pb.Event:
        encoded.append(event.event_id)
        return original(event)

    monkeypatch.setattr(convert, "event_to_proto", counting)
    boundary = "sub_encode_once"
    first = save(stub, boundary, "s", [ev()]).log_position.prepare_position
    subscriptions = [subscribe(boundary, rpc=RPCS[n % 2]) for n in range(4)]
    for subscription in subscriptions:
        subscription.wait_for_position(first)
    live = ev()
    last = save(stub, boundary, "s", [live]).log_position.prepare_position
    for subscription in subscriptions:
        subscription.wait_for_position(last)
        assert subscription.positions() == [first, last]
        assert subscription.events[-1].event_id == live.event_id
    assert encoded.count(live.event_id) == 1, encoded

