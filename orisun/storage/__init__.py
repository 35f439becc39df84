"""PostgreSQL storage: the connection pool, migrations, the users table and the embedded server.

Every psycopg error is translated into Orisun's own in ``_errors``; nothing above this package
sees a psycopg exception.
"""
