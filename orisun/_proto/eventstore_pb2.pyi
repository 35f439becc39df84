import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASC: _ClassVar[Direction]
    DESC: _ClassVar[Direction]
ASC: Direction
DESC: Direction

class Position(_message.Message):
    __slots__ = ("commit_position", "prepare_position")
    COMMIT_POSITION_FIELD_NUMBER: _ClassVar[int]
    PREPARE_POSITION_FIELD_NUMBER: _ClassVar[int]
    commit_position: int
    prepare_position: int
    def __init__(self, commit_position: _Optional[int] = ..., prepare_position: _Optional[int] = ...) -> None: ...

class Tag(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Criterion(_message.Message):
    __slots__ = ("tags",)
    TAGS_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedCompositeFieldContainer[Tag]
    def __init__(self, tags: _Optional[_Iterable[_Union[Tag, _Mapping]]] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("criteria",)
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    criteria: _containers.RepeatedCompositeFieldContainer[Criterion]
    def __init__(self, criteria: _Optional[_Iterable[_Union[Criterion, _Mapping]]] = ...) -> None: ...

class EventToSave(_message.Message):
    __slots__ = ("event_id", "event_type", "data", "metadata", "tags")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_type: str
    data: str
    metadata: str
    tags: _containers.RepeatedCompositeFieldContainer[Tag]
    def __init__(self, event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., data: _Optional[str] = ..., metadata: _Optional[str] = ..., tags: _Optional[_Iterable[_Union[Tag, _Mapping]]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "event_type", "data", "metadata", "tags", "position", "date_created", "stream_id", "version")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    DATE_CREATED_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_type: str
    data: str
    metadata: str
    tags: _containers.RepeatedCompositeFieldContainer[Tag]
    position: Position
    date_created: _timestamp_pb2.Timestamp
    stream_id: str
    version: int
    def __init__(self, event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., data: _Optional[str] = ..., metadata: _Optional[str] = ..., tags: _Optional[_Iterable[_Union[Tag, _Mapping]]] = ..., position: _Optional[_Union[Position, _Mapping]] = ..., date_created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stream_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class WriteResult(_message.Message):
    __slots__ = ("log_position", "new_stream_version")
    LOG_POSITION_FIELD_NUMBER: _ClassVar[int]
    NEW_STREAM_VERSION_FIELD_NUMBER: _ClassVar[int]
    log_position: Position
    new_stream_version: int
    def __init__(self, log_position: _Optional[_Union[Position, _Mapping]] = ..., new_stream_version: _Optional[int] = ...) -> None: ...

class SaveStreamQuery(_message.Message):
    __slots__ = ("name", "expected_version", "subsetQuery")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBSETQUERY_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_version: int
    subsetQuery: Query
    def __init__(self, name: _Optional[str] = ..., expected_version: _Optional[int] = ..., subsetQuery: _Optional[_Union[Query, _Mapping]] = ...) -> None: ...

class SaveEventsRequest(_message.Message):
    __slots__ = ("boundary", "stream", "events")
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    boundary: str
    stream: SaveStreamQuery
    events: _containers.RepeatedCompositeFieldContainer[EventToSave]
    def __init__(self, boundary: _Optional[str] = ..., stream: _Optional[_Union[SaveStreamQuery, _Mapping]] = ..., events: _Optional[_Iterable[_Union[EventToSave, _Mapping]]] = ...) -> None: ...

class GetStreamQuery(_message.Message):
    __slots__ = ("name", "from_version", "subsetQuery")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBSETQUERY_FIELD_NUMBER: _ClassVar[int]
    name: str
    from_version: int
    subsetQuery: Query
    def __init__(self, name: _Optional[str] = ..., from_version: _Optional[int] = ..., subsetQuery: _Optional[_Union[Query, _Mapping]] = ...) -> None: ...

class GetEventsRequest(_message.Message):
    __slots__ = ("query", "from_position", "count", "direction", "boundary", "stream", "last_retrieved_position")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    FROM_POSITION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    LAST_RETRIEVED_POSITION_FIELD_NUMBER: _ClassVar[int]
    query: Query
    from_position: Position
    count: int
    direction: Direction
    boundary: str
    stream: GetStreamQuery
    last_retrieved_position: Position
    def __init__(self, query: _Optional[_Union[Query, _Mapping]] = ..., from_position: _Optional[_Union[Position, _Mapping]] = ..., count: _Optional[int] = ..., direction: _Optional[_Union[Direction, str]] = ..., boundary: _Optional[str] = ..., stream: _Optional[_Union[GetStreamQuery, _Mapping]] = ..., last_retrieved_position: _Optional[_Union[Position, _Mapping]] = ...) -> None: ...

class GetEventsResponse(_message.Message):
    __slots__ = ("events", "truncated")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    truncated: bool
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class CatchUpSubscribeToEventStoreRequest(_message.Message):
    __slots__ = ("position", "query", "subscriber_name", "boundary")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_NAME_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    position: Position
    query: Query
    subscriber_name: str
    boundary: str
    def __init__(self, position: _Optional[_Union[Position, _Mapping]] = ..., query: _Optional[_Union[Query, _Mapping]] = ..., subscriber_name: _Optional[str] = ..., boundary: _Optional[str] = ...) -> None: ...

class CatchUpSubscribeToStreamRequest(_message.Message):
    __slots__ = ("query", "subscriber_name", "boundary", "stream", "afterVersion")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_NAME_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    AFTERVERSION_FIELD_NUMBER: _ClassVar[int]
    query: Query
    subscriber_name: str
    boundary: str
    stream: str
    afterVersion: int
    def __init__(self, query: _Optional[_Union[Query, _Mapping]] = ..., subscriber_name: _Optional[str] = ..., boundary: _Optional[str] = ..., stream: _Optional[str] = ..., afterVersion: _Optional[int] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("id", "subject", "data", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    subject: str
    data: str
    metadata: str
    def __init__(self, id: _Optional[str] = ..., subject: _Optional[str] = ..., data: _Optional[str] = ..., metadata: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("subject", "consumer_name")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    subject: str
    consumer_name: str
    def __init__(self, subject: _Optional[str] = ..., consumer_name: _Optional[str] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("id", "subject", "data", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    subject: str
    data: str
    metadata: str
    def __init__(self, id: _Optional[str] = ..., subject: _Optional[str] = ..., data: _Optional[str] = ..., metadata: _Optional[str] = ...) -> None: ...

class ConsumeRequest(_message.Message):
    __slots__ = ("subject", "consumer_name", "max_in_flight", "ack", "nack")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    subject: str
    consumer_name: str
    max_in_flight: int
    ack: _containers.RepeatedScalarFieldContainer[int]
    nack: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, subject: _Optional[str] = ..., consumer_name: _Optional[str] = ..., max_in_flight: _Optional[int] = ..., ack: _Optional[_Iterable[int]] = ..., nack: _Optional[_Iterable[int]] = ...) -> None: ...

class ConsumeResponse(_message.Message):
    __slots__ = ("message", "token", "delivery_count")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_COUNT_FIELD_NUMBER: _ClassVar[int]
    message: Message
    token: int
    delivery_count: int
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., token: _Optional[int] = ..., delivery_count: _Optional[int] = ...) -> None: ...
