"""Configuration: every ``ORISUN_*`` environment variable, its default and its meaning.

``VARIABLES`` is the single list that ``orisun --help`` prints and the README documents, and the
one place each default is written: ``Settings``' field defaults and ``load_settings`` derive
theirs from it (tests/test_defaults.py holds the README's table to it too). ``load_settings``
reads the environment with environs and turns every mistake into a ``ConfigError`` naming the
variable (the CLI prints it on one line and exits with status 2).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import environs

from orisun.errors import ConfigError
from orisun.logs import LOG_FORMATS, TEXT
from orisun.model import identifier_problem
from orisun.tls import CERT_VARIABLE, CLIENT_CA_VARIABLE, KEY_VARIABLE, TlsFiles
from orisun.tls import load as load_tls

T = TypeVar("T")

# PostgreSQL identifiers: letters, digits and underscores, at most 63 bytes. Quoted with
# psycopg.sql.Identifier anyway; the rule keeps names portable to NATS subjects and logs.
DEFAULT_ADMIN_PASSWORD = "changeit"
DEFAULT_ADMIN_BOUNDARY = "orisun_admin"
_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
# A 5,000-event batch of 1 KB events with tags and metadata is ~10 MB on the wire; gRPC's 4 MB
# default refused it in the earlier implementation.
DEFAULT_GRPC_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
PG_CONNECTION_VARIABLES = (
    "ORISUN_PG_HOST",
    "ORISUN_PG_PORT",
    "ORISUN_PG_USER",
    "ORISUN_PG_PASSWORD",
    "ORISUN_PG_NAME",
)


@dataclass(frozen=True)
class Variable:
    """One ``ORISUN_*`` environment variable as ``orisun --help`` and the README list it."""

    name: str
    default: str
    description: str


VARIABLES: tuple[Variable, ...] = (
    Variable("ORISUN_PG_HOST", "localhost", "PostgreSQL host. Setting any of ORISUN_PG_HOST, _PORT, _USER, "
             "_PASSWORD, _NAME uses that server; with none set Orisun runs an embedded PostgreSQL."),
    Variable("ORISUN_PG_PORT", "5432", "PostgreSQL port."),
    Variable("ORISUN_PG_USER", "postgres", "PostgreSQL user."),
    Variable("ORISUN_PG_PASSWORD", "(none)", "PostgreSQL password."),
    Variable("ORISUN_PG_NAME", "postgres", "PostgreSQL database name."),
    Variable("ORISUN_PG_SCHEMAS", "(only the admin boundary)", "Comma-separated boundaries, each "
             "'boundary:schema' or a bare name (boundary = schema). Requests to other boundaries are refused."),
    Variable("ORISUN_PG_POOL_SIZE", "10", "Maximum PostgreSQL connections in the pool."),
    Variable("ORISUN_PG_STARTUP_TIMEOUT", "30s", "How long start-up waits for PostgreSQL to accept connections."),
    Variable("ORISUN_PG_EMBEDDED_PORT", "0", "Port of the embedded PostgreSQL on 127.0.0.1 (0 = any free port)."),
    Variable("ORISUN_DATA_DIR", "/var/lib/orisun as root, else ~/.local/share/orisun ($XDG_DATA_HOME/orisun); macOS "
             "~/Library/Application Support/orisun; Windows %LOCALAPPDATA%\\orisun",
             "Where the embedded PostgreSQL, the NATS store and the executable's unpacked binaries live."),
    Variable("ORISUN_GRPC_HOST", "0.0.0.0", "Address the gRPC server listens on."),
    Variable("ORISUN_GRPC_PORT", "50051", "gRPC server port (0 = any free port, printed at start)."),
    Variable("ORISUN_WORKERS", "(the number of CPUs available)", "Worker processes serving gRPC, all on "
             "ORISUN_GRPC_PORT. 1 serves everything from one process; with more, a supervisor process runs "
             "NATS, the embedded PostgreSQL and the dashboard, and restarts a worker that dies. Each process "
             "opens up to ORISUN_PG_POOL_SIZE + 7 PostgreSQL connections, plus one per boundary it writes to."),
    Variable("ORISUN_GRPC_MAX_MESSAGE_SIZE", str(DEFAULT_GRPC_MAX_MESSAGE_SIZE),
             "Largest gRPC message accepted or sent, in bytes."),
    Variable("ORISUN_SHUTDOWN_TIMEOUT", "10s", "How long SIGTERM/SIGINT waits for in-flight calls."),
    Variable("ORISUN_NATS_HOST", "127.0.0.1", "Address the embedded NATS server listens on."),
    Variable("ORISUN_NATS_PORT", "4222", "Embedded NATS client port (0 = any free port)."),
    Variable("ORISUN_NATS_STORE_DIR", "$ORISUN_DATA_DIR/nats", "NATS JetStream storage directory."),
    Variable("ORISUN_NATS_MAX_PAYLOAD", "1048576", "Maximum NATS message size in bytes; larger events are refused."),
    Variable("ORISUN_NATS_USERNAME", "orisun", "User that Orisun's NATS clients authenticate as."),
    Variable("ORISUN_NATS_PASSWORD", "(random at each start)", "Password of that NATS user."),
    Variable("ORISUN_PUBSUB_RETENTION", "168h", "How long pub/sub messages are kept for consumers that are away."),
    Variable("ORISUN_PUBSUB_ACK_WAIT", "30s", "After this, a pub/sub message delivered and neither acknowledged "
             "nor given back (a ConsumePubSub client that did not ack, a crashed server) is redelivered; "
             "SubscribeToPubSub acknowledges after 10s, at most half of it."),
    Variable("ORISUN_LIVE_FEED_RETENTION", "1h", "How long the live feed keeps events in JetStream for live "
             "subscribers; older events are read from PostgreSQL."),
    Variable("ORISUN_NATS_CLUSTER_ENABLED", "false", "Join a NATS cluster (clustered mode)."),
    Variable("ORISUN_NATS_CLUSTER_NAME", "orisun-nats-cluster", "Name of the NATS cluster."),
    Variable("ORISUN_NATS_CLUSTER_HOST", "localhost", "Host the NATS cluster listener binds to."),
    Variable("ORISUN_NATS_CLUSTER_PORT", "6222", "Port of the NATS cluster listener."),
    Variable("ORISUN_NATS_CLUSTER_USERNAME", "nats", "User for NATS cluster routes."),
    Variable("ORISUN_NATS_CLUSTER_PASSWORD", "password@1", "Password for NATS cluster routes."),
    Variable("ORISUN_NATS_CLUSTER_TIMEOUT", "60s", "How long a node waits for the cluster at start."),
    Variable("ORISUN_NATS_CLUSTER_ROUTES", "nats://localhost:6333,nats://localhost:6334",
             "Comma-separated routes to the other cluster nodes."),
    Variable("ORISUN_ADMIN_BOUNDARY", DEFAULT_ADMIN_BOUNDARY, "Boundary holding users; added to ORISUN_PG_SCHEMAS "
             "when missing."),
    Variable("ORISUN_ADMIN_USERNAME", "admin", "Admin user created on first start."),
    Variable("ORISUN_ADMIN_PASSWORD", DEFAULT_ADMIN_PASSWORD, "Password of that admin user (change it!)."),
    Variable("ORISUN_ADMIN_PORT", "8991",
             "Admin dashboard port, on ORISUN_GRPC_HOST (0 = any free port, printed at start)."),
    Variable("ORISUN_METRICS_AUTH", "false", "Whether GET /metrics on the admin port asks for HTTP Basic "
             "auth (any valid user); open without it."),
    Variable(CERT_VARIABLE, "(none)", "PEM certificate chain of the server. With ORISUN_TLS_KEY_FILE it "
             "turns on TLS for gRPC and the dashboard, and plaintext is refused. Without TLS, passwords cross "
             "the network in clear."),
    Variable(KEY_VARIABLE, "(none)", "PEM private key (unencrypted) of that certificate."),
    Variable(CLIENT_CA_VARIABLE, "(none)", "PEM CA certificates: gRPC clients must then present a client "
             "certificate signed by one of them (mTLS). Needs ORISUN_TLS_CERT_FILE."),
    Variable("ORISUN_LOGGING_LEVEL", "INFO", "Log level: " + ", ".join(_LOG_LEVELS) + "."),
    Variable("ORISUN_LOGGING_FORMAT", TEXT, "Log format: text (one line per record, for people) or json (one "
             "JSON object per line with time, level, message and logger, for log shippers)."),
)
_DEFAULTS = {v.name: v.default for v in VARIABLES}


def _default_seconds(variable: str) -> float:
    """The default of a duration variable; those in VARIABLES are whole seconds or hours ("30s", "168h")."""
    text = _DEFAULTS[variable]
    return float(int(text[:-1]) * {"s": 1, "h": 3600}[text[-1]])


def _default_int(variable: str) -> int:
    return int(_DEFAULTS[variable])


def _default_routes() -> tuple[str, ...]:
    return tuple(_DEFAULTS["ORISUN_NATS_CLUSTER_ROUTES"].split(","))


@dataclass(frozen=True)
class Settings:
    """Orisun's configuration, validated. Build it with ``load_settings`` or directly in tests."""

    data_dir: Path
    # boundary -> PostgreSQL schema, the admin boundary included.
    boundaries: Mapping[str, str] = field(default_factory=lambda: {DEFAULT_ADMIN_BOUNDARY: DEFAULT_ADMIN_BOUNDARY})
    # None = run the embedded PostgreSQL; else a libpq conninfo for an existing server.
    pg_conninfo: str | None = None
    pg_pool_size: int = _default_int("ORISUN_PG_POOL_SIZE")
    pg_startup_timeout: float = _default_seconds("ORISUN_PG_STARTUP_TIMEOUT")
    pg_embedded_port: int = _default_int("ORISUN_PG_EMBEDDED_PORT")
    grpc_host: str = _DEFAULTS["ORISUN_GRPC_HOST"]
    grpc_port: int = _default_int("ORISUN_GRPC_PORT")
    grpc_max_message_size: int = _default_int("ORISUN_GRPC_MAX_MESSAGE_SIZE")
    # Worker processes serving gRPC; 1 = this process serves (no supervisor). The one default that
    # differs from VARIABLES' on purpose: Settings built in code (tests, embedding) run in one
    # process, while the command line uses every CPU (``available_cpus``).
    workers: int = 1
    shutdown_timeout: float = _default_seconds("ORISUN_SHUTDOWN_TIMEOUT")
    nats_host: str = _DEFAULTS["ORISUN_NATS_HOST"]
    nats_port: int = _default_int("ORISUN_NATS_PORT")
    nats_store_dir: Path | None = None  # None = data_dir / "nats"
    nats_max_payload: int = _default_int("ORISUN_NATS_MAX_PAYLOAD")
    nats_username: str = _DEFAULTS["ORISUN_NATS_USERNAME"]
    nats_password: str | None = None  # None = a random one per start
    pubsub_retention: float = _default_seconds("ORISUN_PUBSUB_RETENTION")
    pubsub_ack_wait: float = _default_seconds("ORISUN_PUBSUB_ACK_WAIT")
    live_feed_retention: float = _default_seconds("ORISUN_LIVE_FEED_RETENTION")
    nats_cluster_enabled: bool = _DEFAULTS["ORISUN_NATS_CLUSTER_ENABLED"] == "true"
    nats_cluster_name: str = _DEFAULTS["ORISUN_NATS_CLUSTER_NAME"]
    nats_cluster_host: str = _DEFAULTS["ORISUN_NATS_CLUSTER_HOST"]
    nats_cluster_port: int = _default_int("ORISUN_NATS_CLUSTER_PORT")
    nats_cluster_username: str = _DEFAULTS["ORISUN_NATS_CLUSTER_USERNAME"]
    nats_cluster_password: str = _DEFAULTS["ORISUN_NATS_CLUSTER_PASSWORD"]
    nats_cluster_timeout: float = _default_seconds("ORISUN_NATS_CLUSTER_TIMEOUT")
    nats_cluster_routes: tuple[str, ...] = _default_routes()
    admin_boundary: str = DEFAULT_ADMIN_BOUNDARY
    admin_username: str = _DEFAULTS["ORISUN_ADMIN_USERNAME"]
    admin_password: str = DEFAULT_ADMIN_PASSWORD
    admin_port: int = _default_int("ORISUN_ADMIN_PORT")
    metrics_auth: bool = _DEFAULTS["ORISUN_METRICS_AUTH"] == "true"  # GET /metrics needs Basic auth
    # None = plaintext gRPC and HTTP.
    tls: TlsFiles | None = None
    logging_level: str = _DEFAULTS["ORISUN_LOGGING_LEVEL"]
    logging_format: str = _DEFAULTS["ORISUN_LOGGING_FORMAT"]  # orisun.logs.LOG_FORMATS

    @property
    def nats_store(self) -> Path:
        return self.nats_store_dir if self.nats_store_dir is not None else self.data_dir / "nats"

    @property
    def admin_schema(self) -> str:
        return self.boundaries[self.admin_boundary]


