"""A lighter load generator for unary gRPC calls: HTTP/2 spoken by hand on asyncio.

Python gRPC costs the client ~190-240 µs of CPU per unary call here: at 64 callers the load
generator takes about a core of this 2-CPU machine, the server's share. This client multiplexes
unary calls over one HTTP/2 connection (RFC 9113) with the least work per call: the request
headers are one HPACK block of literals built once per method, the response's headers and
trailers are not decoded, flow control is honoured on sending and opened wide for receiving.
A call succeeds when its one response message arrives; a call whose stream ends without one
(gRPC sends a status without a message for every error) raises ``CallFailed``.

``Stub`` has the EventStore stub's ``SaveEvents`` and ``GetEvents`` with the same request and
response messages, so benchmark code can take either.
"""

from __future__ import annotations

import asyncio
from typing import Any

from orisun._proto import eventstore_pb2 as pb

_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
_END_STREAM, _ACK, _END_HEADERS, _PADDED = 0x1, 0x1, 0x4, 0x8
_MAX_WINDOW = (1 << 31) - 1
_DEFAULT_WINDOW = 65_535
_MAX_FRAME = 16_384


class CallFailed(Exception):
    """The call's stream ended without a response message (an error status, a reset, a closed connection)."""


def _frame(kind: int, flags: int, stream: int, payload: bytes | memoryview) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + bytes(payload)


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    """A header field as an HPACK literal without indexing, with a literal name, no Huffman."""
    raw_name, raw_value = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(raw_name), 7) + raw_name + _hpack_int(len(raw_value), 7) + raw_value


