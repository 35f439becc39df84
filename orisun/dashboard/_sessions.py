"""Dashboard sessions (opaque ids kept in memory).

The slowing down of failed logins moved to ``orisun.service.throttle`` (shared with gRPC); it is
still importable from here.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

from orisun.service.throttle import LoginThrottle

__all__ = ["ABSOLUTE_TIMEOUT", "IDLE_TIMEOUT", "LoginThrottle", "Session", "Sessions", "csrf_ok"]

IDLE_TIMEOUT = 30 * 60.0  # seconds without a request before a session ends
ABSOLUTE_TIMEOUT = 12 * 3600.0  # seconds after login a session ends regardless


@dataclass
class Session:
    """One logged-in dashboard user: who, the CSRF token of their forms, and when it began and was last used."""

    username: str
    csrf_token: str
    created: float
    last_seen: float


class Sessions:
    """Sessions by id. The id is 256 random bits: the cookie reveals nothing and cannot be forged;
    ending a session (logout, expiry, user deleted) is forgetting it."""

    def __init__(self, idle_timeout: float = IDLE_TIMEOUT, absolute_timeout: float = ABSOLUTE_TIMEOUT) -> None:
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout
        self._sessions: dict[str, Session] = {}

    def create(self, username: str) -> tuple[str, Session]:
        self._expire()
        now = time.monotonic()
        session_id = secrets.token_urlsafe(32)
        session = self._sessions[session_id] = Session(username, secrets.token_urlsafe(32), now, now)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, its idle clock restarted; None if unknown or expired."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_seen > self.idle_timeout or now - session.created > self.absolute_timeout:
            del self._sessions[session_id]
            return None
        session.last_seen = now
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def end_user(self, username: str) -> None:
        """End every session of ``username`` (deleted)."""
        for session_id in [i for i, s in self._sessions.items() if s.username == username]:
            del self._sessions[session_id]

    def _expire(self) -> None:
        now = time.monotonic()
        for session_id in [
            i for i, s in self._sessions.items()
            if now - s.last_seen > self.idle_timeout or now - s.created > self.absolute_timeout
        ]:
            del self._sessions[session_id]


def csrf_ok(session: Session, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(session.csrf_token.encode(), token.encode())
