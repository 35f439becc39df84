"""The slowing down of failed logins, one per node, shared by the gRPC API and the dashboard (and,
with workers, by every process of the node: see ``orisun.service.node.share_logins``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orisun.errors import Unauthenticated


class Throttled(Unauthenticated):
    """A login refused without checking the password: too many recent failures."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))  # whole seconds, as Retry-After wants
        super().__init__(f"too many failed logins: try again in {self.retry_after} s")


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    first: float = field(default_factory=time.monotonic)


class LoginThrottle:
    """Failed logins, counted per username, per client address and per (username, address).

    After ``threshold`` failures within ``window`` seconds, each further attempt for that key
    must wait 2^(failures - threshold) seconds (at most ``max_delay``) after the last failure.
    The username and the address are both checked, so neither guessing many passwords for one
    user from many addresses nor many users from one address goes fast. The pair alone decides
    whether credentials already verified may be used again from that address while the username
    is throttled (see ``Users.sign_in``). A success clears the username's count and the pair's.
    """

    # Keys kept at most; past this, expired ones go, then all (a flood of made-up names).
    MAX_KEYS = 100_000

    def __init__(self, threshold: int = 5, window: float = 15 * 60.0, max_delay: float = 300.0) -> None:
        self.threshold = threshold
        self.window = window
        self.max_delay = max_delay
        self._failures: dict[str, _Failures] = {}
        # Told of each failure and success counted here, (outcome, username, address), so that the
        # node's other processes count them too; their reports come back through ``failed`` and
        # ``succeeded`` with ``announce=False``.
        self.announce: Callable[[str, str, str | None], None] | None = None

    @staticmethod
    def _user(username: str) -> str:
        return f"user:{username}"

    @staticmethod
    def _address(address: str) -> str:
        return f"address:{address}"

    @staticmethod
    def _pair(username: str, address: str) -> str:
        # NUL cannot occur in a username that passed validation, nor in an address.
        return f"pair:{username}\0{address}"

    def _wait(self, key: str, now: float) -> float:
        failures = self._failures.get(key)
        if failures is None:
            return 0.0
        if self._expired(failures, now):
            del self._failures[key]
            return 0.0
        if failures.count < self.threshold:
            return 0.0
        delay = min(2.0 ** (failures.count - self.threshold), self.max_delay)
        return max(failures.last + delay - now, 0.0)

    def _expired(self, failures: _Failures, now: float) -> bool:
        return now - failures.first > self.window and now - failures.last > self.window

    def wait(self, username: str, address: str) -> float:
        """Seconds before an attempt for ``username`` from ``address`` is allowed (0: now)."""
        now = time.monotonic()
        keys = (self._user(username), self._address(address), self._pair(username, address))
        return max(self._wait(key, now) for key in keys)

    def pair_wait(self, username: str, address: str) -> float:
        """Seconds before ``username`` may use verified credentials from ``address`` again (0: now)."""
        if not self._failures:  # the usual case, checked on every call of a signed-in client
            return 0.0
        return self._wait(self._pair(username, address), time.monotonic())

    def failed(self, username: str, address: str, *, announce: bool = True) -> None:
        if announce and self.announce is not None:
            self.announce("failed", username, address)
        now = time.monotonic()
        for key in (self._user(username), self._address(address), self._pair(username, address)):
            failures = self._failures.setdefault(key, _Failures(first=now))
            failures.count += 1
            failures.last = now
        if len(self._failures) > self.MAX_KEYS:
            for key in [k for k, f in self._failures.items() if self._expired(f, now)]:
                del self._failures[key]
            if len(self._failures) > self.MAX_KEYS:
                self._failures.clear()

    def succeeded(self, username: str, address: str | None = None, *, announce: bool = True) -> None:
        if announce and self.announce is not None:
            self.announce("succeeded", username, address)
        self._failures.pop(self._user(username), None)
        if address is not None:
            self._failures.pop(self._pair(username, address), None)
