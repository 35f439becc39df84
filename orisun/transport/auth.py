"""Basic auth on every call except health (docs/contract.md §7), and the decoding of requests.

The interceptor authenticates before the handler runs and hands the user to EventStore handlers
through ``current_user``. Reflection needs credentials too: the API's shape is not public.

It also decodes the requests itself. gRPC would decode a body before any handler runs, so a
request that is not valid protobuf would be answered UNKNOWN naming a Python exception, with a
traceback in the log, even for a caller without credentials. The handlers returned here take the
raw bytes instead: credentials are checked first (refusals never decode), then the body is
decoded, and a body that does not decode is answered INVALID_ARGUMENT naming the message type and
the field (``orisun.transport.wire``), with one short, rate-limited log line.

A streaming response registers with ``Users.watch``: when its user is deleted or changes
password, the stream ends with UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import inspect
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from loguru import logger

from orisun.errors import OrisunError, Unauthenticated, quoted
from orisun.metrics import Counts
from orisun.model import User
from orisun.service.throttle import Throttled
from orisun.service.users import Credential, Users
from orisun.transport.status import status_of
from orisun.transport.wire import explain

current_user: contextvars.ContextVar[User] = contextvars.ContextVar("current_user")

_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_SCHEME = "basic "


def parse_basic(value: str | None) -> tuple[str, str]:
    """(username, password) from an ``authorization`` header value; Unauthenticated if malformed."""
    if not value:
        raise Unauthenticated("missing authorization header (expected 'Basic base64(username:password)')")
    if not value[: len(_SCHEME)].lower() == _SCHEME:
        raise Unauthenticated("authorization header must use the Basic scheme")
    try:
        decoded = base64.b64decode(value[len(_SCHEME):].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("authorization header is not valid base64 of username:password") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise Unauthenticated("authorization header is not valid base64 of username:password")
    return username, password


def _header(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            return str(value)
    return None


class Gate:
    """Counts the calls in progress and, once closed, turns new ones away.

    On shutdown gRPC's own stop() answers the calls it has received but not yet dispatched with
    CANCELLED, which clients read as their own doing and do not retry. Closing the gate first
    answers every call UNAVAILABLE (retry elsewhere) while the calls already running finish.
    """

    # The gate stays closed until no call has arrived for this long, so that calls gRPC had
    # already received are dispatched (and refused) before gRPC itself stops.
    QUIET = 0.25

    def __init__(self) -> None:
        self.closed = False
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_seen = 0.0

    def enter(self) -> None:
        self._active += 1
        self._idle.clear()

    def leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            # A client's next call may already be on its way: quiet counts from the last call seen.
            self._last_seen = time.monotonic()
            self._idle.set()

    def refused(self) -> None:
        self._last_seen = time.monotonic()

    async def close(self, grace: float) -> None:
        """Turn new calls away; wait up to ``grace`` seconds for the running ones and the queued."""
        self.closed = True
        # Quiet counts from the closing too: with no call running at that instant (between two
        # calls of a client), calls gRPC has already received must still reach the gate and be
        # refused, not be cancelled by gRPC's stop().
        self._last_seen = time.monotonic()
        deadline = time.monotonic() + grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        # Polling for quiet: no event fires for "nothing came".
        while time.monotonic() - self._last_seen < self.QUIET and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(self.QUIET / 2)


def client_address(peer: str) -> str:
    """The client's address in a gRPC peer string, without the port (``ipv4:10.0.0.1:5000`` ->
    ``10.0.0.1``), as the dashboard sees it: the throttle counts per address across both."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer[:128]