class _Call:
    __slots__ = ("done", "message", "window")

    def __init__(self, window: int, done: asyncio.Future[bytes]) -> None:
        self.window = window
        self.message = bytearray()
        self.done = done


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection carrying any number of concurrent unary gRPC calls."""

    def __init__(self, authority: str, metadata: list[tuple[str, str]]) -> None:
        self._authority = authority
        self._metadata = metadata
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._calls: dict[int, _Call] = {}
        self._next = 1
        self._send_window = _DEFAULT_WINDOW  # connection level, granted by the server
        self._stream_window = _DEFAULT_WINDOW  # the server's SETTINGS_INITIAL_WINDOW_SIZE
        self._window_opened = asyncio.Event()
        self._consumed = 0
        self._headers: dict[str, bytes] = {}
        self._lost: Exception | None = None

    @classmethod
    async def open(cls, host: str, port: int, metadata: list[tuple[str, str]]) -> H2Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(f"{host}:{port}", metadata), host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        settings = (0x4).to_bytes(2, "big") + _MAX_WINDOW.to_bytes(4, "big")  # SETTINGS_INITIAL_WINDOW_SIZE
        transport.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(_SETTINGS, 0, 0, settings)
                        + _frame(_WINDOW_UPDATE, 0, 0, (_MAX_WINDOW - _DEFAULT_WINDOW).to_bytes(4, "big")))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("connection closed")
        for call in self._calls.values():
            if not call.done.done():
                call.done.set_exception(CallFailed(str(self._lost)))
        self._calls.clear()
        self._window_opened.set()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def unary(self, path: str, request: bytes) -> bytes:
        """Call ``path`` with the serialised ``request``: the serialised response."""
        if self._lost is not None or self._transport is None:
            raise CallFailed(f"connection lost: {self._lost}")
        headers = self._headers.get(path)
        if headers is None:
            headers = self._headers[path] = b"".join(_literal(k, v) for k, v in [
                (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", self._authority),
                ("content-type", "application/grpc"), ("te", "trailers"), *self._metadata])
        stream = self._next
        self._next += 2
        call = _Call(self._stream_window, asyncio.get_running_loop().create_future())
        self._calls[stream] = call
        body = memoryview(b"\x00" + len(request).to_bytes(4, "big") + request)
        out = [_frame(_HEADERS, _END_HEADERS, stream, headers)]
        while True:  # DATA within the frame size and both send windows; wait for the server to open them
            size = min(len(body), _MAX_FRAME, self._send_window, call.window)
            if size <= 0:
                if out:
                    self._transport.write(b"".join(out))
                    out = []
                self._window_opened.clear()
                await self._window_opened.wait()
                if self._lost is not None:
                    raise CallFailed(f"connection lost: {self._lost}")
                continue
            last = size == len(body)
            out.append(_frame(_DATA, _END_STREAM if last else 0, stream, body[:size]))
            self._send_window -= size
            call.window -= size
            body = body[size:]
            if last:
                break
        self._transport.write(b"".join(out))
        return await call.done

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            end = pos + 9 + length
            if end > len(buf):
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            stream = int.from_bytes(buf[pos + 5:pos + 9], "big") & _MAX_WINDOW
            start = pos + 9
            pos = end
            if kind == _DATA:
                self._consumed += length
                if flags & _PADDED:
                    end -= buf[start]
                    start += 1
                call = self._calls.get(stream)
                if call is not None:
                    call.message += buf[start:end]
                    if flags & _END_STREAM:
                        self._finish(stream)
            elif kind == _HEADERS:
                if flags & _END_STREAM:  # trailers (or trailers only): the call is over
                    self._finish(stream)
            elif kind == _WINDOW_UPDATE:
                increment = int.from_bytes(buf[start:start + 4], "big") & _MAX_WINDOW
                if stream == 0:
                    self._send_window += increment
                elif (call := self._calls.get(stream)) is not None:
                    call.window += increment
                self._window_opened.set()
            elif kind == _SETTINGS and not flags & _ACK:
                for at in range(start, end - 5, 6):
                    if int.from_bytes(buf[at:at + 2], "big") == 0x4:
                        value = int.from_bytes(buf[at + 2:at + 6], "big")
                        for call in self._calls.values():  # applies to open streams too (RFC 9113 6.9.2)
                            call.window += value - self._stream_window
                        self._stream_window = value
                        self._window_opened.set()
                self._write(_frame(_SETTINGS, _ACK, 0, b""))
            elif kind == _PING and not flags & _ACK:
                self._write(_frame(_PING, _ACK, 0, bytes(buf[start:end])))
            elif kind == _RST_STREAM:
                self._finish(stream)
            elif kind == _GOAWAY:
                self.close()
        del buf[:pos]
        if self._consumed > 1 << 30:  # keep the connection window far from closing
            self._write(_frame(_WINDOW_UPDATE, 0, 0, self._consumed.to_bytes(4, "big")))
            self._consumed = 0

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _finish(self, stream: int) -> None:
        call = self._calls.pop(stream, None)
        if call is None or call.done.done():
            return
        message = call.message
        if len(message) >= 5 and len(message) >= 5 + int.from_bytes(message[1:5], "big"):
            call.done.set_result(bytes(message[5:5 + int.from_bytes(message[1:5], "big")]))
        else:
            call.done.set_exception(CallFailed("the call ended without a response message (an error status)"))


class Stub:
    """The EventStore stub's unary calls the benchmarks use, over an ``H2Connection``."""

    def __init__(self, connection: H2Connection) -> None:
        self._connection = connection

    # ``metadata`` is accepted for the stub's signature and ignored: the connection sends its own.
    async def SaveEvents(self, request: pb.SaveEventsRequest, metadata: Any = None) -> pb.WriteResult:
        reply = await self._connection.unary("/eventstore.EventStore/SaveEvents", request.SerializeToString())
        return pb.WriteResult.FromString(reply)

    async def GetEvents(self, request: pb.GetEventsRequest, metadata: Any = None) -> pb.GetEventsResponse:
        reply = await self._connection.unary("/eventstore.EventStore/GetEvents", request.SerializeToString())
        return pb.GetEventsResponse.FromString(reply)
