"""Basic auth on every call except health (contract section 7).

The interceptor authenticates before the handler runs and hands the user to EventStore handlers
through ``current_user``. Reflection needs credentials too: the API's shape is not public.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from loguru import logger

from orisun.errors import OrisunError, Unauthenticated
from orisun.model import User
from orisun.service.users import Users
from orisun.transport.status import status_of

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
            self._idle.set()

    def refused(self) -> None:
        self._last_seen = time.monotonic()

    async def close(self, grace: float) -> None:
        """Turn new calls away; wait up to ``grace`` seconds for the running ones and the queued."""
        self.closed = True
        deadline = time.monotonic() + grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        # Polling for quiet: no event fires for "nothing came".
        while time.monotonic() - self._last_seen < self.QUIET and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(self.QUIET / 2)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, users: Users, gate: Gate) -> None:
        self._users = users
        self._gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method.startswith(_OPEN_PREFIXES):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if self._gate.closed:
            self._gate.refused()
            return _refusing(handler, grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry")
        try:
            username, password = parse_basic(_header(handler_call_details.invocation_metadata))
            user = await self._users.authenticate(username, password)
        except OrisunError as exc:
            # Unauthenticated, or Unavailable when the users table cannot be read.
            code, message = status_of(exc)
            logger.debug("Refused {}: {}", method, message)
            return _refusing(handler, code, message)
        return _as_user(handler, user, self._gate)


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that only answers ``code``."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    kind = _kind(handler)
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(refuse, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)


def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "stream_stream" if handler.response_streaming else "stream_unary"
    return "unary_stream" if handler.response_streaming else "unary_unary"


def _as_user(handler: grpc.RpcMethodHandler, user: User, gate: Gate) -> grpc.RpcMethodHandler:
    """``handler`` with ``current_user`` set to ``user`` while it runs; unary calls counted by ``gate``."""
    kind = _kind(handler)
    behavior = getattr(handler, kind)
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # Not counted by the gate: a subscription has no end to wait for at shutdown.
            current_user.set(user)
            async for item in behavior(request, context):
                yield item

        wrapped: Callable[..., Any] = streaming
    else:

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            current_user.set(user)
            gate.enter()
            try:
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                gate.leave()

        wrapped = call
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(wrapped, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)
