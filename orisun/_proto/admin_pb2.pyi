import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import eventstore_pb2 as _eventstore_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BoundaryLifecycleStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BOUNDARY_LIFECYCLE_STATUS_UNSPECIFIED: _ClassVar[BoundaryLifecycleStatus]
    BOUNDARY_LIFECYCLE_STATUS_PROVISIONING: _ClassVar[BoundaryLifecycleStatus]
    BOUNDARY_LIFECYCLE_STATUS_ACTIVE: _ClassVar[BoundaryLifecycleStatus]
    BOUNDARY_LIFECYCLE_STATUS_FAILED: _ClassVar[BoundaryLifecycleStatus]
BOUNDARY_LIFECYCLE_STATUS_UNSPECIFIED: BoundaryLifecycleStatus
BOUNDARY_LIFECYCLE_STATUS_PROVISIONING: BoundaryLifecycleStatus
BOUNDARY_LIFECYCLE_STATUS_ACTIVE: BoundaryLifecycleStatus
BOUNDARY_LIFECYCLE_STATUS_FAILED: BoundaryLifecycleStatus

class AdminUser(_message.Message):
    __slots__ = ("user_id", "name", "username", "roles", "created_at", "updated_at")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    name: str
    username: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., name: _Optional[str] = ..., username: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateUserRequest(_message.Message):
    __slots__ = ("name", "username", "password", "roles")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    username: str
    password: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateUserResponse(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: AdminUser
    def __init__(self, user: _Optional[_Union[AdminUser, _Mapping]] = ...) -> None: ...

class DeleteUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class DeleteUserResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class ChangePasswordRequest(_message.Message):
    __slots__ = ("user_id", "current_password", "new_password")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    NEW_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    current_password: str
    new_password: str
    def __init__(self, user_id: _Optional[str] = ..., current_password: _Optional[str] = ..., new_password: _Optional[str] = ...) -> None: ...

class ChangePasswordResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class ListUsersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListUsersResponse(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[AdminUser]
    def __init__(self, users: _Optional[_Iterable[_Union[AdminUser, _Mapping]]] = ...) -> None: ...

class ValidateCredentialsRequest(_message.Message):
    __slots__ = ("username", "password")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class ValidateCredentialsResponse(_message.Message):
    __slots__ = ("success", "user")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    success: bool
    user: AdminUser
    def __init__(self, success: _Optional[bool] = ..., user: _Optional[_Union[AdminUser, _Mapping]] = ...) -> None: ...

class GetUserCountRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetUserCountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class GetEventCountRequest(_message.Message):
    __slots__ = ("boundary",)
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    boundary: str
    def __init__(self, boundary: _Optional[str] = ...) -> None: ...

class GetEventCountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class BoundaryPlacementInput(_message.Message):
    __slots__ = ("backend", "namespace")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    backend: str
    namespace: str
    def __init__(self, backend: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class BoundaryInfo(_message.Message):
    __slots__ = ("name", "description", "placement", "status", "existed_before_catalog", "last_error", "definition_position", "status_position")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXISTED_BEFORE_CATALOG_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_POSITION_FIELD_NUMBER: _ClassVar[int]
    STATUS_POSITION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    placement: BoundaryPlacementInput
    status: BoundaryLifecycleStatus
    existed_before_catalog: bool
    last_error: str
    definition_position: _eventstore_pb2.Position
    status_position: _eventstore_pb2.Position
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., placement: _Optional[_Union[BoundaryPlacementInput, _Mapping]] = ..., status: _Optional[_Union[BoundaryLifecycleStatus, str]] = ..., existed_before_catalog: _Optional[bool] = ..., last_error: _Optional[str] = ..., definition_position: _Optional[_Union[_eventstore_pb2.Position, _Mapping]] = ..., status_position: _Optional[_Union[_eventstore_pb2.Position, _Mapping]] = ...) -> None: ...

class CreateBoundaryRequest(_message.Message):
    __slots__ = ("name", "description", "placement", "existed_before_catalog")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    EXISTED_BEFORE_CATALOG_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    placement: BoundaryPlacementInput
    existed_before_catalog: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., placement: _Optional[_Union[BoundaryPlacementInput, _Mapping]] = ..., existed_before_catalog: _Optional[bool] = ...) -> None: ...

class CreateBoundaryResponse(_message.Message):
    __slots__ = ("boundary",)
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    boundary: BoundaryInfo
    def __init__(self, boundary: _Optional[_Union[BoundaryInfo, _Mapping]] = ...) -> None: ...

class ListBoundariesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBoundariesResponse(_message.Message):
    __slots__ = ("boundaries",)
    BOUNDARIES_FIELD_NUMBER: _ClassVar[int]
    boundaries: _containers.RepeatedCompositeFieldContainer[BoundaryInfo]
    def __init__(self, boundaries: _Optional[_Iterable[_Union[BoundaryInfo, _Mapping]]] = ...) -> None: ...

class GetBoundaryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetBoundaryResponse(_message.Message):
    __slots__ = ("boundary",)
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    boundary: BoundaryInfo
    def __init__(self, boundary: _Optional[_Union[BoundaryInfo, _Mapping]] = ...) -> None: ...
