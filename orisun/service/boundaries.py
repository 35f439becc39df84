"""The boundary catalog: the boundaries of ORISUN_PG_SCHEMAS and those created at runtime.

(Skeleton: ``create`` lands with the catalog table; list and get answer the configured ones.)
"""

from __future__ import annotations

from orisun.errors import NotFound, Unimplemented, quoted
from orisun.model import Boundary
from orisun.storage.database import Database


class Boundaries:
    """Lists, gets and creates boundaries. The callers check the caller's role (ADMIN)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(self) -> list[Boundary]:
        """Every boundary, by name."""
        boundaries = sorted(self._db.boundaries.items())
        return [Boundary(name, schema, existed_before_catalog=True) for name, schema in boundaries]

    async def get(self, name: str) -> Boundary:
        """The boundary ``name``; NotFound if there is none."""
        for boundary in await self.list():
            if boundary.name == name:
                return boundary
        raise NotFound(f"boundary {quoted(name)} does not exist")

    async def create(self, name: str, *, schema: str = "", description: str = "", adopt: bool = False) -> Boundary:
        """Create the boundary ``name`` in ``schema`` (empty: the name), migrate it and make it
        usable at once on every node. InvalidArgument for a bad name or schema (naming the field:
        ``name`` or ``schema``), AlreadyExists for a taken name (or a schema another boundary uses),
        FailedPrecondition for a schema that exists already unless ``adopt``."""
        raise Unimplemented("creating boundaries is not implemented yet")