def default_data_dir() -> Path:
    """A directory an ordinary user can write, or /var/lib/orisun for root.

    Root gets /var/lib/orisun because the embedded PostgreSQL then runs as an unprivileged user,
    who cannot reach anything under root's 0700 home directory.
    """
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "orisun"
    if os.geteuid() == 0:
        return Path("/var/lib/orisun")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "orisun"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "orisun"


# More would only exhaust PostgreSQL's connections and the machine's memory.
MAX_WORKERS = 256


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _workers(env: environs.Env) -> int:
    variable = "ORISUN_WORKERS"
    text = env.str(variable, "").strip()
    if not text:
        return available_cpus()
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(variable, f"{text[:32]!r} is not a whole number of worker processes") from None
    if not 1 <= value <= MAX_WORKERS:
        raise ConfigError(variable, f"must be 1 to {MAX_WORKERS}, got {value}")
    return value


def validate_identifier(value: str, what: str, variable: str) -> str:
    problem = identifier_problem(value, what)
    if problem is not None:
        raise ConfigError(variable, problem)
    return value


def parse_boundaries(text: str, admin_boundary: str) -> dict[str, str]:
    """Parse ORISUN_PG_SCHEMAS ('users:test2,orders' ...) and add the admin boundary."""
    variable = "ORISUN_PG_SCHEMAS"
    boundaries: dict[str, str] = {}
    for entry in (part.strip() for part in text.split(",")) if text.strip() else ():
        if not entry:
            raise ConfigError(variable, "empty entry (two commas in a row, or a trailing comma)")
        boundary, sep, schema = entry.partition(":")
        boundary, schema = boundary.strip(), (schema.strip() if sep else boundary.strip())
        validate_identifier(boundary, "boundary", variable)
        validate_identifier(schema, "schema", variable)
        if boundary in boundaries:
            raise ConfigError(variable, f"boundary {boundary!r} is listed twice")
        boundaries[boundary] = schema
    if admin_boundary not in boundaries:
        boundaries[admin_boundary] = admin_boundary
    owners: dict[str, str] = {}
    for boundary, schema in boundaries.items():
        if schema in owners:
            raise ConfigError(variable, f"schema {schema!r} is used by both boundary {owners[schema]!r} "
                              f"and boundary {boundary!r}; each boundary needs its own schema")
        owners[schema] = boundary
    return boundaries


