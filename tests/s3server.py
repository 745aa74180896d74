"""An S3 endpoint for tests: moto's threaded server on loopback, or a real MinIO from the env.

Not a conftest: import what you need.

* :func:`moto_s3` starts ``ThreadedMotoServer`` on ``127.0.0.1`` (a free port chosen by the
  kernel), plain HTTP or HTTPS with a throw-away CA, and yields a :class:`MotoS3` handle whose
  ``target`` says how to reach it; the server is stopped on exit (also on error).
* :func:`s3_target` yields an :class:`S3Target`: the real MinIO named by
  ``VAULT_TEST_S3_ENDPOINT`` / ``VAULT_TEST_S3_ACCESS_KEY`` / ``VAULT_TEST_S3_SECRET_KEY``
  (optional ``VAULT_TEST_S3_SECURE``, ``VAULT_TEST_S3_BUCKET``, ``VAULT_TEST_S3_REGION``,
  ``VAULT_TEST_S3_CA_FILE``) when those are set, else a moto server started for the duration.
* :func:`make_loopback_tls` writes a CA and a server certificate for 127.0.0.1/localhost.

``ThreadedMotoServer`` itself has no TLS option (its ``__init__`` takes only ip_address, port
and verbose, and ``_server_entry`` calls werkzeug's ``make_server`` without ``ssl_context``),
so :class:`_TlsCapableMotoServer` overrides ``_server_entry`` to build the same werkzeug server
with an ``ssl.SSLContext``. It also remembers the open client connections so :meth:`MotoS3.stop`
really makes the server go away: moto's own ``stop()`` only ends the accept loop, leaving the
listening socket open and in-flight responses streaming to the end.

moto keeps its S3 state in process-global backends, so every moto server in one process sees
the same buckets; tests isolate themselves with unique bucket names (:meth:`S3Target.new_bucket`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from minio import Minio
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.server import ThreadedMotoServer
from urllib3.util import Retry, Timeout
from werkzeug.serving import ThreadedWSGIServer

MOTO_ACCESS_KEY = "vault-test-access"
MOTO_SECRET_KEY = "vault-test-secret"  # moto does not check signatures; any pair works
DEFAULT_REGION = "us-east-1"

ENV_ENDPOINT = "VAULT_TEST_S3_ENDPOINT"
ENV_ACCESS_KEY = "VAULT_TEST_S3_ACCESS_KEY"
ENV_SECRET_KEY = "VAULT_TEST_S3_SECRET_KEY"
ENV_SECURE = "VAULT_TEST_S3_SECURE"
ENV_BUCKET = "VAULT_TEST_S3_BUCKET"
ENV_REGION = "VAULT_TEST_S3_REGION"
ENV_CA_FILE = "VAULT_TEST_S3_CA_FILE"


@dataclass(frozen=True)
class S3Target:
    """How to reach an S3 endpoint: what ``Settings.s3_*`` and ``Minio(...)`` need."""

    endpoint: str  # host:port, no scheme
    access_key: str
    secret_key: str = field(repr=False)
    secure: bool = False
    region: str = DEFAULT_REGION
    ca_file: Path | None = None
    # Per-test bucket names are "<bucket_prefix>-<random>" (S3 names: 3-63 chars, lowercase).
    bucket_prefix: str = "vault-test"
    is_moto: bool = True

    def new_bucket(self) -> str:
        """A bucket name no other test uses (the bucket itself is not created)."""
        return f"{self.bucket_prefix}-{uuid.uuid4().hex[:20]}"

    def http_client(self, *, timeout: float = 10.0, retries: int = 0) -> urllib3.PoolManager:
        """A pool with short timeouts and few retries, trusting ``ca_file`` when set."""
        kwargs: dict[str, Any] = {}
        if self.ca_file is not None:
            kwargs["ca_certs"] = str(self.ca_file)
        return urllib3.PoolManager(
            timeout=Timeout(connect=timeout, read=timeout),
            retries=Retry(total=retries, connect=retries, read=retries, redirect=0),
            maxsize=4,
            cert_reqs="CERT_REQUIRED",
            **kwargs,
        )

    def client(self, *, timeout: float = 10.0, retries: int = 0) -> Minio:
        """A real minio SDK client for this endpoint."""
        return Minio(
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
            http_client=self.http_client(timeout=timeout, retries=retries),
        )

    def settings_overrides(self, *, bucket: str) -> dict[str, Any]:
        """Keyword arguments for ``vault.config.load_settings`` selecting this store."""
        return {
            "store": "minio",
            "s3_endpoint": self.endpoint,
            "s3_access_key": self.access_key,
            "s3_secret_key": self.secret_key,
            "s3_secure": self.secure,
            "s3_region": self.region,
            "s3_ca_file": self.ca_file,
            "s3_bucket": bucket,
        }


# --- TLS material --------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopbackTls:
    """Files of a throw-away CA and a server certificate for 127.0.0.1 and localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """Server-side TLS context presenting the loopback certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certfile=self.cert_file, keyfile=self.key_file)
        return context


def make_loopback_tls(directory: Path) -> LoopbackTls:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (ECDSA P-256) into ``directory``.

    A separate CA (rather than one self-signed leaf) keeps strict X.509 verification happy
    (OpenSSL 3 / Python 3.13 ``VERIFY_X509_STRICT``).
    """
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "BLO Vault test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    tls = LoopbackTls(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
    )
    tls.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls.key_file.chmod(0o600)
    return tls


