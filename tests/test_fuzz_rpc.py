"""Property-based fuzzing of every RPC (issue 12), with hypothesis; shared parts in
tests/fuzz_support.py.

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
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from hypothesis import example, given
from hypothesis import strategies as st

from tests import fuzz_support
from tests.fuzz_support import (
    ADMIN_BOUNDARY,
    BIG,
    BOUNDARY,
    HOSTILE_TEXT,
    MAX_MESSAGE,
    READER,
    SERVICE,
    Fuzz,
    fuzz_settings,
)
from tests.support import ADMIN, auth_metadata, basic

# Fixtures of tests/fuzz_support.py, bound to names of this module so that pytest finds them here.
fuzz = fuzz_support.fuzz
fresh_log = fuzz_support.fresh_log


pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(180)]


METHODS = list(SERVICE.methods)
Field = pb_descriptor.FieldDescriptor


UNDECODABLE_WINDOW = 5.0  # the same for a body that does not decode, which must be refused


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