def _conninfo(env: environs.Env, environ: Mapping[str, str]) -> str | None:
    if not any(name in environ for name in PG_CONNECTION_VARIABLES):
        return None
    from psycopg.conninfo import make_conninfo

    port = _read(env, "ORISUN_PG_PORT", lambda: env.int("ORISUN_PG_PORT", _default_int("ORISUN_PG_PORT")))
    _check_port("ORISUN_PG_PORT", port, allow_zero=False)
    parts = {
        "host": environ.get("ORISUN_PG_HOST") or _DEFAULTS["ORISUN_PG_HOST"],
        "port": str(port),
        "user": environ.get("ORISUN_PG_USER") or _DEFAULTS["ORISUN_PG_USER"],
        "dbname": environ.get("ORISUN_PG_NAME") or _DEFAULTS["ORISUN_PG_NAME"],
    }
    if environ.get("ORISUN_PG_PASSWORD"):
        parts["password"] = environ["ORISUN_PG_PASSWORD"]
    return make_conninfo(**parts)


def _read(env: environs.Env, variable: str, reader: Callable[[], T]) -> T:
    """Run one environs read and turn its error into a ConfigError naming the variable."""
    try:
        return reader()
    except environs.EnvValidationError as exc:
        messages = exc.error_messages
        detail = " ".join(messages) if isinstance(messages, list) else str(messages)
        raw = os.environ.get(variable, "")
        raise ConfigError(variable, f"{raw!r} is invalid: {detail}") from None


