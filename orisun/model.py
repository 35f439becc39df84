"""Plain data the layers pass to each other. Nothing here knows gRPC, SQL or NATS."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "ADMIN"
    OPERATIONS = "OPERATIONS"


# Roles that may write events (contract section 7); any authenticated user may read.
WRITE_ROLES = frozenset({Role.ADMIN, Role.OPERATIONS})


@dataclass(frozen=True)
class User:
    """An authenticated caller."""

    id: str
    name: str
    username: str
    roles: frozenset[Role]

    @property
    def can_write(self) -> bool:
        return bool(self.roles & WRITE_ROLES)
