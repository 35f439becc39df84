"""The product brief's SaveEvents/GetEvents grpcurl examples, run verbatim with the real grpcurl.

Only -plaintext, the auth header and the port are added (that is what ``grpcurl()`` does); the JSON
bodies are copied exactly from the brief. The boundaries they name are configured the way the brief
configures them (ORISUN_PG_SCHEMAS=users:test2,...). docs/contract.md §2 to §4 and §7.

Not covered here: the "Multiple Bounded Contexts" example, whose bodies contain ``"events": [...]``
(not valid JSON, so it cannot be run verbatim), and the subscription/pub-sub examples.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest

from orisun._proto import eventstore_pb2 as pb
from orisun.config import parse_boundaries
from orisun.runtime.postgres import EmbeddedPostgres
from tests.brief import BRIEF_GET_EVENTS, BRIEF_SAVE_EVENTS
from tests.support import ServerThread, auth_metadata, basic, grpcurl, running_server

pytestmark = pytest.mark.timeout(120)

# The brief: "ORISUN_PG_SCHEMAS=users:test2,orisun_admin:admin", plus the orders and payments
# boundaries its examples use and its standalone-mode "ORISUN_PG_SCHEMAS=public".
SCHEMAS = "users:test2,orders,payments,public"

# What the brief's SaveEvents example stores: two events in a new stream, versions 0 and 1.
SAVE_EXPECTED_RESULT = {"log_position": {"commit_position": "2", "prepare_position": "2"}, "new_stream_version": "1"}


# --- Fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def brief_server(postgres: EmbeddedPostgres) -> Iterator[ServerThread]:
    """One server for the module, configured with the brief's boundaries, on a fresh database."""
    boundaries = parse_boundaries(SCHEMAS, "orisun_admin")
    with running_server(postgres.conninfo, "test_brief", boundaries=boundaries) as server:
        yield server


def run(server: ServerThread, method: str, body: str, auth: tuple[str, str] = ("admin", "changeit")) -> Any:
    """Run grpcurl; the parsed JSON answer (asserting success)."""
    result = grpcurl(server.address, f"eventstore.EventStore/{method}", data=body, auth=auth)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run_failing(server: ServerThread, method: str, body: str) -> str:
    """Run grpcurl expecting a failure; its stderr."""
    result = grpcurl(server.address, f"eventstore.EventStore/{method}", data=body)
    assert result.returncode != 0, result.stdout
    return result.stderr


def save(stub: Any, boundary: str, stream: str, events: list[tuple[str, str]], expected: int) -> pb.WriteResult:
    """Save (event_id, event_type) pairs with small JSON data through the Python client."""
    request = pb.SaveEventsRequest(
        boundary=boundary,
        stream=pb.SaveStreamQuery(name=stream, expected_version=expected),
        events=[
            pb.EventToSave(event_id=event_id, event_type=event_type, data=json.dumps({"type": event_type}))
            for event_id, event_type in events
        ],
    )
    result: pb.WriteResult = stub.SaveEvents(request, metadata=auth_metadata(), timeout=60)
    return result


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


# --- SaveEvents ----------------------------------------------------------------------------------


def _assert_brief_user_events_stored(server: ServerThread) -> None:
    with server.stub() as stub:
        response = stub.GetEvents(
            pb.GetEventsRequest(boundary="users", stream=pb.GetStreamQuery(name="user-1234")),
            metadata=auth_metadata(), timeout=10,
        )
    events = list(response.events)
    assert [e.event_id for e in events] == ["0191b93c-5f3c-75c8-92ce-5a3300709178",
                                            "0191b93c-5f3c-75c8-92ce-5a3300709179"]
    assert [e.event_type for e in events] == ["UserRegistered", "UserProfileCompleted"]
    assert [e.stream_id for e in events] == ["user-1234", "user-1234"]
    assert [e.version for e in events] == [0, 1]
    assert [(e.position.commit_position, e.position.prepare_position) for e in events] == [(2, 1), (2, 2)]
    assert events[0].data == ('{"email": "john.doe@example.com", "username": "johndoe", '
                              '"full_name": "John Doe"}')
    assert events[0].metadata == '{"source": "web_signup", "ip_address": "192.168.1.1"}'
    assert [(t.key, t.value) for t in events[0].tags] == [("tenant_id", "tenant-456"), ("source", "web_signup")]
    assert events[1].data == '{"phone": "+1234567890", "address": "123 Main St, City, Country"}'
    assert events[1].metadata == '{"completed_at": "2024-01-20T15:30:00Z"}'
    assert [(t.key, t.value) for t in events[1].tags] == [("tenant_id", "tenant-456")]


