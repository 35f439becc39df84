"""Property-based fuzzing of every RPC and every dashboard route (issue 12), with hypothesis.

One real server for the module (PostgreSQL, nats-server, gRPC, dashboard). Each test runs one
seeded, bounded hypothesis *batch* against it and then checks that the server is still healthy.

The RPCs are taken from the proto's descriptor, not listed by hand, so an RPC added later is fuzzed
without touching this file. Three kinds of request are sent to each (``test_rpc_*``):

- hostile: any well-typed message built from the descriptor, with hostile strings (empty, ~20 KB,
  NUL, control characters, non-BMP, RTL, ``%0a``, SQL quotes, NATS wildcards) and integers at the
  edges of their type, under every kind of credentials;
- near-valid: the same generator steered by field name towards values on the documented limits
  (a configured boundary, 512 vs 513 bytes, 100 vs 101 tags, count 10,000 vs 10,001, ...), so that
  validation beyond the first check runs and some requests are accepted;
- undecodable: raw bodies that are not a valid message (random bytes, bad UTF-8 in a string
  field, truncated varints and lengths), with and without credentials.

Every answer must be free of ``answer_problems``: no INTERNAL or UNKNOWN; RESOURCE_EXHAUSTED only for a
request over the configured message size; a status message without tracebacks or Python class
names and at most ``MAX_DETAILS_BYTES`` long; a response that parses as the declared type. A
rejected request must leave no trace (``snapshot``: the rows of every boundary, the users and the
pub/sub stream's messages). Streaming answers: a few items are read; a call the server neither
answered nor ended within ``STREAM_WINDOW`` was accepted (a live subscription) and is cancelled.

Every route of the dashboard's router is fuzzed the same way (``test_dashboard_routes``): hostile
path parameters, query strings, JSON bodies and headers, logged in and not. Every answer must be
below 500 and carry the security headers; a rejected request must leave no trace either.

After each batch (``assert_healthy``): the health service answers SERVING, a SaveEvents + GetEvents
round trip works, and the server's log (captured by a loguru sink and a logging handler) has no
traceback.

Runs of the suite are reproducible (``derandomize=True``, no example database). Set
``ORISUN_FUZZ_SCALE`` (default 1) to multiply the number of examples for a longer local run.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import grpc
import psycopg
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from loguru import logger
from psycopg import sql

from orisun._proto import eventstore_pb2 as pb
from orisun.messaging.pubsub import STREAM as PUBSUB_STREAM
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import ADMIN, ServerThread, auth_metadata, basic, running_server

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(180)]

SERVICE = pb.DESCRIPTOR.services_by_name["EventStore"]
METHODS = list(SERVICE.methods)
Field = pb_descriptor.FieldDescriptor

BOUNDARY = "fuzz"  # where the health round trips and most near-valid requests go
BIG = "fuzz_big"  # holds a few ~900 KB events: a default GetEvents here is larger than MAX_MESSAGE
ADMIN_BOUNDARY = "orisun_admin"
BOUNDARIES = {ADMIN_BOUNDARY: ADMIN_BOUNDARY, BOUNDARY: BOUNDARY, BIG: BIG}
# Small enough that the BIG boundary exceeds it, large enough for any event a client may save.
MAX_MESSAGE = 2 * 1024 * 1024
BIG_EVENT_BYTES = 900_000
READER = ("fuzz-reader", "fuzz-reader-password")  # a user without roles: reads only

MAX_DETAILS_BYTES = 2048
STREAM_WINDOW = 0.3  # seconds a streaming call may stay silent before it counts as accepted
UNDECODABLE_WINDOW = 5.0  # the same for a body that does not decode, which must be refused
STREAM_ITEMS = 3  # items read from a streaming answer at most
CALL_TIMEOUT = 30.0  # a deadline no answer should come near: reaching it is a failure

SCALE = max(1, int(os.environ.get("ORISUN_FUZZ_SCALE", "1")))


def fuzz_settings(max_examples: int) -> settings:
    """Seeded and bounded: the same examples on every run, no example database, no deadline (the
    server is shared and the machine slow), no complaints about big or slow examples."""
    return settings(
        max_examples=max_examples * SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )


# --- What every answer must satisfy --------------------------------------------------------------

FORBIDDEN_IN_DETAILS = [
    re.compile(r"Traceback"),
    re.compile(r"<class "),
    re.compile(r"Error parsing message"),
    re.compile(r'File "'),
    # A Python exception's class name (DecodeError, KeyError, UnicodeDecodeError, ...). The
    # hostile strings below never contain such a word, so a match is the server's own doing.
    # Except upstream Orisun's conflict wording, which its Java client parses (issue #15):
    # "OptimisticConcurrencyException:StreamVersionConflict: Expected N, Actual M" is wire text.
    re.compile(r"\b(?!OptimisticConcurrencyException:StreamVersionConflict: )[A-Z][A-Za-z]+(Error|Exception)\b"),
]
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class Answer:
    """How the server answered one call. ``code`` is OK for a call that succeeded or that the
    server accepted and kept open (a live subscription, cancelled by the test)."""

    method: str
    code: grpc.StatusCode
    details: str
    request_bytes: int
    items: list[bytes] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        return self.code != grpc.StatusCode.OK

    def __str__(self) -> str:
        return f"{self.method} answered {self.code.name}: {self.details[:300]!r}"


def details_problems(details: str) -> list[str]:
    """What is wrong with a status message (or a dashboard error message) a client got."""
    problems = []
    size = len(details.encode("utf-8", "surrogatepass"))
    if size > MAX_DETAILS_BYTES:
        problems.append(f"a {size}-byte message, more than {MAX_DETAILS_BYTES}")
    problems += [f"{pattern.pattern!r} in the message" for pattern in FORBIDDEN_IN_DETAILS if pattern.search(details)]
    return problems


Problems = dict[str, list[str]]  # what is wrong with an answer, by kind (see require)


def answer_problems(answer: Answer, output: type[Message]) -> Problems:
    """What is wrong with a gRPC answer, by kind; empty lists if nothing."""
    problems: Problems = {"status": [], "message": details_problems(answer.details), "answer": [], "trace": []}
    if answer.code in NEVER:
        problems["status"].append(f"status {answer.code.name}")
    if answer.code == grpc.StatusCode.UNAVAILABLE and "retry" not in answer.details:
        # PostgreSQL and NATS are up: only Orisun's own "retry" message could be legitimate, a
        # transport failure ("Socket closed", "Connection reset") is the server falling over.
        problems["status"].append("UNAVAILABLE from the transport")
    if answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED and answer.request_bytes <= MAX_MESSAGE:
        # Legitimate only for a request over the configured limit, never for an oversized answer
        # or status ("Sent message larger than max", "Stream removed": the same defect as an
        # oversized status message, which one a client sees varies, hence the same kind).
        problems["message"].append(f"RESOURCE_EXHAUSTED for a {answer.request_bytes}-byte request")
    for item in answer.items:
        try:
            output.FromString(item)  # the answer is a well-formed message of the declared type
        except DecodeError:
            problems["answer"].append(f"an answer that is not a {output.DESCRIPTOR.full_name}")
    return problems


def require(problems: Problems, context: str) -> None:
    """Fail with ``context`` if there is a problem. One assertion per kind, so that hypothesis
    reports each kind of defect with its own example instead of only the first it found."""
    def say(kind: str) -> str:
        return f"{context}: {'; '.join(problems.get(kind, []))}"

    assert not problems.get("status"), say("status")
    assert not problems.get("headers"), say("headers")
    assert not problems.get("message"), say("message")
    assert not problems.get("answer"), say("answer")
    assert not problems.get("trace"), say("trace")


# --- Hostile values ------------------------------------------------------------------------------

# Characters that have broken parsers, loggers, SQL, NATS subjects or terminals somewhere.
HOSTILE_CHARS = [
    "\x00", "\x01", "\x08", "\x1b", "\x1f", "\x7f", "\t", "\n", "\r", " ", "\u00a0", "\u0085", "\u2028",
    "'", '"', "\\", "%", ";", "-", "*", ">", ".", ":", "/", "$", "{", "}", "[", "]", "_",
    "a", "Z", "0", "9", "\u00e9", "\u00df", "\u00b2", "\u0660", "\ufeff", "\ufffd", "\uffff",
    "\u202e", "\u200f", "\u05d0", "\U0001f600", "\U00010348", "\U0010fffd",
]
HOSTILE_STRINGS = [
    "", " ", "\x00", "a\x00b", "\t\r\n", "%0a", "%00", "%ZZ", "'", "''", "' OR '1'='1", "'; DROP TABLE events; --",
    '"', "\\", "*", ">", ".", "..", "a..b", ".a", "a.", "a.*", "a.>", ">.a", "*.*.>", "a b", "\u202eevil",
    "\U0001f600", "\ufeff", "null", "{}", "[]", "-1", "99999999999999999999", "${jndi:x}", "{{7*7}}",
    "../../../etc/passwd", "\x1b[31mred", "orisun_admin", "fuzz", "FUZZ", " fuzz", "public", "pg_catalog",
    "k" * 256, "k" * 257, "\u00e9" * 256, "\u00e9" * 257,
]


def huge_text() -> st.SearchStrategy[str]:
    """A repeated unit, 1 to ~20 KB of UTF-8 (cheap for hypothesis: two choices)."""
    units = st.sampled_from(["x", "\u00e9", "\U0001f600", "\x00", "'", "*.", "%0a", "\u202e"])
    return st.builds(lambda unit, size: unit * max(1, size // len(unit.encode())), units, st.integers(1000, 20_000))


HOSTILE_TEXT: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.text(st.sampled_from(HOSTILE_CHARS), max_size=40),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=20),  # no lone surrogates: see BAD_UTF8
    huge_text(),
)


def int_edges(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers of a type's range, often at its edges or at values the API gives a meaning."""
    edges = sorted({v for v in (low, low + 1, -3, -2, -1, 0, 1, 2, 100, 10_000, 10_001, high - 1, high)
                    if low <= v <= high})
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


