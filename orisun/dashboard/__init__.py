"""The admin dashboard: a web interface served by the Orisun process (docs/dashboard.md).

It is a transport, like the gRPC server: it calls the core (orisun.service) and knows nothing of
PostgreSQL or NATS. Its pages and assets are in ``static/`` and ship inside the package.
"""

from orisun.dashboard._server import Dashboard

__all__ = ["Dashboard"]