def test_save_events_example(brief_server: ServerThread) -> None:
    # Whether this runs first or after test_auth_header_example, the answer is the same: the
    # second run of the same write is an idempotent retry returning the original WriteResult.
    assert run(brief_server, "SaveEvents", BRIEF_SAVE_EVENTS) == SAVE_EXPECTED_RESULT
    _assert_brief_user_events_stored(brief_server)
    # Running the example again is a safe retry, not a conflict and not a second copy.
    assert run(brief_server, "SaveEvents", BRIEF_SAVE_EVENTS) == SAVE_EXPECTED_RESULT
    _assert_brief_user_events_stored(brief_server)


def test_auth_header_example(brief_server: ServerThread) -> None:
    # grpcurl -H "Authorization: Basic dXNlcm5hbWU6cGFzc3dvcmQ=" ... SaveEvents
    assert basic("username", "password") == "Basic dXNlcm5hbWU6cGFzc3dvcmQ="
    users = brief_server.app.users
    assert users is not None
    brief_server.call(users.create("Example", "username", "password", ["OPERATIONS"]))
    assert run(brief_server, "SaveEvents", BRIEF_SAVE_EVENTS, auth=("username", "password")) == SAVE_EXPECTED_RESULT
    _assert_brief_user_events_stored(brief_server)


def test_saved_example_is_readable_with_grpcurl(brief_server: ServerThread) -> None:
    run(brief_server, "SaveEvents", BRIEF_SAVE_EVENTS)
    answer = run(brief_server, "GetEvents", '{"boundary": "users", "stream": {"name": "user-1234"}}')
    events = answer["events"]
    assert [e["event_id"] for e in events] == ["0191b93c-5f3c-75c8-92ce-5a3300709178",
                                              "0191b93c-5f3c-75c8-92ce-5a3300709179"]
    assert events[0]["data"] == ('{"email": "john.doe@example.com", "username": "johndoe", '
                                 '"full_name": "John Doe"}')
    assert events[0]["position"] == {"commit_position": "2", "prepare_position": "1"}
    assert events[0].get("version", 0) == 0  # proto3 JSON omits the default 0
    assert events[1]["version"] == 1
    assert events[1]["stream_id"] == "user-1234"


# --- GetEvents -----------------------------------------------------------------------------------


def test_get_events_example(brief_server: ServerThread) -> None:
    """Seed `orders` past position 1000, then run the brief's GetEvents example verbatim."""
    matching_types = ("OrderCreated", "PaymentProcessed", "OrderShipped")
    filler_types = (*matching_types, "ItemAdded")
    with brief_server.stub() as stub:
        # order-789, positions 1-3 (before the cursor).
        w1 = list(zip(ids(3), ["OrderCreated", "ItemAdded", "PaymentProcessed"], strict=True))
        assert save(stub, "orders", "order-789", w1, -1).log_position.prepare_position == 3
        # Other orders with the same event types, positions 4-603 and 604-997.
        filler = [filler_types[i % 4] for i in range(600)]
        assert save(stub, "orders", "order-790", list(zip(ids(600), filler, strict=True)), -1
                    ).log_position.prepare_position == 603
        assert save(stub, "orders", "order-791", list(zip(ids(394), filler[:394], strict=True)), -1
                    ).log_position.prepare_position == 997
        # order-789, positions 998-1000 in one write: commit position 1000 for all three, so the
        # brief's cursor {commit 1000, prepare 999} names the second of them exactly.
        w4 = list(zip(ids(3), ["PaymentProcessed", "OrderShipped", "PaymentProcessed"], strict=True))
        result = save(stub, "orders", "order-789", w4, 2)
        assert (result.log_position.commit_position, result.log_position.prepare_position) == (1000, 1000)
        assert result.new_stream_version == 5
        # More filler after the cursor, 1001-1600.
        assert save(stub, "orders", "order-792", list(zip(ids(600), filler, strict=True)), -1
                    ).log_position.prepare_position == 1600
        # order-789 again, 1601-1603.
        w6 = list(zip(ids(3), ["OrderShipped", "OrderDelivered", "PaymentProcessed"], strict=True))
        result = save(stub, "orders", "order-789", w6, 5)
        assert (result.log_position.commit_position, result.log_position.prepare_position) == (1603, 1603)
        assert result.new_stream_version == 8

    answer = run(brief_server, "GetEvents", BRIEF_GET_EVENTS)
    got = [
        (e["event_id"], e["event_type"], e["stream_id"], e.get("version", 0),
         e["position"]["commit_position"], e["position"]["prepare_position"])
        for e in answer["events"]
    ]
    assert got == [
        (w4[2][0], "PaymentProcessed", "order-789", 5, "1000", "1000"),
        (w6[0][0], "OrderShipped", "order-789", 6, "1603", "1601"),
        (w6[2][0], "PaymentProcessed", "order-789", 8, "1603", "1603"),
    ]
    assert answer["events"][0]["data"] == '{"type": "PaymentProcessed"}'