def _check_port(variable: str, port: int, *, allow_zero: bool = True) -> int:
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ConfigError(variable, f"port {port} is out of range")
    return port


def _seconds(env: environs.Env, variable: str) -> float:
    default = timedelta(seconds=_default_seconds(variable))
    value: timedelta = _read(env, variable, lambda: env.timedelta(variable, default))
    seconds = value.total_seconds()
    if seconds <= 0:
        raise ConfigError(variable, "must be a positive duration such as 30s or 2m")
    return seconds


def _positive(env: environs.Env, variable: str) -> int:
    value = _read(env, variable, lambda: env.int(variable, _default_int(variable)))
    if value <= 0:
        raise ConfigError(variable, f"must be a positive number, got {value}")
    return value


def _port(env: environs.Env, variable: str) -> int:
    return _check_port(variable, _read(env, variable, lambda: env.int(variable, _default_int(variable))))


def _nonempty(env: environs.Env, variable: str) -> str:
    value: str = env.str(variable, _DEFAULTS[variable])
    if not value:
        raise ConfigError(variable, "must not be empty")
    return value


def _routes(text: str) -> tuple[str, ...]:
    routes = tuple(r.strip() for r in text.split(",") if r.strip())
    for route in routes:
        try:
            parts = urlsplit(route)
            port = parts.port
        except ValueError:
            port = None
            parts = urlsplit("")
        if parts.scheme not in ("nats", "nats-route") or not parts.hostname or port is None:
            raise ConfigError("ORISUN_NATS_CLUSTER_ROUTES", f"{route!r} is not a route like nats://host:6222")
    return routes