# --- moto ------------------------------------------------------------------------------------


class _SeveringWSGIServer(ThreadedWSGIServer):
    """werkzeug's threaded server that can cut every open client connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._live_lock:
            self._live.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._live_lock:
            self._live.discard(request)
        super().shutdown_request(request)

    def sever(self) -> None:
        """Cut all open connections: clients see EOF/reset mid-response."""
        with self._live_lock:
            live = list(self._live)
            self._live.clear()
        for conn in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()


class _TlsCapableMotoServer(ThreadedMotoServer):
    """``ThreadedMotoServer`` plus an optional ``ssl_context`` and a real stop."""

    def __init__(self, *, ip_address: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(ip_address=ip_address, port=port, verbose=False)
        self._ssl_context = ssl_context
        self._start_error: BaseException | None = None
        self._severing: _SeveringWSGIServer | None = None

    def _server_entry(self) -> None:
        # Same as moto's, with ssl_context and a server class that can sever connections.
        try:
            app = DomainDispatcherApplication(create_backend_app)
            self._severing = _SeveringWSGIServer(
                self._ip_address,
                self._port,
                app,
                handler=MotoRequestHandler,
                ssl_context=self._ssl_context,
            )
            self._server = self._severing
        except BaseException as exc:
            self._start_error = exc
            self._server_ready_event.set()  # moto's start() would otherwise wait forever
            raise
        self._server_ready_event.set()
        self._severing.serve_forever()

    def start(self) -> None:
        super().start()
        if self._start_error is not None:
            raise RuntimeError("moto server failed to start") from self._start_error

    def stop(self) -> None:
        server = self._severing
        if server is None:
            return
        self._severing = None
        server.shutdown()  # ends serve_forever
        server.server_close()  # closes the listening socket: new connections are refused
        server.sever()  # in-flight responses end abruptly
        if self._thread is not None:
            self._thread.join(timeout=10)


class MotoS3:
    """A running moto S3 server on loopback; ``stop()`` is idempotent."""

    def __init__(self, server: _TlsCapableMotoServer, target: S3Target) -> None:
        self._server = server
        self.target = target

    def stop(self) -> None:
        """Stop serving: refuse new connections and cut the open ones."""
        self._server.stop()


@contextlib.contextmanager
def moto_s3(*, https: bool = False) -> Iterator[MotoS3]:
    """Start moto's S3 on 127.0.0.1 (a free port), over HTTPS if asked; stop it on exit.

    With ``https`` the server presents a certificate from a throw-away CA whose file is
    ``target.ca_file`` (pass it as ``Settings.s3_ca_file`` or to ``S3Target.client()``).
    """
    with contextlib.ExitStack() as stack:
        ssl_context = None
        ca_file = None
        if https:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vault-s3-tls-")))
            tls = make_loopback_tls(tmp)
            ssl_context = tls.server_context()
            ca_file = tls.ca_file
        server = _TlsCapableMotoServer(ip_address="127.0.0.1", port=0, ssl_context=ssl_context)
        server.start()
        stack.callback(server.stop)
        host, port = server.get_host_and_port()
        target = S3Target(
            endpoint=f"{host}:{port}",
            access_key=MOTO_ACCESS_KEY,
            secret_key=MOTO_SECRET_KEY,
            secure=https,
            region=DEFAULT_REGION,
            ca_file=ca_file,
            is_moto=True,
        )
        yield MotoS3(server, target)


def s3_target_from_env(environ: dict[str, str] | None = None) -> S3Target | None:
    """The real S3/MinIO named by ``VAULT_TEST_S3_*``, or None when not configured."""
    env = os.environ if environ is None else environ
    endpoint = env.get(ENV_ENDPOINT, "").strip()
    access_key = env.get(ENV_ACCESS_KEY, "")
    secret_key = env.get(ENV_SECRET_KEY, "")
    if not (endpoint and access_key and secret_key):
        return None
    secure = env.get(ENV_SECURE, "").strip().lower() in {"1", "true", "yes", "on"}
    ca_file = env.get(ENV_CA_FILE, "").strip()
    return S3Target(
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        secure=secure,
        region=env.get(ENV_REGION, "").strip() or DEFAULT_REGION,
        ca_file=Path(ca_file) if ca_file else None,
        bucket_prefix=env.get(ENV_BUCKET, "").strip() or "vault-test",
        is_moto=False,
    )


@contextlib.contextmanager
def s3_target(*, https: bool = False) -> Iterator[S3Target]:
    """A real MinIO from the environment if configured, else moto started (and stopped) here.

    ``https`` only applies to moto; a real MinIO is used as ``VAULT_TEST_S3_SECURE`` says.
    """
    real = s3_target_from_env()
    if real is not None:
        yield real
        return
    with moto_s3(https=https) as server:
        yield server.target
