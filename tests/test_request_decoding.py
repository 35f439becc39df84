"""Undecodable request bodies (issue 12, defect 3): INVALID_ARGUMENT naming the message type and the
field, authentication before any decoding, and one short log line instead of a traceback.

The bodies are hand-made bytes sent through generic channel calls (no serializer), as a client
with another proto (upstream's Java client declares ``PublishRequest.data`` as ``bytes``) or a
broken one would send them. Every method of ``eventstore.EventStore`` is tried (found from the
proto's descriptor, so RPCs added later are covered too), as are health and reflection, and all
four kinds of handler (unary or streaming request, unary or streaming response) through a test
service behind the same interceptor.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from loguru import logger

from orisun._proto import eventstore_pb2 as pb
from orisun.transport.auth import AuthInterceptor, Gate
from orisun.transport.wire import explain
from tests.support import ServerThread, auth_metadata

pytestmark = pytest.mark.timeout(90)

EVENTSTORE = pb.DESCRIPTOR.services_by_name["EventStore"]
BAD_UTF8 = b"\xff\xfe"


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def bad_string_body(descriptor: Descriptor) -> tuple[bytes, str]:
    """A body whose first string field holds bytes that are not UTF-8, and that field's name."""
    for each in sorted(descriptor.fields, key=lambda f: f.number):
        if each.type == FieldDescriptor.TYPE_STRING:
            return field(each.number, BAD_UTF8), each.name
    raise AssertionError(f"{descriptor.full_name} has no string field to spoil")


def call_raw(channel: grpc.Channel, path: str, client_streaming: bool, server_streaming: bool, body: bytes,
             metadata: list[tuple[str, str]] | None) -> tuple[grpc.StatusCode, str]:
    """Send ``body`` as is (one message) to ``path``; the call's status code and details."""
    kind = f"{'stream' if client_streaming else 'unary'}_{'stream' if server_streaming else 'unary'}"
    callable_ = getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)
    request: Any = iter([body]) if client_streaming else body
    try:
        answer = callable_(request, metadata=metadata, timeout=10)
        if server_streaming:
            list(answer)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def call_method(channel: grpc.Channel, method: MethodDescriptor, body: bytes,
                metadata: list[tuple[str, str]] | None) -> tuple[grpc.StatusCode, str]:
    path = f"/{method.containing_service.full_name}/{method.name}"
    return call_raw(channel, path, method.client_streaming, method.server_streaming, body, metadata)