class QuietLog:
    """Lines at ``level``, at most ``burst`` per ``interval`` seconds, each cut to ``width``
    characters; the lines left out are counted and reported with the next one that passes (an
    anonymous client must not be able to flood the log)."""

    def __init__(self, level: str = "WARNING", burst: int = 10, interval: float = 60.0, width: int = 300) -> None:
        self.level = level
        self.burst = burst
        self.interval = interval
        self.width = width
        self._window_start = -interval
        self._sent = 0
        self._suppressed = 0

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            self._window_start, self._sent = now, 0
        if self._sent >= self.burst:
            self._suppressed += 1
            return
        self._sent += 1
        text = text if len(text) <= self.width else text[: self.width - 1] + "…"
        if self._suppressed:
            text += f" ({self._suppressed} similar lines left out)"
            self._suppressed = 0
        logger.log(self.level, "{}", text)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps each method's handler once (``_Method``), then hands gRPC that same handler for
    every call of the method: a call costs one dict lookup here, not a handler lookup, a new
    handler and its closures (issue #13). A method gRPC has no handler for is not remembered
    (any name can be asked for), and is asked for again on each call."""

    # Peer strings remembered with their address (one per connection); past this, start over.
    MAX_PEERS = 4096

    def __init__(self, users: Users, gate: Gate, counts: Counts | None = None) -> None:
        """``counts``: where each call's final status is counted (by default the users' counts)."""
        self.users = users
        self.gate = gate
        self.counts = counts if counts is not None else users.counts
        self._methods: dict[str, _Method] = {}
        self._addresses: dict[str, str] = {}
        self._undecodable_log = QuietLog()
        self._login_log = QuietLog()  # wrong passwords, throttled logins
        self._refusal_log = QuietLog("DEBUG")  # no or malformed credentials, users table unreachable

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        known = self._methods.get(method)
        if known is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            known = self._methods[method] = _Method(self, handler, method, open_=method.startswith(_OPEN_PREFIXES))
        if known.open:
            return known.handler
        if self.gate.closed:
            self.gate.refused()
            return known.refusing
        return known.handler

    def address(self, peer: str) -> str:
        """``client_address(peer)``, remembered: every call of a connection has the same peer."""
        address = self._addresses.get(peer)
        if address is None:
            if len(self._addresses) >= self.MAX_PEERS:
                self._addresses.clear()
            address = self._addresses[peer] = client_address(peer)
        return address

    def recall(self, context: grpc.aio.ServicerContext) -> Credential | None:
        """The caller's credential when it was verified before (``Users.recall``): one lookup,
        without decoding the header; None when the call must ``sign_in``."""
        header = _header(context.invocation_metadata())
        if header is None:
            return None
        return self.users.recall(header, self.address(context.peer()))

    async def sign_in(self, method: str, context: grpc.aio.ServicerContext) -> Credential:
        """The caller's credential, from the metadata alone; otherwise the call is aborted."""
        address = self.address(context.peer())
        header = _header(context.invocation_metadata())
        try:
            username, password = parse_basic(header)
        except Unauthenticated as exc:
            self.users.counts.auth_failures += 1
            self._refusal_log(f"Refused {method} from {address}: {exc}")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise
        try:
            return await self.users.sign_in(username, password, address, token=header)
        except OrisunError as exc:
            # Unauthenticated (maybe Throttled), or Unavailable when the users table cannot be read.
            code, message = status_of(exc)
            if isinstance(exc, Throttled):
                self._login_log(f"gRPC: throttled login for {quoted(username)} from {address} ({method})")
            elif isinstance(exc, Unauthenticated):
                self._login_log(f"gRPC: failed login for {quoted(username)} from {address} ({method})")
            else:
                self._refusal_log(f"Refused {method} from {address}: {message}")
            await context.abort(code, message)
            raise

    async def undecodable(self, deserializer: Any, raw: bytes, method: str,
                          context: grpc.aio.ServicerContext) -> None:
        """Abort the call with INVALID_ARGUMENT saying why ``raw`` is no valid request."""
        descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
        if descriptor is None:
            message = "request is not valid protobuf for this method"
        else:
            reason = explain(descriptor, raw) if isinstance(raw, bytes) else None
            message = f"request is not a valid {descriptor.full_name}"
            if reason is not None:
                message = f"{message}: {reason}"
        message = message[:300]
        self._undecodable_log(
            f"Refused an undecodable {method} request from {client_address(context.peer())}: {message}"
        )
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


