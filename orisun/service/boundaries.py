"""The boundaries Orisun serves: those of ORISUN_PG_SCHEMAS and those created at runtime.

Both are recorded in the catalog (``orisun.storage.catalog``), and every process serves what the
catalog lists, so a boundary created on one node is usable at once on every node and worker:

- the creating process adds it as soon as its transaction commits;
- every other process hears of it by LISTEN/NOTIFY (a few milliseconds later) and adds it;
- a request that names a boundary a process does not know yet is not refused before the catalog
  was asked (``Database.resolve``): a client that creates a boundary on one node and writes to it
  on another at once is served, whatever the notification's delay.

Adding a boundary (``Database.add``) tells the parts that keep something per boundary: the live
feed starts its publisher, the subscriptions and the commit routing learn its schema.
"""

from __future__ import annotations

import asyncio
import contextlib

from loguru import logger

from orisun.aio import cancel_and_wait
from orisun.errors import InvalidArgument, NotFound, quoted
from orisun.model import Boundary, identifier_problem
from orisun.storage import catalog
from orisun.storage.database import Database

MAX_DESCRIPTION_CHARS = 1_000


class Boundaries:
    """Lists, gets and creates boundaries. The callers check the caller's role (ADMIN)."""

    def __init__(self, db: Database, admin_schema: str) -> None:
        self._db = db
        self._admin_schema = admin_schema
        self._listener: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[None]] = set()
        db.find_with(self._lookup)

    async def start(self, within: float) -> None:
        """Listen for boundaries other processes add, then serve every boundary of the catalog
        (listening first: one added in between is not missed)."""
        listening = asyncio.Event()
        self._listener = asyncio.create_task(
            catalog.listen_for_added_boundaries(self._db.conninfo, self._added, ready=listening),
            name="orisun-boundaries",
        )
        await asyncio.wait_for(listening.wait(), timeout=within)
        await self.reload()

    async def close(self) -> None:
        await cancel_and_wait([self._listener, *self._reloads])

    async def reload(self) -> None:
        """Serve every boundary of the catalog (the ones this process knows stay as they are)."""
        for boundary in await catalog.load(self._db, self._admin_schema):
            self._add(boundary.name, boundary.schema)

    def _added(self, name: str | None, schema: str | None) -> None:
        if name is not None and schema is not None:
            self._add(name, schema)
            return
        # The listener (re)connected: what was added meanwhile is in the catalog.
        task = asyncio.create_task(self._reload_quietly(), name="orisun-boundaries-reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(Exception):  # PostgreSQL away: the next request's lookup finds it
            await self.reload()

    def _add(self, name: str, schema: str) -> None:
        if self._db.add(name, schema):
            logger.info("Serving boundary {!r} (schema {!r}) from the boundary catalog", name, schema)

    async def _lookup(self, name: str) -> str | None:
        if identifier_problem(name, "boundary") is not None:
            return None  # not a name any boundary can have: no need to ask PostgreSQL
        boundary = await catalog.lookup(self._db, self._admin_schema, name)
        return boundary.schema if boundary is not None else None

    async def list(self) -> list[Boundary]:
        """Every boundary, by name."""
        return await catalog.load(self._db, self._admin_schema)

    async def get(self, name: str) -> Boundary:
        """The boundary ``name``; NotFound if there is none."""
        boundary = await catalog.lookup(self._db, self._admin_schema, name)
        if boundary is None:
            raise NotFound(f"boundary {quoted(name)} does not exist")
        return boundary

    async def create(self, name: str, *, schema: str = "", description: str = "", adopt: bool = False,
                     schema_field: str = "schema") -> Boundary:
        """Create the boundary ``name`` in ``schema`` (empty: the name), migrate it and make it
        usable at once on every node.

        InvalidArgument for a bad name, schema (``schema_field`` names that field in the message)
        or description; AlreadyExists for a taken name, or a schema another boundary uses;
        FailedPrecondition for a schema that exists already unless ``adopt``.
        """
        problem = identifier_problem(name, "boundary")
        if problem is not None:
            raise InvalidArgument("name", problem)
        schema = schema or name
        problem = identifier_problem(schema, "schema")
        if problem is not None:
            raise InvalidArgument(schema_field, problem)
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise InvalidArgument("description", f"{len(description)} characters, more than the "
                                  f"{MAX_DESCRIPTION_CHARS} allowed")
        boundary = await catalog.create(self._db, self._admin_schema, name, schema, description, adopt=adopt)
        logger.info("Created boundary {!r} in schema {!r}", name, schema)
        self._db.add(name, schema)
        return boundary
