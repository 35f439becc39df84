"""Dashboard sessions (opaque ids kept in memory) and the slowing down of failed logins."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

IDLE_TIMEOUT = 30 * 60.0  # seconds without a request before a session ends
ABSOLUTE_TIMEOUT = 12 * 3600.0  # seconds after login a session ends regardless


@dataclass
class Session:
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


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    first: float = field(default_factory=time.monotonic)


class LoginThrottle:
    """Failed logins, counted per username and per client address.

    After ``threshold`` failures within ``window`` seconds, each further attempt for that key
    must wait 2^(failures - threshold) seconds (at most ``max_delay``) after the last failure.
    Both keys are checked, so neither guessing many passwords for one user from many addresses
    nor many users from one address goes fast. A success clears the username's count.
    """

    def __init__(self, threshold: int = 5, window: float = 15 * 60.0, max_delay: float = 300.0) -> None:
        self.threshold = threshold
        self.window = window
        self.max_delay = max_delay
        self._failures: dict[str, _Failures] = {}

    @staticmethod
    def _keys(username: str, address: str) -> tuple[str, str]:
        return f"user:{username}", f"address:{address}"

    def wait(self, username: str, address: str) -> float:
        """Seconds before an attempt for ``username`` from ``address`` is allowed (0: now)."""
        now = time.monotonic()
        longest = 0.0
        for key in self._keys(username, address):
            failures = self._failures.get(key)
            if failures is None:
                continue
            if now - failures.first > self.window and now - failures.last > self.window:
                del self._failures[key]
                continue
            if failures.count >= self.threshold:
                delay = min(2.0 ** (failures.count - self.threshold), self.max_delay)
                longest = max(longest, failures.last + delay - now)
        return max(longest, 0.0)

    def failed(self, username: str, address: str) -> None:
        now = time.monotonic()
        for key in self._keys(username, address):
            failures = self._failures.setdefault(key, _Failures(first=now))
            failures.count += 1
            failures.last = now
        if len(self._failures) > 100_000:  # a flood of made-up names: keep memory bounded
            self._failures.clear()

    def succeeded(self, username: str) -> None:
        self._failures.pop(self._keys(username, "")[0], None)
