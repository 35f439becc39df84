"""TLS for gRPC and the dashboard: real certificates (a test CA made with trustme), the real grpcurl
with ``-cacert``, Python's gRPC over TLS and mTLS, the dashboard over HTTPS (and in headless
Chromium), plaintext refused on both ports, the printed grpcurl line run verbatim, and every
configuration mistake exiting 2 with one line naming the variable."""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg.conninfo import conninfo_to_dict

from orisun._proto import eventstore_pb2 as pb
from orisun._proto import eventstore_pb2_grpc as pb_grpc
from orisun.cli import grpcurl_hint
from orisun.config import VARIABLES, load_settings
from orisun.errors import ConfigError
from orisun.runtime.postgres import EmbeddedPostgres
from orisun.tls import TlsFiles
from tests.support import (
    ADMIN,
    OrisunProcess,
    ServerThread,
    auth_metadata,
    basic,
    free_port,
    grpcurl_path,
    running_server,
    server_settings,
    wait_for,
)
from tests.support import shared_tmpdir as make_tmpdir

pytestmark = pytest.mark.timeout(120)
TLS_VARIABLES = ("ORISUN_TLS_CERT_FILE", "ORISUN_TLS_KEY_FILE", "ORISUN_TLS_CLIENT_CA_FILE")


# --- Certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A test CA, a server certificate for localhost and 127.0.0.1, and client certificates."""

    dir: Path
    ca: trustme.CA
    ca_file: Path
    cert_file: Path  # the server's certificate chain
    key_file: Path
    client_cert: bytes
    client_key: bytes
    stranger_cert: bytes  # a client certificate from another CA
    stranger_key: bytes

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    @property
    def server_cert_pem(self) -> bytes:
        return self.cert_file.read_bytes()


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    directory = make_tmpdir("orisun-test-tls-")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client.orisun.test")
    stranger = trustme.CA().issue_cert("stranger.orisun.test")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(directory / "server.pem"), append=i > 0)
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    yield Pki(
        dir=directory, ca=ca, ca_file=directory / "ca.pem", cert_file=directory / "server.pem",
        key_file=directory / "server.key",
        client_cert=b"".join(blob.bytes() for blob in client.cert_chain_pems),
        client_key=client.private_key_pem.bytes(),
        stranger_cert=b"".join(blob.bytes() for blob in stranger.cert_chain_pems),
        stranger_key=stranger.private_key_pem.bytes(),
    )
    shutil.rmtree(directory, ignore_errors=True)


