"""Orisun: the batteries-included event store.

Layers, each importing only the ones below it:
transport (gRPC) -> service -> storage (PostgreSQL) / messaging (NATS) -> model, errors.
"""

from orisun._version import __version__

__all__ = ["__version__"]
