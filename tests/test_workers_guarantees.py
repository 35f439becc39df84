"""Worker processes (``ORISUN_WORKERS``): every guarantee holds across workers -- calls spread over
them and see one log, subscriber_name is exclusive, a changed password is refused by every worker,
failed logins are throttled across every worker and the dashboard, the dashboard counts every
worker's subscribers. Shared fixtures and helpers: tests/workers_support.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.runtime.postgres import EmbeddedPostgres
from tests import workers_support
from tests.support import ServerThread, auth_metadata, connections, running_server, wait_for
from tests.test_dashboard_http import Client, logged_in
from tests.workers_support import AUTH, BOUNDARIES, BOUNDARY, channel, on_every_worker, read_all, save, worker_pids

# Fixtures of tests/workers_support.py, bound to names of this module so that pytest finds them here.
node = workers_support.node


pytestmark = pytest.mark.timeout(120)


# --- Every guarantee across workers --------------------------------------------------------------


def test_calls_spread_over_every_worker_and_see_one_log(node: ServerThread) -> None:
    """Writes through connections to both workers form one dense log that both serve."""
    channels = on_every_worker(node)
    try:
        stubs = [pb_grpc.EventStoreStub(each) for each in channels]
        stream = f"spread-{uuid.uuid4().hex[:8]}"
        for version, stub in enumerate(stubs * 3):
            save(stub, stream, version - 1, str(uuid.uuid4()))
        logs = [[(e.stream_id, e.version) for e in read_all(stub) if e.stream_id == stream] for stub in stubs]
        assert all(log == [(stream, v) for v in range(len(stubs) * 3)] for log in logs), logs
    finally:
        for each in channels:
            each.close()


def test_a_subscriber_name_is_exclusive_across_workers(node: ServerThread) -> None:
    channels = on_every_worker(node)
    name = f"exclusive-{uuid.uuid4().hex[:8]}"
    calls: list[Any] = []
    try:
        request = pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY, subscriber_name=name)
        first = pb_grpc.EventStoreStub(channels[0]).SubscribeToEvents(request, metadata=AUTH, timeout=60)
        calls.append(first)
        save(pb_grpc.EventStoreStub(channels[0]), f"x-{name}", -1, str(uuid.uuid4()))
        next(first)  # it holds the name now
        for each in channels[1:]:  # one of them is on the other worker
            second = pb_grpc.EventStoreStub(each).SubscribeToEvents(request, metadata=AUTH, timeout=60)
            calls.append(second)
            with pytest.raises(grpc.RpcError) as refused:
                next(second)
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS, refused.value.details()
    finally:
        for call in calls:
            call.cancel()
        for each in channels:
            each.close()


def test_a_changed_password_is_refused_by_every_worker(node: ServerThread) -> None:
    username, old, new = f"w{uuid.uuid4().hex[:8]}", "old-password-1", "new-password-2"
    users = node.app.users
    assert users is not None
    node.call(users.create("Worker test", username, old, []))
    channels = on_every_worker(node)
    try:
        request = pb.GetEventsRequest(boundary=BOUNDARY, count=1, direction=pb.ASC)
        for each in channels:  # every worker now has the old password in its cache
            pb_grpc.EventStoreStub(each).GetEvents(request, metadata=auth_metadata(username, old), timeout=30)
        node.call(users.change_password(username, new))

        refused: set[int] = set()

        def refused_everywhere() -> bool:
            # Each channel is asked until it refuses once: every refusal is a failed login, and
            # asking again would only bring the login throttle on.
            for index, each in enumerate(channels):
                if index in refused:
                    continue
                try:
                    pb_grpc.EventStoreStub(each).GetEvents(request, metadata=auth_metadata(username, old), timeout=30)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc.details()
                    refused.add(index)
                    continue
                return False
            return True

        wait_for(refused_everywhere, 10, "every worker to refuse the old password")

        def accepted(each: grpc.Channel) -> bool:
            # Those refusals may have throttled the username for a moment (node-wide, as intended):
            # the new password is then accepted once the throttle's wait is over.
            try:
                pb_grpc.EventStoreStub(each).GetEvents(request, metadata=auth_metadata(username, new), timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED and "too many failed logins" in str(exc.details())
                return False
            return True

        for each in channels:
            wait_for(lambda each=each: accepted(each), 30, "the new password to be accepted")
    finally:
        for each in channels:
            each.close()


def by_worker(server: ServerThread, tries: int = 40) -> dict[int, grpc.Channel]:
    """A channel (its own connection) to each worker, by the worker's pid."""
    pids, port = worker_pids(server), server.app.grpc_port
    found: dict[int, grpc.Channel] = {}
    for _ in range(tries):
        before = connections(pids, port)
        each = channel(server)
        grpc.channel_ready_future(each).result(timeout=10)
        after = connections(pids, port)
        pid = next((p for p in pids if after[p] > before[p]), None)
        if pid is not None and pid not in found:
            found[pid] = each
            if len(found) == len(pids):
                return found
        else:
            each.close()
    raise AssertionError(f"{tries} connections did not reach every worker")


