"""The dashboard's administration API: boundaries (any user lists them, ADMIN creates) and users
(ADMIN only). Like the rest of the dashboard it only converts: JSON to calls of the core
(orisun.service) and back; errors become HTTP statuses in the server's middleware."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from loguru import logger

from orisun.dashboard._convert import quote, user_json
from orisun.dashboard._keys import USER
from orisun.dashboard._requests import MAX_LARGE_BODY_BYTES, json_body, text_field, username_in_path
from orisun.dashboard._sessions import Sessions
from orisun.errors import InvalidArgument, PermissionDenied, quoted
from orisun.model import Boundary, Role, User
from orisun.service.boundaries import Boundaries
from orisun.service.users import Users


class AdminRoutes:
    """The handlers of /api/boundaries and /api/users (registered by ``Dashboard._build``)."""

    def __init__(self, users: Users, boundaries: Boundaries, sessions: Sessions, admin_boundary: str) -> None:
        self.users = users
        self.boundaries = boundaries
        self.sessions = sessions  # a deleted user's sessions end with it
        self.admin_boundary = admin_boundary

    # --- Boundaries --------------------------------------------------------------------------

    async def list_boundaries(self, request: web.Request) -> web.StreamResponse:
        """Every boundary (any user may look, as on the overview); ``internal`` marks the admin
        boundary (Orisun's own: users, the catalog)."""
        return web.json_response({"boundaries": [{**_boundary_json(b), "internal": b.name == self.admin_boundary}
                                                 for b in await self.boundaries.list()]})

    async def create_boundary(self, request: web.Request) -> web.StreamResponse:
        """POST /api/boundaries {"name", "schema", "description"} (ADMIN): created, migrated and
        usable at once; Boundaries.create's errors as they are (400 naming the field, 409 taken or
        an existing schema)."""
        user = request[USER]
        if Role.ADMIN not in user.roles:
            raise PermissionDenied(f"user {quoted(user.username)} may not create boundaries (needs role ADMIN)")
        body = await json_body(request)
        boundary = await self.boundaries.create(
            text_field(body, "name"), schema=text_field(body, "schema", required=False),
            description=text_field(body, "description", required=False))
        logger.info("Dashboard: {} created boundary {} (schema {})", quote(user.username), quote(boundary.name),
                    quote(boundary.schema))
        return web.json_response(_boundary_json(boundary), status=201)

    # --- Users (ADMIN) -----------------------------------------------------------------------

    @staticmethod
    def _admin(request: web.Request) -> User:
        user = request[USER]
        if Role.ADMIN not in user.roles:
            raise PermissionDenied(f"user {quoted(user.username)} may not manage users (needs role ADMIN)")
        return user

    async def list_users(self, request: web.Request) -> web.StreamResponse:
        self._admin(request)
        return web.json_response({"users": [user_json(u) for u in await self.users.list()]})

    async def create_user(self, request: web.Request) -> web.StreamResponse:
        self._admin(request)
        body = await json_body(request)
        roles = body.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidArgument("roles", "must be a list of role names (ADMIN, OPERATIONS)")
        user = await self.users.create(text_field(body, "name", required=False), text_field(body, "username"),
                                       text_field(body, "password"), roles)
        logger.info("Dashboard: {!r} created user {!r}", request[USER].username, user.username)
        return web.json_response(user_json(user), status=201)

    async def change_password(self, request: web.Request) -> web.StreamResponse:
        self._admin(request)
        body = await json_body(request)
        username = username_in_path(request)
        await self.users.change_password(username, text_field(body, "password"))
        logger.info("Dashboard: {} changed the password of {}", quote(request[USER].username), quote(username))
        return web.Response(status=204)

    async def delete_user(self, request: web.Request) -> web.StreamResponse:
        return await self._delete_user(request, username_in_path(request))

    async def delete_user_named(self, request: web.Request) -> web.StreamResponse:
        """DELETE /api/users {"username"}: the name in the body, so that no URL length limit stands
        in the way (names were unlimited before MAX_USERNAME_CHARS)."""
        self._admin(request)
        body = await json_body(request, max_bytes=MAX_LARGE_BODY_BYTES)
        return await self._delete_user(request, text_field(body, "username"))

    async def _delete_user(self, request: web.Request, username: str) -> web.StreamResponse:
        me = self._admin(request)
        if username == me.username:
            raise InvalidArgument("username", "you cannot delete yourself")
        await self.users.delete(username, caller=me)
        self.sessions.end_user(username)
        logger.info("Dashboard: {} deleted user {}", quote(me.username), quote(username))
        return web.Response(status=204)




def _boundary_json(boundary: Boundary) -> dict[str, Any]:
    return {"name": boundary.name, "schema": boundary.schema, "description": boundary.description,
            # From ORISUN_PG_SCHEMAS (or an adopted schema), rather than created here.
            "configured": boundary.existed_before_catalog,
            "created_at": boundary.created_at.isoformat() if boundary.created_at is not None else None}
