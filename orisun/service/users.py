"""Users: password hashing, authentication with a credential cache, and user management."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import argon2
from loguru import logger

from orisun.aio import cancel_and_wait
from orisun.config import DEFAULT_ADMIN_PASSWORD
from orisun.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OrisunError,
    Unauthenticated,
    quoted,
)
from orisun.metrics import Counts
from orisun.model import Role, User
from orisun.service import validation
from orisun.service.throttle import LoginThrottle, Throttled
from orisun.storage.users import UserRecord, UserStore

_MAX_PASSWORD_BYTES = 1024
# Documented in the README (admin dashboard). Names used to be unlimited: a 9,000-character one
# made a URL too long to delete it with. Existing longer names still authenticate and can be
# deleted (the dashboard's DELETE /api/users takes the name in the body).
MAX_USERNAME_CHARS = 128

# Client addresses remembered per cached credential (see Users.sign_in); past this, start over.
_MAX_ADDRESSES = 256
# Spellings of one user's verified credentials recognised by ``Users.recall`` (a client sends the
# same header every time; another spelling past these is simply verified the slow way), and of all
# users' together (past this, start over: a flood of spellings by someone who knows a password).
_MAX_TOKENS_PER_ENTRY = 8
_MAX_TOKENS = 10_000

# argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): ~65 ms a hash on these
# 2-vCPU machines, against ~500 ms for argon2-cffi's defaults, which would make every first call of
# a user and every start (the default-password check) slow. Verified credentials are cached so
# that RPCs do not pay even this. Existing hashes keep their own parameters (they are in the hash).
_hasher = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


# A user's id as the Admin API takes it: a UUID in its usual hyphenated form (any case).
_USER_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _to_user(record: UserRecord) -> User:
    return User(record.id, record.name, record.username, frozenset(Role(r) for r in record.roles),
                created_at=record.created_at, updated_at=record.updated_at)


@dataclass(frozen=True)
class Credential:
    """A signed-in user and the stored password hash its password was verified against: the
    credential holds while the user exists with that hash."""

    user: User
    password_hash: str


@dataclass(eq=False)
class _Entry:
    """Verified credentials of one user, cached."""

    credential: Credential
    digest: bytes  # HMAC of the username and the password that verified
    addresses: set[str]  # client addresses that signed in with them
    stale: bool = False  # the user may have changed: check the stored hash before trusting
    tokens: list[bytes] = field(default_factory=list)  # keys of Users._tokens that lead here


@dataclass(eq=False)
class _Watch:
    credential: Credential
    revoke: Callable[[], None]


class _KeyedLocks:
    """One asyncio lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]


