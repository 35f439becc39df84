"""The asyncio client: the same methods as `Client`, as coroutines and async iterators."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar

import grpc

from orisun._proto import admin_pb2 as apb
from orisun._proto import admin_pb2_grpc as apb_grpc
from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.client import _convert as convert
from orisun.client._channel import DEFAULT_TARGET, ChannelConfig, PemSource
from orisun.client._errors import Unavailable, status_code, translate
from orisun.client._resume import Resumer
from orisun.client._types import (
    ANY,
    AdminUser,
    BoundaryInfo,
    Direction,
    EventData,
    Position,
    PubSubMessage,
    QueryLike,
    RecordedEvent,
    RetryPolicy,
    WriteResult,
)

__all__ = ["AsyncClient", "AsyncConsumedMessage", "AsyncConsumer", "AsyncSubscription"]

T = TypeVar("T")


class AsyncClient:
    """An asyncio client of an Orisun server: the same constructor and methods as `Client`, with
    coroutines for calls and async iterators for reads and subscriptions. Create and use it on
    one event loop; ``async with`` closes it."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        root_certificates: PemSource | None = None,
        certificate_chain: PemSource | None = None,
        private_key: PemSource | None = None,
        server_name: str | None = None,
        boundary: str | None = None,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._config = ChannelConfig.make(
            target, username=username, password=password, tls=tls, root_certificates=root_certificates,
            certificate_chain=certificate_chain, private_key=private_key, server_name=server_name, options=options,
        )
        self.boundary = boundary
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self._metadata = self._config.call_metadata
        self._channel = self._config.aio_channel()
        self._store = pb_grpc.EventStoreStub(self._channel)  # type: ignore[no-untyped-call]
        self._admin = apb_grpc.AdminStub(self._channel)  # type: ignore[no-untyped-call]
        self._closed = False

    def _is_closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close the channel; calls in progress fail, subscriptions end."""
        self._closed = True
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def _boundary(self, boundary: str | None) -> str:
        chosen = boundary if boundary is not None else self.boundary
        if not chosen:
            raise ValueError("boundary: none given and the client has no default boundary")
        return chosen

    async def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise translate(error) from None

    async def _retrying(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        started = time.monotonic()
        backoff = self.retry.delays()
        while True:
            try:
                return await method(request, timeout=timeout or self.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                delay = backoff.next(time.monotonic() - started)
                if status_code(error) is not grpc.StatusCode.UNAVAILABLE or delay is None:
                    raise translate(error) from None
            await asyncio.sleep(delay)

    # --- events --------------------------------------------------------------------------------

    async def save_events(
        self,
        stream: str,
        events: Iterable[EventData],
        *,
        expected_version: int = ANY,
        boundary: str | None = None,
        subset_query: QueryLike | None = None,
        timeout: float | None = None,
    ) -> WriteResult:
        """See `Client.save_events`."""
        request = convert.save_request(self._boundary(boundary), stream, list(events), expected_version, subset_query)
        return convert.write_result(await self._retrying(self._store.SaveEvents, request, timeout))

    async def get_events(
        self,
        *,
        boundary: str | None = None,
        stream: str | None = None,
        from_version: int = 0,
        query: QueryLike | None = None,
        from_position: Position | None = None,
        direction: Direction | str = Direction.ASC,
        page_size: int = 100,
        timeout: float | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """See `Client.get_events`: ``async for event in client.get_events(...)``."""
        chosen = self._boundary(boundary)
        after = from_position
        while True:
            request = convert.get_request(
                chosen, stream=stream, from_version=from_version, query=query, after=after, direction=direction,
                count=page_size,
            )
            page = await self._retrying(self._store.GetEvents, request, timeout)
            for message in page.events:
                event = convert.recorded(message)
                after = event.position
                yield event
            if not page.events or (len(page.events) < page_size and not page.truncated):
                return

    def subscribe(
        self,
        *,
        boundary: str | None = None,
        query: QueryLike | None = None,
        from_position: Position | None = None,
        subscriber_name: str = "",
    ) -> AsyncSubscription[RecordedEvent]:
        """See `Client.subscribe`: ``async with client.subscribe(...) as events: async for ...``."""
        chosen = self._boundary(boundary)

        def open_call(after: Position | None) -> Any:
            request = convert.subscribe_request(chosen, query, after, subscriber_name)
            return self._store.SubscribeToEvents(request, metadata=self._metadata)

        return AsyncSubscription(
            Resumer(from_position, self.retry, named=bool(subscriber_name)), open_call, convert.recorded,
            lambda event: event.position, self._is_closed,
        )

    def subscribe_to_stream(
        self,
        stream: str,
        after_version: int = -1,
        *,
        boundary: str | None = None,
        query: QueryLike | None = None,
        subscriber_name: str = "",
    ) -> AsyncSubscription[RecordedEvent]:
        """See `Client.subscribe_to_stream`."""
        chosen = self._boundary(boundary)

        def open_call(after: int) -> Any:
            request = convert.stream_subscribe_request(chosen, stream, after, query, subscriber_name)
            return self._store.CatchUpSubscribeToStream(request, metadata=self._metadata)

        return AsyncSubscription(
            Resumer(after_version, self.retry, named=bool(subscriber_name)), open_call, convert.recorded,
            lambda event: event.version, self._is_closed,
        )

    # --- pub/sub -------------------------------------------------------------------------------

    async def publish(self, subject: str, data: Any, metadata: Any = "", id: str = "", *,
                      timeout: float | None = None) -> str:
        """See `Client.publish`."""
        message_id = id or str(uuid.uuid4())
        request = convert.publish_request(subject, data, metadata, message_id)
        await self._retrying(self._store.PublishToPubSub, request, timeout)
        return message_id

    def subscribe_pubsub(self, subject: str, consumer_name: str) -> AsyncSubscription[PubSubMessage]:
        """See `Client.subscribe_pubsub`."""

        def open_call(_: None) -> Any:
            request = pb.SubscribeRequest(subject=subject, consumer_name=consumer_name)
            return self._store.SubscribeToPubSub(request, metadata=self._metadata)

        return AsyncSubscription(
            Resumer(None, self.retry, named=False), open_call, lambda m: convert.pubsub_message(m.message),
            lambda _: None, self._is_closed,
        )

    def consume(self, subject: str, consumer_name: str, *, max_in_flight: int = 100) -> AsyncConsumer:
        """See `Client.consume`: ``async with client.consume(...) as messages: async for message in
        messages: ... await message.ack()``."""
        call = self._store.ConsumePubSub(metadata=self._metadata)
        return AsyncConsumer(
            call, pb.ConsumeRequest(subject=subject, consumer_name=consumer_name, max_in_flight=max_in_flight)
        )

    # --- admin ---------------------------------------------------------------------------------

    async def create_user(self, username: str, password: str, *, name: str = "",
                          roles: Sequence[str] = ()) -> AdminUser:
        """See `Client.create_user`."""
        request = apb.CreateUserRequest(name=name, username=username, password=password, roles=list(roles))
        return convert.admin_user((await self._call(self._admin.CreateUser, request)).user)

    async def delete_user(self, user_id: str) -> None:
        """See `Client.delete_user`."""
        await self._call(self._admin.DeleteUser, apb.DeleteUserRequest(user_id=user_id))

    async def change_password(self, user_id: str, new_password: str, *, current_password: str = "") -> None:
        """See `Client.change_password`."""
        request = apb.ChangePasswordRequest(
            user_id=user_id, current_password=current_password, new_password=new_password
        )
        await self._call(self._admin.ChangePassword, request)

    async def list_users(self) -> list[AdminUser]:
        """See `Client.list_users`."""
        answer = await self._call(self._admin.ListUsers, apb.ListUsersRequest())
        return [convert.admin_user(u) for u in answer.users]

    async def validate_credentials(self, username: str, password: str) -> AdminUser | None:
        """See `Client.validate_credentials`."""
        answer = await self._call(
            self._admin.ValidateCredentials, apb.ValidateCredentialsRequest(username=username, password=password)
        )
        return convert.admin_user(answer.user) if answer.success and answer.HasField("user") else None

    async def user_count(self) -> int:
        """See `Client.user_count`."""
        return int((await self._call(self._admin.GetUserCount, apb.GetUserCountRequest())).count)

    async def event_count(self, boundary: str | None = None) -> int:
        """See `Client.event_count`."""
        request = apb.GetEventCountRequest(boundary=self._boundary(boundary))
        return int((await self._call(self._admin.GetEventCount, request)).count)

    async def list_boundaries(self) -> list[BoundaryInfo]:
        """See `Client.list_boundaries`."""
        answer = await self._call(self._admin.ListBoundaries, apb.ListBoundariesRequest())
        return [convert.boundary_info(b) for b in answer.boundaries]

    async def get_boundary(self, name: str) -> BoundaryInfo:
        """See `Client.get_boundary`."""
        answer = await self._call(self._admin.GetBoundary, apb.GetBoundaryRequest(name=name))
        return convert.boundary_info(answer.boundary)

    async def create_boundary(self, name: str, *, description: str = "", schema: str = "",
                              adopt: bool = False) -> BoundaryInfo:
        """See `Client.create_boundary`."""
        request = convert.create_boundary_request(name, description, schema, adopt)
        return convert.boundary_info((await self._call(self._admin.CreateBoundary, request)).boundary)


class AsyncSubscription(Generic[T]):
    """An open subscription: ``async for`` over it; `close` it (or leave its ``async with`` block)
    to end it. It reconnects after drops (see `Client.subscribe`)."""

    def __init__(
        self, resumer: Resumer[Any], open_call: Callable[[Any], Any], convert_item: Callable[[Any], T],
        cursor_of: Callable[[T], Any], client_closed: Callable[[], bool],
    ) -> None:
        self._resumer = resumer
        self._client_closed = client_closed
        self._open = open_call
        self._convert = convert_item
        self._cursor_of = cursor_of
        self._call: Any = None
        self._closed = asyncio.Event()

    def __aiter__(self) -> AsyncSubscription[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            if self._closed.is_set() or self._client_closed():
                raise StopAsyncIteration
            if self._call is None:
                self._call = self._open(self._resumer.cursor)
                self._resumer.connected()
            error: grpc.RpcError | None = None
            try:
                message = await self._call.read()
            except grpc.RpcError as exc:
                error = exc
            except asyncio.CancelledError:
                if self._closed.is_set() or self._client_closed():  # our own close cancelled the call
                    raise StopAsyncIteration from None
                raise
            else:
                if message is not grpc.aio.EOF:
                    item = self._convert(message)
                    self._resumer.delivered(self._cursor_of(item))
                    return item
                # EOF: the server ended the call; a subscription never ends by itself: reconnect.
            self._call = None
            if self._closed.is_set() or self._client_closed():
                raise StopAsyncIteration
            delay = self._resumer.failed(status_code(error) if error is not None else None)
            if delay is None:
                raise translate(error) if error is not None else Unavailable("the server ended the subscription")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), delay)

    @property
    def cursor(self) -> Any:
        """See `Subscription.cursor`."""
        return self._resumer.cursor

    async def close(self) -> None:
        """End the subscription."""
        self._closed.set()
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> AsyncSubscription[T]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


@dataclass(frozen=True)
class AsyncConsumedMessage:
    """A message delivered by `AsyncClient.consume`: settle it with ``await ack()`` or ``nack()``."""

    id: str
    subject: str
    data: str
    metadata: str
    token: int
    delivery_count: int
    _consumer: AsyncConsumer = field(repr=False, compare=False)

    def json(self) -> Any:
        """``data`` decoded from JSON."""
        return PubSubMessage(self.id, self.subject, self.data, self.metadata).json()

    async def ack(self) -> None:
        """Processed: never delivered again to this consumer name."""
        await self._consumer.ack(self.token)

    async def nack(self) -> None:
        """Not processed: delivered again at once."""
        await self._consumer.nack(self.token)


class AsyncConsumer:
    """See `Consumer`: ``async for`` over it, ``await message.ack()``, ``await close()``."""

    def __init__(self, call: Any, opening: Any) -> None:
        self._call = call
        self._opening: Any = opening  # sent by the first read or `async with`
        # grpc.aio allows one write at a time on a call; acks may come from several tasks.
        self._write_lock = asyncio.Lock()
        # One reader at a time too: `close` drains the call while a task may be iterating it.
        self._read_lock = asyncio.Lock()
        self._closed = False

    async def _open(self) -> None:
        if self._opening is not None:
            opening, self._opening = self._opening, None
            await self._write(opening)

    async def _write(self, request: Any) -> None:
        async with self._write_lock:
            try:
                await self._call.write(request)
            except grpc.RpcError as error:
                raise translate(error) from None

    async def ack(self, *tokens: int) -> None:
        """Acknowledge messages by token."""
        if tokens and not self._closed:
            await self._write(pb.ConsumeRequest(ack=list(tokens)))

    async def nack(self, *tokens: int) -> None:
        """Give messages back by token."""
        if tokens and not self._closed:
            await self._write(pb.ConsumeRequest(nack=list(tokens)))

    def __aiter__(self) -> AsyncConsumer:
        return self

    async def __anext__(self) -> AsyncConsumedMessage:
        await self._open()
        while True:
            try:
                async with self._read_lock:
                    message = await self._call.read()
            except grpc.RpcError as error:
                if self._closed and status_code(error) is grpc.StatusCode.CANCELLED:
                    raise StopAsyncIteration from None
                raise translate(error) from None
            if message is grpc.aio.EOF:
                raise StopAsyncIteration
            if not self._closed:
                return AsyncConsumedMessage(
                    message.message.id, message.message.subject, message.message.data, message.message.metadata,
                    int(message.token), int(message.delivery_count), self,
                )

    async def close(self, timeout: float = 10.0) -> None:
        """See `Consumer.close`."""
        if self._closed:
            return
        await self._open()
        async with self._write_lock:
            self._closed = True
            try:
                await self._call.done_writing()
            except grpc.RpcError:
                return  # the call had ended already
        try:
            async with asyncio.timeout(timeout), self._read_lock:
                while await self._call.read() is not grpc.aio.EOF:
                    pass  # given back by the server, not handed out
        except TimeoutError:
            self._call.cancel()
        except grpc.RpcError as error:
            if status_code(error) is not grpc.StatusCode.CANCELLED:
                raise translate(error) from None

    async def __aenter__(self) -> AsyncConsumer:
        await self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
