"""The EventStore gRPC servicer: converts protos to the core's calls and back, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.errors import Unimplemented
from orisun.transport.status import translate_errors

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EventStore"].full_name


def _not_yet(rpc: str) -> Unimplemented:
    return Unimplemented(f"{rpc} is not implemented by this server yet")


class EventStoreServicer(pb_grpc.EventStoreServicer):
    @translate_errors
    async def SaveEvents(self, request: pb.SaveEventsRequest, context: grpc.aio.ServicerContext) -> pb.WriteResult:
        raise _not_yet("SaveEvents")

    @translate_errors
    async def GetEvents(
        self, request: pb.GetEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEventsResponse:
        raise _not_yet("GetEvents")

    @translate_errors
    async def SubscribeToEvents(
        self, request: pb.CatchUpSubscribeToEventStoreRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Event]:
        raise _not_yet("SubscribeToEvents")
        yield  # an async generator, like every server-streaming handler

    @translate_errors
    async def CatchUpSubscribeToEvents(
        self, request: pb.CatchUpSubscribeToEventStoreRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Event]:
        # The brief's older name for SubscribeToEvents: the same behaviour.
        async for event in self.SubscribeToEvents(request, context):
            yield event

    @translate_errors
    async def PublishToPubSub(
        self, request: pb.PublishRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        raise _not_yet("PublishToPubSub")

    @translate_errors
    async def SubscribeToPubSub(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubscribeResponse]:
        raise _not_yet("SubscribeToPubSub")
        yield
