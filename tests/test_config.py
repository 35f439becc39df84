"""Configuration: defaults, parsing, and every invalid case exiting 2 with one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orisun import __version__
from orisun.config import VARIABLES, available_cpus, load_settings, parse_boundaries
from orisun.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ORISUN_"):
            monkeypatch.delenv(name)


def run_orisun(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORISUN_")}
    return subprocess.run(
        [sys.executable, "-m", "orisun", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_defaults_follow_the_contract() -> None:
    s = load_settings()
    assert s.grpc_port == 50051
    assert s.nats_port == 4222 and s.nats_host == "127.0.0.1"
    assert s.admin_port == 8991
    assert s.admin_boundary == "orisun_admin"
    assert s.boundaries == {"orisun_admin": "orisun_admin"}
    assert (s.admin_username, s.admin_password) == ("admin", "changeit")
    assert s.pg_conninfo is None  # the embedded PostgreSQL
    assert s.nats_store == s.data_dir / "nats"
    assert s.nats_max_payload == 1048576
    # A 5,000-event batch of 1 KB events must fit in one message.
    assert s.grpc_max_message_size >= 5000 * 2048
    assert s.nats_cluster_timeout == 60.0
    assert s.nats_cluster_routes == ("nats://localhost:6333", "nats://localhost:6334")
    assert s.workers == available_cpus() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("value", "workers"), [("1", 1), ("4", 4), (" 2 ", 2), ("", None)])
def test_workers_is_read_and_empty_means_the_default(
    monkeypatch: pytest.MonkeyPatch, value: str, workers: int | None
) -> None:
    monkeypatch.setenv("ORISUN_WORKERS", value)
    assert load_settings().workers == (workers or available_cpus())


def test_root_default_data_dir_is_reachable_by_the_unprivileged_postgres_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("root only")
    assert load_settings().data_dir == Path("/var/lib/orisun")


def test_pg_schemas_pairs_and_bare_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORISUN_PG_SCHEMAS", " users:test2, orders ,orisun_admin:admin")
    assert load_settings().boundaries == {"users": "test2", "orders": "orders", "orisun_admin": "admin"}


def test_the_brief_examples_parse() -> None:
    assert parse_boundaries("public", "orisun_admin") == {"public": "public", "orisun_admin": "orisun_admin"}
    assert parse_boundaries("orisun_test_1:public,orisun_test_2:test2,orisun_admin:admin", "orisun_admin") == {
        "orisun_test_1": "public",
        "orisun_test_2": "test2",
        "orisun_admin": "admin",
    }


def test_admin_boundary_is_added_under_its_configured_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORISUN_ADMIN_BOUNDARY", "ops")
    monkeypatch.setenv("ORISUN_PG_SCHEMAS", "users")
    s = load_settings()
    assert s.boundaries == {"users": "users", "ops": "ops"}
    assert s.admin_schema == "ops"


def test_any_connection_variable_selects_an_external_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORISUN_PG_PORT", "6543")
    monkeypatch.setenv("ORISUN_PG_PASSWORD", "s3cret")
    s = load_settings()
    assert s.pg_conninfo is not None
    assert "port=6543" in s.pg_conninfo and "host=localhost" in s.pg_conninfo
    assert "user=postgres" in s.pg_conninfo and "password=s3cret" in s.pg_conninfo


def test_durations_and_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORISUN_NATS_CLUSTER_TIMEOUT", "2m")
    monkeypatch.setenv("ORISUN_NATS_CLUSTER_ROUTES", "nats://a:6222, nats://b:6223")
    monkeypatch.setenv("ORISUN_NATS_CLUSTER_ENABLED", "true")
    s = load_settings()
    assert s.nats_cluster_timeout == 120.0
    assert s.nats_cluster_routes == ("nats://a:6222", "nats://b:6223")
    assert s.nats_cluster_enabled


def test_data_dir_and_store_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ORISUN_DATA_DIR", str(tmp_path / "d"))
    assert load_settings().nats_store == tmp_path / "d" / "nats"
    monkeypatch.setenv("ORISUN_NATS_STORE_DIR", str(tmp_path / "n"))
    assert load_settings().nats_store == tmp_path / "n"


INVALID = [
    ("ORISUN_GRPC_PORT", "abc"),
    ("ORISUN_GRPC_PORT", "70000"),
    ("ORISUN_NATS_PORT", "-1"),
    ("ORISUN_ADMIN_PORT", "x"),
    ("ORISUN_PG_PORT", "0"),
    ("ORISUN_PG_PORT", "five"),
    ("ORISUN_PG_SCHEMAS", "users,,orders"),
    ("ORISUN_PG_SCHEMAS", "users:bad-schema"),
    ("ORISUN_PG_SCHEMAS", "1users"),
    ("ORISUN_PG_SCHEMAS", "users;drop table x"),
    ("ORISUN_PG_SCHEMAS", "users,users:other"),
    ("ORISUN_PG_SCHEMAS", "a:same,b:same"),
    ("ORISUN_PG_SCHEMAS", "pg_catalog"),
    ("ORISUN_PG_SCHEMAS", "x" * 64),
    ("ORISUN_ADMIN_BOUNDARY", "bad name"),
    ("ORISUN_ADMIN_USERNAME", ""),
    ("ORISUN_ADMIN_PASSWORD", ""),
    ("ORISUN_LOGGING_LEVEL", "LOUD"),
    ("ORISUN_NATS_MAX_PAYLOAD", "0"),
    ("ORISUN_NATS_MAX_PAYLOAD", "100000000"),
    ("ORISUN_GRPC_MAX_MESSAGE_SIZE", "-5"),
    ("ORISUN_NATS_CLUSTER_ENABLED", "maybe"),
    ("ORISUN_NATS_CLUSTER_TIMEOUT", "soon"),
    ("ORISUN_NATS_CLUSTER_TIMEOUT", "0s"),
    ("ORISUN_NATS_CLUSTER_PORT", "99999"),
    ("ORISUN_NATS_CLUSTER_ROUTES", "http://a:1"),
    ("ORISUN_NATS_CLUSTER_ROUTES", "nats://nohost"),
    ("ORISUN_PG_POOL_SIZE", "0"),
    ("ORISUN_PG_STARTUP_TIMEOUT", "never"),
    ("ORISUN_SHUTDOWN_TIMEOUT", "-3s"),
    ("ORISUN_GRPC_HOST", ""),
    ("ORISUN_WORKERS", "0"),
    ("ORISUN_WORKERS", "-1"),
    ("ORISUN_WORKERS", "two"),
    ("ORISUN_WORKERS", "1.5"),
    ("ORISUN_WORKERS", "257"),
]


@pytest.mark.parametrize(("variable", "value"), INVALID)
def test_invalid_configuration_raises_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert raised.value.variable == variable
    assert str(raised.value).startswith(variable + ": ")


@pytest.mark.parametrize(("variable", "value"), INVALID)
def test_invalid_configuration_exits_2_with_one_line(variable: str, value: str) -> None:
    result = run_orisun(env={variable: value})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_help_lists_every_variable_with_its_default() -> None:
    result = run_orisun("--help")
    assert result.returncode == 0
    for variable in VARIABLES:
        line = next((ln for ln in result.stdout.splitlines() if ln.split()[:1] == [variable.name]), None)
        assert line is not None, f"{variable.name} missing from --help"
        assert line.endswith(f"[{variable.default}]"), line


def test_version() -> None:
    result = run_orisun("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"orisun {__version__}"


def test_unknown_argument_is_a_usage_error() -> None:
    result = run_orisun("--frobnicate")
    assert result.returncode == 2
    assert "--frobnicate" in result.stderr
