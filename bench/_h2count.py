"""A gRPC server-streaming call over a bare HTTP/2 connection that only counts the messages.

Python gRPC spends 40-60 µs of client CPU per streamed message here (sync or aio, with or
without a deserializer): at tens of thousands of events/s the receiver would take most of a core
on a 2-CPU machine and share it with the server it measures. This client speaks just enough
HTTP/2 (RFC 9113) for one unary-request, streaming-response call on a cleartext connection: it
sends the headers as HPACK literals, opens the flow-control windows wide, answers SETTINGS and
PING, and walks the gRPC length prefixes in the DATA frames without parsing any message, reading
the socket in large chunks. Only the last message counted is kept, so the caller can check its
position. Response headers are never decoded (nothing in them is needed; a failed call shows as
the stream ending early, reported with the count reached).
"""

from __future__ import annotations

import contextlib
import socket

from _h2client import _frame, _literal  # bench/ is on sys.path when a script here runs

_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
_END_STREAM, _ACK, _END_HEADERS, _PADDED = 0x1, 0x1, 0x4, 0x8
_MAX_WINDOW = (1 << 31) - 1
_INITIAL_WINDOW = 65_535
_STREAM = 1


class H2Call:
    """One call on its own connection, the request sent at once; ``read()`` handles one socket read."""

    def __init__(self, host: str, port: int, path: str, request: bytes, metadata: list[tuple[str, str]],
                 *, keep: bool, capture: int = 0, timeout: float = 600.0) -> None:
        """``keep``: return every message's bytes from ``read()``; otherwise only count them, and
        keep the bytes of message number ``capture`` (1-based) in ``captured``."""
        headers = b"".join(_literal(k, v) for k, v in [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"{host}:{port}"),
            ("content-type", "application/grpc"), ("te", "trailers"), *metadata])
        settings = (0x4).to_bytes(2, "big") + _MAX_WINDOW.to_bytes(4, "big")  # SETTINGS_INITIAL_WINDOW_SIZE
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(_SETTINGS, 0, 0, settings)
                          + _frame(_WINDOW_UPDATE, 0, 0, (_MAX_WINDOW - _INITIAL_WINDOW).to_bytes(4, "big"))
                          + _frame(_HEADERS, _END_HEADERS, _STREAM, headers)
                          + _frame(_DATA, _END_STREAM, _STREAM, b"\x00" + len(request).to_bytes(4, "big") + request))
        self.keep = keep
        self.capture = capture
        self.captured = bytearray()
        self.count = 0
        self.ended = False
        self._buf = bytearray()
        self._chunk = bytearray(1 << 20)
        self._need = 0  # bytes of the current message still to come
        self._prefix = bytearray()  # a length prefix split across frames
        self._message = bytearray()  # the current message, when kept
        self._consumed = 0  # DATA bytes since the last WINDOW_UPDATE

    def read(self) -> list[bytes]:
        """One ``recv`` and the frames it completes: the messages completed (empty unless ``keep``).
        ``ended`` is set when the call or the connection ended."""
        got = self.sock.recv_into(self._chunk)
        if not got:
            self.ended = True
            return []
        buf = self._buf
        buf += memoryview(self._chunk)[:got]
        done: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 9 and not self.ended:
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
                self._data(buf, start, end, done)
                self.ended = bool(flags & _END_STREAM)
            elif kind == _HEADERS and stream == _STREAM and flags & _END_STREAM:  # trailers: the call ended
                self.ended = True
            elif kind == _SETTINGS and not flags & _ACK:
                self.sock.sendall(_frame(_SETTINGS, _ACK, 0, b""))
            elif kind == _PING and not flags & _ACK:
                self.sock.sendall(_frame(_PING, _ACK, 0, bytes(buf[start:end])))
            elif kind in (_RST_STREAM, _GOAWAY):
                self.ended = True
        del buf[:pos]
        if self._consumed > 1 << 30:  # keep both windows far from closing
            update = self._consumed.to_bytes(4, "big")
            self.sock.sendall(_frame(_WINDOW_UPDATE, 0, 0, update) + _frame(_WINDOW_UPDATE, 0, _STREAM, update))
            self._consumed = 0
        return done

    def _data(self, buf: bytearray, at: int, end: int, done: list[bytes]) -> None:
        """Walk the gRPC length prefixes in one DATA frame's payload."""
        while at < end:
            if self._need:
                take = min(self._need, end - at)
                if self.keep or self.count == self.capture:
                    (self._message if self.keep else self.captured).extend(buf[at:at + take])
                self._need -= take
                at += take
                if not self._need and self.keep:
                    done.append(bytes(self._message))
                    self._message.clear()
                continue
            take = min(5 - len(self._prefix), end - at)
            self._prefix += buf[at:at + take]
            at += take
            if len(self._prefix) == 5:
                self.count += 1
                self._need = int.from_bytes(self._prefix[1:], "big")
                self._prefix.clear()
                if not self._need and self.keep:  # an empty message
                    done.append(b"")

    @property
    def between_messages(self) -> bool:
        return not self._need and not self._prefix

    def close(self) -> None:
        """Cancel the call (if still open) and close the connection."""
        if not self.ended:
            with contextlib.suppress(OSError):
                self.sock.sendall(_frame(_RST_STREAM, 0, _STREAM, (0x8).to_bytes(4, "big")))  # CANCEL
        self.sock.close()


def count_stream(host: str, port: int, path: str, request: bytes, metadata: list[tuple[str, str]],
                 messages: int, timeout: float = 600.0) -> tuple[int, bytes]:
    """Call ``path`` with the serialised ``request`` and count response messages until
    ``messages`` (then cancel the call) or the stream's end: (count, the last message counted)."""
    call = H2Call(host, port, path, request, metadata, keep=False, capture=messages, timeout=timeout)
    try:
        while not call.ended and not (call.count >= messages and call.between_messages):
            call.read()
        return call.count, bytes(call.captured)
    finally:
        call.close()
