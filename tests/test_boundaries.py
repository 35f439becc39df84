"""Boundaries created at runtime (issue #15): the catalog in the admin boundary, usable at once on
every node without a restart, created once when two nodes race, kept across restarts, and the
name rules of ORISUN_PG_SCHEMAS. These tests create boundaries through the core
(``Orisun.boundaries``); tests/test_admin_api.py does it through the gRPC Admin service."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from orisun import errors
from orisun._proto import eventstore_pb2 as pb
from orisun.aio import cancel_and_wait
from orisun.errors import StartupError
from orisun.model import Boundary
from orisun.storage.migrations import BOUNDARY, load_migrations
from tests.support import ServerThread, auth_metadata, server_settings, shared_tmpdir, wait_for

AUTH = auth_metadata()
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def other_node(database: str) -> Iterator[Callable[..., ServerThread]]:
    """Starts servers on the test's database with their own data dirs (another node's NATS)."""
    started: list[tuple[ServerThread, Path]] = []

    def start(**overrides: Any) -> ServerThread:
        data_dir = shared_tmpdir("orisun-test-data-")
        node = ServerThread(server_settings(data_dir, database, **overrides))
        started.append((node, data_dir))
        return node.start()

    yield start
    for node, data_dir in reversed(started):
        node.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def create(server: ServerThread, name: str, **options: Any) -> Boundary:
    assert server.app.boundaries is not None
    return server.call(server.app.boundaries.create(name, **options))  # type: ignore[no-any-return]


def listed(server: ServerThread) -> dict[str, Boundary]:
    assert server.app.boundaries is not None
    return {b.name: b for b in server.call(server.app.boundaries.list())}


def save(server: ServerThread, boundary: str, stream: str = "s-1", expected: int = -1) -> pb.WriteResult:
    request = pb.SaveEventsRequest(
        boundary=boundary,
        stream=pb.SaveStreamQuery(name=stream, expected_version=expected),
        events=[pb.EventToSave(event_id=str(uuid.uuid4()), event_type="Happened", data="{}")],
    )
    with server.stub() as stub:
        return stub.SaveEvents(request, metadata=AUTH, timeout=10)


def read(server: ServerThread, boundary: str) -> list[pb.Event]:
    with server.stub() as stub:
        return list(stub.GetEvents(pb.GetEventsRequest(boundary=boundary, count=100), metadata=AUTH, timeout=10).events)


def applied_migrations(conninfo: str, schema: str) -> list[tuple[str, int]]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            psycopg.sql.SQL("SELECT kind, version FROM {} ORDER BY kind, version").format(
                psycopg.sql.Identifier(schema, "orisun_migrations"))
        ).fetchall()
    return [(kind, version) for kind, version in rows]


def test_a_created_boundary_is_served_at_once_and_listed(server: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        save(server, "ledger")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND

    created = create(server, "ledger", description="the ledger")
    assert (created.name, created.schema, created.description, created.existed_before_catalog) == (
        "ledger", "ledger", "the ledger", False)
    assert created.created_at is not None

    result = save(server, "ledger")
    assert result.new_stream_version == 0
    assert [e.position.prepare_position for e in read(server, "ledger")] == [1]
    boundaries = listed(server)
    assert boundaries["ledger"] == created
    # The configured admin boundary is in the catalog as well, as existing before it.
    admin = boundaries[server.settings.admin_boundary]
    assert admin.existed_before_catalog and admin.schema == server.settings.admin_schema


def test_a_created_boundary_gets_live_subscriptions(server: ServerThread) -> None:
    create(server, "live_one")
    save(server, "live_one", "a")  # before the subscription: caught up
    with server.stub() as stub:
        stream = stub.SubscribeToEvents(pb.CatchUpSubscribeToEventStoreRequest(boundary="live_one"),
                                        metadata=AUTH, timeout=30)
        try:
            first = next(stream)
            save(server, "live_one", "b")  # live
            second = next(stream)
        finally:
            stream.cancel()
    assert (first.stream_id, second.stream_id) == ("a", "b")
    assert second.position.prepare_position == 2
    # This node publishes the new boundary's live feed (it holds the only feed lock).
    assert server.app.feed is not None
    wait_for(lambda: server.app.feed.owns("live_one"), 10, "the node to publish the new boundary's feed")


def test_another_node_serves_a_new_boundary_at_once(
    start_server: Callable[..., ServerThread], other_node: Callable[..., ServerThread]
) -> None:
    a = start_server()
    b = other_node()
    # B learns of new boundaries without being asked (LISTEN/NOTIFY): its dashboard lists them.
    create(a, "heard_of")
    assert b.app.db is not None
    wait_for(lambda: "heard_of" in b.app.db.boundaries, 10, "node B to hear of the new boundary")
    # A request may come before the notification does: B then finds the boundary in the catalog.
    # Its notifications are held back here (the listener stopped) to make that case certain.
    assert b.app.boundaries is not None and b.app.boundaries._listener is not None
    b.call(cancel_and_wait([b.app.boundaries._listener]))
    for attempt in range(3):
        name = f"fresh_{attempt}"
        create(a, name)
        assert name not in b.app.db.boundaries
        assert save(b, name).new_stream_version == 0
        assert len(read(b, name)) == 1
    with pytest.raises(grpc.RpcError) as unknown:
        save(b, "never_created")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def race(server: ServerThread, name: str, barrier: threading.Barrier, outcomes: list[object]) -> None:
    """Create ``name`` on ``server`` as soon as the other racer is ready; record the outcome."""
    barrier.wait()
    try:
        outcomes.append(create(server, name))
    except errors.AlreadyExists as exc:
        outcomes.append(exc)


def test_two_nodes_creating_one_boundary_at_once_make_it_once(
    start_server: Callable[..., ServerThread], other_node: Callable[..., ServerThread], database: str
) -> None:
    a = start_server()
    b = other_node()
    for round_ in range(4):
        name = f"raced_{round_}"
        outcomes: list[object] = []
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=race, args=(s, name, barrier, outcomes)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(type(o).__name__ for o in outcomes) == ["AlreadyExists", "Boundary"], outcomes
        failure = next(o for o in outcomes if isinstance(o, errors.AlreadyExists))
        assert f"boundary {name!r} exists already" in str(failure)
        # One schema, each migration applied once.
        assert applied_migrations(database, name) == [(BOUNDARY, m.version) for m in load_migrations(BOUNDARY)]
        assert save(a, name).new_stream_version == 0
        assert save(b, name, expected=0).new_stream_version == 1


def test_created_boundaries_survive_a_restart(
    start_server: Callable[..., ServerThread], other_node: Callable[..., ServerThread]
) -> None:
    first = start_server()
    create(first, "kept", description="kept across restarts")
    save(first, "kept")
    first.stop()
    second = other_node()
    assert listed(second)["kept"].description == "kept across restarts"
    assert len(read(second, "kept")) == 1
    assert save(second, "kept", expected=0).new_stream_version == 1


def test_creation_rules(server: ServerThread, database: str) -> None:
    def refused(kind: type[Exception], name: str, **options: Any) -> str:
        with pytest.raises(kind) as caught:
            create(server, name, **options)
        return str(caught.value)

    assert refused(errors.InvalidArgument, "").startswith("name: ")
    assert refused(errors.InvalidArgument, "9lives").startswith("name: ")
    assert refused(errors.InvalidArgument, "has space").startswith("name: ")
    assert refused(errors.InvalidArgument, "x" * 64).startswith("name: ")
    assert "reserved" in refused(errors.InvalidArgument, "pg_mine")
    assert refused(errors.InvalidArgument, "fine", schema="bad-schema").startswith("schema: ")
    assert refused(errors.InvalidArgument, "fine", schema="bad-schema",
                   schema_field="placement.namespace").startswith("placement.namespace: ")
    assert refused(errors.InvalidArgument, "fine", description="d" * 1_001).startswith("description: ")
    # Taken: a configured boundary's name, a created one's, and another boundary's schema.
    assert "exists already" in refused(errors.AlreadyExists, server.settings.admin_boundary)
    create(server, "first", schema="first_schema")
    assert "exists already" in refused(errors.AlreadyExists, "first")
    assert "first" in refused(errors.AlreadyExists, "second", schema="first_schema")
    # A schema that exists in PostgreSQL but not in the catalog is only used when asked to adopt it.
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA theirs")
    assert "existed_before_catalog" in refused(errors.FailedPrecondition, "adopted", schema="theirs")
    # Nothing of the refused ones was recorded or made.
    assert set(listed(server)) == {server.settings.admin_boundary, "first"}
    with psycopg.connect(database) as conn:
        schemas = {row[0] for row in conn.execute("SELECT nspname FROM pg_namespace")}
    assert {"fine", "second", "adopted", "bad-schema"}.isdisjoint(schemas)
    adopted = create(server, "adopted", schema="theirs", adopt=True)
    assert adopted.existed_before_catalog and adopted.schema == "theirs"
    assert save(server, "adopted").new_stream_version == 0


def test_a_configured_boundary_keeps_its_schema(
    start_server: Callable[..., ServerThread], other_node: Callable[..., ServerThread]
) -> None:
    first = start_server(boundaries={"orisun_admin": "orisun_admin", "users": "users_v1"})
    save(first, "users")
    first.stop()
    # The same boundary in another schema would split its events: refused, naming the variable.
    with pytest.raises(StartupError, match="ORISUN_PG_SCHEMAS: boundary 'users' has schema 'users_v1'"):
        other_node(boundaries={"orisun_admin": "orisun_admin", "users": "users_v2"})


def test_with_workers_a_boundary_created_through_one_worker_is_live_on_every_worker(
    start_server: Callable[..., ServerThread],
) -> None:
    """CreateBoundary reaches one worker; the supervisor (which publishes the live feeds and serves
    no calls) and the other worker hear of it from PostgreSQL: subscribers on every worker get the
    events written through every worker, live, in order."""
    from orisun._proto import admin_pb2 as apb
    from orisun._proto import admin_pb2_grpc as apb_grpc
    from orisun._proto import eventstore_pb2_grpc as pb_grpc
    from tests.workers_support import on_every_worker

    server = start_server(workers=2)
    channels = on_every_worker(server)
    streams = []
    try:
        apb_grpc.AdminStub(channels[0]).CreateBoundary(apb.CreateBoundaryRequest(name="wk_live"), metadata=AUTH,
                                                       timeout=30)
        stores = [pb_grpc.EventStoreStub(each) for each in channels]
        streams = [store.SubscribeToEvents(pb.CatchUpSubscribeToEventStoreRequest(boundary="wk_live"),
                                           metadata=AUTH, timeout=60) for store in stores]
        written = []
        for i, store in enumerate(stores):
            event = pb.EventToSave(event_id=str(uuid.uuid4()), event_type="T", data="{}")
            store.SaveEvents(pb.SaveEventsRequest(boundary="wk_live", events=[event],
                                                  stream=pb.SaveStreamQuery(name=f"s-{i}", expected_version=-1)),
                             metadata=AUTH, timeout=15)
            written.append(event.event_id)
        for stream in streams:
            got = [next(stream) for _ in written]
            assert [e.event_id for e in got] == written
            assert [e.position.prepare_position for e in got] == list(range(1, len(written) + 1))
        # The supervisor publishes the new boundary's feed.
        assert server.app.feed is not None
        wait_for(lambda: server.app.feed.owns("wk_live"), 10, "the supervisor to publish the new feed")
    finally:
        for stream in streams:
            stream.cancel()
        for each in channels:
            each.close()