def self_signed(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` and 127.0.0.1 (as `openssl req -x509` makes), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


# --- Servers and clients -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(postgres: EmbeddedPostgres, pki: Pki) -> Iterator[ServerThread]:
    with running_server(postgres.conninfo, "test_tls", tls=TlsFiles(pki.cert_file, pki.key_file)) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(postgres: EmbeddedPostgres, pki: Pki) -> Iterator[ServerThread]:
    files = TlsFiles(pki.cert_file, pki.key_file, client_ca_file=pki.ca_file)
    with running_server(postgres.conninfo, "test_mtls", tls=files) as server:
        yield server


def secure_stub(server: ServerThread, root: bytes | None, key: bytes | None = None,
                cert: bytes | None = None) -> tuple[grpc.Channel, pb_grpc.EventStoreStub]:
    credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
    channel = grpc.secure_channel(server.address, credentials)
    return channel, pb_grpc.EventStoreStub(channel)  # type: ignore[no-untyped-call]


def get_events(stub: pb_grpc.EventStoreStub) -> grpc.StatusCode:
    """The status of a GetEvents call as admin."""
    try:
        stub.GetEvents(pb.GetEventsRequest(boundary="orisun_admin"), metadata=auth_metadata(), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def tls_grpcurl(server: ServerThread, *args: str, tls: list[str], data: str | None = None,
                ) -> subprocess.CompletedProcess[str]:
    """The real grpcurl with TLS options ``tls`` (instead of -plaintext) and admin's Basic auth."""
    command = [grpcurl_path(), *tls, "-H", f"Authorization: {basic(*ADMIN)}"]
    if data is not None:
        command += ["-d", "@"]
    command += [server.address, *args]
    return subprocess.run(command, input=data, capture_output=True, text=True, timeout=30)


def https_url(server: ServerThread) -> str:
    return f"https://127.0.0.1:{server.app.dashboard_port}"


def https(server: ServerThread, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", server.app.dashboard_port, context=context, timeout=10)


def trusting(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=pki.ca_pem.decode())
    return context


# --- gRPC over TLS -------------------------------------------------------------------------------


def test_grpcurl_with_cacert_lists_services_and_calls(tls_server: ServerThread, pki: Pki) -> None:
    tls = ["-cacert", str(pki.ca_file)]
    listed = tls_grpcurl(tls_server, "list", tls=tls)
    assert listed.returncode == 0, listed.stderr
    assert "eventstore.EventStore" in listed.stdout.split()

    body = json.dumps({"boundary": "orisun_admin", "stream": {"name": "tls-1", "expected_version": -1},
                       "events": [{"event_id": "6f1d3a52-8a4c-4d55-9d5e-1b7a0d1d2c01", "event_type": "Tested",
                                   "data": "{\"over\": \"tls\"}"}]})
    saved = tls_grpcurl(tls_server, "eventstore.EventStore/SaveEvents", tls=tls, data=body)
    assert saved.returncode == 0, saved.stderr
    assert json.loads(saved.stdout)["log_position"]["prepare_position"] != "0", saved.stdout
    read = tls_grpcurl(tls_server, "eventstore.EventStore/GetEvents", tls=tls,
                       data=json.dumps({"boundary": "orisun_admin", "stream": {"name": "tls-1"}}))
    assert read.returncode == 0, read.stderr
    assert [e["event_type"] for e in json.loads(read.stdout)["events"]] == ["Tested"], read.stdout


def test_grpcurl_that_does_not_trust_the_ca_or_speaks_plaintext_fails(tls_server: ServerThread) -> None:
    untrusted = tls_grpcurl(tls_server, "list", tls=[])  # the system's CAs only
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr, untrusted.stderr
    plaintext = tls_grpcurl(tls_server, "list", tls=["-plaintext"])
    assert plaintext.returncode != 0


def test_python_grpc_over_tls_works_and_plaintext_is_refused(tls_server: ServerThread, pki: Pki) -> None:
    channel, stub = secure_stub(tls_server, pki.ca_pem)
    with channel:
        assert get_events(stub) == grpc.StatusCode.OK
        health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    with tls_server.stub() as plaintext:  # an insecure channel to the same port
        assert get_events(plaintext) == grpc.StatusCode.UNAVAILABLE
    channel, stub = secure_stub(tls_server, None)  # does not trust the test CA
    with channel:
        assert get_events(stub) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_clients_without_a_certificate_of_the_ca(mtls_server: ServerThread, pki: Pki) -> None:
    channel, stub = secure_stub(mtls_server, pki.ca_pem)
    with channel:
        assert get_events(stub) == grpc.StatusCode.UNAVAILABLE
    channel, stub = secure_stub(mtls_server, pki.ca_pem, pki.stranger_key, pki.stranger_cert)
    with channel:
        assert get_events(stub) == grpc.StatusCode.UNAVAILABLE
    channel, stub = secure_stub(mtls_server, pki.ca_pem, pki.client_key, pki.client_cert)
    with channel:
        assert get_events(stub) == grpc.StatusCode.OK
    with mtls_server.stub() as plaintext:
        assert get_events(plaintext) == grpc.StatusCode.UNAVAILABLE


def test_mtls_with_the_real_grpcurl(mtls_server: ServerThread, pki: Pki) -> None:
    (pki.dir / "client.pem").write_bytes(pki.client_cert)
    (pki.dir / "client.key").write_bytes(pki.client_key)
    without = tls_grpcurl(mtls_server, "list", tls=["-cacert", str(pki.ca_file)])
    assert without.returncode != 0
    with_cert = tls_grpcurl(mtls_server, "list", tls=["-cacert", str(pki.ca_file), "-cert", str(pki.dir / "client.pem"),
                                                      "-key", str(pki.dir / "client.key")])
    assert with_cert.returncode == 0, with_cert.stderr
    assert "eventstore.EventStore" in with_cert.stdout.split()


# --- The dashboard over HTTPS ----------------------------------------------------------------------


def test_dashboard_serves_https_with_a_secure_session_cookie(tls_server: ServerThread, pki: Pki) -> None:
    connection = https(tls_server, trusting(pki))
    try:
        connection.request("GET", "/login")
        response = connection.getresponse()
        assert response.status == 200
        assert b"login" in response.read().lower()
        body = json.dumps({"username": ADMIN[0], "password": ADMIN[1]})
        connection.request("POST", "/api/login", body=body, headers={"Content-Type": "application/json",
                                                                      "Origin": https_url(tls_server)})
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        cookie = response.getheader("Set-Cookie") or ""
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert cookie.startswith("orisun_session=") and "secure" in attributes and "httponly" in attributes, cookie
    finally:
        connection.close()


def test_dashboard_refuses_plain_http(tls_server: ServerThread) -> None:
    plain = http.client.HTTPConnection("127.0.0.1", tls_server.app.dashboard_port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/login")
            plain.getresponse().read()
    finally:
        plain.close()


@pytest.mark.parametrize("port", ["grpc", "dashboard"])
def test_tls_older_than_1_2_is_refused(tls_server: ServerThread, pki: Pki, port: str) -> None:
    old = trusting(pki)
    with warnings.catch_warnings():  # deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # else this client could not even offer TLS 1.1
    number = tls_server.app.grpc_port if port == "grpc" else tls_server.app.dashboard_port
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", number), timeout=10) as sock:
        old.wrap_socket(sock, server_hostname="127.0.0.1").close()
    modern = trusting(pki)
    modern.set_alpn_protocols(["h2", "http/1.1"])  # gRPC insists on h2
    with socket.create_connection(("127.0.0.1", number), timeout=10) as sock:
        modern.wrap_socket(sock, server_hostname="127.0.0.1").close()


def test_dashboard_does_not_ask_browsers_for_client_certificates(mtls_server: ServerThread, pki: Pki) -> None:
    """ORISUN_TLS_CLIENT_CA_FILE is for gRPC clients; the dashboard keeps its password login."""
    connection = https(mtls_server, trusting(pki))
    try:
        connection.request("GET", "/login")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


@pytest.mark.browser
def test_dashboard_over_https_in_chromium(tls_server: ServerThread, pki: Pki) -> None:
    """Headless Chromium trusts exactly the server's key (not every certificate), logs in over
    HTTPS, and holds a Secure session cookie."""
    from playwright.sync_api import expect, sync_playwright

    from tests.dashboard_browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, login

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's Chromium", pytrace=False)
    leaf = x509.load_pem_x509_certificate(pki.server_cert_pem)
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pin}"])
        try:
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            login(page, https_url(tls_server))
            expect(page.get_by_test_id("current-user")).to_have_text(ADMIN[0])
            cookies = [c for c in context.cookies() if c["name"] == "orisun_session"]
            assert len(cookies) == 1 and cookies[0]["secure"] and cookies[0]["httpOnly"], cookies
            assert page.url.startswith("https://"), page.url
            assert not errors, errors
            context.close()
        finally:
            browser.close()


# --- The printed grpcurl line ----------------------------------------------------------------------


def test_printed_grpcurl_line_runs_verbatim_against_a_tls_server(database: str, data_dir: Path) -> None:
    cert_file, key_file = self_signed(data_dir)
    pg = conninfo_to_dict(database)
    env = {"ORISUN_DATA_DIR": str(data_dir), "ORISUN_GRPC_PORT": str(free_port()), "ORISUN_NATS_PORT": "0",
           "ORISUN_ADMIN_PORT": "0", "ORISUN_GRPC_HOST": "127.0.0.1",
           "ORISUN_PG_HOST": str(pg["host"]), "ORISUN_PG_PORT": str(pg["port"]), "ORISUN_PG_USER": str(pg["user"]),
           "ORISUN_PG_PASSWORD": str(pg.get("password", "")), "ORISUN_PG_NAME": str(pg["dbname"]),
           "ORISUN_TLS_CERT_FILE": str(cert_file), "ORISUN_TLS_KEY_FILE": str(key_file)}
    process = OrisunProcess(env)
    try:
        process.wait_serving()
        line = wait_for(lambda: next((ln for ln in process.lines if "Try: grpcurl" in ln), None), 10,
                        "the printed grpcurl line")
        command = shlex.split(line.split("Try: ", 1)[1])
        assert "-plaintext" not in command and command[1:3] == ["-cacert", str(cert_file)], command
        result = subprocess.run([grpcurl_path(), *command[1:]], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert "eventstore.EventStore" in result.stdout.split()
        assert "Admin dashboard on https://localhost:" in process.output
    finally:
        process.kill()


def test_grpcurl_hint_names_what_the_client_needs(pki: Pki, tmp_path: Path) -> None:
    plain = server_settings(tmp_path, None)
    assert "-plaintext" in grpcurl_hint(plain, 5005) and "localhost:5005 list" in grpcurl_hint(plain, 5005)
    # Signed by a CA Orisun does not know: the user must name it.
    by_ca = replace(plain, tls=TlsFiles(pki.cert_file, pki.key_file))
    hint = grpcurl_hint(by_ca, 5005)
    assert "-plaintext" not in hint and "-cacert <" in hint and str(pki.cert_file) not in hint, hint
    mutual = replace(plain, tls=TlsFiles(pki.cert_file, pki.key_file, client_ca_file=pki.ca_file))
    hint = grpcurl_hint(mutual, 5005)
    assert "-cert <" in hint and "-key <" in hint, hint


# --- Configuration ---------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    for name in list(os.environ):
        if name.startswith("ORISUN_"):
            monkeypatch.delenv(name)

    def setenv(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return setenv


def test_tls_is_off_by_default_and_on_with_cert_and_key(clean_env: Callable[..., None], pki: Pki) -> None:
    assert load_settings().tls is None
    clean_env(ORISUN_TLS_CERT_FILE=str(pki.cert_file), ORISUN_TLS_KEY_FILE=str(pki.key_file))
    assert load_settings().tls == TlsFiles(pki.cert_file, pki.key_file)
    clean_env(ORISUN_TLS_CLIENT_CA_FILE=str(pki.ca_file))
    assert load_settings().tls == TlsFiles(pki.cert_file, pki.key_file, pki.ca_file)


def _bad_files(pki: Pki, directory: Path) -> dict[str, tuple[dict[str, str], str]]:
    """name -> (environment, the variable the error must name)."""
    garbage = directory / "garbage.pem"
    garbage.write_text("this is not PEM\n")
    truncated = directory / "truncated.pem"
    truncated.write_text("-----BEGIN CERTIFICATE-----\nMIIBxzCCAW2gAwIBAgIUQ\n-----END CERTIFICATE-----\n")
    other_cert, other_key = self_signed(directory, "other.test")
    encrypted = directory / "encrypted.key"
    key = serialization.load_pem_private_key(pki.key_file.read_bytes(), password=None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    cert, key_file, ca = str(pki.cert_file), str(pki.key_file), str(pki.ca_file)
    missing = str(directory / "missing.pem")
    return {
        "cert-without-key": ({"ORISUN_TLS_CERT_FILE": cert}, "ORISUN_TLS_KEY_FILE"),
        "key-without-cert": ({"ORISUN_TLS_KEY_FILE": key_file}, "ORISUN_TLS_CERT_FILE"),
        "client-ca-without-tls": ({"ORISUN_TLS_CLIENT_CA_FILE": ca}, "ORISUN_TLS_CLIENT_CA_FILE"),
        "missing-cert": ({"ORISUN_TLS_CERT_FILE": missing, "ORISUN_TLS_KEY_FILE": key_file}, "ORISUN_TLS_CERT_FILE"),
        "missing-key": ({"ORISUN_TLS_CERT_FILE": cert, "ORISUN_TLS_KEY_FILE": missing}, "ORISUN_TLS_KEY_FILE"),
        "cert-is-a-directory": ({"ORISUN_TLS_CERT_FILE": str(directory), "ORISUN_TLS_KEY_FILE": key_file},
                                "ORISUN_TLS_CERT_FILE"),
        "garbage-cert": ({"ORISUN_TLS_CERT_FILE": str(garbage), "ORISUN_TLS_KEY_FILE": key_file},
                         "ORISUN_TLS_CERT_FILE"),
        "truncated-cert": ({"ORISUN_TLS_CERT_FILE": str(truncated), "ORISUN_TLS_KEY_FILE": key_file},
                           "ORISUN_TLS_CERT_FILE"),
        "key-as-cert": ({"ORISUN_TLS_CERT_FILE": key_file, "ORISUN_TLS_KEY_FILE": key_file}, "ORISUN_TLS_CERT_FILE"),
        "garbage-key": ({"ORISUN_TLS_CERT_FILE": cert, "ORISUN_TLS_KEY_FILE": str(garbage)}, "ORISUN_TLS_KEY_FILE"),
        "cert-as-key": ({"ORISUN_TLS_CERT_FILE": cert, "ORISUN_TLS_KEY_FILE": cert}, "ORISUN_TLS_KEY_FILE"),
        "key-of-another-cert": ({"ORISUN_TLS_CERT_FILE": cert, "ORISUN_TLS_KEY_FILE": str(other_key)},
                                "ORISUN_TLS_KEY_FILE"),
        "encrypted-key": ({"ORISUN_TLS_CERT_FILE": cert, "ORISUN_TLS_KEY_FILE": str(encrypted)},
                          "ORISUN_TLS_KEY_FILE"),
        "garbage-client-ca": ({"ORISUN_TLS_CERT_FILE": cert, "ORISUN_TLS_KEY_FILE": key_file,
                               "ORISUN_TLS_CLIENT_CA_FILE": str(garbage)}, "ORISUN_TLS_CLIENT_CA_FILE"),
        "missing-client-ca": ({"ORISUN_TLS_CERT_FILE": cert, "ORISUN_TLS_KEY_FILE": key_file,
                               "ORISUN_TLS_CLIENT_CA_FILE": missing}, "ORISUN_TLS_CLIENT_CA_FILE"),
        "other-cert-with-our-key": ({"ORISUN_TLS_CERT_FILE": str(other_cert), "ORISUN_TLS_KEY_FILE": key_file},
                                    "ORISUN_TLS_KEY_FILE"),
    }


BAD = ["cert-without-key", "key-without-cert", "client-ca-without-tls", "missing-cert", "missing-key",
       "cert-is-a-directory", "garbage-cert", "truncated-cert", "key-as-cert", "garbage-key", "cert-as-key",
       "key-of-another-cert", "encrypted-key", "garbage-client-ca", "missing-client-ca", "other-cert-with-our-key"]


@pytest.mark.parametrize("case", BAD)
def test_bad_tls_configuration_is_an_error_naming_the_variable(
    clean_env: Callable[..., None], pki: Pki, tmp_path: Path, case: str
) -> None:
    env, variable = _bad_files(pki, tmp_path)[case]
    clean_env(**env)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert raised.value.variable == variable, str(raised.value)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 400, message
    assert "Traceback" not in message and "SSLError" not in message and "ssl.c" not in message, message
    assert HINTS.get(case, "") in message, message


# What the message must say where the variable alone would leave the operator guessing.
HINTS = {"missing-cert": "No such file", "cert-is-a-directory": "directory", "garbage-cert": "not a PEM file",
         "truncated-cert": "no readable PEM certificate", "cert-as-key": "no PEM private key",
         "key-of-another-cert": "is not the key of the certificate", "encrypted-key": "encrypted",
         "other-cert-with-our-key": "is not the key of the certificate"}


@pytest.mark.parametrize("case", ["cert-without-key", "garbage-cert", "key-of-another-cert", "encrypted-key"])
def test_bad_tls_configuration_exits_2_with_one_line(pki: Pki, tmp_path: Path, case: str) -> None:
    env, variable = _bad_files(pki, tmp_path)[case]
    # Were the TLS variables ignored, this start would fail (exit 1) on the unreachable PostgreSQL
    # within a second, with nothing left running.
    base = {"ORISUN_DATA_DIR": str(tmp_path / "data"), "ORISUN_GRPC_PORT": "0", "ORISUN_NATS_PORT": "0",
            "ORISUN_ADMIN_PORT": "0", "ORISUN_PG_HOST": "127.0.0.1", "ORISUN_PG_PORT": str(free_port()),
            "ORISUN_PG_STARTUP_TIMEOUT": "1s"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORISUN_")}
    result = subprocess.run([sys.executable, "-m", "orisun"], env={**clean, **base, **env}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_help_explains_the_tls_variables() -> None:
    result = subprocess.run([sys.executable, "-m", "orisun", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for name in TLS_VARIABLES:
        assert name in result.stdout
    described = {v.name: v.description for v in VARIABLES}
    assert "client certificate" in described["ORISUN_TLS_CLIENT_CA_FILE"].lower()


def test_plaintext_beyond_loopback_is_warned_about(start_server: Callable[..., ServerThread], pki: Pki) -> None:
    from loguru import logger

    warnings_seen: list[str] = []
    sink = logger.add(lambda message: warnings_seen.append(str(message)), level="WARNING")
    try:
        # One after another: they share the test's data dir.
        start_server(grpc_host="0.0.0.0").stop()
        start_server(grpc_host="127.0.0.1").stop()  # loopback: nothing crosses a network
        start_server(grpc_host="0.0.0.0", tls=TlsFiles(pki.cert_file, pki.key_file)).stop()
    finally:
        logger.remove(sink)
    about_tls = [line for line in warnings_seen if "TLS is off" in line]
    assert len(about_tls) == 1 and "in clear" in about_tls[0], warnings_seen
