"""The EventStore gRPC servicer: converts protos to the core's calls and back, nothing more."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.messaging.pubsub import PubSubMessage
from orisun.service.events import EventStore
from orisun.service.pubsub import ConsumeRequest, PubSubService
from orisun.service.subscriptions import Subscriptions
from orisun.transport import convert
from orisun.transport.auth import current_user
from orisun.transport.status import translate_errors

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EventStore"].full_name


class EventStoreServicer(pb_grpc.EventStoreServicer):
    """The ``eventstore.EventStore`` gRPC service: translates between protobuf and the services."""

    def __init__(
        self, events: EventStore, subscriptions: Subscriptions, pubsub: PubSubService, *, page_bytes: int
    ) -> None:
        self._events = events
        self._page_bytes = page_bytes  # the most a GetEvents page holds, unless its one event is larger
        self._subscriptions = subscriptions
        self._pubsub = pubsub
        self._encoded = convert.EncodedEvents()

    @translate_errors
    async def SaveEvents(self, request: pb.SaveEventsRequest, context: grpc.aio.ServicerContext) -> pb.WriteResult:
        result = await self._events.save(current_user.get(), convert.save_request_from_proto(request))
        return convert.write_result_to_proto(result)

    @translate_errors
    async def GetEvents(self, request: pb.GetEventsRequest, context: grpc.aio.ServicerContext) -> bytes:
        # The serialized GetEventsResponse, sent as it is (see auth's ``passing_bytes``).
        builder = convert.PageBuilder()
        page = await self._events.read_page(current_user.get(), convert.read_request_from_proto(request),
                                            sink=builder, max_bytes=self._page_bytes)
        return builder.page(page.truncated)

    @translate_errors
    async def SubscribeToEvents(
        self, request: pb.CatchUpSubscribeToEventStoreRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        boundary, after, query, name = convert.subscription_from_proto(request)
        events = self._subscriptions.subscribe(current_user.get(), boundary, after, query, name)
        encode = self._encoded.encode
        # aclosing: a client that goes away must free its subscriber_name now, not at GC.
        async with contextlib.aclosing(events):
            async for event in events:
                # Serialized pb.Event, shared by every subscriber of the event (sent as they are).
                yield encode(boundary, event)

    @translate_errors
    async def CatchUpSubscribeToEvents(
        self, request: pb.CatchUpSubscribeToEventStoreRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        # The brief's older name for SubscribeToEvents: the same behaviour.
        async for event in self.SubscribeToEvents(request, context):
            yield event

    @translate_errors
    async def CatchUpSubscribeToStream(
        self, request: pb.CatchUpSubscribeToStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        boundary, stream, after_version, query, name = convert.stream_subscription_from_proto(request)
        events = self._subscriptions.subscribe_stream(current_user.get(), boundary, stream, after_version, query, name)
        encode = self._encoded.encode
        async with contextlib.aclosing(events):  # as SubscribeToEvents: frees the name at once
            async for event in events:
                yield encode(boundary, event)

    @translate_errors
    async def PublishToPubSub(
        self, request: pb.PublishRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        message = PubSubMessage(request.id, request.subject, request.data, request.metadata)
        await self._pubsub.publish(current_user.get(), message)
        return empty_pb2.Empty()

    @translate_errors
    async def SubscribeToPubSub(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubscribeResponse]:
        # Set when the call ends however it ends, even while the handler is suspended in a write:
        # from then on nothing sent is counted as received.
        closed = asyncio.Event()
        context.add_done_callback(lambda _: closed.set())
        messages = self._pubsub.subscribe(current_user.get(), request.subject, request.consumer_name, closed)
        async with contextlib.aclosing(messages):
            async for m in messages:
                yield pb.SubscribeResponse(
                    message=pb.Message(id=m.id, subject=m.subject, data=m.data, metadata=m.metadata)
                )

    @translate_errors
    async def ConsumePubSub(
        self, requests: AsyncIterator[pb.ConsumeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConsumeResponse]:
        async def converted() -> AsyncIterator[ConsumeRequest]:
            async for r in requests:
                yield ConsumeRequest(r.subject, r.consumer_name, r.max_in_flight, tuple(r.ack), tuple(r.nack))

        deliveries = self._pubsub.consume(current_user.get(), converted())
        async with contextlib.aclosing(deliveries):
            async for d in deliveries:
                m = d.message
                yield pb.ConsumeResponse(
                    message=pb.Message(id=m.id, subject=m.subject, data=m.data, metadata=m.metadata),
                    token=d.token,
                    delivery_count=d.delivery_count,
                )