def test_failed_logins_are_throttled_across_every_worker_and_the_dashboard(postgres: EmbeddedPostgres) -> None:
    """Guesses spread over the workers go no faster than sent to one: five failures on one worker
    throttle new logins from that address on every worker and on the dashboard."""
    with running_server(postgres.conninfo, "test_worker_logins", boundaries=BOUNDARIES, workers=2) as server:
        users = server.app.users
        assert users is not None
        # Users never signed in: a login of theirs takes the full check, where the throttle applies.
        fresh = [(f"fresh{i}", f"fresh-password-{i}") for i in range(12)]
        for username, password in [("victim", "victim-password"), *fresh]:
            server.call(users.create("Worker test", username, password, []))
        channels = by_worker(server)
        guessed, *others = channels.values()
        request = pb.GetEventsRequest(boundary=BOUNDARY, count=1, direction=pb.ASC)
        for attempt in range(5):
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.EventStoreStub(guessed).GetEvents(request, metadata=auth_metadata("victim", f"guess-{attempt}"),
                                                          timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "too many" not in (refused.value.details() or ""), "throttled before the fifth failure"

        unused = iter(fresh)

        def throttled_on(each: grpc.Channel) -> bool:
            username, password = next(unused)  # a success would cache that user: use each only once
            try:
                pb_grpc.EventStoreStub(each).GetEvents(request, metadata=auth_metadata(username, password), timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc.details()
                return "too many failed logins" in (exc.details() or "")
            return False

        for each in others:
            wait_for(lambda each=each: throttled_on(each), 5, "the other worker to throttle logins from the address")
        username, password = next(unused)
        client = Client(server.dashboard_url)
        wait_for(lambda: client.login(username, password).status == 429, 5, "the dashboard to throttle the address")
        for each in channels.values():
            each.close()


def test_the_dashboard_counts_the_subscribers_of_every_worker(node: ServerThread) -> None:
    channels = on_every_worker(node)
    names = [f"dash-{i}-{uuid.uuid4().hex[:6]}" for i in range(len(channels))]
    calls = [pb_grpc.EventStoreStub(each).SubscribeToEvents(
        pb.CatchUpSubscribeToEventStoreRequest(boundary=BOUNDARY, subscriber_name=name), metadata=AUTH, timeout=60)
        for each, name in zip(channels, names, strict=True)]
    try:
        client = logged_in(node)

        def listed() -> set[str]:
            body = client.get("/api/subscriptions").body
            return {each["subscriber_name"] for each in body["subscriptions"] if each["boundary"] == BOUNDARY}

        wait_for(lambda: set(names) <= listed(), 20, "every worker's subscriptions on the dashboard")

        def counted() -> int:
            overview = client.get("/api/overview").body
            return int(next(b["subscribers"] for b in overview["boundaries"] if b["boundary"] == BOUNDARY))

        wait_for(lambda: counted() == len(names), 20, f"{len(names)} live subscribers in the overview")
    finally:
        for call in calls:
            call.cancel()
        for each in channels:
            each.close()

