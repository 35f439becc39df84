"""PostgreSQL storage: the connection pool, migrations, the users table, reads and writes.

The embedded PostgreSQL server that Orisun can run itself is not here but in ``orisun.runtime``:
this package only connects to a server, whichever runs it.

Every psycopg error is translated into Orisun's own in ``_errors``; nothing above this package
sees a psycopg exception.
"""