INT_RANGES = {
    Field.TYPE_INT32: (-(2**31), 2**31 - 1), Field.TYPE_SINT32: (-(2**31), 2**31 - 1),
    Field.TYPE_SFIXED32: (-(2**31), 2**31 - 1), Field.TYPE_INT64: (-(2**63), 2**63 - 1),
    Field.TYPE_SINT64: (-(2**63), 2**63 - 1), Field.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    Field.TYPE_UINT32: (0, 2**32 - 1), Field.TYPE_FIXED32: (0, 2**32 - 1),
    Field.TYPE_UINT64: (0, 2**64 - 1), Field.TYPE_FIXED64: (0, 2**64 - 1),
}


# --- Near-valid values, by field name ------------------------------------------------------------

# JSON text that is not, or barely, acceptable as an event's data or metadata. (Built on demand:
# hypothesis would otherwise carry megabyte-long literals in its reprs.)
JSON_EDGES: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(["NaN", "Infinity", "not json", "", "{", '{"a": NaN}', "1e400", '{"a": 1}\x00', '["\\ud800"]',
                     '"\\u0000"']),
    # About 1,000 levels of nesting are documented as the limit.
    st.sampled_from([990, 1000, 1010, 5000]).map(lambda depth: "[" * depth + "]" * depth),
    # Around ORISUN_NATS_MAX_PAYLOAD (1 MiB, less the 512-byte envelope) and over MAX_MESSAGE.
    st.sampled_from([1_047_900, 1_048_576, MAX_MESSAGE + 10]).map(lambda size: json.dumps("x" * size)),
)
VALID_JSON = st.one_of(
    st.sampled_from(["{}", '{"a": 1}', "[]", '"text"', "null", '{"\u202e": "\U0001f600"}']),
    st.recursive(st.none() | st.booleans() | st.integers() | HOSTILE_TEXT,
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(HOSTILE_TEXT, inner, max_size=3),
                 max_leaves=6).map(json.dumps),
)


def mostly(valid: st.SearchStrategy[Any], *edges: Any) -> st.SearchStrategy[Any]:
    """A valid value four times in five, else one of ``edges`` (values, or one strategy): with a
    dozen fields per request, a fair share of near-valid requests is accepted, and the others fail
    one check deep inside."""
    edge = edges[0] if len(edges) == 1 and isinstance(edges[0], st.SearchStrategy) else st.sampled_from(edges)
    return st.one_of(valid, valid, valid, valid, edge)


