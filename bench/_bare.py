"""The ceiling: a grpc.aio EventStore server that does no work, with canned replies.

Same proto and port options as Orisun; the authorization header is sent by the bench but not
checked. SaveEvents answers a fixed WriteResult; GetEvents answers ``count`` prebuilt events
(100 for a tag query, the bench's hit count), so replies are as large as Orisun's.
SubscribeToEvents streams one prebuilt event at positions 1, 2, 3, ... until the client cancels,
the ceiling of a catch-up. What this process spends per call is what gRPC in Python costs before any Orisun code
runs.

    python bench/_bare.py PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc

DATA = '{"amount": 42, "currency": "EUR", "note": "' + "x" * 160 + '"}'
TAG_HITS = 100  # what the bench's tag query returns from Orisun
LIMIT = 64 << 20


def _event(i: int) -> pb.Event:
    return pb.Event(event_id=str(uuid.uuid4()), event_type="Preloaded", data=DATA, metadata='{"source": "bench"}',
                    tags=[pb.Tag(key="tenant", value=f"t-{i % 2000}")],
                    position=pb.Position(commit_position=i, prepare_position=i),
                    date_created=Timestamp(seconds=1_780_000_000), stream_id=f"pre-{i // 5000}", version=i % 5000)


class Bare(pb_grpc.EventStoreServicer):
    def __init__(self) -> None:
        self._replies: dict[int, pb.GetEventsResponse] = {}
        self._written = pb.WriteResult(log_position=pb.Position(commit_position=1, prepare_position=1),
                                       new_stream_version=0)

    async def SaveEvents(self, request: pb.SaveEventsRequest, context: object) -> pb.WriteResult:
        return self._written

    async def SubscribeToEvents(self, request: pb.CatchUpSubscribeToEventStoreRequest,
                                context: object) -> AsyncIterator[pb.Event]:
        event = _event(0)
        while True:
            event.position.commit_position += 1
            event.position.prepare_position += 1
            yield event

    async def GetEvents(self, request: pb.GetEventsRequest, context: object) -> pb.GetEventsResponse:
        count = TAG_HITS if request.query.criteria else (request.count or 100)
        reply = self._replies.get(count)
        if reply is None:
            reply = self._replies[count] = pb.GetEventsResponse(events=[_event(i + 1) for i in range(count)])
        return reply


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", LIMIT),
                                      ("grpc.max_send_message_length", LIMIT)])
    pb_grpc.add_EventStoreServicer_to_server(Bare(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    # The bench stops us with SIGTERM, or the terminal's Ctrl-C reaches us too: stop the server
    # inside the loop (a gRPC server left to the garbage collector after the loop closed complains).
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    print("ready", flush=True)
    await stopping.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
