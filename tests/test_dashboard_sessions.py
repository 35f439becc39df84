"""The dashboard's session store and login throttle, on their own (the HTTP tests use them
through the server; these pin the arithmetic)."""

from __future__ import annotations

import time

import pytest

from orisun.dashboard._sessions import LoginThrottle, Sessions, csrf_ok
from tests.support import wait_for

pytestmark = pytest.mark.timeout(30)


def test_sessions_are_random_and_carry_their_own_csrf_token() -> None:
    sessions = Sessions()
    first_id, first = sessions.create("ann")
    second_id, second = sessions.create("ann")
    assert first_id != second_id and len(first_id) >= 40
    assert first.csrf_token != second.csrf_token
    assert sessions.get(first_id) is first
    assert sessions.get(first_id[:-1] + ("A" if first_id[-1] != "A" else "B")) is None
    assert sessions.get("") is None and sessions.get(None) is None
    assert csrf_ok(first, first.csrf_token)
    assert not csrf_ok(first, second.csrf_token) and not csrf_ok(first, None)


def test_idle_and_absolute_expiry() -> None:
    sessions = Sessions(idle_timeout=0.3, absolute_timeout=60)
    session_id, _ = sessions.create("ann")
    began = time.monotonic()
    wait_for(lambda: time.monotonic() - began > 0.15, 5, "half the idle time")
    assert sessions.get(session_id) is not None  # a request restarts the idle clock
    wait_for(lambda: time.monotonic() - began > 0.35, 5, "past the first idle deadline")
    assert sessions.get(session_id) is not None
    touched = time.monotonic()
    # Polling get() would keep it alive: wait without touching it.
    wait_for(lambda: time.monotonic() - touched > 0.4, 5, "the idle time to pass untouched")
    assert sessions.get(session_id) is None

    sessions = Sessions(idle_timeout=60, absolute_timeout=0.3)
    session_id, _ = sessions.create("ann")
    wait_for(lambda: sessions.get(session_id) is None, 5, "the session to reach its absolute end")


def test_ending_one_users_sessions() -> None:
    sessions = Sessions()
    ann, _ = sessions.create("ann")
    ann2, _ = sessions.create("ann")
    bob, _ = sessions.create("bob")
    sessions.end_user("ann")
    assert sessions.get(ann) is None and sessions.get(ann2) is None
    assert sessions.get(bob) is not None
    sessions.end(bob)
    assert sessions.get(bob) is None


def test_throttle_waits_double_after_the_threshold_per_user_and_per_address() -> None:
    throttle = LoginThrottle(threshold=3, window=60, max_delay=8)
    for _ in range(3):
        assert throttle.wait("ann", "10.0.0.1") == 0
        throttle.failed("ann", "10.0.0.1")
    assert 0.9 < throttle.wait("ann", "10.0.0.1") <= 1.0  # 2^0 s after the third failure
    assert 0.9 < throttle.wait("ann", "10.9.9.9") <= 1.0  # the username is throttled from anywhere
    assert 0.9 < throttle.wait("bob", "10.0.0.1") <= 1.0  # and the address for any username
    assert throttle.wait("bob", "10.0.0.2") == 0
    throttle.failed("ann", "10.0.0.1")
    assert 1.9 < throttle.wait("ann", "10.0.0.1") <= 2.0
    for _ in range(10):
        throttle.failed("ann", "10.0.0.1")
    assert throttle.wait("ann", "10.0.0.1") <= 8.0  # capped
    throttle.succeeded("ann")
    assert throttle.wait("ann", "10.9.9.9") == 0  # the user's count is cleared ...
    assert throttle.wait("carol", "10.0.0.1") > 0  # ... not the address's


def test_failures_older_than_the_window_are_forgotten() -> None:
    throttle = LoginThrottle(threshold=1, window=0.2, max_delay=100)
    throttle.failed("ann", "a")
    assert throttle.wait("ann", "a") > 0
    began = time.monotonic()
    wait_for(lambda: time.monotonic() - began > 1.1, 5, "the delay and the window to pass")
    assert throttle.wait("ann", "a") == 0
