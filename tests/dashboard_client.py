"""The dashboard tests' HTTP client and helpers (test_dashboard_*.py): a standard-library client
that keeps its own ``orisun_session`` cookie and CSRF token like a browser, the documented error
shape, and gRPC helpers that save and read the events the dashboard is checked against.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from orisun._proto import eventstore_pb2 as pb
from tests.support import ADMIN, ServerThread, auth_metadata

COOKIE = "orisun_session"
EVENT_KEYS = {"event_id", "event_type", "stream", "version", "position", "created_at", "tags", "data", "metadata"}
USER_KEYS = {"id", "name", "username", "roles"}


# --- The HTTP client -----------------------------------------------------------------------------


def parse_set_cookie(header: str) -> tuple[str, str, dict[str, str]]:
    """(name, value, attributes with lower-case names) of one Set-Cookie header."""
    first, *rest = (part.strip() for part in header.split(";"))
    name, _, value = first.partition("=")
    attributes = {}
    for part in rest:
        key, _, attribute = part.partition("=")
        attributes[key.strip().lower()] = attribute.strip()
    return name.strip(), value.strip().strip('"'), attributes


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: Any  # the parsed JSON, or the text when it is not JSON
    text: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def session_cookies(self) -> list[tuple[str, dict[str, str]]]:
        """(value, attributes) of every Set-Cookie for the session cookie."""
        cookies = [parse_set_cookie(h) for h in self.headers.get_all("Set-Cookie") or []]
        return [(value, attributes) for name, value, attributes in cookies if name == COOKIE]


@dataclass
class Client:
    """A browser-like client of the dashboard: its own session cookie and CSRF token."""

    base_url: str
    source: str | None = None  # a local address to connect from (127.0.0.x), for per-address rules
    cookie: str | None = None
    csrf: str | None = None
    user: dict[str, Any] = field(default_factory=dict)

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        parts = urlsplit(self.base_url)
        assert parts.hostname is not None and parts.port is not None, self.base_url
        source = (self.source, 0) if self.source else None
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout, source_address=source)

    def headers_for(self, method: str, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
        headers: dict[str, str | None] = {}
        if self.cookie is not None:
            headers["Cookie"] = f"{COOKIE}={self.cookie}"
        if method != "GET":
            headers["Content-Type"] = "application/json"
            headers["X-CSRF-Token"] = self.csrf
        headers.update(extra or {})  # a None value leaves the header out
        return {key: value for key, value in headers.items() if value is not None}

    def request(self, method: str, path: str, json_body: Any = None, headers: Mapping[str, str | None] | None = None,
                body: bytes | None = None) -> Response:
        if json_body is not None:
            body = json.dumps(json_body).encode()
        connection = self.connection()
        try:
            connection.request(method, path, body=body, headers=self.headers_for(method, headers))
            answer = connection.getresponse()
            raw = answer.read()
        finally:
            connection.close()
        text = raw.decode("utf-8", errors="replace")
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        response = Response(answer.status, answer.headers, parsed, text)
        for value, attributes in response.session_cookies():
            cleared = not value or attributes.get("max-age") == "0"
            self.cookie = None if cleared else value
        return response

    def get(self, path: str, headers: Mapping[str, str | None] | None = None) -> Response:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, json_body: Any = None, headers: Mapping[str, str | None] | None = None) -> Response:
        return self.request("POST", path, json_body, headers)

    def delete(self, path: str, json_body: Any = None, headers: Mapping[str, str | None] | None = None) -> Response:
        return self.request("DELETE", path, json_body, headers)

    def login(self, username: str, password: str) -> Response:
        response = self.post("/api/login", {"username": username, "password": password})
        if response.status == 200:
            self.csrf = response.body["csrf_token"]
            self.user = response.body
        return response


def logged_in(server: ServerThread, username: str = ADMIN[0], password: str = ADMIN[1]) -> Client:
    client = Client(server.dashboard_url)
    response = client.login(username, password)
    assert response.status == 200, response.text
    return client


def assert_no_traceback(response: Response) -> None:
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text


def assert_error(response: Response, status: int | Sequence[int], field_name: str | None = None) -> None:
    """A documented error answer: the status, {"error": message} and, for validation errors, the field."""
    statuses = [status] if isinstance(status, int) else list(status)
    assert response.status in statuses, f"{response.status} {response.text}"
    assert isinstance(response.body, dict), response.text
    assert isinstance(response.body.get("error"), str) and response.body["error"], response.body
    assert_no_traceback(response)
    if field_name is not None:
        assert response.body.get("field") == field_name, response.body
        assert field_name.rstrip("s").lower() in response.body["error"].lower(), response.body


def ok(response: Response, status: int = 200) -> Any:
    assert response.status == status, f"{response.status} {response.text}"
    return response.body


# --- gRPC helpers --------------------------------------------------------------------------------


def ev(event_type: str, tags: Sequence[tuple[str, str]] = (), data: str | None = None,
       metadata: str = "") -> pb.EventToSave:
    return pb.EventToSave(event_id=str(uuid.uuid4()), event_type=event_type,
                          data=data if data is not None else json.dumps({"n": uuid.uuid4().hex[:8]}),
                          metadata=metadata, tags=[pb.Tag(key=k, value=v) for k, v in tags])


def save(server: ServerThread, boundary: str, stream: str, events: Sequence[pb.EventToSave]) -> pb.WriteResult:
    request = pb.SaveEventsRequest(boundary=boundary, stream=pb.SaveStreamQuery(name=stream, expected_version=-2),
                                   events=events)
    with server.stub() as stub:
        result: pb.WriteResult = stub.SaveEvents(request, metadata=auth_metadata(), timeout=30)
    return result


def read_all(server: ServerThread, boundary: str) -> list[pb.Event]:
    with server.stub() as stub:
        request = pb.GetEventsRequest(boundary=boundary, count=10_000)
        return list(stub.GetEvents(request, metadata=auth_metadata(), timeout=30).events)


def as_json(event: pb.Event) -> dict[str, Any]:
    """What the dashboard's EVENT must be for an event GetEvents returned (created_at aside)."""
    return {"event_id": event.event_id, "event_type": event.event_type, "stream": event.stream_id,
            "version": event.version,
            "position": {"commit": event.position.commit_position, "prepare": event.position.prepare_position},
            "tags": [{"key": t.key, "value": t.value} for t in event.tags], "data": event.data,
            "metadata": event.metadata}


def assert_events_equal(got: Sequence[dict[str, Any]], expected: Sequence[pb.Event]) -> None:
    """Same events in the same order, every documented field (and only those) equal."""
    assert [e["event_id"] for e in got] == [e.event_id for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert set(g) == EVENT_KEYS, sorted(g)
        assert {k: v for k, v in g.items() if k != "created_at"} == as_json(e)
        created = datetime.fromisoformat(g["created_at"])
        assert created.tzinfo is not None, g["created_at"]
        assert abs((created - e.date_created.ToDatetime(tzinfo=UTC)).total_seconds()) < 0.001, g["created_at"]


def cursor(event: pb.Event) -> str:
    return f"{event.position.commit_position}:{event.position.prepare_position}"


def boundary_entry(overview: dict[str, Any], boundary: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [b for b in overview["boundaries"] if b["boundary"] == boundary]
    assert len(entries) == 1, overview["boundaries"]
    return entries[0]
