"""The Python client of Orisun: `Client` (synchronous) and `AsyncClient` (asyncio).

It needs only ``grpcio`` and ``protobuf`` (``pip install ./clients/python``)::

    from orisun.client import Client, EventData, NO_STREAM

    with Client("localhost:50051", username="admin", password="changeit", boundary="orders") as client:
        client.save_events("order-1", [EventData("OrderPlaced", {"total": 42})], expected_version=NO_STREAM)
        for event in client.get_events(stream="order-1"):
            print(event.version, event.event_type, event.json())

Failed calls raise subclasses of `OrisunError` (a concurrency conflict: `WrongExpectedVersion`).
"""

from orisun.client._async import AsyncClient, AsyncConsumedMessage, AsyncConsumer, AsyncSubscription
from orisun.client._errors import (
    AlreadyExists,
    BoundaryNotFound,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OrisunError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    WrongExpectedVersion,
)
from orisun.client._sync import Client, ConsumedMessage, Consumer, Subscription
from orisun.client._types import (
    ANY,
    NO_STREAM,
    AdminUser,
    BoundaryInfo,
    Direction,
    EventData,
    ExpectedVersion,
    Position,
    PubSubMessage,
    Query,
    QueryLike,
    RecordedEvent,
    RetryPolicy,
    Tags,
    WriteResult,
    query,
)

__all__ = [
    "ANY",
    "NO_STREAM",
    "AdminUser",
    "AlreadyExists",
    "AsyncClient",
    "AsyncConsumedMessage",
    "AsyncConsumer",
    "AsyncSubscription",
    "BoundaryInfo",
    "BoundaryNotFound",
    "Client",
    "ConsumedMessage",
    "Consumer",
    "DeadlineExceeded",
    "Direction",
    "EventData",
    "ExpectedVersion",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OrisunError",
    "PermissionDenied",
    "Position",
    "PubSubMessage",
    "Query",
    "QueryLike",
    "RecordedEvent",
    "ResourceExhausted",
    "RetryPolicy",
    "Subscription",
    "Tags",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WriteResult",
    "WrongExpectedVersion",
    "query",
]
