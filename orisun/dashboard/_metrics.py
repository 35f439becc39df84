"""``GET /metrics`` on the admin port: the node's figures for Prometheus (orisun.service.metrics).

Open by default, like most exporters (the figures name boundaries, subscribers and pub/sub
consumers, no event content). With ``ORISUN_METRICS_AUTH=true`` it asks for HTTP Basic auth with
any valid user, checked by ``Users`` as every login is: throttled, and counted in
``orisun_auth_failures_total``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from orisun.errors import Unauthenticated
from orisun.service.throttle import Throttled
from orisun.service.users import Users
from orisun.transport.auth import parse_basic

# The classic text format (what generate_latest writes for these names, all of the legacy charset):
# every Prometheus version reads it, where prometheus_client's newest default says version=1.0.0.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="orisun metrics", charset="UTF-8"'}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def metrics_handler(scrape: Callable[[], Awaitable[bytes]], users: Users | None) -> Handler:
    """The route's handler: ``scrape()``'s text, behind Basic auth when ``users`` is given."""

    async def metrics(request: web.Request) -> web.StreamResponse:
        if users is not None:
            header = request.headers.get("Authorization")
            if header is None:  # the first step of Basic auth, not a failed login
                return web.Response(status=401, text="credentials required\n", headers=_CHALLENGE)
            try:
                username, password = parse_basic(header)
            except Unauthenticated as exc:
                users.counts.auth_failures += 1
                return web.Response(status=401, text=f"{exc}\n", headers=_CHALLENGE)
            try:
                await users.authenticate(username, password, request.remote or "unknown")
            except Throttled as exc:
                return web.Response(status=429, text=f"{exc}\n", headers={"Retry-After": str(exc.retry_after)})
            except Unauthenticated:
                return web.Response(status=401, text="invalid username or password\n", headers=_CHALLENGE)
        body = await scrape()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})

    return metrics
