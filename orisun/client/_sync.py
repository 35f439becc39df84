"""The synchronous client."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
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

__all__ = ["Client", "ConsumedMessage", "Consumer", "Subscription"]

T = TypeVar("T")
C = TypeVar("C")


class Client:
    """A synchronous client of an Orisun server.

    ``target`` is ``host:port``. ``username``/``password`` are sent as Basic auth on every call.
    TLS: ``tls=True`` trusts the system's CAs; ``root_certificates`` (PEM bytes or a path) trusts
    a CA of your own (and implies TLS); ``certificate_chain`` and ``private_key`` present a client
    certificate (mutual TLS); ``server_name`` overrides the name checked in the server's
    certificate. ``boundary`` is the default of every call that takes one; ``timeout`` the
    default deadline of each unary call, in seconds. ``retry`` governs the retries of idempotent
    calls (writes, reads, publishes) after ``UNAVAILABLE`` and the reconnection of subscriptions.
    ``options`` are extra gRPC channel options.

    Use it as a context manager, or call `close`. It is safe to share between threads.
    """

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
        self._channel = self._config.sync_channel()
        self._store = pb_grpc.EventStoreStub(self._channel)  # type: ignore[no-untyped-call]
        self._admin = apb_grpc.AdminStub(self._channel)  # type: ignore[no-untyped-call]
        self._closed = False

    def _is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the channel; calls in progress fail, subscriptions end."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def _boundary(self, boundary: str | None) -> str:
        chosen = boundary if boundary is not None else self.boundary
        if not chosen:
            raise ValueError("boundary: none given and the client has no default boundary")
        return chosen

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        """One unary call; a failure raised as the client's exception."""
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise translate(error) from None

    def _retrying(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        """A unary call that is safe to repeat, retried after ``UNAVAILABLE`` as ``retry`` says."""
        started = time.monotonic()
        backoff = self.retry.delays()
        while True:
            try:
                return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                delay = backoff.next(time.monotonic() - started)
                if status_code(error) is not grpc.StatusCode.UNAVAILABLE or delay is None:
                    raise translate(error) from None
            time.sleep(delay)

    # --- events --------------------------------------------------------------------------------

    def save_events(
        self,
        stream: str,
        events: Iterable[EventData],
        *,
        expected_version: int = ANY,
        boundary: str | None = None,
        subset_query: QueryLike | None = None,
        timeout: float | None = None,
    ) -> WriteResult:
        """Append ``events`` to ``stream``, all or nothing.

        ``expected_version``: `ANY` (no check, the default), `NO_STREAM` (the stream must not exist
        yet) or the stream's current last version (0-based). ``subset_query`` narrows the check to
        the stream's events matching it. A mismatch raises `WrongExpectedVersion` with
        ``expected`` and ``actual``. After ``UNAVAILABLE`` the same request is sent again (the
        events keep their ids, so the server stores the write once and answers the original result).
        """
        request = convert.save_request(
            self._boundary(boundary), stream, list(events), expected_version, subset_query
        )
        return convert.write_result(self._retrying(self._store.SaveEvents, request, timeout))

    def get_events(
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
    ) -> Iterator[RecordedEvent]:
        """Every matching event, read page by page (``page_size`` per call) with the cursor.

        Filters combine with AND: ``stream`` (from ``from_version``: in ASC the versions >= it, in
        DESC 0 means from the newest, else versions <= it), ``query`` (see `query`), and
        ``from_position``, exclusive (the events after it; before it in DESC).
        """
        chosen = self._boundary(boundary)
        after = from_position
        while True:
            request = convert.get_request(
                chosen, stream=stream, from_version=from_version, query=query, after=after, direction=direction,
                count=page_size,
            )
            page = self._retrying(self._store.GetEvents, request, timeout)
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
    ) -> Subscription[RecordedEvent]:
        """Follow a boundary: the stored events after ``from_position`` (all when ``None``), then new
        ones as they are committed, in position order.

        When the connection drops or the server restarts, the subscription reconnects (``retry``)
        and resumes after the last event it delivered: no gap, no duplicate. A named subscription
        (``subscriber_name``) waits while the server frees its name after such a drop.
        """
        chosen = self._boundary(boundary)

        def open_call(after: Position | None) -> Any:
            request = convert.subscribe_request(chosen, query, after, subscriber_name)
            return self._store.SubscribeToEvents(request, metadata=self._metadata)

        return Subscription(
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
    ) -> Subscription[RecordedEvent]:
        """Follow one stream: its events with a version above ``after_version`` (-1: from its first
        event), then new ones live. Resumes by version after a disconnect, like `subscribe`."""
        chosen = self._boundary(boundary)

        def open_call(after: int) -> Any:
            request = convert.stream_subscribe_request(chosen, stream, after, query, subscriber_name)
            return self._store.CatchUpSubscribeToStream(request, metadata=self._metadata)

        return Subscription(
            Resumer(after_version, self.retry, named=bool(subscriber_name)), open_call, convert.recorded,
            lambda event: event.version, self._is_closed,
        )

    # --- pub/sub -------------------------------------------------------------------------------

    def publish(self, subject: str, data: Any, metadata: Any = "", id: str = "", *,
                timeout: float | None = None) -> str:
        """Publish a message on ``subject``; returns its id. ``data``/``metadata``: text, or values
        encoded as JSON. An empty ``id`` is generated here, so that a retry after ``UNAVAILABLE`` is
        recognised by the server as the same message."""
        message_id = id or str(uuid.uuid4())
        request = convert.publish_request(subject, data, metadata, message_id)
        self._retrying(self._store.PublishToPubSub, request, timeout)
        return message_id

    def subscribe_pubsub(self, subject: str, consumer_name: str) -> Subscription[PubSubMessage]:
        """Receive ``subject``'s messages as the durable consumer ``consumer_name`` (consumers of
        one name share the messages). At least once: deduplicate by ``id``. Reconnects after a
        drop; the server keeps the consumer's place."""

        def open_call(_: None) -> Any:
            request = pb.SubscribeRequest(subject=subject, consumer_name=consumer_name)
            return self._store.SubscribeToPubSub(request, metadata=self._metadata)

        return Subscription(
            Resumer(None, self.retry, named=False), open_call, lambda m: convert.pubsub_message(m.message),
            lambda _: None, self._is_closed,
        )

    def consume(self, subject: str, consumer_name: str, *, max_in_flight: int = 100) -> Consumer:
        """Receive ``subject``'s messages and acknowledge each: iterate the `Consumer`, call
        ``ack()`` on each message once processed (``nack()`` to have it delivered again). At most
        ``max_in_flight`` messages are delivered and not yet settled. Messages not acked when the
        consumer closes or the connection drops are delivered again."""
        return Consumer(self._store, self._metadata, subject, consumer_name, max_in_flight)

    # --- admin ---------------------------------------------------------------------------------

    def create_user(self, username: str, password: str, *, name: str = "", roles: Sequence[str] = ()) -> AdminUser:
        """Create a user with ``roles`` (``ADMIN`` and/or ``OPERATIONS``; none: may only read)."""
        request = apb.CreateUserRequest(name=name, username=username, password=password, roles=list(roles))
        return convert.admin_user(self._call(self._admin.CreateUser, request).user)

    def delete_user(self, user_id: str) -> None:
        """Delete a user by id."""
        self._call(self._admin.DeleteUser, apb.DeleteUserRequest(user_id=user_id))

    def change_password(self, user_id: str, new_password: str, *, current_password: str = "") -> None:
        """Change a user's password (one's own needs ``current_password``)."""
        request = apb.ChangePasswordRequest(
            user_id=user_id, current_password=current_password, new_password=new_password
        )
        self._call(self._admin.ChangePassword, request)

    def list_users(self) -> list[AdminUser]:
        """Every user."""
        return [convert.admin_user(u) for u in self._call(self._admin.ListUsers, apb.ListUsersRequest()).users]

    def validate_credentials(self, username: str, password: str) -> AdminUser | None:
        """The user if ``username``/``password`` are valid, else ``None``."""
        answer = self._call(
            self._admin.ValidateCredentials, apb.ValidateCredentialsRequest(username=username, password=password)
        )
        return convert.admin_user(answer.user) if answer.success and answer.HasField("user") else None

    def user_count(self) -> int:
        """The number of users."""
        return int(self._call(self._admin.GetUserCount, apb.GetUserCountRequest()).count)

    def event_count(self, boundary: str | None = None) -> int:
        """The number of events stored in a boundary."""
        request = apb.GetEventCountRequest(boundary=self._boundary(boundary))
        return int(self._call(self._admin.GetEventCount, request).count)

    def list_boundaries(self) -> list[BoundaryInfo]:
        """Every boundary: configured ones and those created at runtime."""
        answer = self._call(self._admin.ListBoundaries, apb.ListBoundariesRequest())
        return [convert.boundary_info(b) for b in answer.boundaries]

    def get_boundary(self, name: str) -> BoundaryInfo:
        """One boundary by name (`NotFound` when unknown)."""
        return convert.boundary_info(self._call(self._admin.GetBoundary, apb.GetBoundaryRequest(name=name)).boundary)

    def create_boundary(
        self, name: str, *, description: str = "", schema: str = "", adopt: bool = False
    ) -> BoundaryInfo:
        """Create a boundary (its schema is created and migrated), usable at once. ``schema``
        defaults to the name; ``adopt=True`` takes over a schema that exists already."""
        request = convert.create_boundary_request(name, description, schema, adopt)
        return convert.boundary_info(self._call(self._admin.CreateBoundary, request).boundary)