def _file(env: environs.Env, variable: str) -> Path | None:
    text: str = env.str(variable, "")
    return Path(text).expanduser().absolute() if text else None


def _tls(env: environs.Env) -> TlsFiles | None:
    """The TLS files: both the certificate and its key, or neither; loaded once to check them."""
    cert, key, client_ca = _file(env, CERT_VARIABLE), _file(env, KEY_VARIABLE), _file(env, CLIENT_CA_VARIABLE)
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError(CLIENT_CA_VARIABLE, f"needs {CERT_VARIABLE} and {KEY_VARIABLE}: client "
                              "certificates are only checked over TLS")
        return None
    if key is None:
        raise ConfigError(KEY_VARIABLE, f"must be set too when {CERT_VARIABLE} is (TLS needs the key)")
    if cert is None:
        raise ConfigError(CERT_VARIABLE, f"must be set too when {KEY_VARIABLE} is (TLS needs the certificate)")
    files = TlsFiles(cert_file=cert, key_file=key, client_ca_file=client_ca)
    load_tls(files)
    return files


def load_settings() -> Settings:
    """Read and validate every ORISUN_* variable; raises ConfigError naming the first bad one."""
    env = environs.Env(expand_vars=False)
    level = env.str("ORISUN_LOGGING_LEVEL", _DEFAULTS["ORISUN_LOGGING_LEVEL"]).upper()
    if level not in _LOG_LEVELS:
        raise ConfigError("ORISUN_LOGGING_LEVEL", f"{level!r} is not one of {', '.join(_LOG_LEVELS)}")
    log_format = env.str("ORISUN_LOGGING_FORMAT", _DEFAULTS["ORISUN_LOGGING_FORMAT"]).strip().lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError("ORISUN_LOGGING_FORMAT", f"{log_format[:32]!r} is not one of {', '.join(LOG_FORMATS)}")

    admin_boundary = validate_identifier(
        env.str("ORISUN_ADMIN_BOUNDARY", DEFAULT_ADMIN_BOUNDARY).strip(), "boundary", "ORISUN_ADMIN_BOUNDARY")
    data_dir_text = env.str("ORISUN_DATA_DIR", "")
    data_dir = Path(data_dir_text).expanduser() if data_dir_text else default_data_dir()
    store_text = env.str("ORISUN_NATS_STORE_DIR", "")
    nats_password = env.str("ORISUN_NATS_PASSWORD", "") or None

    settings = Settings(
        data_dir=data_dir.absolute(),
        boundaries=parse_boundaries(env.str("ORISUN_PG_SCHEMAS", ""), admin_boundary),
        pg_conninfo=_conninfo(env, os.environ),
        pg_pool_size=_positive(env, "ORISUN_PG_POOL_SIZE"),
        pg_startup_timeout=_seconds(env, "ORISUN_PG_STARTUP_TIMEOUT"),
        pg_embedded_port=_port(env, "ORISUN_PG_EMBEDDED_PORT"),
        grpc_host=_nonempty(env, "ORISUN_GRPC_HOST"),
        grpc_port=_port(env, "ORISUN_GRPC_PORT"),
        grpc_max_message_size=_positive(env, "ORISUN_GRPC_MAX_MESSAGE_SIZE"),
        workers=_workers(env),
        shutdown_timeout=_seconds(env, "ORISUN_SHUTDOWN_TIMEOUT"),
        nats_host=_nonempty(env, "ORISUN_NATS_HOST"),
        nats_port=_port(env, "ORISUN_NATS_PORT"),
        nats_store_dir=Path(store_text).expanduser().absolute() if store_text else None,
        nats_max_payload=_positive(env, "ORISUN_NATS_MAX_PAYLOAD"),
        nats_username=_nonempty(env, "ORISUN_NATS_USERNAME"),
        nats_password=nats_password,
        pubsub_retention=_seconds(env, "ORISUN_PUBSUB_RETENTION"),
        pubsub_ack_wait=_seconds(env, "ORISUN_PUBSUB_ACK_WAIT"),
        live_feed_retention=_seconds(env, "ORISUN_LIVE_FEED_RETENTION"),
        nats_cluster_enabled=_read(env, "ORISUN_NATS_CLUSTER_ENABLED",
                                   lambda: env.bool("ORISUN_NATS_CLUSTER_ENABLED",
                                                    Settings.nats_cluster_enabled)),
        nats_cluster_name=_nonempty(env, "ORISUN_NATS_CLUSTER_NAME"),
        nats_cluster_host=_nonempty(env, "ORISUN_NATS_CLUSTER_HOST"),
        nats_cluster_port=_port(env, "ORISUN_NATS_CLUSTER_PORT"),
        nats_cluster_username=_nonempty(env, "ORISUN_NATS_CLUSTER_USERNAME"),
        nats_cluster_password=_nonempty(env, "ORISUN_NATS_CLUSTER_PASSWORD"),
        nats_cluster_timeout=_seconds(env, "ORISUN_NATS_CLUSTER_TIMEOUT"),
        nats_cluster_routes=_routes(env.str("ORISUN_NATS_CLUSTER_ROUTES",
                                            _DEFAULTS["ORISUN_NATS_CLUSTER_ROUTES"])),
        admin_boundary=admin_boundary,
        admin_username=_nonempty(env, "ORISUN_ADMIN_USERNAME"),
        admin_password=_nonempty(env, "ORISUN_ADMIN_PASSWORD"),
        admin_port=_port(env, "ORISUN_ADMIN_PORT"),
        metrics_auth=_read(env, "ORISUN_METRICS_AUTH", lambda: env.bool("ORISUN_METRICS_AUTH", Settings.metrics_auth)),
        tls=_tls(env),
        logging_level=level,
        logging_format=log_format,
    )
    if settings.nats_max_payload > 64 * 1024 * 1024:
        raise ConfigError("ORISUN_NATS_MAX_PAYLOAD", "must be at most 67108864 (64 MiB), the NATS limit")
    return settings


def help_text() -> str:
    """The variable table that ``orisun --help`` prints."""
    width = max(len(v.name) for v in VARIABLES)
    lines = ["environment variables (default in brackets):"]
    for v in VARIABLES:
        lines.append(f"  {v.name.ljust(width)}  {v.description} [{v.default}]")
    return "\n".join(lines)