POSITIONS = mostly(st.integers(0, 5), 2**31, 2**63 - 1, 2**63, 2**64 - 1)
NEAR: dict[str, st.SearchStrategy[Any]] = {
    "boundary": mostly(st.sampled_from([BOUNDARY, BOUNDARY, BIG]), ADMIN_BOUNDARY, "missing", "", "FUZZ", " fuzz",
                       "fuzz\x00"),
    # Fresh ids and stream names (uuid4, outside hypothesis's choices): the seeded ones repeat
    # across examples, and would mostly test the duplicate-id and version-conflict answers.
    "name": mostly(st.sampled_from(["s", "seed", "order-1", "\U0001f600"]) | st.builds(lambda: f"s-{uuid.uuid4()}"),
                   "\u00e9" * 256, "\u00e9" * 256 + "x", "x" * 512, "x" * 513, "", " ", "a\x00b"),
    "expected_version": mostly(st.just(-2), -3, -1, 0, 1, 5, 2**31 - 1, -(2**31)),
    "from_version": mostly(st.sampled_from([0, 1, 2]), -1, 2**31 - 1, -(2**31)),
    "event_id": mostly(st.builds(lambda: str(uuid.uuid4())), "", "not-a-uuid", "00000000-0000-0000-0000-00000000000g",
                       "{00000000-0000-0000-0000-000000000000}", "00000000000000000000000000000000",
                       "00000000-0000-0000-0000-000000000000\x00"),
    "event_type": mostly(st.sampled_from(["T", "OrderPlaced", "\U0001f600"]), "x" * 512, "x" * 513, "", "\x00",
                         "\u00e9" * 256, "\u00e9" * 257),
    "data": mostly(VALID_JSON, JSON_EDGES),
    "metadata": mostly(st.sampled_from(["", "{}"]), JSON_EDGES),
    "key": mostly(st.sampled_from(["k", "event_type", "eventType", "seed"]), "k" * 256, "k" * 257, "", "\x00",
                  "\u00e9" * 128, "\u00e9" * 129),
    "value": mostly(st.sampled_from(["", "v", "yes"]), "v" * 1024, "v" * 1025, "\x00", "'; --", "\u00e9" * 513),
    "count": mostly(st.sampled_from([0, 1, 2, 100]), 10_000, 10_001, 2**32 - 1),
    "direction": mostly(st.sampled_from([0, 1]), 2, -1),
    "commit_position": POSITIONS,
    "prepare_position": POSITIONS,
    "subscriber_name": mostly(st.sampled_from(["", "fuzz-sub"]), "x" * 1000, "\x00", "*", "a.b", "\U0001f600"),
    "subject": mostly(st.sampled_from(["fuzz", "fuzz.a", "fuzz.*", "fuzz.>", ">", "*"]), "fuzz..a", ".fuzz", "fuzz.",
                      "x" * 256, "x" * 257, "fuzz a", "", "fuzz.\x00", "\u00e9", "fuzz.*.>", ">.a", "fuzz.\u202e",
                      "fuzz.%0a"),
    "consumer_name": mostly(st.sampled_from(["c", "fuzz-consumer", "c" * 64]), "c" * 65, "", "a.b", "*", ">", "c c",
                            "\x00"),
    "id": mostly(st.just("") | st.uuids().map(str), "x" * 256, "x" * 257, "\x00"),
}
# How many elements a repeated field gets in a near-valid request: mostly a few, sometimes at or
# just over its documented limit.
NEAR_SIZES: dict[str, list[int]] = {
    "events": [1, 1, 1, 2, 3, 0],
    "tags": [0, 1, 1, 2, 0, 1, 2, 32, 33, 100, 101],
    "criteria": [0, 1, 1, 2, 0, 1, 2, 100, 101],
}


# --- Any message, from its descriptor ------------------------------------------------------------


def _set_fields(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        fd = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            for entry in value:
                if value_fd.message_type is not None:
                    target[entry.key].CopyFrom(entry.value)
                else:
                    target[entry.key] = entry.value
        elif fd.is_repeated:
            target.extend(value)
        elif fd.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def scalar_strategy(fd: pb_descriptor.FieldDescriptor, near: bool) -> st.SearchStrategy[Any]:
    if near and fd.name in NEAR:
        return NEAR[fd.name]
    if fd.type == Field.TYPE_STRING:
        return HOSTILE_TEXT
    if fd.type == Field.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), HOSTILE_TEXT.map(lambda s: s.encode()))
    if fd.type == Field.TYPE_BOOL:
        return st.booleans()
    if fd.type in (Field.TYPE_FLOAT, Field.TYPE_DOUBLE):
        return st.floats(width=32 if fd.type == Field.TYPE_FLOAT else 64)
    if fd.type == Field.TYPE_ENUM:
        # Unknown numbers too: proto3 enums are open, a client may send any int32.
        known = [value.number for value in fd.enum_type.values]
        return st.one_of(st.sampled_from(known), st.sampled_from([-1, max(known) + 1, 2**31 - 1, -(2**31)]))
    low, high = INT_RANGES[fd.type]
    return int_edges(low, high)


def field_strategy(fd: pb_descriptor.FieldDescriptor, near: bool, depth: int) -> st.SearchStrategy[Any] | None:
    """Values for one field (a list for a repeated one); None where nesting gets too deep."""
    if fd.message_type is not None:
        if depth >= 5:
            return None
        element: st.SearchStrategy[Any] = message_strategy(fd.message_type, near, depth + 1)
    else:
        element = scalar_strategy(fd, near)
    if not fd.is_repeated:
        return element
    if near and fd.name in NEAR_SIZES:
        def sized(size: int, element: st.SearchStrategy[Any] = element) -> st.SearchStrategy[list[Any]]:
            if size <= 3:
                return st.lists(element, min_size=size, max_size=size)
            return element.map(lambda one: [one] * size)  # many copies of one: few choices to make
        return st.sampled_from(NEAR_SIZES[fd.name]).flatmap(sized)
    return st.lists(element, max_size=3)


_MESSAGE_STRATEGIES: dict[tuple[str, bool, int], st.SearchStrategy[Message]] = {}