# --- Boundaries ----------------------------------------------------------------------------------


def test_public_schema_boundary(brief_server: ServerThread) -> None:
    """The brief's ORISUN_PG_SCHEMAS=public: boundary `public` in schema public works."""
    assert brief_server.settings.boundaries["public"] == "public"
    body = json.dumps({
        "boundary": "public",
        "stream": {"name": "public-1", "expected_version": -1},
        "events": [{"event_id": "0191b93c-5f3c-75c8-92ce-5a33007091a0", "event_type": "Pinged",
                    "data": "{\"n\": 1}", "tags": [{"key": "k", "value": "v"}]}],
    })
    assert run(brief_server, "SaveEvents", body) == {
        "log_position": {"commit_position": "1", "prepare_position": "1"}}  # new_stream_version 0 is omitted
    answer = run(brief_server, "GetEvents", '{"boundary": "public", "query": {"criteria": '
                                           '[{"tags": [{"key": "k", "value": "v"}]}]}}')
    [event] = answer["events"]
    assert event["event_id"] == "0191b93c-5f3c-75c8-92ce-5a33007091a0"
    assert event["event_type"] == "Pinged"
    assert event["data"] == '{"n": 1}'
    assert event["stream_id"] == "public-1"
    with psycopg.connect(brief_server.settings.pg_conninfo or "") as conn:
        row = conn.execute("SELECT stream_name, event_type FROM public.events").fetchall()
    assert row == [("public-1", "Pinged")]


def test_users_boundary_lives_in_schema_test2(brief_server: ServerThread) -> None:
    """ORISUN_PG_SCHEMAS=users:test2 stores boundary `users` in schema test2."""
    run(brief_server, "SaveEvents", BRIEF_SAVE_EVENTS)
    with psycopg.connect(brief_server.settings.pg_conninfo or "") as conn:
        rows = conn.execute("SELECT event_id::text FROM test2.events ORDER BY position").fetchall()
    assert rows == [("0191b93c-5f3c-75c8-92ce-5a3300709178",), ("0191b93c-5f3c-75c8-92ce-5a3300709179",)]


def test_only_configured_boundaries_are_accepted(start_server: Callable[..., ServerThread]) -> None:
    """The brief: with schemas users,orders, `users` and `orders` succeed and `payments` fails."""
    server = start_server(boundaries=parse_boundaries("users,orders", "orisun_admin"))
    for boundary in ("users", "orders"):
        body = json.dumps({
            "boundary": boundary,
            "stream": {"name": "s", "expected_version": -1},
            "events": [{"event_id": str(uuid.uuid4()), "event_type": "T", "data": "{}"}],
        })
        assert run(server, "SaveEvents", body) == {"log_position": {"commit_position": "1", "prepare_position": "1"}}
    body = json.dumps({
        "boundary": "payments",
        "stream": {"name": "s", "expected_version": -1},
        "events": [{"event_id": str(uuid.uuid4()), "event_type": "T", "data": "{}"}],
    })
    stderr = run_failing(server, "SaveEvents", body)
    assert "NotFound" in stderr
    assert "payments" in stderr
    with server.stub() as stub, pytest.raises(grpc.RpcError) as raised:
        stub.GetEvents(pb.GetEventsRequest(boundary="payments"), metadata=auth_metadata(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "payments" in raised.value.details()
