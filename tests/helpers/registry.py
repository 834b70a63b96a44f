"""Real registries for the tests: Debian's docker-registry in three set-ups, a token server, a fault proxy.

Everything listens on 127.0.0.1 on free ports and is stopped by the fixtures
in tests/conftest.py. Nothing here is mocked: the registry is CNCF
distribution, the token server signs real JWTs the registry verifies, the
proxy forwards real bytes and breaks them on purpose.
"""

from __future__ import annotations

import base64
import datetime
import fcntl
import hashlib
import http.server
import ipaddress
import json
import os
import re
import select
import shutil
import socket
import ssl
import struct
import subprocess
import termios
import threading
import time
import typing as t
import urllib.parse
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from helpers.loopback import LoopbackListener

REGISTRY_BINARY = "docker-registry"
USERNAME = "pusher"
# Distinctive on purpose: tests scan every output for it.
PASSWORD = "s3cret-Pa55word-n0t-in-logs"
TOKEN_SERVICE = "ironcore-test-registry"
TOKEN_ISSUER = "ironcore-test-token-issuer"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d" % (process.returncode, port))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on 127.0.0.1:%d after %ss" % (port, timeout))


# ---- certificates ---------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as stream:
        stream.write(data)
    return path


@dataclass
class TestPki:
    """A CA and a server certificate for IP:127.0.0.1, as PEM files in one directory."""

    directory: str
    ca_cert: str
    server_cert: str
    server_key: str
    cert_dir: str  # a directory holding only ca.crt, the way skopeo's --cert-dir wants it

    @classmethod
    def create(cls, directory: str, dns_names: t.Sequence[str] = ()) -> TestPki:
        """With `dns_names`, the server certificate names only those (and not 127.0.0.1)."""
        os.makedirs(directory, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("ironcore test CA"))
            .issuer_name(_name("ironcore test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = (
            x509.CertificateBuilder()
            .subject_name(_name(dns_names[0] if dns_names else "127.0.0.1"))
            .issuer_name(ca.subject)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(name) for name in dns_names]
                    if dns_names
                    else [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        ca_path = _write(os.path.join(directory, "ca.pem"), ca.public_bytes(pem))
        cert_dir = os.path.join(directory, "certs.d")
        os.makedirs(cert_dir, exist_ok=True)
        shutil.copy(ca_path, os.path.join(cert_dir, "ca.crt"))
        return cls(
            directory=directory,
            ca_cert=ca_path,
            server_cert=_write(os.path.join(directory, "server.pem"), server.public_bytes(pem)),
            server_key=_write(
                os.path.join(directory, "server.key"),
                server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            ),
            cert_dir=cert_dir,
        )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_cert)


# ---- token server ---------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_key_id(public_key: t.Any) -> str:
    """The key ID distribution computes for a trusted key (libtrust's format)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class TokenServer:
    """The docker token protocol: Basic credentials in, an RS256 JWT the registry trusts out."""

    def __init__(self, directory: str, pki: TestPki, username: str = USERNAME, password: str = PASSWORD):
        self.username = username
        self.password = password
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("ironcore test token signer"))
            .issuer_name(_name("ironcore test token signer"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .sign(self.key, hashes.SHA256())
        )
        self.root_cert = _write(
            os.path.join(directory, "token-signer.pem"), cert.public_bytes(serialization.Encoding.PEM)
        )
        self.key_id = libtrust_key_id(self.key.public_key())
        self.requests: list[dict[str, t.Any]] = []
        self.token_lifetime = 300
        # Tokens still to issue with pull access only, whatever was asked:
        # lets a test make the registry refuse a cached token.
        self.pull_only_tokens = 0
        # Answers still to pad beyond what a client should read (2 MiB of JSON).
        self.oversized_answers = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self)

            def log_message(self, *args: t.Any) -> None:
                pass

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.socket = pki.server_context().wrap_socket(self.httpd.socket, server_side=True)
        self.realm = "https://127.0.0.1:%d/token" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(request.path).query)
        authorization = request.headers.get("Authorization", "")
        user = None
        if authorization.startswith("Basic "):
            name, _colon, secret = base64.b64decode(authorization[6:]).decode("utf-8", "replace").partition(":")
            if name == self.username and secret == self.password:
                user = name
        scopes = [scope for value in query.get("scope", []) for scope in value.split(" ") if scope]
        self.requests.append({"user": user, "scopes": scopes, "authorization": bool(authorization)})
        if user is None:
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
            request.send_response(401)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
            return
        if self.pull_only_tokens > 0:
            self.pull_only_tokens -= 1
            scopes = [scope.rsplit(":", 1)[0] + ":pull" for scope in scopes]
        answer = {"token": self.sign(user, scopes), "expires_in": self.token_lifetime}
        if self.oversized_answers > 0:
            self.oversized_answers -= 1
            answer["padding"] = "x" * (2 * 1024 * 1024)
        body = json.dumps(answer).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def sign(self, subject: str, scopes: t.Sequence[str]) -> str:
        access = []
        for scope in scopes:
            kind, _colon, rest = scope.partition(":")
            name, _colon, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self.key_id}
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + self.token_lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": base64.b16encode(os.urandom(8)).decode(),
            "access": access,
        }
        signing_input = "%s.%s" % (_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()))
        signature = self.key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- registry -------------------------------------------------------------


@dataclass
class Registry:
    """One running docker-registry and what a test needs to reach it."""

    name: str
    host: str
    storage: str
    registry_args: dict[str, t.Any]
    skopeo_args: list[str]
    env: dict[str, str]
    process: subprocess.Popen
    log_path: str
    pki: TestPki | None = None
    token_server: TokenServer | None = None
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def skopeo_flags(self, prefix: str = "") -> list[str]:
        """skopeo flags for this registry; prefix "src-" or "dest-" for `skopeo copy`."""
        flags = ["--%stls-verify=%s" % (prefix, "true" if self.tls else "false")]
        if self.pki is not None:
            flags.append("--%scert-dir=%s" % (prefix, self.pki.cert_dir))
        if self.username:
            flags.append("--%screds=%s:%s" % (prefix, self.username, self.password))
        else:
            flags.append("--%sno-creds" % prefix if prefix else "--no-creds")
        return flags

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as stream:
                return stream.read()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.token_server is not None:
            self.token_server.stop()


def _config_yaml(
    port: int, storage: str, tls: TestPki | None, auth: dict[str, t.Any] | None, delete: bool = True
) -> str:
    # JSON is YAML: no YAML library needed to write the registry's config.
    config: dict[str, t.Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": storage},
            # storage.delete.enabled (REGISTRY_STORAGE_DELETE_ENABLED): without it, manifest DELETEs are refused.
            "delete": {"enabled": delete},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": "127.0.0.1:%d" % port, "secret": base64.b16encode(os.urandom(16)).decode()},
    }
    if tls is not None:
        config["http"]["tls"] = {"certificate": tls.server_cert, "key": tls.server_key}
    if auth:
        config["auth"] = auth
    return json.dumps(config, indent=2)


def start_registry(
    name: str, directory: str, tls: bool = False, auth: str | None = None, delete: bool = True
) -> Registry:
    """Start docker-registry: auth None (anonymous), "htpasswd" (Basic) or "token"; delete=False refuses deletes."""
    if shutil.which(REGISTRY_BINARY) is None:
        raise RuntimeError(
            "%s is not installed: run `make system-deps` (Debian package docker-registry)" % REGISTRY_BINARY
        )
    os.makedirs(directory, exist_ok=True)
    storage = os.path.join(directory, "storage")
    os.makedirs(storage, exist_ok=True)
    pki = TestPki.create(os.path.join(directory, "pki")) if tls else None
    token_server = None
    auth_config: dict[str, t.Any] | None = None
    if auth == "htpasswd":
        entry = subprocess.run(["htpasswd", "-Bbn", USERNAME, PASSWORD], check=True, capture_output=True, text=True)
        htpasswd = _write(os.path.join(directory, "htpasswd"), entry.stdout.strip().encode() + b"\n")
        auth_config = {"htpasswd": {"realm": "ironcore-test", "path": htpasswd}}
    elif auth == "token":
        assert pki is not None, "the token set-up serves its tokens over TLS"
        token_server = TokenServer(directory, pki)
        auth_config = {
            "token": {
                "realm": token_server.realm,
                "service": TOKEN_SERVICE,
                "issuer": TOKEN_ISSUER,
                "rootcertbundle": token_server.root_cert,
            }
        }
    port = free_port()
    config = _write(
        os.path.join(directory, "config.yml"), _config_yaml(port, storage, pki, auth_config, delete).encode()
    )
    log_path = os.path.join(directory, "registry.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", config], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        wait_for_port(port, process)
    except RuntimeError:
        with open(log_path, encoding="utf-8", errors="replace") as stream:
            raise RuntimeError("docker-registry did not start:\n" + stream.read()[-3000:]) from None
    registry_args: dict[str, t.Any] = {"plain_http": not tls}
    if pki is not None:
        registry_args["ca_cert"] = pki.ca_cert
    registry = Registry(
        name=name,
        host="127.0.0.1:%d" % port,
        storage=storage,
        registry_args=registry_args,
        skopeo_args=[],
        env={},
        process=process,
        log_path=log_path,
        pki=pki,
        token_server=token_server,
        tls=tls,
    )
    if auth:
        registry.username, registry.password = USERNAME, PASSWORD
        registry_args.update(username=USERNAME, password=PASSWORD)
    registry.skopeo_args = registry.skopeo_flags()
    return registry


def blob_data_path(storage: str, digest: str) -> str:
    """Where docker-registry's filesystem driver keeps a blob's bytes."""
    hex_digest = digest.split(":", 1)[1]
    return os.path.join(storage, "docker", "registry", "v2", "blobs", "sha256", hex_digest[:2], hex_digest, "data")


# ---- fault proxy ----------------------------------------------------------

FAULT_ACTIONS = (
    "status",
    "reset",
    "stall",
    "reset_response",
    "pause_response",
    "redirect",
    "drop_header",
    "pad_response",
    "throttle",
)


@dataclass
class Fault:
    """Break matching requests: answer `status`, reset, stall, reset the response midway, or redirect.

    `reset` forwards `after_bytes` of the request body, then resets both
    connections; `reset_response` forwards the request and `after_bytes` of
    the answer, then resets; `pause_response` forwards `after_bytes` of the
    answer, holds the rest back for `seconds` (or until the test sets `release`, when given), then forwards it;
    `drop_header` forwards the request without its `header` (a `Range` the registry then never sees);
    `pad_response` forwards a 2xx answer without its `Content-Length` (its body then ends when the connection
    closes) and sends `extra_bytes` of junk after the body, counting in `padded` how many of them went out before
    the client hung up. `throttle` forwards both ways at no more than `rate` bytes a second (a slow link,
    for transfers that must last a few seconds). `times` matching requests are broken (-1: all), after
    letting `skip` matching requests through. `redirect` answers
    `status` (307 unless given otherwise) with `Location: <location><path>`.
    """

    action: str
    method: str | None = None
    path: str = ""
    status: int = 503
    times: int = 1
    skip: int = 0
    after_bytes: int = 0
    seconds: float = 60.0
    location: str = ""
    header: str = ""
    extra_bytes: int = 0
    rate: int = 0
    release: threading.Event | None = None
    hits: int = 0
    seen: int = 0
    padded: int = 0

    def __post_init__(self) -> None:
        if self.action not in FAULT_ACTIONS:
            raise ValueError("unknown fault action %r" % self.action)

    def claim(self, method: str, path: str) -> bool:
        if self.method and self.method != method:
            return False
        if self.path and not re.search(self.path, path):
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times >= 0 and self.hits >= self.times:
            return False
        self.hits += 1
        return True


_ERROR_CODES = {429: "TOOMANYREQUESTS", 500: "UNKNOWN", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "UNAVAILABLE"}


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: what a crashed peer or a middlebox does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _receive(sock: socket.socket) -> bytes | None:
    """What a non-blocking socket has (b"" at EOF), or None when nothing yet."""
    try:
        return sock.recv(1024 * 1024)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return None


def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            select.select([], [sock], [], 0.5)
            continue
        view = view[sent:]


def _wait_until_sent(sock: socket.socket, limit: float = 10.0) -> None:
    """Wait until the peer has acknowledged every byte sent, so that `after_bytes` really arrive.

    A reset discards what still sits in the send queue; without this, how much
    of the answer a slow client gets before the reset would be a matter of luck.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return
        if unsent == 0:
            return
        time.sleep(0.01)


# The first byte of a TLS ClientHello record.
TLS_HANDSHAKE = b"\x16"


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The request or answer head and what came after it; (b"", b"") when there is none to read."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
        if data.startswith(TLS_HANDSHAKE):
            # A TLS hello to a plain-HTTP proxy (skopeo tries https first): closed at once, as a plain
            # registry's 400 would be, so the client falls back to http now, not after its 10 s handshake timeout.
            return b"", b""
        if len(data) > 1024 * 1024:
            return b"", b""
    head, _blank, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


@dataclass
class FaultProxy(LoopbackListener):
    """HTTP(S) proxy in front of one registry, one upstream connection per request."""

    target: Registry
    faults: list[Fault] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)
    # (method, path, request headers with lower-case names), in the order of `log`.
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.upstream_port = int(self.target.host.rsplit(":", 1)[1])
        self.server_context = self.target.pki.server_context() if self.target.pki else None
        self.client_context = self.target.pki.client_context() if self.target.pki else None
        self.registry_args = dict(self.target.registry_args)
        self.skopeo_args = list(self.target.skopeo_args)
        self.env = dict(self.target.env)
        self.storage = self.target.storage
        self._listen(64)

    # test-facing API
    def add(self, action: str, **kwargs: t.Any) -> Fault:
        fault = Fault(action, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.log.clear()
            self.requests.clear()

    def _match(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.claim(method, path):
                    return fault
        return None

    def _handle(self, client: socket.socket) -> None:
        upstream = None
        try:
            client.settimeout(120)
            if self.server_context is not None:
                client = self.server_context.wrap_socket(client, server_side=True)
            head, rest = _read_head(client)
            if not head:
                client.close()
                return
            request_line, _crlf, header_text = head.decode("latin-1").partition("\r\n")
            method, path = request_line.split(" ")[:2]
            headers = {}
            for line in header_text.split("\r\n"):
                if ":" in line:
                    key, _colon, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
            fault = self._match(method, path)
            with self.lock:
                self.log.append((method, path, fault.action if fault else "forward"))
                self.requests.append((method, path, headers))
            if fault is not None and fault.action == "status":
                self._drain(client, rest, int(headers.get("content-length", "0") or 0))
                self._answer(client, fault.status)
                client.close()
                return
            if fault is not None and fault.action == "redirect":
                self._drain(client, rest, int(headers.get("content-length", "0") or 0))
                status = fault.status if fault.status in (301, 302, 303, 307, 308) else 307
                client.sendall(
                    (
                        "HTTP/1.1 %d Redirect\r\nLocation: %s%s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        % (status, fault.location, path)
                    ).encode("latin-1")
                )
                client.close()
                return
            if fault is not None and fault.action == "stall":
                self.stopping.wait(fault.seconds)
                _reset(client)
                return
            if fault is not None and fault.action == "reset" and fault.after_bytes <= 0:
                _reset(client)
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=120)
            if self.client_context is not None:
                upstream = self.client_context.wrap_socket(upstream, server_hostname="127.0.0.1")
            if fault is not None and fault.action == "drop_header":
                head = self._without_header(head, fault.header)
            upstream.sendall(self._rewrite_head(head))
            if fault is not None and fault.action == "reset":
                self._forward_then_reset(client, upstream, rest, fault.after_bytes)
                return
            if fault is not None and fault.action == "pad_response":
                self._relay_padded(client, upstream, rest, fault)
                return
            if fault is not None and fault.action == "pause_response":
                stopping = fault.release or self.stopping
                self._relay(client, upstream, rest, fault.after_bytes, pause=fault.seconds, stopping=stopping)
                return
            if fault is not None and fault.action == "throttle":
                self._relay(client, upstream, rest, None, rate=fault.rate)
                return
            limit = fault.after_bytes if fault is not None and fault.action == "reset_response" else None
            self._relay(client, upstream, rest, limit)
        except (OSError, ValueError):
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass

    @staticmethod
    def _rewrite_head(head: bytes) -> bytes:
        """One request per upstream connection, so every request passes the fault rules."""
        lines = [line for line in head[:-4].split(b"\r\n") if not line.lower().startswith(b"connection:")]
        return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"

    @staticmethod
    def _without_header(head: bytes, name: str) -> bytes:
        prefix = name.lower().encode("latin-1") + b":"
        return b"\r\n".join(line for line in head.split(b"\r\n") if not line.lower().startswith(prefix))

    @staticmethod
    def _drain(client: socket.socket, rest: bytes, length: int) -> None:
        remaining = length - len(rest)
        while remaining > 0:
            chunk = client.recv(min(remaining, 1024 * 1024))
            if not chunk:
                return
            remaining -= len(chunk)

    @staticmethod
    def _answer(client: socket.socket, status: int) -> None:
        code = _ERROR_CODES.get(status, "UNKNOWN")
        body = json.dumps({"errors": [{"code": code, "message": "injected by the test fault proxy"}]}).encode()
        reason = http.server.BaseHTTPRequestHandler.responses.get(status, ("Error",))[0]
        head = "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n" % (
            status,
            reason,
            len(body),
        )
        if status == 429:
            head += "Retry-After: 1\r\n"
        client.sendall(head.encode("latin-1") + b"\r\n" + body)

    @staticmethod
    def _relay(
        client: socket.socket,
        upstream: socket.socket,
        first: bytes,
        limit: int | None,
        pause: float | None = None,
        stopping: threading.Event | None = None,
        rate: int = 0,
    ) -> None:
        """Copy both ways in one thread, so a reset never races a reader blocked in another.

        At `limit` bytes of the answer: reset both, or with `pause`, wait that long and go on.
        With `rate`, the bytes moved (both ways together) never run ahead of `rate` a second.

        Non-blocking: with TLS, a readable socket may hold only a session
        ticket, and a blocking read would then stall the other direction.
        """
        if first:
            upstream.sendall(first)
        for sock in (client, upstream):
            sock.setblocking(False)
        client_open = True
        sent_back = 0
        idle_since = started = time.monotonic()
        relayed = 0
        while time.monotonic() - idle_since < 120:
            moved = False
            for sock in (client, upstream) if client_open else (upstream,):
                data = _receive(sock)
                if data is None:
                    continue
                moved = True
                if rate > 0:
                    relayed += len(data)
                    time.sleep(max(0.0, started + relayed / rate - time.monotonic()))
                if sock is client:
                    if data:
                        _send_all(upstream, data)
                    else:
                        client_open = False
                    continue
                if not data:
                    return
                if limit is not None and sent_back + len(data) >= limit:
                    _send_all(client, data[: max(limit - sent_back, 0)])
                    _wait_until_sent(client)
                    if pause is not None and stopping is not None:
                        stopping.wait(pause)
                        _send_all(client, data[max(limit - sent_back, 0) :])
                        sent_back += len(data)
                        limit = None
                        idle_since = time.monotonic()
                        continue
                    _reset(client)
                    _reset(upstream)
                    return
                _send_all(client, data)
                sent_back += len(data)
            if moved:
                idle_since = time.monotonic()
            else:
                select.select([client, upstream] if client_open else [upstream], [], [], 0.5)

    def _relay_padded(self, client: socket.socket, upstream: socket.socket, first: bytes, fault: Fault) -> None:
        """A server that sends more than it declares: the answer's body, then `extra_bytes` of junk, then close."""
        if first:
            upstream.sendall(first)
        head, body = _read_head(upstream)
        if not head:
            return
        if not re.match(rb"HTTP/1\.[01] 2\d\d ", head):
            client.sendall(head + body)
            self._relay(client, upstream, b"", None)
            return
        head = self._without_header(self._without_header(head, "content-length"), "connection")
        client.sendall(head[:-2] + b"Connection: close\r\n\r\n" + body)
        while True:
            data = upstream.recv(1024 * 1024)
            if not data:
                break
            client.sendall(data)
        junk = b"J" * 65536
        while fault.padded < fault.extra_bytes and not self.stopping.is_set():
            piece = junk[: fault.extra_bytes - fault.padded]
            client.sendall(piece)  # raises once the client has closed: it stopped reading
            fault.padded += len(piece)

    @staticmethod
    def _forward_then_reset(client: socket.socket, upstream: socket.socket, rest: bytes, after: int) -> None:
        forwarded = 0
        data = rest
        while forwarded < after:
            if not data:
                data = client.recv(1024 * 1024)
                if not data:
                    break
            piece = data[: after - forwarded]
            upstream.sendall(piece)
            forwarded += len(piece)
            data = data[len(piece) :]
        _reset(client)
        _reset(upstream)


# ---- scripted servers -------------------------------------------------------


@dataclass
class Recorded:
    """One request a ScriptedServer received (header names lower-case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = t.Tuple[int, t.Dict[str, str], t.Union[bytes, t.Iterable[bytes]]]


def endless(block: bytes = b"x" * 65536, limit: int = 1024 * 1024 * 1024) -> t.Iterator[bytes]:
    """A body that does not end for any sane client (stops at `limit` so a broken client cannot hang a test)."""
    sent = 0
    while sent < limit:
        yield block
        sent += len(block)


class ScriptedServer:
    """A small hostile (or helpful) HTTP(S) server on 127.0.0.1: `answer(request)` decides, every request is kept.

    An iterable body is sent without Content-Length until it ends or the
    client goes away; `sent` counts the body bytes written.
    """

    def __init__(self, answer: t.Callable[[Recorded], Answer], pki: TestPki | None = None):
        self.answer = answer
        self.requests: list[Recorded] = []
        self.sent = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (ConnectionError, ssl.SSLError, TimeoutError):
                    self.close_connection = True

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                server.requests.append(request)
                status, headers, payload = server.answer(request)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if isinstance(payload, bytes):
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                        server.sent += len(payload)
                    return
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for block in payload:
                    self.wfile.write(block)
                    server.sent += len(block)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: t.Any) -> None:
                pass

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        if pki is not None:
            self.httpd.socket = pki.server_context().wrap_socket(self.httpd.socket, server_side=True)
        self.host = "127.0.0.1:%d" % self.port
        self.base_url = "%s://%s" % ("https" if pki is not None else "http", self.host)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class BlackHole:
    """A TCP listener that completes connections (the kernel's backlog) and never answers."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.host = "127.0.0.1:%d" % self.listener.getsockname()[1]

    def stop(self) -> None:
        self.listener.close()
