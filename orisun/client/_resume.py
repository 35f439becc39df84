"""When and how a subscription reconnects: shared by both clients."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

import grpc

from orisun.client._types import RetryPolicy, _Backoff

C = TypeVar("C")

# A call that stayed up this long was connected: a failure after it starts a new series of
# retries instead of continuing the last one (a quiet subscription delivers no event to tell).
_ESTABLISHED = 5.0
# How long a resuming named subscription waits for the server to free its name: the server notices
# a vanished client within about 8 s and a vanished node within about 11 s.
NAME_WAIT = 30.0


class Resumer(Generic[C]):
    """The cursor of a subscription and its reconnection decisions.

    The cursor is the last delivered item's position (or version), so a new call resumes right
    after it: nothing twice, nothing skipped. Reconnects after ``UNAVAILABLE``, after the server
    ended the call (it never does on its own: it is stopping), after ``CANCELLED`` not asked for
    by the client, and, while resuming a named subscription, after ``ALREADY_EXISTS`` for at most
    `NAME_WAIT` seconds (the server still holds the name of the dropped call).
    """

    def __init__(self, cursor: C, policy: RetryPolicy, *, named: bool) -> None:
        self.cursor = cursor
        self._policy = policy
        self._named = named
        self._resuming = False
        self._connected_at = 0.0
        self._failing_since: float | None = None
        self._name_taken_since: float | None = None
        self._backoff: _Backoff | None = None

    def connected(self) -> None:
        """A new call was opened."""
        self._connected_at = time.monotonic()

    def delivered(self, cursor: C) -> None:
        """An item was delivered: the next call starts after it."""
        self.cursor = cursor
        self._failing_since = None
        self._name_taken_since = None
        self._resuming = False

    def failed(self, code: grpc.StatusCode | None) -> float | None:
        """The call ended with ``code`` (``None``: the server ended it without an error). The wait
        before reconnecting, or ``None`` when the error is final."""
        now = time.monotonic()
        if code is grpc.StatusCode.ALREADY_EXISTS:
            if not (self._named and self._resuming):
                return None
            if self._name_taken_since is None:
                self._name_taken_since = now
            if now - self._name_taken_since > NAME_WAIT:
                return None
        elif code not in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return None
        if self._failing_since is None or now - self._connected_at > _ESTABLISHED:
            self._failing_since = now
            self._backoff = self._policy.delays()
        assert self._backoff is not None
        self._resuming = True
        if code is grpc.StatusCode.ALREADY_EXISTS:
            # Bounded by NAME_WAIT, not by the policy: the name frees within seconds.
            return min(self._policy.max_backoff, 0.5)
        return self._backoff.next(now - self._failing_since)