class _Revocation:
    """Ends a streaming call when its user's credentials no longer hold (``Users.watch``).

    The call's task is cancelled, but only while it waits inside the handler (for the next item);
    while gRPC itself is sending an item, the flag is checked once it is sent.
    """

    def __init__(self, username: str) -> None:
        self.username = username
        self.revoked = False
        self.inside = False
        self._task = asyncio.current_task()

    def revoke(self) -> None:
        if self.revoked:
            return
        self.revoked = True
        if self.inside and self._task is not None:
            self._task.cancel()

    def swallow(self) -> bool:
        """On a CancelledError: whether it is the revocation's (then it is absorbed)."""
        if not self.revoked:
            return False
        if self._task is not None:
            self._task.uncancel()
        return True

    async def abort(self, context: grpc.aio.ServicerContext) -> None:
        message = f"user {quoted(self.username)} was deleted or its password changed; sign in again"
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)


class _DecodingContext:
    """The servicer context of a streaming request, whose ``read()`` decodes as gRPC would have."""

    def __init__(self, context: grpc.aio.ServicerContext, decode: Callable[[Any], Awaitable[Any]]) -> None:
        self._context = context
        self._decode = decode

    async def read(self) -> Any:
        raw = await self._context.read()
        return raw if raw is grpc.aio.EOF else await self._decode(raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _Method:
    """The wrapped handler of one method, made once: each call signs in (unless the method is
    open), then decodes the request, then runs the method's own handler as the user."""

    def __init__(self, interceptor: AuthInterceptor, handler: grpc.RpcMethodHandler, method: str, *,
                 open_: bool) -> None:
        self._interceptor = interceptor
        self._handler = handler
        self._method = method
        self.open = open_
        # This method's calls by final status code (orisun_grpc_requests_total): kept here, so a
        # call counts with one dict update, no label lookup.
        self._codes = interceptor.counts.grpc_codes(method.lstrip("/"))
        self._deserializer = handler.request_deserializer
        kind = _kind(handler)
        self._behavior = getattr(handler, kind)
        self._awaitable = inspect.iscoroutinefunction(self._behavior)
        if inspect.isasyncgenfunction(self._behavior):
            wrapped: Callable[..., Any] = self._generator
        elif handler.request_streaming or handler.response_streaming:
            wrapped = self._coroutine
        else:
            wrapped = self._unary  # the usual call: SaveEvents, GetEvents
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        # No deserializer: gRPC hands over the raw bytes and _decode runs once the caller is known.
        self.handler: grpc.RpcMethodHandler = factory(
            wrapped, request_deserializer=None, response_serializer=passing_bytes(handler.response_serializer))
        self.refusing = _refusing(handler, grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry")

    async def _decode(self, raw: Any, context: grpc.aio.ServicerContext) -> Any:
        if self._deserializer is None:
            return raw
        try:
            return self._deserializer(raw)
        except DecodeError:
            await self._interceptor.undecodable(self._deserializer, raw, self._method, context)
            raise
        except Exception as exc:  # a deserializer that fails otherwise is a bug: INTERNAL
            code, message = status_of(exc)
            await context.abort(code, message)
            raise

    async def _decoded_stream(self, raw: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for each in raw:
            yield await self._decode(each, context)

    async def _credential(self, context: grpc.aio.ServicerContext) -> Credential:
        """Signed in, and ``current_user`` set; otherwise the call is aborted."""
        interceptor = self._interceptor
        credential = interceptor.recall(context)
        if credential is None:
            credential = await interceptor.sign_in(self._method, context)
        current_user.set(credential.user)
        return credential

    async def _prepare(self, request: Any, context: grpc.aio.ServicerContext) -> tuple[Credential | None, Any, Any]:
        """(credential, request, context) for the handler: signed in first, then decoded."""
        credential = None if self.open else await self._credential(context)
        if self._handler.request_streaming:
            return credential, self._decoded_stream(request, context), _DecodingContext(
                context, lambda raw: self._decode(raw, context))
        return credential, await self._decode(request, context), context

    async def _run(self, request: Any, context: Any) -> Any:
        if self._awaitable:
            return await self._behavior(request, context)
        return await _result(self._behavior(request, context))

    async def _unary(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """A unary request with a unary response: as _coroutine, in fewer steps."""
        codes = self._codes
        try:
            if self.open:
                result = await self._run(await self._decode(request, context), context)
            else:
                await self._credential(context)
                request = await self._decode(request, context)
                gate = self._interceptor.gate
                gate.enter()
                try:
                    result = await self._run(request, context)
                finally:
                    gate.leave()
        except BaseException as exc:
            _count_failure(codes, context, exc)
            raise
        codes["OK"] = codes.get("OK", 0) + 1
        return result

    def _watch(self, credential: Credential | None) -> tuple[_Revocation | None, Callable[[], None]]:
        if credential is None:
            return None, lambda: None
        revocation = _Revocation(credential.user.username)
        return revocation, self._interceptor.users.watch(credential, revocation.revoke)

    async def _generator(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        # A streaming response: not counted by the gate (a subscription has no end to wait for at
        # shutdown), ended when its user's credentials go.
        codes = self._codes
        try:
            credential, request, inner_context = await self._prepare(request, context)
        except BaseException as exc:
            _count_failure(codes, context, exc)
            raise
        revocation, unwatch = self._watch(credential)
        items = self._behavior(request, inner_context)
        try:
            while True:
                if revocation is not None:
                    revocation.inside = True
                try:
                    item = await items.__anext__()
                except StopAsyncIteration:
                    break  # not return: the ``else`` below counts the call as OK
                except asyncio.CancelledError:
                    if revocation is None or not revocation.swallow():
                        raise
                finally:
                    if revocation is not None:
                        revocation.inside = False
                if revocation is not None and revocation.revoked:
                    await items.aclose()
                    await revocation.abort(context)
                yield item
        except BaseException as exc:
            _count_failure(codes, context, exc)
            raise
        else:
            codes["OK"] = codes.get("OK", 0) + 1
        finally:
            unwatch()
            await items.aclose()

    async def _coroutine(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        codes = self._codes
        try:
            result = await self._coroutine_call(request, context)
        except BaseException as exc:
            _count_failure(codes, context, exc)
            raise
        codes["OK"] = codes.get("OK", 0) + 1
        return result

    async def _coroutine_call(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        credential, request, inner_context = await self._prepare(request, context)
        if self._handler.response_streaming:
            # A streaming response written with context.write(): as in _generator.
            revocation, unwatch = self._watch(credential)
            try:
                if revocation is not None:
                    revocation.inside = True
                try:
                    return await self._run(request, inner_context)
                except asyncio.CancelledError:
                    if revocation is None or not revocation.swallow():
                        raise
                    await revocation.abort(context)
            finally:
                unwatch()
        if self.open:
            return await self._run(request, inner_context)
        gate = self._interceptor.gate
        gate.enter()
        try:
            return await self._run(request, inner_context)
        finally:
            gate.leave()


def _count_failure(codes: dict[str, int], context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Count a call that ended with ``exc``: an abort by its status code, a client that went
    away (the call's task cancelled, its generator closed) as CANCELLED, anything else as gRPC
    answers it, UNKNOWN."""
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        name = "CANCELLED"
    else:
        name = "UNKNOWN"
    codes[name] = codes.get(name, 0) + 1


def passing_bytes(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """``serializer``, except that a response already serialized (bytes) is sent as it is: a
    subscription's events are serialised once for all their subscribers (convert.EncodedEvents)."""
    if serializer is None:
        return None

    def serialize(message: Any) -> bytes:
        return message if type(message) is bytes else serializer(message)

    return serialize


async def _result(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that only answers ``code`` (never decoding)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    kind = _kind(handler)
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(refuse, request_deserializer=None, response_serializer=handler.response_serializer)


def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "stream_stream" if handler.response_streaming else "stream_unary"
    return "unary_stream" if handler.response_streaming else "unary_unary"
