"""Requests built from the client's values, and answers turned into them: shared by both clients,
which differ only in how they call."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from orisun._proto import admin_pb2 as apb
from orisun._proto import eventstore_pb2 as pb
from orisun.client._types import (
    AdminUser,
    BoundaryInfo,
    Direction,
    EventData,
    Position,
    PubSubMessage,
    QueryLike,
    RecordedEvent,
    WriteResult,
    _pairs,
    _text,
    as_query,
)

_STATUS_PREFIX = "BOUNDARY_LIFECYCLE_STATUS_"


def pb_position(position: Position) -> pb.Position:
    return pb.Position(commit_position=position.commit, prepare_position=position.prepare)


def position(message: Any) -> Position:
    return Position(int(message.commit_position), int(message.prepare_position))


def pb_query(value: QueryLike | None) -> pb.Query | None:
    built = as_query(value)
    if built is None:
        return None
    return pb.Query(
        criteria=[pb.Criterion(tags=[pb.Tag(key=k, value=v) for k, v in criterion]) for criterion in built.criteria]
    )


def save_request(
    boundary: str, stream: str, events: Iterable[EventData], expected_version: int, subset_query: QueryLike | None
) -> pb.SaveEventsRequest:
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise TypeError(f"expected_version must be an int (ANY, NO_STREAM or >= 0), not {expected_version!r}")
    return pb.SaveEventsRequest(
        boundary=boundary,
        stream=pb.SaveStreamQuery(name=stream, expected_version=expected_version, subsetQuery=pb_query(subset_query)),
        events=[
            pb.EventToSave(
                event_id=event.event_id,
                event_type=event.event_type,
                data=event.data,
                metadata=event.metadata,
                tags=[pb.Tag(key=k, value=v) for k, v in _pairs(event.tags)],
            )
            for event in events
        ],
    )


def write_result(message: Any) -> WriteResult:
    return WriteResult(position(message.log_position), int(message.new_stream_version))


def get_request(
    boundary: str,
    *,
    stream: str | None,
    from_version: int,
    query: QueryLike | None,
    after: Position | None,
    direction: Direction | str,
    count: int,
) -> pb.GetEventsRequest:
    request = pb.GetEventsRequest(
        boundary=boundary, query=pb_query(query), count=count, direction=direction_value(direction)
    )
    if stream is not None:
        request.stream.CopyFrom(pb.GetStreamQuery(name=stream, from_version=from_version))
    if after is not None:
        request.last_retrieved_position.CopyFrom(pb_position(after))
    return request


def direction_value(direction: Direction | str) -> Any:
    if isinstance(direction, str):
        direction = Direction[direction.upper()]
    return direction.value


def recorded(message: Any) -> RecordedEvent:
    return RecordedEvent(
        event_id=message.event_id,
        event_type=message.event_type,
        data=message.data,
        metadata=message.metadata,
        tags=tuple((tag.key, tag.value) for tag in message.tags),
        position=position(message.position),
        stream=message.stream_id,
        version=int(message.version),
        created=message.date_created.ToDatetime(tzinfo=UTC),
    )


def subscribe_request(
    boundary: str, query: QueryLike | None, after: Position | None, subscriber_name: str
) -> pb.CatchUpSubscribeToEventStoreRequest:
    request = pb.CatchUpSubscribeToEventStoreRequest(
        boundary=boundary, query=pb_query(query), subscriber_name=subscriber_name
    )
    if after is not None:
        request.position.CopyFrom(pb_position(after))
    return request


def stream_subscribe_request(
    boundary: str, stream: str, after_version: int, query: QueryLike | None, subscriber_name: str
) -> pb.CatchUpSubscribeToStreamRequest:
    return pb.CatchUpSubscribeToStreamRequest(
        boundary=boundary, stream=stream, afterVersion=after_version, query=pb_query(query),
        subscriber_name=subscriber_name,
    )


def publish_request(subject: str, data: Any, metadata: Any, id: str) -> pb.PublishRequest:
    return pb.PublishRequest(id=id, subject=subject, data=_text(data), metadata=_text(metadata))


def pubsub_message(message: Any) -> PubSubMessage:
    return PubSubMessage(id=message.id, subject=message.subject, data=message.data, metadata=message.metadata)


def _timestamp(message: Any, name: str) -> datetime | None:
    return getattr(message, name).ToDatetime(tzinfo=UTC) if message.HasField(name) else None


def admin_user(message: Any) -> AdminUser:
    return AdminUser(
        user_id=message.user_id,
        name=message.name,
        username=message.username,
        roles=tuple(message.roles),
        created_at=_timestamp(message, "created_at"),
        updated_at=_timestamp(message, "updated_at"),
    )


def boundary_info(message: Any) -> BoundaryInfo:
    status = apb.BoundaryLifecycleStatus.Name(message.status)
    return BoundaryInfo(
        name=message.name,
        description=message.description,
        backend=message.placement.backend,
        schema=message.placement.namespace,
        status=status.removeprefix(_STATUS_PREFIX),
        existed_before_catalog=message.existed_before_catalog,
    )


def create_boundary_request(name: str, description: str, schema: str, adopt: bool) -> apb.CreateBoundaryRequest:
    return apb.CreateBoundaryRequest(
        name=name, description=description,
        placement=apb.BoundaryPlacementInput(backend="postgres", namespace=schema),
        existed_before_catalog=adopt,
    )