class Subscription(Generic[T]):
    """An open subscription: iterate it for the items; `close` it (or leave its ``with`` block) to
    end it, also from another thread. It reconnects after drops (see `Client.subscribe`)."""

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
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def __iter__(self) -> Subscription[T]:
        return self

    def __next__(self) -> T:
        while True:
            call = self._connect()
            if call is None:
                raise StopIteration
            error: grpc.RpcError | None = None
            try:
                message = next(call)
            except StopIteration:
                pass  # the server ended the call: a subscription never ends by itself, so reconnect
            except grpc.RpcError as exc:
                error = exc
            else:
                item = self._convert(message)
                self._resumer.delivered(self._cursor_of(item))
                return item
            with self._lock:
                self._call = None
            if self._closed.is_set() or self._client_closed():
                raise StopIteration
            delay = self._resumer.failed(status_code(error) if error is not None else None)
            if delay is None:
                raise translate(error) if error is not None else Unavailable("the server ended the subscription")
            if self._closed.wait(delay):
                raise StopIteration

    def _connect(self) -> Any:
        with self._lock:
            if self._closed.is_set() or self._client_closed():
                return None
            if self._call is None:
                self._call = self._open(self._resumer.cursor)
                self._resumer.connected()
            return self._call

    @property
    def cursor(self) -> Any:
        """Where the subscription stands: the last delivered event's position (or version, for a
        stream subscription); what it started from if nothing was delivered yet."""
        return self._resumer.cursor

    def close(self) -> None:
        """End the subscription (the iteration stops)."""
        with self._lock:
            self._closed.set()
            if self._call is not None:
                self._call.cancel()

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class ConsumedMessage:
    """A message delivered by `Client.consume`: settle it with `ack` or `nack`."""

    id: str
    subject: str
    data: str
    metadata: str
    #: What the ack names: unique per message, the same when it comes again.
    token: int
    #: 1 the first time the message is delivered to the consumer name, more when it comes again.
    delivery_count: int
    _consumer: Consumer = field(repr=False, compare=False)

    def json(self) -> Any:
        """``data`` decoded from JSON."""
        return PubSubMessage(self.id, self.subject, self.data, self.metadata).json()

    def ack(self) -> None:
        """Processed: never delivered again to this consumer name."""
        self._consumer.ack(self.token)

    def nack(self) -> None:
        """Not processed: delivered again at once (here or to another consumer of the name)."""
        self._consumer.nack(self.token)


