"""Orisun's administration operations (the gRPC service ``orisun.Admin``), knowing nothing of gRPC.

Every operation takes the caller and needs the ADMIN role (PermissionDenied otherwise), except
that any user may change their own password with their current one. Users, their rules and their
validation are those of ``Users``, the same as the dashboard's; boundaries are ``Boundaries``'.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from orisun.errors import InvalidArgument, PermissionDenied, Unauthenticated, Unavailable, quoted
from orisun.model import Boundary, User
from orisun.service import validation
from orisun.service.boundaries import Boundaries
from orisun.service.throttle import Throttled
from orisun.service.users import Users
from orisun.storage.database import Database
from orisun.storage.events import read_head

# The only storage backend: a boundary is a PostgreSQL schema.
POSTGRES = "postgres"


@dataclass(frozen=True)
class Validated:
    """ValidateCredentials' answer: the user when the credentials are valid, else None."""

    user: User | None


def _require_admin(caller: User, what: str) -> None:
    if not caller.is_admin:
        raise PermissionDenied(f"user {quoted(caller.username)} may not {what} (needs role ADMIN)")


def _throttled(exc: Throttled, username: str) -> Unavailable:
    # Not UNAUTHENTICATED: the caller's own credentials are fine, and not a "no": whether the
    # password is right is not known yet. UNAVAILABLE says "retry", and the message when.
    return Unavailable(f"username {quoted(username)}: too many failed logins: try again in {exc.retry_after} s")


class Admin:
    """The Admin API's rules: users and runtime boundaries, with who may manage them."""

    def __init__(self, users: Users, boundaries: Boundaries, db: Database) -> None:
        self._users = users
        self._boundaries = boundaries
        self._db = db

    # --- Users -----------------------------------------------------------------------------------

    async def create_user(self, caller: User, name: str, username: str, password: str,
                          roles: Iterable[str]) -> User:
        _require_admin(caller, "manage users")
        return await self._users.create(name, username, password, list(roles))

    async def delete_user(self, caller: User, user_id: str) -> None:
        _require_admin(caller, "manage users")
        user = await self._users.get_by_id(user_id)
        await self._users.delete(user.username, caller=caller)

    async def change_password(self, caller: User, user_id: str, current_password: str, new_password: str,
                              *, address: str) -> None:
        """One's own password with the current one (checked like a login: a wrong one counts as a
        failed login, PermissionDenied); anyone's as ADMIN. ``address``: the caller's, for the
        login throttle."""
        own = user_id.lower() == caller.id.lower()
        if not own:
            # Before looking the id up: a non-admin learns nothing about other users' ids.
            _require_admin(caller, "change another user's password")
        user = await self._users.get_by_id(user_id)
        if own:
            if not current_password:
                raise InvalidArgument("current_password", "is required to change your own password")
            try:
                await self._users.authenticate(user.username, current_password, address)
            except Throttled as exc:
                raise _throttled(exc, user.username) from None
            except Unauthenticated:
                raise PermissionDenied("current_password: wrong password") from None
        await self._users.change_password(user.username, new_password, field="new_password")

    async def list_users(self, caller: User) -> list[User]:
        _require_admin(caller, "list users")
        return await self._users.list()

    async def validate_credentials(self, caller: User, username: str, password: str, *, address: str) -> Validated:
        """Whether ``username`` and ``password`` are valid, as a login would find (without signing
        in anywhere). A wrong password counts as a failed login of ``username`` from ``address``
        (the caller's), like any other: otherwise this call would let an ADMIN's credentials guess
        other users' passwords at full speed. While ``username`` is throttled the answer is
        Unavailable (retry later), never a "no" that may be wrong."""
        _require_admin(caller, "validate credentials")
        try:
            return Validated(await self._users.authenticate(username, password, address))
        except Throttled as exc:
            raise _throttled(exc, username) from None
        except Unauthenticated:
            return Validated(None)

    async def user_count(self, caller: User) -> int:
        _require_admin(caller, "count users")
        return await self._users.count()

    # --- Events and boundaries -------------------------------------------------------------------

    async def event_count(self, caller: User, boundary: str) -> int:
        """The number of events in ``boundary``: its head position (positions are dense), one
        row read, whatever the number of events."""
        _require_admin(caller, "count events")
        validation.check_boundary(boundary)
        return await read_head(self._db, await self._db.resolve(boundary))

    async def list_boundaries(self, caller: User) -> list[Boundary]:
        _require_admin(caller, "list boundaries")
        return await self._boundaries.list()

    async def get_boundary(self, caller: User, name: str) -> Boundary:
        _require_admin(caller, "read boundaries")
        validation.check_boundary(name, "name")
        return await self._boundaries.get(name)

    async def create_boundary(self, caller: User, name: str, *, backend: str, schema: str, description: str,
                              adopt: bool) -> Boundary:
        _require_admin(caller, "create boundaries")
        if backend not in ("", POSTGRES):
            raise InvalidArgument("placement.backend", f"must be {POSTGRES!r} (or empty), not {quoted(backend)}")
        return await self._boundaries.create(name, schema=schema, description=description, adopt=adopt,
                                             schema_field="placement.namespace")
