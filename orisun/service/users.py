"""Users: password hashing, authentication with a credential cache, and user management."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Iterable

import argon2
from loguru import logger

from orisun.config import DEFAULT_ADMIN_PASSWORD
from orisun.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from orisun.model import Role, User
from orisun.service import validation
from orisun.storage.users import UserRecord, UserStore

_MAX_PASSWORD_BYTES = 1024
# Documented in the README (admin dashboard). Names used to be unlimited: a 9,000-character one
# made a URL too long to delete it with. Existing longer names still authenticate and can be
# deleted (the dashboard's DELETE /api/users takes the name in the body).
MAX_USERNAME_CHARS = 128

# argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): ~65 ms a hash on these
# 2-vCPU machines, against ~500 ms for argon2-cffi's defaults, which would make every first call of
# a user and every start (the default-password check) slow. Verified credentials are cached so
# that RPCs do not pay even this. Existing hashes keep their own parameters (they are in the hash).
_hasher = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _to_user(record: UserRecord) -> User:
    return User(record.id, record.name, record.username, frozenset(Role(r) for r in record.roles))


class Users:
    """Authenticates callers and manages users, over a ``UserStore``.

    The cache maps a username to the user and an HMAC of the password that verified (keyed with a
    per-process secret, so the cache never holds a password or a cheap hash of one). It forgets a
    user when ``forget`` is called: by this class on every change it makes, and by the PostgreSQL
    change listener for changes made by other nodes or by hand.
    """

    def __init__(self, store: UserStore) -> None:
        self._store = store
        self._secret = secrets.token_bytes(32)
        self._cache: dict[str, tuple[User, bytes]] = {}
        # Bumped by every forget(); a verification that started before a forget() must not cache
        # what it read, because the row it read may already be stale.
        self._generation = 0

    def _digest(self, username: str, password: str) -> bytes:
        return hmac.new(self._secret, f"{username}\0{password}".encode(), hashlib.sha256).digest()

    def forget(self, username: str | None) -> None:
        """Drop the cached credentials of one user, or of everyone with None."""
        self._generation += 1
        if username is None:
            self._cache.clear()
        else:
            self._cache.pop(username, None)

    async def authenticate(self, username: str, password: str) -> User:
        """The user with these credentials; Unauthenticated otherwise (never saying which part is wrong)."""
        digest = self._digest(username, password)
        cached = self._cache.get(username)
        if cached is not None and hmac.compare_digest(cached[1], digest):
            return cached[0]
        generation = self._generation
        if not (validation.is_storable(username) and validation.is_storable(password)):
            raise Unauthenticated("invalid username or password")  # no such user can exist
        record = await self._store.get(username)
        if record is None or len(password.encode()) > _MAX_PASSWORD_BYTES:
            raise Unauthenticated("invalid username or password")
        if not await asyncio.to_thread(self._verify, record.password_hash, password):
            raise Unauthenticated("invalid username or password")
        user = _to_user(record)
        if generation == self._generation:
            self._cache[username] = (user, digest)
        return user

    @staticmethod
    def _verify(password_hash: str, password: str) -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    async def ensure_admin(self, username: str, password: str) -> bool:
        """Create the configured admin user unless it exists; True when created.

        Concurrent first starts of several nodes create it once (the insert skips a taken name).
        """
        if await self._store.get(username) is not None:
            return False
        created = await self._store.create("Administrator", username, hash_password(password), [Role.ADMIN])
        if created:
            logger.info("Created admin user {!r}", username)
        return created

    async def uses_default_password(self, username: str) -> bool:
        record = await self._store.get(username)
        return record is not None and await asyncio.to_thread(
            self._verify, record.password_hash, DEFAULT_ADMIN_PASSWORD
        )

    async def get(self, username: str) -> User | None:
        """The user as stored now (for sessions that outlive a password check), or None."""
        record = await self._store.get(username)
        return _to_user(record) if record is not None else None

    async def list(self) -> list[User]:
        return [_to_user(r) for r in await self._store.list()]

    async def create(self, name: str, username: str, password: str, roles: Iterable[str]) -> User:
        validated = _validate_roles(roles)
        validation.check_storable("name", name)
        validation.check_storable("username", username)
        if not username.strip():
            raise InvalidArgument("username must not be empty")
        if len(username) > MAX_USERNAME_CHARS:
            raise InvalidArgument(f"username: must be at most {MAX_USERNAME_CHARS} characters, not {len(username)}")
        if ":" in username:
            raise InvalidArgument("username must not contain ':' (Basic auth separates user and password with it)")
        _validate_password(password)
        if not await self._store.create(name or username, username, hash_password(password), validated):
            raise AlreadyExists(f"username {username!r} is taken")
        self.forget(username)
        record = await self._store.get(username)
        assert record is not None
        return _to_user(record)

    async def change_password(self, username: str, password: str) -> None:
        _validate_password(password)
        if not await self._store.set_password(username, hash_password(password)):
            raise NotFound(f"user {username!r} does not exist")
        self.forget(username)

    async def delete(self, username: str) -> None:
        if not await self._store.delete(username):
            raise NotFound(f"user {username!r} does not exist")
        self.forget(username)


def _validate_password(password: str) -> None:
    validation.check_storable("password", password)
    if not password:
        raise InvalidArgument("password must not be empty")
    if len(password.encode()) > _MAX_PASSWORD_BYTES:
        raise InvalidArgument(f"password must be at most {_MAX_PASSWORD_BYTES} bytes")


def _validate_roles(roles: Iterable[str]) -> list[Role]:
    result = []
    for role in roles:
        try:
            result.append(Role(role))
        except ValueError:
            raise InvalidArgument(f"roles: {role!r} is not one of {', '.join(Role)}") from None
    return result
