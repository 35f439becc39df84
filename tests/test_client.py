"""The synchronous Python client (`orisun.client.Client`) against a real server: save_events and its
typed errors, get_events paging, pub/sub with acks, TLS and mutual TLS, the admin methods and
positions. Retries after UNAVAILABLE are in tests/test_client_retries.py, subscriptions in
tests/test_client_subscriptions.py; shared fixtures and helpers in tests/client_support.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from orisun.client import (
    ANY,
    NO_STREAM,
    AlreadyExists,
    BoundaryNotFound,
    Client,
    Direction,
    EventData,
    ExpectedVersion,
    InvalidArgument,
    NotFound,
    OrisunError,
    PermissionDenied,
    Position,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    WriteResult,
    WrongExpectedVersion,
    query,
)
from orisun.model import Role
from orisun.runtime.postgres import EmbeddedPostgres
from orisun.tls import TlsFiles
from tests import client_support
from tests.client_support import BOUNDARIES, Collector, connect, unique
from tests.support import ServerThread, running_server, wait_for

# Fixtures of tests/client_support.py, bound to names of this module so that pytest finds them here.
orisun = client_support.orisun
client = client_support.client
certificates = client_support.certificates


pytestmark = pytest.mark.timeout(120)


# --- save_events and errors -----------------------------------------------------------------------


def test_save_and_read_back_every_field(client: Client) -> None:
    stream = unique("order")
    before = datetime.now(UTC) - timedelta(seconds=5)
    events = [
        EventData("OrderPlaced", {"total": 42, "currency": "€"}, metadata={"source": "web"},
                  tags={"tenant": "t1", "region": "eu"}),
        EventData("OrderShipped", '{"carrier": "dhl"}', tags=[("tenant", "t1"), ("tenant", "t2")]),
    ]
    result = client.save_events(stream, events, expected_version=NO_STREAM)
    assert isinstance(result, WriteResult)
    assert result.new_stream_version == 1
    read = list(client.get_events(stream=stream))
    assert [e.event_id for e in read] == [e.event_id for e in events]
    first, second = read
    assert first.event_type == "OrderPlaced" and first.json() == {"total": 42, "currency": "€"}
    assert first.metadata_json() == {"source": "web"} and second.metadata == "" and second.metadata_json() is None
    assert first.tags == (("tenant", "t1"), ("region", "eu")) and first.tag_dict == {"tenant": "t1", "region": "eu"}
    assert second.data == '{"carrier": "dhl"}'  # text is sent as it is, byte for byte
    assert second.tags == (("tenant", "t1"), ("tenant", "t2"))
    assert (first.stream, first.version, second.version) == (stream, 0, 1)
    assert second.position == result.log_position and first.position < second.position
    assert first.created.tzinfo is not None and before <= first.created <= datetime.now(UTC) + timedelta(seconds=5)


def test_expected_version_constants(client: Client) -> None:
    assert (ANY, NO_STREAM) == (ExpectedVersion.ANY, ExpectedVersion.NO_STREAM) == (-2, -1)
    stream = unique("account")
    assert client.save_events(stream, [EventData("Opened", {})]).new_stream_version == 0  # ANY by default
    assert client.save_events(stream, [EventData("Credited", {})], expected_version=0).new_stream_version == 1
    assert client.save_events(stream, [EventData("Credited", {})], expected_version=ANY).new_stream_version == 2


def test_a_conflict_raises_wrong_expected_version_with_expected_and_actual(client: Client) -> None:
    stream = unique("account")
    client.save_events(stream, [EventData("Opened", {}), EventData("Credited", {})], expected_version=NO_STREAM)
    with pytest.raises(WrongExpectedVersion) as raised:
        client.save_events(stream, [EventData("Debited", {})], expected_version=0)
    assert (raised.value.expected, raised.value.actual) == (0, 1)
    assert isinstance(raised.value, AlreadyExists) and isinstance(raised.value, OrisunError)
    assert raised.value.code is not None and raised.value.code.name == "ALREADY_EXISTS"
    with pytest.raises(WrongExpectedVersion) as raised:
        client.save_events(stream, [EventData("Opened", {})], expected_version=NO_STREAM)
    assert (raised.value.expected, raised.value.actual) == (-1, 1)
    # With a subset query, "actual" is the version of the stream's last matching event.
    with pytest.raises(WrongExpectedVersion) as raised:
        client.save_events(stream, [EventData("Debited", {})], expected_version=NO_STREAM,
                           subset_query={"event_type": "Opened"})
    assert (raised.value.expected, raised.value.actual) == (-1, 0)
    result = client.save_events(stream, [EventData("Debited", {})], expected_version=0,
                                subset_query=query({"event_type": "Opened"}))
    assert result.new_stream_version == 2


def test_errors_are_typed_and_keep_code_and_message(client: Client, orisun: ServerThread) -> None:
    with pytest.raises(BoundaryNotFound) as not_found:
        client.save_events("s", [EventData("E", {})], boundary="nowhere")
    assert isinstance(not_found.value, NotFound) and "nowhere" in not_found.value.message
    with pytest.raises(InvalidArgument) as invalid:
        client.save_events("s", [EventData("E", "not json")])
    assert "data" in invalid.value.message and invalid.value.code is not None
    assert "INVALID_ARGUMENT" in str(invalid.value)
    reused = EventData("E", {})
    client.save_events(unique("a"), [reused])
    with pytest.raises(AlreadyExists) as duplicate:
        client.save_events(unique("b"), [reused])
    assert not isinstance(duplicate.value, WrongExpectedVersion), duplicate.value
    with pytest.raises(ValueError, match="boundary"):
        Client(orisun.address).save_events("s", [EventData("E", {})])
    with pytest.raises(TypeError, match="expected_version"):
        client.save_events("s", [EventData("E", {})], expected_version="any")  # type: ignore[arg-type]


def test_wrong_credentials_are_unauthenticated_and_a_reader_may_not_write(orisun: ServerThread) -> None:
    with connect(orisun.address, username="nobody-" + uuid.uuid4().hex[:6], password="wrong") as stranger:
        with pytest.raises(Unauthenticated):
            list(stranger.get_events())
        with pytest.raises(Unauthenticated):
            stranger.save_events("s", [EventData("E", {})])
    users = orisun.app.users
    assert users is not None
    name = unique("reader")
    orisun.call(users.create("Reader", name, "reader-pass", []))
    with connect(orisun.address, username=name, password="reader-pass") as reader:
        list(reader.get_events(page_size=1))
        with pytest.raises(PermissionDenied):
            reader.save_events("s", [EventData("E", {})])


# --- get_events -----------------------------------------------------------------------------------


def test_get_events_pages_without_loss_or_duplicates_both_ways(client: Client) -> None:
    stream = unique("paged")
    tag = unique("batch")
    saved: list[str] = []
    for i in range(5):  # several writes: commit and prepare positions differ
        batch = [EventData("Paged", {"i": i, "j": j}, tags={"batch": tag}) for j in range(i + 1)]
        client.save_events(stream, batch)
        saved += [e.event_id for e in batch]  # 15 events
    by_stream = list(client.get_events(stream=stream, page_size=4))
    assert [e.event_id for e in by_stream] == saved
    assert [e.version for e in by_stream] == list(range(15))
    newest_first = list(client.get_events(stream=stream, direction=Direction.DESC, page_size=4))
    assert [e.event_id for e in newest_first] == saved[::-1]
    by_tag = list(client.get_events(query={"batch": tag}, page_size=3, direction="desc"))
    assert [e.event_id for e in by_tag] == saved[::-1]
    exact_pages = list(client.get_events(query={"batch": tag}, page_size=5))  # 15 = 3 full pages
    assert [e.event_id for e in exact_pages] == saved
    # From a position (exclusive) and from a version.
    after = list(client.get_events(query={"batch": tag}, from_position=by_stream[9].position, page_size=2))
    assert [e.event_id for e in after] == saved[10:]
    assert [e.version for e in client.get_events(stream=stream, from_version=12, page_size=2)] == [12, 13, 14]
    assert [e.version for e in client.get_events(stream=stream, from_version=3, direction="DESC")] == [3, 2, 1, 0]
    # Criteria OR'd, tags AND'd, event_type matching the type.
    client.save_events(stream, [EventData("Other", {}, tags={"batch": tag, "kind": "x"})])
    either = list(client.get_events(query=query({"event_type": "Other"}, {"batch": tag, "kind": "none"})))
    assert [e.event_type for e in either] == ["Other"]
    both = list(client.get_events(query=[{"batch": tag, "event_type": "Other"}, {"event_type": "Nope"}]))
    assert [e.event_type for e in both] == ["Other"]


# --- pub/sub --------------------------------------------------------------------------------------


def probe_until_received(client: Client, subject: str, received: Callable[[], list[Any]]) -> None:
    """A new consumer name starts with what is published after it exists: publish probes until one
    arrives, so that the consumer is known to be there."""

    def probed() -> bool:
        client.publish(subject, {"probe": True})
        return any(m.json() == {"probe": True} for m in received())

    wait_for(probed, 30, "the consumer to receive a probe")


def test_publish_and_subscribe(client: Client) -> None:
    subject = f"client.{uuid.uuid4().hex[:8]}"
    with client.subscribe_pubsub(subject, unique("consumer")) as subscription:
        messages = Collector(subscription)
        probe_until_received(client, subject, lambda: messages.items)
        ids = [client.publish(subject, {"n": n}, metadata={"m": n}) for n in range(3)]
        chosen = client.publish(subject, "plain text", id="my-own-id")
        assert chosen == "my-own-id"
        wait_for(lambda: {*ids, chosen} <= {m.id for m in messages.items}, 30, "the messages")
        by_id = {m.id: m for m in messages.items}
        assert [by_id[i].json() for i in ids] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert by_id[ids[1]].metadata == '{"m":1}' and by_id[ids[1]].subject == subject
        assert by_id[chosen].data == "plain text"


def test_consume_with_ack_and_nack(client: Client) -> None:
    subject = f"client.{uuid.uuid4().hex[:8]}"
    name = unique("worker")
    nacked_once: set[str] = set()

    def settle(message: Any) -> None:
        if message.json().get("nack") and message.id not in nacked_once:
            nacked_once.add(message.id)
            message.nack()  # delivered again at once
        else:
            message.ack()

    with client.consume(subject, name, max_in_flight=5) as consumer:
        received = Collector(consumer, settle)
        probe_until_received(client, subject, lambda: received.items)
        kept = client.publish(subject, {"n": 1})
        given_back = client.publish(subject, {"n": 2, "nack": True})
        wait_for(lambda: [m.id for m in received.items].count(given_back) == 2 and kept in
                 {m.id for m in received.items}, 30, "the nacked message to come again")
        again = [m for m in received.items if m.id == given_back]
        assert [m.delivery_count for m in again] == [1, 2] and again[0].token == again[1].token
    received.join(10)
    assert not received.is_alive() and received.error is None
    # Everything was acked: a new consumer of the name gets only what is published next.
    with client.consume(subject, name) as consumer:
        later = Collector(consumer, lambda m: m.ack())
        after = client.publish(subject, {"n": 3})
        assert [m.id for m in later.wait_count(1)] == [after]


def test_tls_and_mutual_tls(postgres: EmbeddedPostgres, certificates: tuple[Path, trustme.CA]) -> None:
    directory, ca = certificates
    files = TlsFiles(directory / "chain.pem", directory / "server.key", client_ca_file=directory / "ca.pem")
    client_cert = ca.issue_cert("client.orisun.test")
    with running_server(postgres.conninfo, "test_client_tls", boundaries=BOUNDARIES, tls=files) as server:
        address = server.address
        with connect(address, root_certificates=directory / "ca.pem", server_name="orisun.test",
                     certificate_chain=b"".join(b.bytes() for b in client_cert.cert_chain_pems),
                     private_key=client_cert.private_key_pem.bytes()) as secure:
            stream = unique("tls")
            secure.save_events(stream, [EventData("Secure", {})])
            assert [e.event_type for e in secure.get_events(stream=stream)] == ["Secure"]
            with secure.subscribe(query={"event_type": "Secure"}) as subscription:
                assert Collector(subscription).wait_count(1)[0].stream == stream
        # The credentials travel as call credentials over TLS: wrong ones are refused.
        wrong = connect(address, password="wrong", root_certificates=ca.cert_pem.bytes(), server_name="orisun.test",
                        certificate_chain=b"".join(b.bytes() for b in client_cert.cert_chain_pems),
                        private_key=client_cert.private_key_pem.bytes())
        with wrong, pytest.raises(Unauthenticated):
            wrong.save_events(unique("tls"), [EventData("E", {})])
        # Without a client certificate the mutual-TLS server refuses the connection; without
        # trusting the CA the client refuses the server.
        for settings in ({"root_certificates": directory / "ca.pem", "server_name": "orisun.test"}, {"tls": True}):
            refused = connect(address, retry=RetryPolicy(max_attempts=1), timeout=10, **settings)
            with refused, pytest.raises(Unavailable):
                refused.save_events(unique("tls"), [EventData("E", {})])


# --- admin ----------------------------------------------------------------------------------------


def test_admin_users(client: Client) -> None:
    count = client.user_count()
    username = unique("op")
    user = client.create_user(username, "first-Pass-1", name="Op", roles=[Role.OPERATIONS.value])
    assert (user.username, user.name, user.roles) == (username, "Op", ("OPERATIONS",))
    assert user.user_id and user.created_at is not None
    assert client.user_count() == count + 1
    assert username in {u.username for u in client.list_users()}
    assert client.validate_credentials(username, "first-Pass-1") == user
    assert client.validate_credentials(username, "wrong") is None
    client.change_password(user.user_id, "second-Pass-2")
    assert client.validate_credentials(username, "second-Pass-2") is not None
    with pytest.raises(AlreadyExists):
        client.create_user(username, "first-Pass-1")
    client.delete_user(user.user_id)
    with pytest.raises(NotFound):
        client.delete_user(user.user_id)
    assert client.user_count() == count


def test_admin_boundaries_and_counts(client: Client) -> None:
    listed = client.list_boundaries()
    assert {"orders", "payments", "orisun_admin"} <= {b.name for b in listed}
    orders = client.get_boundary("orders")
    assert (orders.schema, orders.status, orders.existed_before_catalog) == ("orders", "ACTIVE", True)
    with pytest.raises(NotFound):
        client.get_boundary("nowhere")
    name = f"b_{uuid.uuid4().hex[:8]}"
    created = client.create_boundary(name, description="made by the client")
    assert (created.name, created.description, created.status) == (name, "made by the client", "ACTIVE")
    with pytest.raises(AlreadyExists):
        client.create_boundary(name)
    client.save_events("s", [EventData("E", {}), EventData("E", {})], boundary=name)  # usable at once
    assert client.event_count(name) == 2
    assert client.event_count() >= 1  # the default boundary
    with pytest.raises(NotFound):
        client.event_count("nowhere")


def test_positions_compare_as_commit_then_prepare() -> None:
    assert Position(2, 1) < Position(2, 2) < Position(3, 3)
    assert max(Position(5, 4), Position(5, 5), Position(3, 3)) == Position(5, 5)