_END = object()


class Consumer:
    """An acknowledged consumption (ConsumePubSub): iterate it for `ConsumedMessage` items, ack
    each. `close` (or leaving its ``with`` block) sends the acks given so far, lets the server give
    back the rest, and ends the iteration. It does not reconnect: a message not acked when the
    connection drops is delivered again to the next consumer of the name, so open a new one."""

    def __init__(self, store: Any, metadata: Any, subject: str, consumer_name: str, max_in_flight: int) -> None:
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._requests.put(pb.ConsumeRequest(subject=subject, consumer_name=consumer_name, max_in_flight=max_in_flight))
        self._closed = False
        self._read_lock = threading.Lock()
        self._end_lock = threading.Lock()
        self._ended = False
        self._call = store.ConsumePubSub(self._request_stream(), metadata=metadata)

    def _end_requests(self) -> None:
        """End the request stream: a half-close while the call is open, and in any case the end of
        gRPC's thread that waits on the queue for the next request."""
        with self._end_lock:
            if not self._ended:
                self._ended = True
                self._requests.put(_END)

    def _request_stream(self) -> Iterator[Any]:
        while (request := self._requests.get()) is not _END:
            yield request

    def ack(self, *tokens: int) -> None:
        """Acknowledge messages by token (also `ConsumedMessage.ack`)."""
        if tokens and not self._closed:
            self._requests.put(pb.ConsumeRequest(ack=list(tokens)))

    def nack(self, *tokens: int) -> None:
        """Give messages back by token (also `ConsumedMessage.nack`)."""
        if tokens and not self._closed:
            self._requests.put(pb.ConsumeRequest(nack=list(tokens)))

    def __iter__(self) -> Consumer:
        return self

    def __next__(self) -> ConsumedMessage:
        while True:
            # One reader at a time: gRPC refuses a second read on a call ("call error 8"), and
            # `close` may drain the call from another thread.
            with self._read_lock:
                try:
                    message = next(self._call)
                except StopIteration:
                    self._end_requests()
                    raise
                except grpc.RpcError as error:
                    self._end_requests()
                    if self._closed and status_code(error) is grpc.StatusCode.CANCELLED:
                        raise StopIteration from None
                    raise translate(error) from None
            if not self._closed:  # after close: the server gives it back, it is not handed out
                return ConsumedMessage(
                    message.message.id, message.message.subject, message.message.data, message.message.metadata,
                    int(message.token), int(message.delivery_count), self,
                )

    def close(self, timeout: float = 10.0) -> None:
        """Send the acks given so far and end the call; messages not acked are delivered again.
        Waits up to ``timeout`` seconds for the server to end the call, then cancels it."""
        if self._closed:
            return
        self._closed = True
        self._end_requests()
        # The server ends the call with OK once it has applied the acks; what it still sends
        # meanwhile is given back, not handed out. A thread iterating the consumer holds the read
        # lock until the call ends (or sends us something): wait for it, bounded.
        timer = threading.Timer(timeout, self._call.cancel)
        timer.start()
        try:
            with self._read_lock:
                for _ in self._call:
                    pass
        except grpc.RpcError as error:
            if status_code(error) is not grpc.StatusCode.CANCELLED:
                raise translate(error) from None
        finally:
            timer.cancel()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

