"""Error → gRPC status: the one mapping every handler, unary and streaming, goes through."""

from __future__ import annotations

import contextlib
import functools
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar, cast

import grpc
from loguru import logger

from orisun import errors

STATUS: dict[type[errors.OrisunError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a client gets for ``exc``, the message at most
    errors.MAX_MESSAGE_BYTES long.

    Orisun's own errors carry a message meant for the client. Anything else is a bug: the client
    gets INTERNAL with a fixed message and an incident id, the log gets the traceback.
    """
    for kind, code in STATUS.items():
        if isinstance(exc, kind):
            return code, errors.bounded(str(exc))
    incident = uuid.uuid4().hex[:12]
    logger.opt(exception=exc).error("Internal error, incident {}", incident)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident}); the details are in the server log"


async def abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> NoReturn:
    code, message = status_of(exc)
    if code == grpc.StatusCode.INTERNAL:
        logger.error("{} failed for peer {}", method, context.peer())
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


F = TypeVar("F", bound=Callable[..., Any])


def translate_errors(method: F) -> F:
    """Decorate a servicer method (coroutine or async generator) so errors become statuses."""
    name = method.__name__
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                # aclosing: when the client goes, the handler's own clean-up (a subscriber_name,
                # a pull subscription) runs now rather than whenever the generator is collected.
                async with contextlib.aclosing(method(self, request, context)) as items:
                    async for item in items:
                        yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort(context, exc, name)

        return cast(F, streaming)

    coroutine = cast(Callable[..., Awaitable[Any]], method)

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await coroutine(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc, name)

    return cast(F, unary)
