"""The property-based fuzz suite's shared parts (issue 12, hypothesis): the module's server and how it
is called (``Fuzz``, the ``fuzz`` fixture), what every answer must satisfy, and the hostile values.
The tests are in tests/test_fuzz_rpc.py (every RPC) and tests/test_fuzz_dashboard.py (every route
of the dashboard); both are marked ``fuzz``.

One real server per test module (PostgreSQL, nats-server, gRPC, dashboard). Each test runs one
seeded, bounded hypothesis *batch* against it and then checks that the server is still healthy.

Every answer must be free of ``answer_problems``: no INTERNAL or UNKNOWN; RESOURCE_EXHAUSTED only for a
request over the configured message size; a status message without tracebacks or Python class
names and at most ``MAX_DETAILS_BYTES`` long; a response that parses as the declared type. A
rejected request must leave no trace (``snapshot``: the rows of every boundary, the users and the
pub/sub stream's messages). Streaming answers: a few items are read; a call the server neither
answered nor ended within ``STREAM_WINDOW`` was accepted (a live subscription) and is cancelled.

After each batch (``assert_healthy``): the health service answers SERVING, a SaveEvents + GetEvents
round trip works, and the server's log (captured by a loguru sink and a logging handler) has no
traceback.

Runs of the suite are reproducible (``derandomize=True``, no example database). Set
``ORISUN_FUZZ_SCALE`` (default 1) to multiply the number of examples for a longer local run.

The test files bind the fixtures here (`fresh_log`, `fuzz`) to module names of their own, so that
pytest finds them there (importing a fixture that a test takes as a parameter is a lint error,
F811).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from loguru import logger
from psycopg import sql

from orisun._proto import eventstore_pb2 as pb
from orisun.messaging.pubsub import STREAM as PUBSUB_STREAM
from orisun.runtime.postgres import EmbeddedPostgres
from tests.support import ServerThread, auth_metadata, running_server

SERVICE = pb.DESCRIPTOR.services_by_name["EventStore"]


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