class LogRecords:
    """Everything logged (loguru, and the standard logging gRPC uses) while the test runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.lines: list[tuple[str, str, bool]] = []  # (level, message, has a traceback)

    def sink(self, message: Any) -> None:
        record = message.record
        with self._lock:
            self.lines.append((record["level"].name, record["message"], record["exception"] is not None))

    def snapshot(self) -> list[tuple[str, str, bool]]:
        with self._lock:
            return list(self.lines)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[LogRecords]:
    records = LogRecords()
    handler_id = logger.add(records.sink, level="DEBUG")
    try:
        yield records
    finally:
        logger.remove(handler_id)
    # gRPC's own "Unexpected ... raised by servicer method" goes through standard logging.
    unexpected = [r.getMessage()[:200] for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]
    assert not unexpected, unexpected


def assert_quiet(records: list[tuple[str, str, bool]]) -> None:
    """No traceback, nothing at ERROR, every line short."""
    assert not [m for _, m, tb in records if tb], "a traceback was logged"
    assert not [m for level, m, _ in records if level in ("ERROR", "CRITICAL")], records
    assert not [m for _, m, _ in records if "Traceback" in m or len(m) > 400], records


def assert_clean(details: str) -> None:
    """A status message fit for a client: no Python class or exception names."""
    for leak in ("<class", "DecodeError", "google.protobuf", "Unexpected", "Traceback"):
        assert leak not in details, details
    assert len(details) <= 300, details


# --- Every RPC of eventstore.EventStore ---------------------------------------------------------


@pytest.mark.parametrize("method", list(EVENTSTORE.methods), ids=lambda m: m.name)
def test_an_undecodable_request_is_invalid_argument_naming_type_and_field(
    server: ServerThread, logs: LogRecords, method: MethodDescriptor
) -> None:
    body, field_name = bad_string_body(method.input_type)
    with server.channel() as channel:
        code, details = call_method(channel, method, body, auth_metadata())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert method.input_type.full_name in details, details
    assert f"{field_name} is not valid UTF-8" in details, details
    assert_clean(details)
    records = logs.snapshot()
    assert_quiet(records)
    warned = [m for _, m, _ in records if method.name in m and "not valid UTF-8" in m]
    assert len(warned) == 1, records  # one line per refused request, naming the method


@pytest.mark.parametrize("method", list(EVENTSTORE.methods), ids=lambda m: m.name)
@pytest.mark.parametrize("metadata", [None, auth_metadata("admin", "wrong")], ids=["no-credentials", "wrong-password"])
def test_without_valid_credentials_the_body_is_never_decoded(
    server: ServerThread, logs: LogRecords, method: MethodDescriptor, metadata: list[tuple[str, str]] | None
) -> None:
    body, _ = bad_string_body(method.input_type)
    with server.channel() as channel:
        code, details = call_method(channel, method, body, metadata)
    assert code == grpc.StatusCode.UNAUTHENTICATED, (code, details)
    assert_clean(details)
    records = logs.snapshot()
    assert_quiet(records)
    assert not [m for _, m, _ in records if "UTF-8" in m or "not a valid" in m], records


@pytest.mark.parametrize(
    ("method", "body", "where"),
    [
        # A good first event, then a second whose data is not text.
        ("SaveEvents",
         field(2, b"orisun_admin")
         + field(4, pb.EventToSave(event_id=str(uuid.uuid4()), event_type="T", data="{}").SerializeToString())
         + field(4, field(1, str(uuid.uuid4()).encode()) + field(3, b'{"x": "\xff"}')),
         "events[1].data is not valid UTF-8"),
        ("GetEvents",
         field(1, field(1, field(1, field(1, b"k") + field(2, b"v")) + field(1, field(1, b"k") + field(2, BAD_UTF8)))),
         "query.criteria[0].tags[1].value is not valid UTF-8"),
        # What upstream's Java client sends for binary data (its PublishRequest.data is bytes).
        ("PublishToPubSub", field(2, b"orders.created") + field(3, b"\x00\x01\x80binary"),
         "data is not valid UTF-8"),
        # A length that runs past the end of the body.
        ("SaveEvents", field(2, b"orisun_admin") + varint(4 << 3 | 2) + varint(50) + b"short",
         "events[0] is cut short"),
    ],
    ids=["nested-repeated", "deeply-nested", "java-client-bytes", "truncated"],
)
def test_the_message_names_the_field_where_it_can(server: ServerThread, logs: LogRecords, method: str, body: bytes,
                                                  where: str) -> None:
    with server.channel() as channel:
        code, details = call_method(channel, EVENTSTORE.methods_by_name[method], body, auth_metadata())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details == f"request is not a valid {EVENTSTORE.methods_by_name[method].input_type.full_name}: {where}"
    assert_quiet(logs.snapshot())


def test_many_undecodable_requests_log_a_bounded_number_of_lines(server: ServerThread, logs: LogRecords) -> None:
    method = EVENTSTORE.methods_by_name["GetEvents"]
    body, _ = bad_string_body(method.input_type)
    expected = {True: grpc.StatusCode.INVALID_ARGUMENT, False: grpc.StatusCode.UNAUTHENTICATED}
    with server.channel() as channel:
        for n in range(400):  # with and without credentials
            signed_in = n % 2 == 0
            assert call_method(channel, method, body, auth_metadata() if signed_in else None)[0] == expected[signed_in]
    records = logs.snapshot()
    assert_quiet(records)
    about = [m for _, m, _ in records if "GetEvents" in m]
    # Rate-limited, at every level: not one (or six) per request.
    assert 1 <= len(about) <= 40, (len(about), about[:5])


# --- Health and reflection ------------------------------------------------------------------------


def test_health_answers_invalid_argument_without_credentials(server: ServerThread, logs: LogRecords) -> None:
    body, _ = bad_string_body(health_pb2.HealthCheckRequest.DESCRIPTOR)
    with server.channel() as channel:
        for name in ("Check", "Watch"):
            code, details = call_raw(channel, f"/grpc.health.v1.Health/{name}", False, name == "Watch", body, None)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
            assert details == "request is not a valid grpc.health.v1.HealthCheckRequest: service is not valid UTF-8"
    assert_quiet(logs.snapshot())


def test_reflection_refuses_before_decoding_and_then_names_the_field(server: ServerThread, logs: LogRecords) -> None:
    body, name = bad_string_body(reflection_pb2.ServerReflectionRequest.DESCRIPTOR)
    path = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    with server.channel() as channel:
        code, details = call_raw(channel, path, True, True, body, None)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (code, details)
        code, details = call_raw(channel, path, True, True, body, auth_metadata())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    expected = f"request is not a valid grpc.reflection.v1alpha.ServerReflectionRequest: {name} is not valid UTF-8"
    assert details == expected
    assert_quiet(logs.snapshot())


# --- All four kinds of handler, through a test service behind the same interceptor --------------


class EchoServer:
    """A grpc.aio server with one method of each kind (and one reading with ``context.read()``),
    behind Orisun's AuthInterceptor with the test server's users. Its methods echo PublishRequests."""

    SERVICE = "test.Echo"

    def __init__(self, orisun: ServerThread) -> None:
        self._orisun = orisun
        self.server: Any = None
        self.port = 0
        self.lookups: list[str] = []  # the methods gRPC asked the service's handlers for

    async def start(self) -> None:
        assert self._orisun.app.users is not None
        self.server = grpc.aio.server(interceptors=[AuthInterceptor(self._orisun.app.users, Gate())])

        async def unary_unary(request: pb.PublishRequest, context: Any) -> pb.PublishRequest:
            return request

        async def unary_stream(request: pb.PublishRequest, context: Any) -> Any:
            yield request
            yield request

        async def stream_unary(requests: Any, context: Any) -> pb.PublishRequest:
            last = pb.PublishRequest()
            async for request in requests:
                last = request
            return last

        async def stream_stream(requests: Any, context: Any) -> Any:
            async for request in requests:
                yield request

        async def read_unary(requests: Any, context: Any) -> pb.PublishRequest:
            last = pb.PublishRequest()
            while (request := await context.read()) is not grpc.aio.EOF:
                last = request
            return last

        codec = {"request_deserializer": pb.PublishRequest.FromString,
                 "response_serializer": pb.PublishRequest.SerializeToString}
        handlers = {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary, **codec),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream, **codec),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary, **codec),
            "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream, **codec),
            "ReadUnary": grpc.stream_unary_rpc_method_handler(read_unary, **codec),
        }
        generic = grpc.method_handlers_generic_handler(self.SERVICE, handlers)
        echo = self

        class Counting(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                echo.lookups.append(details.method)
                return generic.service(details)

        self.server.add_generic_rpc_handlers((Counting(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop(0)


KINDS = [("UnaryUnary", False, False), ("UnaryStream", False, True), ("StreamUnary", True, False),
         ("StreamStream", True, True), ("ReadUnary", True, False)]


@pytest.fixture
def echo(server: ServerThread) -> Iterator[EchoServer]:
    echo = EchoServer(server)
    server.call(echo.start())
    yield echo
    server.call(echo.stop())


@pytest.mark.parametrize(("name", "client_streaming", "server_streaming"), KINDS, ids=[k[0] for k in KINDS])
def test_every_kind_of_handler_decodes_after_authenticating(
    echo: EchoServer, logs: LogRecords, name: str, client_streaming: bool, server_streaming: bool
) -> None:
    good = pb.PublishRequest(subject="a.b", data="{}").SerializeToString()
    bad = field(3, BAD_UTF8)
    path = f"/{EchoServer.SERVICE}/{name}"
    with grpc.insecure_channel(f"127.0.0.1:{echo.port}") as channel:
        code, details = call_raw(channel, path, client_streaming, server_streaming, good, auth_metadata())
        assert code == grpc.StatusCode.OK, (code, details)
        code, details = call_raw(channel, path, client_streaming, server_streaming, bad, None)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (code, details)
        code, details = call_raw(channel, path, client_streaming, server_streaming, bad, auth_metadata())
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert details == "request is not a valid eventstore.PublishRequest: data is not valid UTF-8"
        if client_streaming:  # a bad message after good ones in the same stream
            callable_ = getattr(channel, "stream_stream" if server_streaming else "stream_unary")(
                path, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as raised:
                answer = callable_(iter([good, good, bad, good]), metadata=auth_metadata(), timeout=10)
                if server_streaming:
                    list(answer)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "data is not valid UTF-8" in (raised.value.details() or "")
    assert_quiet(logs.snapshot())


def test_each_method_is_resolved_once_not_per_call(echo: EchoServer) -> None:
    """Issue #13: the interceptor wraps a method's handler once; later calls reuse it (a call
    costs no handler lookup and no new handler)."""
    good = pb.PublishRequest(subject="a.b", data="{}").SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{echo.port}") as channel:
        for name, client_streaming, server_streaming in KINDS:
            for _ in range(3):
                code, details = call_raw(channel, f"/{EchoServer.SERVICE}/{name}", client_streaming,
                                         server_streaming, good, auth_metadata())
                assert code == grpc.StatusCode.OK, (code, details)
        for _ in range(3):  # an unknown method is not cached: each call asks again
            code, _ = call_raw(channel, f"/{EchoServer.SERVICE}/Nothing", False, False, good, auth_metadata())
            assert code == grpc.StatusCode.UNIMPLEMENTED
    assert sorted(echo.lookups) == sorted([f"/{EchoServer.SERVICE}/{name}" for name, _, _ in KINDS]
                                          + [f"/{EchoServer.SERVICE}/Nothing"] * 3)


# --- The explanation on its own -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (field(2, BAD_UTF8), "boundary is not valid UTF-8"),
        (field(3, field(1, BAD_UTF8)), "stream.name is not valid UTF-8"),
        (field(4, b"") + field(4, field(5, field(1, b"k") + field(2, BAD_UTF8))),
         "events[1].tags[0].value is not valid UTF-8"),
        (varint(2 << 3 | 2) + varint(10) + b"abc", "boundary is cut short"),
        (field(3, varint(2 << 3 | 0) + b"\x80\x80"), "stream.expected_version is cut short"),
        (b"\x00", "field number 0 is not allowed"),
        (varint(2**29 << 3), "field number 536870912 is not allowed"),
        (field(2, b"ok") + b"\x16", "boundary: invalid wire type 6"),
        (varint(9 << 3 | 1) + b"\x00\x00", "field 9 is cut short"),
        (varint(9 << 3 | 3) + varint(10 << 3 | 0) + b"\x01", "field 9 is cut short"),
        (varint(9 << 3 | 4), "end of group 9 without its start"),
        (field(2, b"fine"), None),
    ],
    ids=["string", "nested", "repeated-index", "truncated-length", "truncated-varint", "field-zero", "field-too-large",
         "wire-type", "truncated-fixed64", "open-group", "stray-end-group", "valid"],
)
def test_explain_names_the_first_problem(body: bytes, expected: str | None) -> None:
    assert explain(pb.SaveEventsRequest.DESCRIPTOR, body) == expected
