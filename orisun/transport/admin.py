"""The orisun.Admin gRPC servicer: converts protos to orisun.service.admin's calls and back, nothing more."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from orisun._proto import admin_pb2 as pb
from orisun._proto import admin_pb2_grpc as pb_grpc
from orisun.model import Boundary, User
from orisun.service.admin import POSTGRES, Admin
from orisun.transport.auth import client_address, current_user
from orisun.transport.status import translate_errors

ADMIN_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Admin"].full_name


def user_to_proto(user: User) -> pb.AdminUser:
    message = pb.AdminUser(user_id=user.id, name=user.name, username=user.username, roles=sorted(user.roles))
    if user.created_at is not None:
        message.created_at.CopyFrom(_timestamp(user.created_at))
    if user.updated_at is not None:
        message.updated_at.CopyFrom(_timestamp(user.updated_at))
    return message


def boundary_to_proto(boundary: Boundary) -> pb.BoundaryInfo:
    return pb.BoundaryInfo(
        name=boundary.name,
        description=boundary.description,
        placement=pb.BoundaryPlacementInput(backend=POSTGRES, namespace=boundary.schema),
        # Orisun creates and migrates a boundary in one transaction: a listed one is usable.
        status=pb.BOUNDARY_LIFECYCLE_STATUS_ACTIVE,
        existed_before_catalog=boundary.existed_before_catalog,
    )


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class AdminServicer(pb_grpc.AdminServicer):
    """The ``orisun.Admin`` gRPC service: translates between protobuf and the Admin service."""

    def __init__(self, admin: Admin) -> None:
        self._admin = admin

    @translate_errors
    async def CreateUser(self, request: pb.CreateUserRequest, context: grpc.aio.ServicerContext
                         ) -> pb.CreateUserResponse:
        user = await self._admin.create_user(current_user.get(), request.name, request.username, request.password,
                                             request.roles)
        return pb.CreateUserResponse(user=user_to_proto(user))

    @translate_errors
    async def DeleteUser(self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext
                         ) -> pb.DeleteUserResponse:
        await self._admin.delete_user(current_user.get(), request.user_id)
        return pb.DeleteUserResponse(success=True)

    @translate_errors
    async def ChangePassword(self, request: pb.ChangePasswordRequest, context: grpc.aio.ServicerContext
                             ) -> pb.ChangePasswordResponse:
        await self._admin.change_password(current_user.get(), request.user_id, request.current_password,
                                          request.new_password, address=client_address(context.peer()))
        return pb.ChangePasswordResponse(success=True)

    @translate_errors
    async def ListUsers(self, request: pb.ListUsersRequest, context: grpc.aio.ServicerContext
                        ) -> pb.ListUsersResponse:
        users = await self._admin.list_users(current_user.get())
        return pb.ListUsersResponse(users=[user_to_proto(u) for u in users])

    @translate_errors
    async def ValidateCredentials(self, request: pb.ValidateCredentialsRequest, context: grpc.aio.ServicerContext
                                  ) -> pb.ValidateCredentialsResponse:
        result = await self._admin.validate_credentials(current_user.get(), request.username, request.password,
                                                        address=client_address(context.peer()))
        if result.user is None:
            return pb.ValidateCredentialsResponse(success=False)
        return pb.ValidateCredentialsResponse(success=True, user=user_to_proto(result.user))

    @translate_errors
    async def GetUserCount(self, request: pb.GetUserCountRequest, context: grpc.aio.ServicerContext
                           ) -> pb.GetUserCountResponse:
        return pb.GetUserCountResponse(count=await self._admin.user_count(current_user.get()))

    @translate_errors
    async def GetEventCount(self, request: pb.GetEventCountRequest, context: grpc.aio.ServicerContext
                            ) -> pb.GetEventCountResponse:
        return pb.GetEventCountResponse(count=await self._admin.event_count(current_user.get(), request.boundary))

    @translate_errors
    async def ListBoundaries(self, request: pb.ListBoundariesRequest, context: grpc.aio.ServicerContext
                             ) -> pb.ListBoundariesResponse:
        boundaries = await self._admin.list_boundaries(current_user.get())
        return pb.ListBoundariesResponse(boundaries=[boundary_to_proto(b) for b in boundaries])

    @translate_errors
    async def GetBoundary(self, request: pb.GetBoundaryRequest, context: grpc.aio.ServicerContext
                          ) -> pb.GetBoundaryResponse:
        boundary = await self._admin.get_boundary(current_user.get(), request.name)
        return pb.GetBoundaryResponse(boundary=boundary_to_proto(boundary))

    @translate_errors
    async def CreateBoundary(self, request: pb.CreateBoundaryRequest, context: grpc.aio.ServicerContext
                             ) -> pb.CreateBoundaryResponse:
        boundary = await self._admin.create_boundary(
            current_user.get(), request.name, backend=request.placement.backend,
            schema=request.placement.namespace, description=request.description,
            adopt=request.existed_before_catalog)
        return pb.CreateBoundaryResponse(boundary=boundary_to_proto(boundary))