class Users:
    """Authenticates callers and manages users, over a ``UserStore``.

    The cache maps a username to the user and an HMAC of the password that verified (keyed with a
    per-process secret, so the cache never holds a password or a cheap hash of one). When a user
    may have changed (``forget``: called by this class on every change it makes, and by the
    PostgreSQL change listener for changes made by other nodes or by hand) its entry is marked
    stale: the next use reads the user again and trusts the entry only if the stored hash is the
    one the password verified against (a deleted user or a changed password is refused at once;
    anything else costs a read, not a hash).

    Failed logins are throttled (``throttle``, shared with the dashboard). Credentials in the
    cache still pass while their username is throttled, from the addresses that signed in with
    them, so that someone guessing a password cannot lock out the applications that know it;
    from any other address they wait like everyone else, or the cache would tell a guesser at
    full speed which guess is right. Open streams register with ``watch`` and are ended when
    their user is deleted or changes password.

    A caller sends the same credentials on every call. ``recall`` recognises credentials verified
    before by their token as sent (the transport's raw ``authorization`` header) with one keyed
    BLAKE2b and one dict lookup: no decoding, no HMAC, no lock (issue #13). The token map holds
    keyed hashes only, never a token, and leads to the same entries as the username cache, so an
    entry marked stale or replaced is no longer recalled: those calls take the full ``sign_in``.
    """

    def __init__(self, store: UserStore, throttle: LoginThrottle | None = None, counts: Counts | None = None) -> None:
        """``counts``: where failed logins are counted (orisun_auth_failures_total)."""
        self._store = store
        self.throttle = throttle if throttle is not None else LoginThrottle()
        self.counts = counts if counts is not None else Counts()
        self._secret = secrets.token_bytes(32)
        self._cache: dict[str, _Entry] = {}
        self._token_key = secrets.token_bytes(32)
        self._tokens: dict[bytes, _Entry] = {}  # keyed hash of a token -> its verified entry
        # Bumped by every forget(); a verification that started before a forget() must not cache
        # what it read, because the row it read may already be stale.
        self._generation = 0
        self._locks = _KeyedLocks()
        self._dummy_hash: str | None = None
        self._watches: dict[str, set[_Watch]] = {}
        self._rechecks: set[asyncio.Task[None]] = set()
        # Set when this process is one of a node's (service/node.py share_user_changes): makes the
        # node's other processes forget a changed user before the change is answered. Other nodes
        # learn of it through PostgreSQL (listen_for_user_changes), milliseconds later.
        self.tell_node: Callable[[str], Awaitable[None]] | None = None

    def _digest(self, username: str, password: str) -> bytes:
        return hmac.new(self._secret, f"{username}\0{password}".encode(), hashlib.sha256).digest()

    def _token(self, token: str) -> bytes:
        # Keyed, like the digests: the map never holds a password or a cheap hash of one.
        return hashlib.blake2b(token.encode(), key=self._token_key, digest_size=16).digest()

    def recall(self, token: str, address: str) -> Credential | None:
        """The credential of ``token`` (credentials as the client sent them) when ``sign_in`` with
        the same token verified it before from this ``address``, nothing has changed since and the
        pair is not throttled; otherwise None, and the caller must ``sign_in``."""
        entry = self._tokens.get(self._token(token))
        if entry is None or entry.stale or address not in entry.addresses:
            return None
        if self.throttle.pair_wait(entry.credential.user.username, address) > 0:
            return None
        return entry.credential

    def _remember(self, token: str, username: str, digest: bytes, address: str) -> None:
        """After a successful sign-in with ``token``: let ``recall`` find its entry."""
        entry = self._cache.get(username)
        if (entry is None or entry.stale or not hmac.compare_digest(entry.digest, digest)
                or address not in entry.addresses or len(entry.tokens) >= _MAX_TOKENS_PER_ENTRY):
            return
        key = self._token(token)
        if key in self._tokens:
            return
        if len(self._tokens) >= _MAX_TOKENS:
            for each in self._tokens.values():
                each.tokens.clear()
            self._tokens.clear()
        self._tokens[key] = entry
        entry.tokens.append(key)

    def _drop(self, username: str, entry: _Entry) -> None:
        """Take ``entry`` out of both caches (its user is gone, or it is replaced)."""
        if self._cache.get(username) is entry:
            del self._cache[username]
        entry.stale = True  # for whoever still holds it
        for key in entry.tokens:
            if self._tokens.get(key) is entry:
                del self._tokens[key]
        entry.tokens.clear()

    def forget(self, username: str | None) -> None:
        """One user (or, with None, every user) may have changed: trust no cached credential of
        theirs without checking, and end their open streams if their credentials are gone."""
        self._generation += 1
        entries = self._cache.values() if username is None else filter(None, [self._cache.get(username)])
        for entry in entries:
            entry.stale = True
        names = set(self._watches) if username is None else {username} & self._watches.keys()
        if names:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the event loop: no stream is open here either
                return
            task = loop.create_task(self._recheck(names), name="orisun-user-recheck")
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

    async def _changed(self, username: str) -> None:
        """``username`` was created, changed or deleted here: no process of this node may go on
        trusting what it cached of that user once the change is answered."""
        self.forget(username)
        if self.tell_node is not None:
            await self.tell_node(username)

    async def authenticate(self, username: str, password: str, address: str = "") -> User:
        """The user with these credentials; Unauthenticated otherwise (never saying which part is
        wrong), Throttled after too many failures. ``address`` is the client's (no port)."""
        return (await self.sign_in(username, password, address)).user

    async def sign_in(self, username: str, password: str, address: str, token: str | None = None) -> Credential:
        """As ``authenticate``, with the password hash the credential holds by (for ``watch``).
        ``token``: the credentials as the client sent them, for ``recall`` on its next calls."""
        digest = self._digest(username, password)
        try:
            credential = await self._sign_in(username, password, address, digest)
        except Unauthenticated:  # a wrong password, an unknown user, or throttled
            self.counts.auth_failures += 1
            raise
        if token is not None:
            self._remember(token, username, digest, address)
        return credential

    async def _sign_in(self, username: str, password: str, address: str, digest: bytes) -> Credential:
        entry = self._cache.get(username)
        if (entry is not None and hmac.compare_digest(entry.digest, digest) and address in entry.addresses
                and self.throttle.pair_wait(username, address) == 0 and await self._still_valid(username, entry)):
            return entry.credential
        # Guesses for one user, or from one address, take turns: many at once would all pass the
        # throttle before the first failure counts (and would all pay the hash).
        async with self._locks.hold(f"address:{address}"), self._locks.hold(f"user:{username}"):
            wait = self.throttle.wait(username, address)
            if wait > 0:
                raise Throttled(wait)
            entry = self._cache.get(username)
            if entry is not None and hmac.compare_digest(entry.digest, digest) and await self._still_valid(
                username, entry
            ):
                # Verified before, from elsewhere: no hash to pay.
                if len(entry.addresses) >= _MAX_ADDRESSES:
                    entry.addresses.clear()
                entry.addresses.add(address)
                self.throttle.succeeded(username, address)
                return entry.credential
            return await self._verify_and_cache(username, password, address, digest)

    async def _still_valid(self, username: str, entry: _Entry) -> bool:
        """Whether a cached entry may be trusted: it is fresh, or the user still has its hash."""
        if not entry.stale:
            return True
        generation = self._generation
        record = await self._store.get(username)
        if record is None or record.password_hash != entry.credential.password_hash:
            self._drop(username, entry)
            return False
        entry.credential = Credential(_to_user(record), record.password_hash)  # roles may have changed
        if generation == self._generation:
            entry.stale = False
        return True

    async def _verify_and_cache(self, username: str, password: str, address: str, digest: bytes) -> Credential:
        if not (validation.is_storable(username) and validation.is_storable(password)):
            self.throttle.failed(username, address)
            raise Unauthenticated("invalid username or password")  # no such user can exist
        generation = self._generation
        record = await self._store.get(username)
        if len(password.encode()) > _MAX_PASSWORD_BYTES:
            self.throttle.failed(username, address)
            raise Unauthenticated("invalid username or password")
        # An unknown user is checked against a hash made the same way, so that the answer takes
        # as long as for a known one and does not tell which usernames exist.
        password_hash = record.password_hash if record is not None else await self._dummy()
        verified = await asyncio.to_thread(self._verify, password_hash, password)
        if record is None or not verified:
            self.throttle.failed(username, address)
            raise Unauthenticated("invalid username or password")
        self.throttle.succeeded(username, address)
        credential = Credential(_to_user(record), record.password_hash)
        if generation == self._generation:
            replaced = self._cache.get(username)
            if replaced is not None:
                # Other credentials of this user (an older password, changed where this node did
                # not hear of it yet): recall must not accept them any more.
                self._drop(username, replaced)
            self._cache[username] = _Entry(credential, digest, {address})
        return credential

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await asyncio.to_thread(hash_password, secrets.token_urlsafe(16))
        return self._dummy_hash

    @staticmethod
    def _verify(password_hash: str, password: str) -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def watch(self, credential: Credential, revoke: Callable[[], None]) -> Callable[[], None]:
        """Call ``revoke`` once the credential no longer holds (the user was deleted or changed
        password, here or on another node); the function returned stops watching."""
        username = credential.user.username
        watch = _Watch(credential, revoke)
        self._watches.setdefault(username, set()).add(watch)

        def unwatch() -> None:
            watches = self._watches.get(username)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[username]

        return unwatch

    async def _recheck(self, usernames: set[str]) -> None:
        for username in usernames:
            if not self._watches.get(username):
                continue
            try:
                record = await self._store.get(username)
            except OrisunError as exc:
                # Cannot tell: the streams stay (they depend on the same database anyway).
                logger.warning("Could not check whether user {!r} still exists: {}", username[:64], exc)
                continue
            for watch in list(self._watches.get(username, ())):
                if record is None or record.password_hash != watch.credential.password_hash:
                    watch.revoke()

    async def close(self) -> None:
        """Stop the checks in progress (at shutdown)."""
        await cancel_and_wait(list(self._rechecks))

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

    async def get_by_id(self, user_id: str, field: str = "user_id") -> User:
        """The user with this id (a UUID); InvalidArgument naming ``field`` for anything that is
        not a UUID, NotFound when no user has it."""
        if not _USER_ID.fullmatch(user_id):
            raise InvalidArgument(field, f"must be a user's id (a UUID), not {quoted(user_id)}")
        record = await self._store.get_by_id(user_id)
        if record is None:
            raise NotFound(f"{field}: no user has the id {quoted(user_id)}")
        return _to_user(record)

    async def list(self) -> list[User]:
        return [_to_user(r) for r in await self._store.list()]

    async def count(self) -> int:
        return await self._store.count()

    async def create(self, name: str, username: str, password: str, roles: Iterable[str]) -> User:
        validated = _validate_roles(roles)
        validation.check_storable("name", name)
        validation.check_storable("username", username)
        if not username.strip():
            raise InvalidArgument("username", "must not be empty")
        if len(username) > MAX_USERNAME_CHARS:
            raise InvalidArgument("username", f"must be at most {MAX_USERNAME_CHARS} characters, not {len(username)}")
        if ":" in username:
            raise InvalidArgument("username", "must not contain ':' (Basic auth separates user and password with it)")
        _validate_password(password)
        if not await self._store.create(name or username, username, hash_password(password), validated):
            raise AlreadyExists(f"username {quoted(username)} is taken")
        await self._changed(username)
        record = await self._store.get(username)
        assert record is not None
        return _to_user(record)

    async def change_password(self, username: str, password: str, *, field: str = "password") -> None:
        """Set a new password (``field``: the request's name for it, in error messages)."""
        _validate_password(password, field)
        if not await self._store.set_password(username, hash_password(password)):
            raise NotFound(f"user {quoted(username)} does not exist")
        await self._changed(username)

    async def delete(self, username: str, *, caller: User | None = None) -> None:
        """Delete a user. ``caller``: who asks; nobody may delete their own user (there would be no
        way back if they were the last ADMIN), FailedPrecondition."""
        if caller is not None and caller.username == username:
            raise FailedPrecondition(f"user {quoted(username)} is you: you cannot delete yourself")
        if not await self._store.delete(username):
            raise NotFound(f"user {quoted(username)} does not exist")
        await self._changed(username)


def _validate_password(password: str, field: str = "password") -> None:
    validation.check_storable(field, password)
    if not password:
        raise InvalidArgument(field, "must not be empty")
    if len(password.encode()) > _MAX_PASSWORD_BYTES:
        raise InvalidArgument(field, f"must be at most {_MAX_PASSWORD_BYTES} bytes")


def _validate_roles(roles: Iterable[str]) -> list[Role]:
    result = []
    for role in roles:
        try:
            result.append(Role(role))
        except ValueError:
            raise InvalidArgument("roles", f"{quoted(role)} is not one of {', '.join(Role)}") from None
    return result