def message_strategy(desc: pb_descriptor.Descriptor, near: bool = False, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of type ``desc``: each field absent or set, nested messages recursively.
    ``near`` steers fields named in NEAR / NEAR_SIZES towards their documented limits."""
    key = (desc.full_name, near, depth)
    if key not in _MESSAGE_STRATEGIES:
        fields = {}
        for fd in desc.fields:
            strategy = field_strategy(fd, near, depth)
            if strategy is not None:
                fields[fd.name] = strategy
        cls = message_factory.GetMessageClass(desc)
        # Near-valid requests have most fields set; hostile ones any subset.
        required = {name: s for name, s in fields.items()
                    if near and (name in NEAR_REQUIRED or f"{desc.name}.{name}" in NEAR_REQUIRED)}
        optional = {name: s for name, s in fields.items() if name not in required}
        _MESSAGE_STRATEGIES[key] = st.fixed_dictionaries(required, optional=optional).map(
            lambda values, cls=cls: _set_fields(cls, values))
    return _MESSAGE_STRATEGIES[key]


# Fields a near-valid request always sets (the others may be absent), by name or Message.name.
NEAR_REQUIRED = {"boundary", "events", "event_id", "event_type", "data", "subject", "consumer_name", "name", "key",
                 "SaveEventsRequest.stream"}


# --- Undecodable bodies --------------------------------------------------------------------------

BAD_UTF8 = [b"\xff", b"\xc3", b"abc\xfe", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82",
            b"ok\xed\xbf\xbfok"]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def string_paths(desc: pb_descriptor.Descriptor, depth: int = 0) -> list[list[int]]:
    """Field-number paths to every string field of ``desc``, through nested messages."""
    paths: list[list[int]] = []
    for fd in desc.fields:
        if fd.type == Field.TYPE_STRING:
            paths.append([fd.number])
        elif fd.message_type is not None and depth < 4:
            paths += [[fd.number, *rest] for rest in string_paths(fd.message_type, depth + 1)]
    return paths


def wrap(path: Sequence[int], payload: bytes) -> bytes:
    """``payload`` as the value of the length-delimited field at ``path`` (nested messages)."""
    for number in reversed(path):
        payload = tag(number, 2) + varint(len(payload)) + payload
    return payload


def undecodable_bodies(desc: pb_descriptor.Descriptor) -> st.SearchStrategy[bytes]:
    """Bodies that are not a valid ``desc``; some after a valid prefix, so that a parser that
    stops at the first field is not enough."""
    numbers = [fd.number for fd in desc.fields] or [1]
    prefix = st.one_of(st.just(b""), message_strategy(desc).map(lambda m: m.SerializeToString()))
    paths = string_paths(desc)
    broken: list[st.SearchStrategy[bytes]] = [
        # A varint that never ends, and one longer than 10 bytes.
        st.sampled_from(numbers).map(lambda n: tag(n, 0) + b"\xff" * 5),
        st.sampled_from(numbers).map(lambda n: tag(n, 0) + b"\xff" * 11 + b"\x01"),
        # A length past the end of the body.
        st.builds(lambda n, length: tag(n, 2) + varint(length) + b"abc", st.sampled_from(numbers),
                  st.sampled_from([4, 100, 2**31, 2**63])),
        # Field number 0, wire types 6 and 7, an end-group without its start.
        st.sampled_from([b"\x00", b"\x06\x01", b"\x0f\x01", b"\x0c", b"\x0b", b"\x07"]),
        # A fixed32 / fixed64 cut short.
        st.sampled_from(numbers).map(lambda n: tag(n, 5) + b"\x01\x02"),
        st.sampled_from(numbers).map(lambda n: tag(n, 1) + b"\x01\x02\x03"),
        # A valid message cut anywhere.
        message_strategy(desc).map(lambda m: m.SerializeToString()).filter(lambda b: len(b) > 1).flatmap(
            lambda body: st.integers(1, len(body) - 1).map(lambda cut: body[:cut])),
        st.binary(min_size=1, max_size=256),
    ]
    if paths:
        broken.append(st.builds(wrap, st.sampled_from(paths), st.sampled_from(BAD_UTF8)))
    return st.builds(lambda head, tail: head + tail, prefix, st.one_of(broken))


# --- The module's server, and how it is called ---------------------------------------------------

CREDENTIALS: dict[str, list[tuple[str, str]]] = {
    "admin": auth_metadata(),
    "reader": auth_metadata(*READER),
    "none": [],
    "wrong password": auth_metadata(ADMIN[0], "wrong"),
    "unknown user": auth_metadata("nobody-\u00e9", "x"),
    "empty": [("authorization", "")],
    "not basic": [("authorization", "Bearer abc")],
    "bad base64": [("authorization", "Basic !!!")],
    "no colon": [("authorization", "Basic " + "YWRtaW4=")],
    "long": [("authorization", basic("u" * 1500, "p" * 1500))],
}


class LogCapture:
    """What the server logs, through loguru (Orisun's own log) and the standard logging module
    (grpc's, which the orisun command routes into loguru)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._sink_id: int | None = None
        self._handler = logging.Handler(level=logging.WARNING)
        self._handler.emit = self._emit_record  # type: ignore[method-assign]
        self._formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")

    def _add(self, text: str) -> None:
        with self._lock:
            self._lines.extend(text.splitlines())

    def _emit_record(self, record: logging.LogRecord) -> None:
        self._add(self._formatter.format(record))

    def start(self) -> None:
        self._sink_id = logger.add(lambda message: self._add(str(message)), level="DEBUG",
                                   format="{level} {name} {message}", backtrace=False, diagnose=False)
        logging.getLogger().addHandler(self._handler)

    def stop(self) -> None:
        logging.getLogger().removeHandler(self._handler)
        if self._sink_id is not None:
            logger.remove(self._sink_id)

    def take(self) -> list[str]:
        with self._lock:
            lines, self._lines = self._lines, []
        return lines


TRACEBACK_LINE = re.compile(r"Traceback \(most recent call last\)|^\s+File \"|^\s*\S+(Error|Exception): ")


# One round trip: the row counts of every boundary's tables and of the users.
SNAPSHOT_QUERY = sql.SQL("SELECT {}").format(sql.SQL(", ").join(
    [sql.SQL("(SELECT count(*) FROM {}.{})").format(sql.Identifier(schema), sql.Identifier(table))
     for schema in sorted(BOUNDARIES.values()) for table in ("events", "event_tags", "streams")]
    + [sql.SQL("(SELECT count(*) FROM {}.users)").format(sql.Identifier(BOUNDARIES[ADMIN_BOUNDARY]))]))


@dataclass
class Fuzz:
    server: ServerThread
    channel: grpc.Channel
    db: psycopg.Connection[Any]
    log: LogCapture
    dashboard_cookie: str = ""
    dashboard_csrf: str = ""

    def snapshot(self) -> tuple[int, ...]:
        """What a request could have stored: the rows of every boundary, the users, the pub/sub
        messages. A rejected request must leave it unchanged."""
        row = self.db.execute(SNAPSHOT_QUERY).fetchone()
        assert row is not None
        return (*row, self.server.call(self._pubsub_messages()))

    async def _pubsub_messages(self) -> int:
        client = self.server.app.nats_client
        assert client is not None
        info = await client.jetstream().stream_info(PUBSUB_STREAM)
        return int(info.state.messages)

    def call(self, method: pb_descriptor.MethodDescriptor, bodies: Sequence[bytes],
             metadata: Sequence[tuple[str, str]], window: float = STREAM_WINDOW) -> Answer:
        """Call ``method`` with raw ``bodies`` (one unless the client streams); a streaming call
        still open after ``window`` seconds counts as accepted."""
        path = f"/{SERVICE.full_name}/{method.name}"
        size = max((len(body) for body in bodies), default=0)
        kind = ("stream" if method.client_streaming else "unary") + "_" + (
            "stream" if method.server_streaming else "unary")
        callable_ = getattr(self.channel, kind)(path, request_serializer=None, response_deserializer=None)
        request: Any = iter(bodies) if method.client_streaming else bodies[0]
        if not method.server_streaming:
            try:
                response = callable_(request, metadata=list(metadata), timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                return Answer(method.name, exc.code(), exc.details() or "", size)
            return Answer(method.name, grpc.StatusCode.OK, "", size, [response])
        call = callable_(request, metadata=list(metadata), timeout=CALL_TIMEOUT)
        return self._stream(method.name, call, size, window)

    @staticmethod
    def _stream(name: str, call: Any, size: int, window: float) -> Answer:
        """Read a few items; a call still open after ``window`` was accepted: cancel it."""
        items: list[bytes] = []
        finished = threading.Event()

        def read() -> None:
            try:
                for item in call:
                    items.append(item)
                    if len(items) >= STREAM_ITEMS:
                        break
            except grpc.RpcError:
                pass
            finally:
                finished.set()

        reader = threading.Thread(target=read, name=f"fuzz-{name}", daemon=True)
        reader.start()
        finished.wait(window)
        accepted = not call.done()
        if accepted:
            call.cancel()
        reader.join(timeout=CALL_TIMEOUT)
        assert not reader.is_alive(), f"{name}: the streaming call did not end after cancel()"
        if accepted:
            return Answer(name, grpc.StatusCode.OK, "", size, items)
        return Answer(name, call.code(), call.details() or "", size, items)

    def send_and_check(self, method: pb_descriptor.MethodDescriptor, bodies: Sequence[bytes],
                       metadata: Sequence[tuple[str, str]], window: float = STREAM_WINDOW) -> Answer:
        """The per-answer properties: ``answer_problems``, and no trace of a rejected request."""
        before = self.snapshot()
        answer = self.call(method, bodies, metadata, window)
        problems = answer_problems(answer, message_factory.GetMessageClass(method.output_type))
        if answer.rejected and self.snapshot() != before:
            problems["trace"].append("it was rejected, but it stored something")
        require(problems, str(answer))
        return answer

    def assert_healthy(self) -> None:
        """After a batch: health SERVING, a write and a read work, and no traceback was logged."""
        health = health_pb2_grpc.HealthStub(self.channel)
        for service in ("", SERVICE.full_name):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT).status
            assert status == health_pb2.HealthCheckResponse.SERVING, (service, status)
        stream = f"health-{uuid.uuid4()}"
        event = pb.EventToSave(event_id=str(uuid.uuid4()), event_type="Checked", data='{"ok": true}')
        with self.server.stub() as stub:
            stub.SaveEvents(pb.SaveEventsRequest(boundary=BOUNDARY, stream=pb.SaveStreamQuery(name=stream,
                            expected_version=-1), events=[event]), metadata=auth_metadata(), timeout=CALL_TIMEOUT)
            read = stub.GetEvents(pb.GetEventsRequest(boundary=BOUNDARY, stream=pb.GetStreamQuery(name=stream)),
                                  metadata=auth_metadata(), timeout=CALL_TIMEOUT)
        assert [e.event_id for e in read.events] == [event.event_id]
        tracebacks = [line for line in self.log.take() if TRACEBACK_LINE.search(line)]
        assert not tracebacks, "the server logged a traceback:\n" + "\n".join(tracebacks[:40])


@pytest.fixture(scope="module")
def fuzz(postgres: EmbeddedPostgres) -> Iterator[Fuzz]:
    with running_server(postgres.conninfo, "test_fuzz", boundaries=BOUNDARIES,
                        grpc_max_message_size=MAX_MESSAGE) as server:
        users = server.app.users
        assert users is not None
        server.call(users.create("Fuzz reader", *READER, []))
        with server.stub() as stub:
            for boundary, size in ((BOUNDARY, 10), (BOUNDARY, 10), (BOUNDARY, 10), (BIG, BIG_EVENT_BYTES),
                                   (BIG, BIG_EVENT_BYTES), (BIG, BIG_EVENT_BYTES)):
                event = pb.EventToSave(event_id=str(uuid.uuid4()), event_type="Seeded", data=json.dumps("x" * size),
                                       tags=[pb.Tag(key="seed", value="yes")])
                stub.SaveEvents(pb.SaveEventsRequest(boundary=boundary, stream=pb.SaveStreamQuery(
                    name="seed", expected_version=-2), events=[event]), metadata=auth_metadata(), timeout=CALL_TIMEOUT)
        log = LogCapture()
        log.start()
        # No client-side limits: what the server answers is what is checked.
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        pg_conninfo = server.settings.pg_conninfo
        assert pg_conninfo is not None
        try:
            with grpc.insecure_channel(server.address, options=options) as channel, \
                    psycopg.connect(pg_conninfo, autocommit=True) as db:
                yield Fuzz(server, channel, db, log)
        finally:
            log.stop()


@pytest.fixture(autouse=True)
def fresh_log(fuzz: Fuzz) -> None:
    """Each test judges only what the server logged during its own batch."""
    fuzz.log.take()


# --- gRPC properties -----------------------------------------------------------------------------

METHOD_IDS = [method.name for method in METHODS]


def examples(method: pb_descriptor.MethodDescriptor, *, unary: int, streaming: int) -> int:
    """Examples per batch: fewer for streaming answers, where an accepted call costs STREAM_WINDOW."""
    return streaming if method.server_streaming else unary
# Mostly valid ones, so that most requests get past authentication to the checks behind it.
CREDENTIAL_NAMES = st.sampled_from(["admin"] * 8 + ["reader"] * 2 + sorted(CREDENTIALS))


EVERY_STRING_EXAMPLES = ["x" * 3000, "\u00e9" * 1500, "\x00", "a.*.>"]


def every_string(desc: pb_descriptor.Descriptor, text: str, depth: int = 0) -> Message:
    """A ``desc`` with every string field set to ``text``, nested messages and one element of
    each repeated field included."""
    message = message_factory.GetMessageClass(desc)()
    for fd in desc.fields:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            continue
        if fd.message_type is not None:
            if depth < 4:
                value = every_string(fd.message_type, text, depth + 1)
                if fd.is_repeated:
                    getattr(message, fd.name).append(value)
                else:
                    getattr(message, fd.name).CopyFrom(value)
        elif fd.type == Field.TYPE_STRING:
            if fd.is_repeated:
                getattr(message, fd.name).append(text)
            else:
                setattr(message, fd.name, text)
    return message


class Bodies:
    """Serialized requests, shown briefly (type, size, a prefix) when hypothesis reports a failure."""

    def __init__(self, messages: Sequence[Message] = (), raw: Sequence[bytes] = ()) -> None:
        self.bodies = [m.SerializeToString() for m in messages] + list(raw)
        self._shown = [_brief(str(m)) for m in messages] + [_brief(repr(b)) for b in raw]

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis prints it
        printer.text(repr(self))

    def __repr__(self) -> str:
        shown = (f"{len(body)} bytes: {text}" for body, text in zip(self.bodies, self._shown, strict=True))
        return f"Bodies({', '.join(shown)})"


def _brief(text: str, limit: int = 400) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def requests_for(method: pb_descriptor.MethodDescriptor, near: bool) -> st.SearchStrategy[Bodies]:
    """Requests for ``method``: one, or one or two for a client-streaming call (then the client
    half-closes)."""
    one = message_strategy(method.input_type, near)
    return st.lists(one, min_size=1, max_size=2 if method.client_streaming else 1).map(lambda ms: Bodies(ms))


@pytest.mark.parametrize("method", METHODS, ids=METHOD_IDS)
def test_rpc_hostile_messages(fuzz: Fuzz, method: pb_descriptor.MethodDescriptor) -> None:
    """Any well-typed message with hostile values, under any credentials: see answer_problems."""

    @fuzz_settings(examples(method, unary=150, streaming=100))
    @given(bodies=requests_for(method, near=False), credentials=CREDENTIAL_NAMES)
    def batch(bodies: Bodies, credentials: str) -> None:
        fuzz.send_and_check(method, bodies.bodies, CREDENTIALS[credentials])

    # Always tried first, whatever the seed: every string field at once holding the same value.
    for text in EVERY_STRING_EXAMPLES:
        one = every_string(method.input_type, text)
        batch = example(bodies=Bodies([one] * (2 if method.client_streaming else 1)), credentials="admin")(batch)
    batch()
    fuzz.assert_healthy()


@pytest.mark.parametrize("method", METHODS, ids=METHOD_IDS)
def test_rpc_near_valid_requests(fuzz: Fuzz, method: pb_descriptor.MethodDescriptor) -> None:
    """Requests on the documented limits, as admin (may write) or reader (may only read), so that
    every check and the accepting path run: see answer_problems."""

    @fuzz_settings(examples(method, unary=150, streaming=50))
    @given(bodies=requests_for(method, near=True), credentials=st.sampled_from(["admin", "admin", "reader"]))
    def batch(bodies: Bodies, credentials: str) -> None:
        fuzz.send_and_check(method, bodies.bodies, CREDENTIALS[credentials])

    batch()
    fuzz.assert_healthy()


@pytest.mark.parametrize("method", METHODS, ids=METHOD_IDS)
def test_rpc_undecodable_bodies(fuzz: Fuzz, method: pb_descriptor.MethodDescriptor) -> None:
    """Bodies that do not decode as the request type, with and without credentials: an
    INVALID_ARGUMENT (or UNAUTHENTICATED), never UNKNOWN with the parser's exception."""
    bodies_strategy = undecodable_bodies(method.input_type).map(lambda body: Bodies(raw=[body]))
    input_class = message_factory.GetMessageClass(method.input_type)

    @fuzz_settings(examples(method, unary=80, streaming=80))
    @given(bodies=bodies_strategy, credentials=st.sampled_from(["admin", "none", "wrong password"]))
    def batch(bodies: Bodies, credentials: str) -> None:
        body = bodies.bodies[0]
        decodes = True
        try:
            input_class.FromString(body)
        except DecodeError:
            decodes = False
        # A long window: the server must refuse such a body, and may take its time under load.
        answer = fuzz.send_and_check(method, [body] * (2 if method.client_streaming else 1), CREDENTIALS[credentials],
                                     window=UNDECODABLE_WINDOW)
        if not decodes:
            assert answer.rejected, f"{method.name} accepted a body that does not decode: {body[:64]!r}"

    batch()
    fuzz.assert_healthy()


# --- Dashboard properties ------------------------------------------------------------------------

SECURITY_HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy")
HOSTILE_SOURCE = "127.0.0.2"  # hostile logins are throttled per address: keep the fixture's login apart
REQUEST_LINE_BYTES = 8000
QUERY_KEYS = ["count", "count", "after", "after", "prefix", "direction", "stream", "type", "tag", "x"]

# Percent-escapes as a client may write them, valid or not, beside hostile text percent-encoded.
RAW_ESCAPES = ["%00", "%0a", "%0d%0a", "%ZZ", "%", "%2e%2e", "..", "%2F", "%c0%80", "%ed%a0%80", "%ff", "%C2%B2",
               "%E2%80%AE", "%F0%9F%98%80", "+", "%20", ";", "%3B", "%26", "%3D"]
URL_TEXT: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(RAW_ESCAPES),
    HOSTILE_TEXT.map(lambda text: quote(text, safe="")),
    st.lists(st.sampled_from([*RAW_ESCAPES, "a", "1", BOUNDARY, "adm"]), min_size=1, max_size=5).map("".join),
)
# Never an existing user's name: a valid body would change the admin's password, or delete the
# reader, and the rest of the module needs both.
PATH_PARAM = st.one_of(st.sampled_from([BOUNDARY, BOUNDARY, BIG, ADMIN_BOUNDARY, "missing", "u-" + "x" * 300]),
                       URL_TEXT).filter(
    lambda value: unquote(value).strip() not in (ADMIN[0], READER[0]))
# Numbers as a client may write them: superscript two, Arabic-Indic zero and a circled one pass
# str.isdigit() but not int().
NUMBERS = ["0", "1", "-1", "50", "500", "501", "%C2%B2", "%D9%A0", "%E2%91%A0", "1e9", "99999999999999999999",
           "+1", "%201", "0x10", "1_0", "%00", "%0a"]
QUERY_VALUE = st.one_of(
    st.sampled_from(NUMBERS),
    st.builds(lambda a, b: f"{a}:{b}", st.sampled_from(NUMBERS), st.sampled_from(NUMBERS)),  # cursors
    st.sampled_from(["", "asc", "desc", "DESC", "k:v", ":v", "k:", "x" * 6000, "%00", "%0a"]),
    URL_TEXT,
)
QUERY = st.lists(st.tuples(st.sampled_from(QUERY_KEYS) | URL_TEXT, QUERY_VALUE), max_size=4).map(
    lambda pairs: "&".join(f"{key}={value}" for key, value in pairs))
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["username", "password", "name", "roles"]) | HOSTILE_TEXT, inner, max_size=4),
    max_leaves=10,
)
JSON_BODY: st.SearchStrategy[bytes] = st.one_of(
    JSON_VALUE.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries({}, optional={"username": HOSTILE_TEXT, "password": HOSTILE_TEXT, "name": HOSTILE_TEXT,
                                        "roles": st.lists(st.sampled_from(["ADMIN", "OPERATIONS", "", "admin", "x"]))}
                          ).map(lambda value: json.dumps(value).encode()),
    st.sampled_from([100, 1000, 5000, 100_000]).map(lambda depth: b"[" * depth + b"]" * depth),
    st.sampled_from([100, 1000, 5000]).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.sampled_from([b"", b"null", b"[]", b'"x"', b"1e999999", b"NaN", b"\xff\xfe", b'{"username": "\xed\xa0\x80"}',
                     b'{"username": "\\ud800", "password": "\\udfff"}', b'{"username": "a\x00", "password": "b"}',
                     b"\xef\xbb\xbf{}", b'{"username": "admin", "password": "changeit"', b"{" * 3]),
    st.binary(max_size=128),
)
CONTENT_TYPE = st.sampled_from([None, "application/json", "application/json", "application/json; charset=latin-1",
                                "application/json; charset=bogus", "application/json; charset=utf-16", "text/plain",
                                "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
EXTRA_HEADERS = st.dictionaries(
    st.sampled_from(["Origin", "X-CSRF-Token", "Range", "If-Modified-Since", "Accept", "Accept-Encoding",
                     "Accept-Language", "X-Forwarded-For", "Referer"]),
    st.one_of(st.sampled_from(["null", "http://evil.example", "bytes=999999999-", "bytes=abc", "bytes=0-0,-1",
                               "gzip, br, zstd", "*/*", "x" * 4000]), HEADER_TEXT),
    max_size=3,
)
COOKIE_VALUE = st.one_of(st.sampled_from(["", "x", "x" * 4000, "\"quoted\"", "a;b"]), HEADER_TEXT)


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with {name} for each path parameter; "/static/{filename}" for the static files

    @property
    def params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


def dashboard_routes(server: ServerThread) -> list[Route]:
    """Every route of the running dashboard's router, so that a route added later is fuzzed too."""
    dashboard = server.app.dashboard
    assert dashboard is not None
    routes = set()
    for route in dashboard.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if "prefix" in info:  # the static files
            path = str(info["prefix"]).rstrip("/") + "/{filename}"
        else:
            path = str(info.get("formatter", info.get("path", "")))
        routes.add(Route(route.method, path))
    return sorted(routes, key=lambda r: (r.path, r.method))


@dataclass
class HttpAnswer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def http_request(server: ServerThread, method: str, target: str, headers: dict[str, str], body: bytes | None,
                 source: str = HOSTILE_SOURCE) -> HttpAnswer:
    connection = http.client.HTTPConnection("127.0.0.1", server.app.dashboard.port,  # type: ignore[union-attr]
                                            timeout=CALL_TIMEOUT, source_address=(source, 0))
    try:
        connection.request(method, target, body=body, headers=headers)
        answer = connection.getresponse()
        # The live tail never ends: its headers are the answer.
        streaming = (answer.getheader("Content-Type") or "").startswith("text/event-stream")
        return HttpAnswer(answer.status, answer.headers, b"" if streaming else answer.read())
    finally:
        connection.close()


def dashboard_login(fuzz: Fuzz) -> None:
    body = json.dumps({"username": ADMIN[0], "password": ADMIN[1]}).encode()
    answer = http_request(fuzz.server, "POST", "/api/login", {"Content-Type": "application/json"}, body,
                          source="127.0.0.1")
    assert answer.status == 200, answer.body
    cookie = answer.headers.get("Set-Cookie", "")
    fuzz.dashboard_cookie = cookie.split(";", 1)[0].split("=", 1)[1]
    fuzz.dashboard_csrf = json.loads(answer.body)["csrf_token"]


def still_logged_in(fuzz: Fuzz) -> bool:
    answer = http_request(fuzz.server, "GET", "/api/session", {"Cookie": f"orisun_session={fuzz.dashboard_cookie}"},
                          None, source="127.0.0.1")
    return answer.status == 200


def http_problems(answer: HttpAnswer) -> Problems:
    """What is wrong with a dashboard answer, by kind; empty lists if nothing."""
    problems: Problems = {"status": [], "headers": [], "message": [], "trace": []}
    if answer.status >= 500:
        problems["status"].append(f"status {answer.status}")
    missing = [name for name in SECURITY_HEADERS if answer.headers.get(name) is None]
    if missing:
        problems["headers"].append(f"no {', '.join(missing)}")
    text = answer.body.decode("utf-8", "replace")
    is_json = (answer.headers.get("Content-Type") or "").startswith("application/json")
    if answer.status >= 400 and answer.body and is_json:
        try:
            error = json.loads(text).get("error", "")
        except (ValueError, AttributeError):
            problems["message"].append("an error answer that is not the documented JSON object")
        else:
            problems["message"] += details_problems(str(error))
    elif answer.status >= 400 and ("Traceback" in text or 'File "' in text):
        problems["message"].append("a traceback in the answer")
    return problems


@st.composite
def dashboard_requests(draw: st.DrawFn, route: Route) -> tuple[str, str, dict[str, str], bytes | None, bool]:
    """(method, target, headers, body, logged in) for one hostile request to ``route``."""
    method = draw(st.sampled_from([route.method] * 6 + ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]))
    path = route.path
    for name in route.params:
        value = draw(PATH_PARAM if name != "filename" else st.one_of(
            st.sampled_from(["app.js", "style.css", "../_server.py", "..%2f_server.py", "%2e%2e/%2e%2e/etc/passwd",
                             "pages/..%2f..%2f_sessions.py", "app.js%00.png", "", ".", "pages", "pages/"]), URL_TEXT))
        path = path.replace("{" + name + "}", value)
    query = draw(st.one_of(st.just(""), QUERY))
    # aiohttp's own limit on the request line is 8,190 bytes: longer is test_dashboard_protocol_limits.
    target = (path + ("?" + query if query else ""))[:REQUEST_LINE_BYTES]
    logged_in = draw(st.sampled_from([True, True, True, False]))  # most handlers run only logged in
    headers: dict[str, str] = {}
    content_type = draw(CONTENT_TYPE)
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers.update(draw(EXTRA_HEADERS))
    if logged_in:
        # The real cookie; mostly the right CSRF token too, so that the handlers run.
        headers.setdefault("X-CSRF-Token", "{csrf}")
        headers["Cookie"] = "orisun_session={cookie}"
    elif draw(st.booleans()):
        headers["Cookie"] = "orisun_session=" + draw(COOKIE_VALUE)
    body = draw(st.one_of(st.none(), JSON_BODY)) if method not in ("GET", "HEAD") else None
    return method, target, headers, body, logged_in


def dashboard_batch(fuzz: Fuzz, route: Route) -> Callable[[], None]:
    """One hypothesis batch of hostile requests to ``route``."""

    @fuzz_settings(50)
    @given(request=dashboard_requests(route))
    def batch(request: tuple[str, str, dict[str, str], bytes | None, bool]) -> None:
        method, target, headers, body, logged_in = request
        headers = {key: value.replace("{csrf}", fuzz.dashboard_csrf).replace("{cookie}", fuzz.dashboard_cookie)
                   for key, value in headers.items()}
        before = fuzz.snapshot()
        answer = http_request(fuzz.server, method, target, headers, body)
        problems = http_problems(answer)
        if answer.status >= 400 and fuzz.snapshot() != before:
            problems["trace"].append("it was rejected, but it stored something")
        require(problems, f"{method} {target[:300]!r} (route {route.method} {route.path}, logged in: {logged_in}) "
                          f"answered {answer.status} {answer.body[:300]!r}")
        if logged_in and "logout" in target and not still_logged_in(fuzz):
            dashboard_login(fuzz)  # the request logged out: log in again

    for request in route_examples(route):
        batch = example(request=request)(batch)
    return batch


def route_examples(route: Route) -> list[tuple[str, str, dict[str, str], bytes | None, bool]]:
    """Requests always tried first for ``route``, whatever the seed: long and NUL path parameters,
    numbers that only look like numbers, a body in an unknown charset."""
    logged_in = {"X-CSRF-Token": "{csrf}", "Cookie": "orisun_session={cookie}"}
    requests = []
    for value in ("x" * 3000, "%00", BOUNDARY):
        path = route.path
        for name in route.params:
            path = path.replace("{" + name + "}", value)
        query = "count=%C2%B2&after=%C2%B2:%C2%B2" if value == BOUNDARY else ""
        target = path + ("?" + query if query else "")
        body = None if route.method in ("GET", "HEAD") else b'{"username": "u", "password": "p", "name": "n"}'
        requests.append((route.method, target, {**logged_in, "Content-Type": "application/json"}, body, True))
    if route.method not in ("GET", "HEAD"):
        requests.append((route.method, route.path.replace("{username}", "fuzz"),
                         {**logged_in, "Content-Type": "application/json; charset=bogus"}, b"{}", True))
    return requests


def test_dashboard_routes(fuzz: Fuzz) -> None:
    """Every route of the dashboard, hostile requests logged in and not: see http_problems, and no
    trace of a rejected request. Every route gets its batch even when one fails."""
    dashboard_login(fuzz)
    routes = dashboard_routes(fuzz.server)
    assert len(routes) >= 10, routes  # the enumeration works (the dashboard has more routes than this)
    failures = []
    for route in routes:
        try:
            dashboard_batch(fuzz, route)()
        except Exception as exc:  # hypothesis's report of the route's falsifying example
            failures.append(f"--- {route.method} {route.path}:\n" + "".join(traceback.format_exception_only(exc)))
    assert not failures, "\n".join(failures)
    fuzz.assert_healthy()
    answer = http_request(fuzz.server, "GET", "/login", {}, None, source="127.0.0.1")
    assert answer.status == 200


@pytest.mark.parametrize(("target", "headers"), [
    ("/api/session?x=" + "x" * 9000, {}),
    ("/api/" + "%00" * 3000, {}),
    ("/api/session", {"X-Long": "x" * 9000}),
    ("/api/session", {f"X-Many-{i}": "x" for i in range(200)}),
], ids=["long request line", "long path", "long header", "many headers"])
def test_dashboard_protocol_limits(fuzz: Fuzz, target: str, headers: dict[str, str]) -> None:
    """Requests over aiohttp's own limits (answered before the application sees them): a 4xx,
    with the security headers too."""
    answer = http_request(fuzz.server, "GET", target, headers, None)
    assert 400 <= answer.status < 500, answer.status
    require(http_problems(answer), f"{answer.status} {answer.body[:300]!r}")
