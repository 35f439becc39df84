"""The admin dashboard's HTTP server (aiohttp, in Orisun's event loop): pages, JSON API, live tail.

The HTTP API is documented in docs/dashboard.md. Like the gRPC transport, this layer only
converts: requests to calls of the core (orisun.service), answers to JSON, and Orisun's errors to
HTTP statuses (``_STATUS``, the one place). The security rules sit in the middlewares.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import re
import ssl
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger

from orisun.dashboard._admin_routes import AdminRoutes
from orisun.dashboard._convert import (
    MAX_COUNT,
    MAX_POSITION,
    event_json,
    parse_int,
    prefix_filter,
    quote,
    read_request,
    stream_filter,
    tail_query,
)
from orisun.dashboard._keys import SESSION, SESSION_ID, USER
from orisun.dashboard._requests import MAX_LARGE_BODY_BYTES, json_body, text_field
from orisun.dashboard._sessions import Sessions, csrf_ok
from orisun.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OrisunError,
    PermissionDenied,
    StartupError,
    Unauthenticated,
    Unavailable,
    bounded,
)
from orisun.logs import escape_control
from orisun.model import Direction, Event, Position, ReadRequest, User
from orisun.service.boundaries import Boundaries
from orisun.service.events import EventStore
from orisun.service.monitor import Monitor, PrefixFilter
from orisun.service.pubsub import PubSubService
from orisun.service.subscriptions import Subscriptions
from orisun.service.throttle import Throttled
from orisun.service.users import Users

COOKIE = "orisun_session"
CSRF_HEADER = "X-CSRF-Token"
KEEPALIVE = 15.0  # seconds between comments on a quiet live tail, so proxies keep it open
DISCONNECT_CHECK = 1.0  # seconds between checks that a quiet live tail's client is still there
STATIC = Path(str(resources.files("orisun.dashboard").joinpath("static")))
# A static file's path: a few segments of letters, digits, '.', '_' and '-', none starting with a
# dot. Anything else is a 404 before the file system is asked (a 5,000-character name made the
# operating system fail with ENAMETOOLONG; NUL, '..' and hidden files never reach it either).
_STATIC_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,99}){0,3}")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Answer without a session: the login page and its assets, the login itself, and /metrics (its
# own Basic auth when ORISUN_METRICS_AUTH is on: dashboard/_metrics.py).
_PUBLIC = frozenset({("GET", "/login"), ("HEAD", "/login"), ("POST", "/api/login"), ("GET", "/metrics")})
_STATUS: dict[type[OrisunError], int] = {
    InvalidArgument: 400,
    Unauthenticated: 401,
    PermissionDenied: 403,
    NotFound: 404,
    AlreadyExists: 409,
    FailedPrecondition: 409,
    Unavailable: 503,
}
_SECURITY_HEADERS = {
    # No inline script or style, nothing from elsewhere: the pages load only their own assets.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What the authentication middleware stores on a request for the handlers.


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": bounded(message)}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


class Dashboard:
    """The admin dashboard of one node. ``sessions`` and ``throttle`` hold the security state."""

    def __init__(
        self,
        *,
        users: Users,
        events: EventStore,
        subscriptions: Subscriptions,
        pubsub: PubSubService,
        monitor: Monitor,
        boundaries: Boundaries,
        version: str,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        metrics: Handler | None = None,
        admin_username: str,
        admin_boundary: str,
    ) -> None:
        self.users = users
        self._metrics = metrics  # GET /metrics (dashboard/_metrics.py), when given
        self.events = events
        self.subscriptions = subscriptions
        self.pubsub = pubsub
        self.monitor = monitor
        self.boundaries = boundaries
        self.version = version
        self.host = host
        self.port = port
        # With a context the port speaks HTTPS only: a plain HTTP request fails its handshake.
        self.ssl_context = ssl_context
        self.sessions = Sessions()
        # The configured admin user, whose default password the pages warn about, and the internal
        # boundary (users, catalog), shown apart from the user's boundaries.
        self.admin_username = admin_username
        self.admin_boundary = admin_boundary
        # Whether the admin still has DEFAULT_ADMIN_PASSWORD, by the admin's (id, updated_at): an
        # argon2 verify costs ~50 ms, so it runs again only when that user changed.
        self._default_password: tuple[tuple[str, Any], bool] | None = None
        self.throttle = users.throttle
        self._runner: web.AppRunner | None = None
        self._tails: set[asyncio.Task[Any]] = set()
        self.app = self._build()

    # --- Lifecycle ---------------------------------------------------------------------------

    def _build(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._authenticate, self._forgery],
                              client_max_size=MAX_LARGE_BODY_BYTES)
        app.on_response_prepare.append(self._headers)
        r = app.router
        r.add_get("/", self._page("index.html"))
        r.add_get("/login", self._page("login.html"))
        r.add_get("/static/{path:.*}", self._static)
        r.add_post("/api/login", self.login)
        r.add_post("/api/logout", self.logout)
        r.add_get("/api/session", self.session)
        r.add_get("/api/overview", self.overview)
        admin = AdminRoutes(self.users, self.boundaries, self.sessions, self.admin_boundary)
        r.add_get("/api/boundaries", admin.list_boundaries)
        r.add_post("/api/boundaries", admin.create_boundary)
        r.add_get("/api/boundaries/{boundary}/events", self.list_events)
        r.add_get("/api/boundaries/{boundary}/events/{event_id}", self.get_event)
        r.add_get("/api/boundaries/{boundary}/streams", self.list_streams)
        r.add_get("/api/boundaries/{boundary}/tail", self.tail)
        r.add_get("/api/subscriptions", self.list_subscriptions)
        r.add_get("/api/users", admin.list_users)
        r.add_post("/api/users", admin.create_user)
        r.add_post("/api/users/{username}/password", admin.change_password)
        r.add_delete("/api/users/{username}", admin.delete_user)
        r.add_delete("/api/users", admin.delete_user_named)  # any stored name, even one too long for a URL
        if self._metrics is not None:
            r.add_get("/metrics", self._metrics, allow_head=False)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        # aiohttp answers a request it cannot parse (400) with a request object of its own, outside
        # the application and its on_response_prepare: have those carry the security headers too.
        self._runner.server.request_factory = self._make_request  # type: ignore[union-attr]
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"ORISUN_ADMIN_PORT: port {self.port} on {self.host} is already in use") from None
            raise StartupError(f"ORISUN_ADMIN_PORT: cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        self.port = int(self._runner.addresses[0][1])  # the port picked when it was 0

    async def stop(self) -> None:
        # Live tails never end on their own: end them first, or the runner waits for them.
        for task in list(self._tails):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- Middlewares -------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Orisun's errors as statuses with their message; anything else is a fault, logged with an
        incident id that the answer carries instead of the details."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if request.path.startswith("/api/") and exc.status >= 400:
                return _error(exc.status, exc.reason)
            raise
        except InvalidArgument as exc:
            return _error(400, str(exc), exc.field)
        except OrisunError as exc:
            return _error(_STATUS.get(type(exc), 500), str(exc))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            incident = uuid.uuid4().hex[:12]
            # The path is the client's (decoded: %0a is a line feed): escaped, it cannot forge log lines.
            logger.exception("Dashboard: {} {} failed, incident {}", request.method, escape_control(request.path),
                             incident)
            return _error(500, f"internal error (incident {incident}); the details are in the server log")

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method, request.path) in _PUBLIC or request.path.startswith("/static/"):
            return await handler(request)
        session_id = request.cookies.get(COOKIE)
        session = self.sessions.get(session_id)
        user = await self.users.get(session.username) if session is not None else None
        if session is None or user is None or session_id is None:
            if session_id is not None:
                self.sessions.end(session_id)
            if request.path.startswith("/api/"):
                return _error(401, "log in first: no valid session")
            raise web.HTTPSeeOther("/login")
        request[SESSION_ID], request[SESSION], request[USER] = session_id, session, user
        return await handler(request)

    @web.middleware
    async def _forgery(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Cross-site request forgery: state changes need JSON, our own Origin, and the session's
        token (except the login, which has no session yet)."""
        if request.method in _SAFE_METHODS:
            return await handler(request)
        origin = request.headers.get("Origin")
        # Host only, not scheme: behind a TLS proxy the page is https while this server sees http.
        if origin is not None and (origin == "null" or urlsplit(origin).netloc != request.host):
            return _error(403, f"Origin {quote(origin)} is not this dashboard")
        if request.content_type != "application/json":
            return _error(415, "Content-Type: must be application/json")
        session = request.get(SESSION)
        if session is not None and not csrf_ok(session, request.headers.get(CSRF_HEADER)):
            return _error(403, f"{CSRF_HEADER}: missing or wrong; reload the page")
        return await handler(request)

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(_SECURITY_HEADERS)
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"

    def _make_request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.Request:
        return self.app._make_request(message, payload, protocol, writer, task, _cls=_SecuredRequest)

    # --- Pages -------------------------------------------------------------------------------

    @staticmethod
    def _page(name: str) -> Handler:
        async def page(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})

        return page

    @staticmethod
    async def _static(request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if not _STATIC_PATH.fullmatch(path) or not (file := STATIC / path).is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(file)

    # --- Session -----------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        username, password = text_field(body, "username"), text_field(body, "password")
        address = request.remote or "unknown"
        try:
            # Throttled (shared with gRPC: Users.throttle) and counted by Users.
            user = await self.users.authenticate(username, password, address)
        except Throttled as exc:
            response = _error(429, str(exc))
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        except Unauthenticated:
            logger.warning("Dashboard: failed login for {!r} from {}", username, address)
            return _error(401, "invalid username or password")
        session_id, session = self.sessions.create(user.username)
        response = web.json_response({**self._who(user), "csrf_token": session.csrf_token})
        response.set_cookie(COOKIE, session_id, httponly=True, samesite="Strict", path="/", secure=request.secure,
                            max_age=int(self.sessions.absolute_timeout))
        logger.info("Dashboard: {!r} logged in from {}", user.username, address)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.end(request[SESSION_ID])
        response = web.Response(status=204)
        response.del_cookie(COOKIE, path="/")
        return response

    async def session(self, request: web.Request) -> web.StreamResponse:
        user = request[USER]
        return web.json_response({**self._who(user), "csrf_token": request[SESSION].csrf_token,
                                  "version": self.version, "admin_boundary": self.admin_boundary,
                                  "admin_username": self.admin_username,
                                  "default_admin_password": await self._admin_has_default_password()})

    async def _admin_has_default_password(self) -> bool:
        admin = await self.users.get(self.admin_username)
        if admin is None:
            return False
        key = (admin.id, admin.updated_at)  # updated_at moves with every password change
        if self._default_password is None or self._default_password[0] != key:
            self._default_password = (key, await self.users.uses_default_password(self.admin_username))
        return self._default_password[1]

    @staticmethod
    def _who(user: User) -> dict[str, Any]:
        return {"username": user.username, "name": user.name, "roles": sorted(user.roles)}

    # --- Monitoring --------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.StreamResponse:
        # The catalog's boundaries: those created at runtime too, on any node, without a restart.
        # With PostgreSQL away the catalog cannot be read: the overview still answers (saying so),
        # with the boundaries this process knows.
        try:
            boundaries: list[tuple[str, str]] | None = [(b.name, b.schema) for b in await self.boundaries.list()]
        except Unavailable:
            boundaries = None
        o = await self.monitor.overview(boundaries)

        def health(h: Any) -> dict[str, Any]:
            latency = round(h.latency * 1000, 2) if h.latency is not None else None
            return {"ok": h.ok, "latency_ms": latency, "error": h.error, **({"url": h.url} if h.url else {})}

        return web.json_response({
            "version": self.version,
            "started_at": o.started_at.isoformat(),
            "uptime_seconds": round(o.uptime, 1),
            "postgres": health(o.postgres),
            "nats": health(o.nats),
            "boundaries": [
                {"boundary": b.boundary, "schema": b.schema, "head": b.head, "events": b.head, "streams": b.streams,
                 "subscribers": b.subscribers, "internal": b.boundary == self.admin_boundary,
                 "storage_bytes": b.details.storage_bytes if b.details else None,
                 "event_types": [{"type": t, "events": n} for t, n in b.details.event_types] if b.details else [],
                 "event_types_sampled": b.details.sampled if b.details else 0,
                 "write_rate": [{"t": p.at.isoformat(), "events_per_second": round(p.events_per_second, 2)}
                                for p in b.write_rate]}
                for b in o.boundaries
            ],
        })

    async def list_events(self, request: web.Request) -> web.StreamResponse:
        """A page of events. Beyond the read's filters: ``stream_prefix`` (streams starting with
        it), ``at`` (the page starts at this position), ``total=1`` (count the matches, bounded)."""
        boundary, params = request.match_info["boundary"], request.query
        read = read_request(boundary, params)
        prefix = prefix_filter(params)
        at = params.get("at")
        if at is not None:
            if "after" in params:
                raise InvalidArgument("at", "give either at or after, not both")
            position = parse_int("at", at, 1, MAX_POSITION)
            # The cursor just before the position in the page's order (after is exclusive).
            if read.direction == Direction.ASC:
                start = Position(0, position - 1) if position > 1 else None
            else:
                start = Position(MAX_POSITION, position + 1)
            read = dataclasses.replace(read, after=start)
        asc = read.direction == Direction.ASC
        if prefix is not None:
            if read.stream is not None:
                raise InvalidArgument("stream_prefix", "give either stream or stream_prefix, not both")
            events, resume = await self.monitor.read_by_prefix(boundary, prefix, after=read.after, count=read.count,
                                                               asc=asc)
            next_cursor = f"{resume}:{resume}" if resume is not None else None
        else:
            events = await self.events.read(request[USER], read)
            next_cursor = _cursor(events[-1].position) if len(events) == read.count else None
        answer: dict[str, Any] = {"events": [event_json(e) for e in events],
                                  "first": _cursor(events[0].position) if events else None,
                                  "last": _cursor(events[-1].position) if events else None,
                                  "next": next_cursor, "before": await self._before(read, prefix, events, asc)}
        if params.get("total") == "1":
            total = await self.monitor.events_total(read, prefix)
            answer["total"] = {"count": total.count, "exact": total.exact, "window": total.window}
        return web.json_response(answer)

    async def _before(self, read: ReadRequest, prefix: PrefixFilter | None, events: list[Event],
                      asc: bool) -> int | None:
        """How many matching events come before this page (in its order), where that is known at
        the cost of one lookup: positions are dense, and so are a stream's versions."""
        if not events or prefix is not None or read.query is not None:
            return None
        first = events[0]
        if read.stream is None:
            if asc:
                return first.position.prepare - 1
            return await self.monitor.head(read.boundary) - first.position.prepare
        if asc:
            return first.version
        version = await self.monitor.stream_version(read.boundary, read.stream)
        return version - first.version if version is not None else None

    async def get_event(self, request: web.Request) -> web.StreamResponse:
        """One event by its id (the events page's search)."""
        boundary = request.match_info["boundary"]
        event = await self.monitor.event_by_id(boundary, request.match_info["event_id"])
        if event is None:
            raise NotFound(f"event_id: no event of boundary {quote(boundary)} has the id "
                           f"{quote(request.match_info['event_id'])}")
        return web.json_response(event_json(event))

    async def list_streams(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        count = parse_int("count", query.get("count", "50"), 1, MAX_COUNT)
        order = query.get("order", "name")
        if order == "last_write":
            before = query.get("before")
            written, resume = await self.monitor.streams_by_last_write(
                request.match_info["boundary"], prefix=query.get("prefix", ""), limit=count,
                before=parse_int("before", before, 1, MAX_POSITION) if before else None)
            return web.json_response({
                "streams": [{"name": s.name, "version": s.version, "updated_at": s.updated_at.isoformat(),
                             "position": s.position} for s in written],
                "next": str(resume) if resume is not None else None,
            })
        if order != "name":
            raise InvalidArgument("order", f"{quote(order)} is not name or last_write")
        streams = await self.monitor.streams(request.match_info["boundary"], after=query.get("after", ""),
                                             prefix=query.get("prefix", ""), limit=count)
        full = len(streams) == count
        return web.json_response({
            "streams": [{"name": s.name, "version": s.version, "updated_at": s.updated_at.isoformat()}
                        for s in streams],
            "next": streams[-1].name if full and streams else None,
        })

    async def list_subscriptions(self, request: web.Request) -> web.StreamResponse:
        """Every event subscription and pub/sub consumer: connected or not, since when, rate, lag.
        The internal names (the JetStream stream of pub/sub) stay out of it."""
        activity = await self.monitor.activity(await self.pubsub.consumers())

        def when(seconds: float | None) -> str | None:
            return datetime.fromtimestamp(seconds, UTC).isoformat() if seconds is not None else None

        def rate(value: float | None) -> float | None:
            return round(value, 2) if value is not None else None

        return web.json_response({
            "subscriptions": [
                {"boundary": v.boundary, "subscriber_name": v.subscriber_name, "stream": v.stream,
                 "internal": v.boundary == self.admin_boundary, "connected": v.connected,
                 "since": when(v.since), "until": when(v.until),
                 "position": {"commit": v.position.commit, "prepare": v.position.prepare} if v.position else None,
                 "examined": v.examined, "delivered": v.delivered, "rate": rate(v.rate), "head": v.head, "lag": v.lag}
                for v in activity.subscriptions
            ],
            "live": {b: n for b, n in activity.live.items() if b != self.admin_boundary},
            "live_internal": {b: n for b, n in activity.live.items() if b == self.admin_boundary},
            "pubsub": [{"subject": c.subject, "consumer_name": c.consumer_name, "connected": c.connected,
                        "since": when(c.since), "calls": c.calls, "delivered": c.delivered, "rate": rate(c.rate),
                        "lag": c.lag,
                        "pending": c.status.pending if c.status else None,
                        "ack_pending": c.status.ack_pending if c.status else None,
                        "redelivered": c.status.redelivered if c.status else None}
                       for c in activity.consumers],
        })

    async def tail(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: every event committed after the request (matching the filters)."""
        boundary = request.match_info["boundary"]
        query, stream = tail_query(request.query), stream_filter(request.query)
        head = await self.monitor.head(boundary)  # also refuses an unknown boundary, before answering 200
        events = self.subscriptions.subscribe(request[USER], boundary, Position(head, head), query, "")
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)
        pump = asyncio.create_task(_pump(events, queue), name="orisun-dashboard-tail")
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        assert me is not None
        self._tails.add(me)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await response.write(b": live tail of " + boundary.encode() + b"\n\n")
            quiet_since = loop.time()
            while True:
                try:
                    async with asyncio.timeout(DISCONNECT_CHECK):
                        item = await queue.get()
                except TimeoutError:
                    # aiohttp does not cancel a handler whose client left: look, so that a closed
                    # tab stops counting as a subscriber within a second.
                    if request.transport is None or request.transport.is_closing():
                        break
                    if loop.time() - quiet_since >= KEEPALIVE:
                        await response.write(b": keepalive\n\n")
                        quiet_since = loop.time()
                    continue
                quiet_since = loop.time()
                if isinstance(item, BaseException):
                    message = str(item) if isinstance(item, OrisunError) else "the live tail failed; reload"
                    await response.write(b"event: error\ndata: " + json.dumps({"error": message}).encode() + b"\n\n")
                    break
                if stream is None or item.stream == stream:
                    await response.write(b"event: event\ndata: " + json.dumps(event_json(item)).encode() + b"\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the browser went away, or the dashboard stops
        finally:
            self._tails.discard(me)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        return response


def _cursor(position: Position) -> str:
    return f"{position.commit}:{position.prepare}"


async def _pump(events: AsyncGenerator[Any, None], queue: asyncio.Queue[Any]) -> None:
    """Move a subscription's events into ``queue``; its error too, as the last item."""
    try:
        async for event in events:
            await queue.put(event)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if not isinstance(exc, OrisunError):
            logger.opt(exception=exc).error("Dashboard: the live tail failed")
        await queue.put(exc)
    finally:
        await events.aclose()


class _SecuredRequest(web.Request):
    """A request whose answers always carry the security headers, also the 400 that aiohttp makes
    of a request it cannot parse (no route matched it, so the application's signal never runs)."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        response.headers.update(_SECURITY_HEADERS)
        await super()._prepare_hook(response)


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse as an error with a traceback, its message quoting
    the client's bytes across lines. It is the client's mistake: one escaped line at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "unknown"
            record.msg = "Dashboard: malformed HTTP request from %s (answered %s): %s"
            record.args = (remote, error.code, escape_control(error.message[:200]))
            record.exc_info, record.exc_text = None, None
            record.levelno = min(record.levelno, logging.INFO)  # aiohttp logs some at DEBUG already
            record.levelname = logging.getLevelName(record.levelno)
        return True


logging.getLogger("aiohttp.server").addFilter(_MalformedRequests())
