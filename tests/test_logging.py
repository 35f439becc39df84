"""ORISUN_LOGGING_FORMAT: the default text lines for people, or one JSON object per line for log
shippers (issue #16). Real nodes started as ``python -m orisun``, one process and with workers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from orisun.config import load_settings
from orisun.errors import ConfigError
from tests.support import OrisunProcess, free_port, grpcurl, wait_for

pytestmark = pytest.mark.timeout(120)

# The fields every JSON line carries, whoever wrote it.
REQUIRED = {"time", "level", "message", "logger"}
A_WORKER_RECORD = {"time": "2026-12-05T07:00:00.000000Z", "level": "INFO", "message": "m", "logger": "l", "worker": 1}


def node_env(conninfo: str, data_dir: Path, **extra: str) -> dict[str, str]:
    pg = conninfo_to_dict(conninfo)
    return {"ORISUN_PG_HOST": str(pg["host"]), "ORISUN_PG_PORT": str(pg["port"]), "ORISUN_PG_USER": str(pg["user"]),
            "ORISUN_PG_PASSWORD": str(pg.get("password", "")), "ORISUN_PG_NAME": str(pg["dbname"]),
            "ORISUN_DATA_DIR": str(data_dir), "ORISUN_GRPC_HOST": "127.0.0.1", "ORISUN_NATS_PORT": "0",
            "ORISUN_ADMIN_PORT": "0", **extra}


def parse_lines(lines: list[str]) -> list[dict[str, Any]]:
    """Every line of the node's stdout and stderr as a JSON object; fails on the first that is not."""
    records = []
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line[:300]!r}\n" + "\n".join(lines)) from None
        assert isinstance(record, dict), line
        assert record.keys() >= REQUIRED, line
        assert record["level"] in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"), line
        assert isinstance(record["message"], str) and isinstance(record["time"], str), line
        assert record["time"].endswith("Z") and "T" in record["time"], line  # ISO 8601, UTC
        records.append(record)
    return records


def run_node(env: dict[str, str]) -> tuple[OrisunProcess, list[dict[str, Any]]]:
    """Start a node, call it once, stop it with SIGTERM; every line it wrote, parsed."""
    process = OrisunProcess(env)
    try:
        process.wait_serving()
        listed = grpcurl(f"127.0.0.1:{env['ORISUN_GRPC_PORT']}", "list")
        assert listed.returncode == 0, listed.stderr
        # A refused call: the node logs nothing for it at INFO, but DEBUG shows the libraries' lines.
        refused = grpcurl(f"127.0.0.1:{env['ORISUN_GRPC_PORT']}", "eventstore.EventStore/GetEvents",
                          data='{"boundary": "nowhere"}', auth=None)
        assert refused.returncode != 0
        process.proc.send_signal(signal.SIGTERM)
        assert process.wait_exit() == 0, process.output
    finally:
        process.kill()
    assert process.lines, "the node wrote nothing"
    return process, parse_lines(process.lines)


def test_json_lines_from_one_process(database: str, data_dir: Path) -> None:
    env = node_env(database, data_dir, ORISUN_WORKERS="1", ORISUN_GRPC_PORT=str(free_port()),
                   ORISUN_LOGGING_FORMAT="json", ORISUN_LOGGING_LEVEL="DEBUG")
    _, records = run_node(env)
    messages = [r["message"] for r in records]
    assert any("serving gRPC" in m for m in messages), messages
    assert any("Orisun stopped" in m for m in messages), messages
    assert any(r["level"] == "WARNING" and "default password" in r["message"] for r in records), messages
    # nats-server's own output, relayed at DEBUG, names the child in a field of its own.
    assert any(r.get("child") == "nats-server" for r in records), records[:20]
    assert not any("worker" in r for r in records)


def test_json_lines_with_two_workers(database: str, data_dir: Path) -> None:
    env = node_env(database, data_dir, ORISUN_WORKERS="2", ORISUN_GRPC_PORT=str(free_port()),
                   ORISUN_LOGGING_FORMAT="json")
    _, records = run_node(env)
    # The workers' lines reach the supervisor's stderr; each is still one object, naming its worker.
    assert {r.get("worker") for r in records} >= {None, 1, 2}, records
    assert any("serving gRPC" in r["message"] and "worker" not in r for r in records), records


def test_default_stays_text(database: str, data_dir: Path) -> None:
    env = node_env(database, data_dir, ORISUN_WORKERS="1", ORISUN_GRPC_PORT=str(free_port()))
    process = OrisunProcess(env)
    try:
        process.wait_serving()
    finally:
        process.kill()
    line = next(ln for ln in process.lines if "serving gRPC" in ln)
    assert not line.startswith("{") and " INFO " in line, line


def test_a_message_round_trips_exactly_and_stays_one_line(tmp_path: Path) -> None:
    """What a client can put into a logged value (line breaks, escapes, Unicode separators) comes
    back exactly from the JSON, and no character in the line can split it for a line reader."""
    script = (
        "from loguru import logger\n"
        "from orisun.logs import setup_logging, relay_line\n"
        "setup_logging('INFO', log_format='json')\n"
        "logger.bind(child='x').info('path {}', 'a\\nb\\x1b[31m\\u2028c\\x85d\\u00e9')\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    logger.exception('failed')\n"
        "relay_line('not a log line from a worker', 'worker 1')\n"
        f"relay_line({json.dumps(json.dumps(A_WORKER_RECORD))}, 'worker 1')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    raw = done.stderr.decode("utf-8")
    lines = raw.split("\n")
    assert lines[-1] == "" and len(lines) == 5, raw
    for line in lines[:-1]:
        assert line.isascii() or all(ch not in line for ch in "\x85\u2028\u2029\x1b\r"), line
        assert len(line.splitlines()) == 1, line
    first, failure, wrapped, relayed = parse_lines(lines[:-1])
    assert first["message"] == "path a\nb\x1b[31m\u2028c\x85d\u00e9" and first["child"] == "x", first
    assert failure["level"] == "ERROR" and "ZeroDivisionError" in failure["exception"], failure
    assert wrapped["message"] == "not a log line from a worker" and wrapped["child"] == "worker 1", wrapped
    assert wrapped["level"] == "WARNING" and "worker" not in wrapped, wrapped
    assert relayed == A_WORKER_RECORD  # passed on as it was


def test_an_unknown_format_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORISUN_LOGGING_FORMAT", "xml")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "ORISUN_LOGGING_FORMAT" in str(raised.value) and "'xml'" in str(raised.value)
    monkeypatch.setenv("ORISUN_LOGGING_FORMAT", "JSON")
    assert load_settings().logging_format == "json"


def test_an_unknown_format_exits_2_with_one_line(data_dir: Path) -> None:
    env = {"ORISUN_DATA_DIR": str(data_dir), "ORISUN_LOGGING_FORMAT": "logfmt"}
    process = OrisunProcess(env)
    try:
        assert process.wait_exit(60) == 2, process.output
    finally:
        process.kill()
    wait_for(lambda: process.lines, 5, "the error line")
    assert len(process.lines) == 1 and "ORISUN_LOGGING_FORMAT" in process.lines[0], process.output
