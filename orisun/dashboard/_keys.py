"""What the dashboard's middlewares put on a request for its handlers: the session and its user."""

from __future__ import annotations

from aiohttp import web

from orisun.dashboard._sessions import Session
from orisun.model import User

SESSION_ID = web.RequestKey("session_id", str)
SESSION = web.RequestKey("session", Session)
USER = web.RequestKey("user", User)
