"""TLS for the gRPC server and the admin dashboard: the PEM files, checked once at configuration
time so that a mistake stops Orisun with one line naming the variable (gRPC itself would only fail
each handshake later, silently for the operator), and what each server needs from them.

Only the standard library's ``ssl`` here: configuration errors must answer without loading grpc.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from orisun.errors import ConfigError

CERT_VARIABLE = "ORISUN_TLS_CERT_FILE"
KEY_VARIABLE = "ORISUN_TLS_KEY_FILE"
CLIENT_CA_VARIABLE = "ORISUN_TLS_CLIENT_CA_FILE"
# Bound how much of a path a message quotes: the messages are one line.
_PATH_SHOWN = 200


@dataclass(frozen=True)
class TlsFiles:
    """Where the server's certificate chain and key are, and the CA whose client certificates gRPC
    requires (None = no client certificates)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class TlsMaterial:
    """The files' contents, loaded and checked. ``repr`` leaves out the private key."""

    files: TlsFiles
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None

    def __repr__(self) -> str:
        return f"TlsMaterial({self.files!r})"


def _shown(path: Path) -> str:
    text = str(path)
    return repr(text if len(text) <= _PATH_SHOWN else "…" + text[-_PATH_SHOWN:])


def _read(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(variable, f"cannot read {_shown(path)}: {exc.strerror or exc}") from None


def _pem_text(data: bytes, path: Path, variable: str, what: str) -> str:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if "-----BEGIN " not in text:
        raise ConfigError(variable, f"{_shown(path)} is not a PEM file (expected {what})")
    return text


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's short reason (``KEY_VALUES_MISMATCH``) in words, without its source location."""
    return str(exc.reason or "unreadable").replace("_", " ").lower()


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """An SSL context for an HTTPS server with the certificate and key of ``files`` (TLS 1.2 or
    later). Raises ConfigError naming the variable when the key cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    encrypted = False

    def password() -> bytes:
        # Called only for an encrypted key. Answer with nothing rather than let OpenSSL prompt on
        # the terminal: Orisun runs unattended.
        nonlocal encrypted
        encrypted = True
        return b""

    try:
        context.load_cert_chain(files.cert_file, files.key_file, password=password)
    except ssl.SSLError as exc:
        if encrypted:
            problem = "is encrypted; Orisun needs an unencrypted key (protect it with file permissions)"
        elif exc.reason == "KEY_VALUES_MISMATCH":
            problem = f"is not the key of the certificate in {CERT_VARIABLE}"
        else:
            problem = f"cannot be used as the key of the certificate in {CERT_VARIABLE} ({_reason(exc)})"
        raise ConfigError(KEY_VARIABLE, f"{_shown(files.key_file)} {problem}") from None
    except OSError as exc:
        raise ConfigError(KEY_VARIABLE, f"cannot read {_shown(files.key_file)}: {exc.strerror or exc}") from None
    return context


def _check_certificates(text: str, path: Path, variable: str) -> None:
    """That ``text`` holds at least one certificate OpenSSL can parse (and nothing broken)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except ssl.SSLError:
        # OpenSSL's reason here is "no start line" even for a damaged certificate: not worth quoting.
        raise ConfigError(variable, f"{_shown(path)} holds no readable PEM certificate "
                          "(-----BEGIN CERTIFICATE----- ...)") from None


def load(files: TlsFiles) -> TlsMaterial:
    """Read and check the files; raises ConfigError naming the variable at fault."""
    cert_chain = _read(files.cert_file, CERT_VARIABLE)
    _check_certificates(_pem_text(cert_chain, files.cert_file, CERT_VARIABLE, "a certificate"),
                        files.cert_file, CERT_VARIABLE)
    private_key = _read(files.key_file, KEY_VARIABLE)
    if "PRIVATE KEY-----" not in _pem_text(private_key, files.key_file, KEY_VARIABLE, "a private key"):
        raise ConfigError(KEY_VARIABLE, f"{_shown(files.key_file)} holds no PEM private key")
    server_context(files)  # the key matches the certificate, and is not encrypted
    client_ca = None
    if files.client_ca_file is not None:
        client_ca = _read(files.client_ca_file, CLIENT_CA_VARIABLE)
        _check_certificates(_pem_text(client_ca, files.client_ca_file, CLIENT_CA_VARIABLE, "CA certificates"),
                            files.client_ca_file, CLIENT_CA_VARIABLE)
    return TlsMaterial(files=files, cert_chain=cert_chain, private_key=private_key, client_ca=client_ca)


def trusts_itself(files: TlsFiles) -> bool:
    """Whether a client that trusts only the certificate file accepts this server: true for a
    self-signed certificate (or a chain file that ends with its root), so that the file itself is
    what ``grpcurl -cacert`` needs. A handshake in memory, no socket."""
    try:
        ours = server_context(files)
        client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_context.check_hostname = False  # the question is trust, not the name
        client_context.load_verify_locations(cafile=files.cert_file)
    except (ConfigError, ssl.SSLError, OSError):
        return False
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_out, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, client_out)
    server = ours.wrap_bio(to_server, server_out, server_side=True)
    sides = [(client, client_out, to_server), (server, server_out, to_client)]
    done: set[int] = set()
    # A TLS 1.3 handshake needs two round trips here; a few more leave room for TLS 1.2.
    for _ in range(8):
        for index, (side, outgoing, peer) in enumerate(sides):
            if index not in done:
                try:
                    side.do_handshake()
                    done.add(index)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    return False
            peer.write(outgoing.read())
        if len(done) == len(sides):
            return True
    return False
