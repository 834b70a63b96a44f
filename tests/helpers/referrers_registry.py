"""A registry with the OCI referrers API (distribution-spec 1.1): a small proxy in front of distribution 2.8.

Debian's docker-registry (distribution 2.8) has no referrers API: it answers
`GET /v2/<name>/referrers/<digest>` with 404, so our code falls back to the
referrers tag schema. Harbor, zot, ACR and ECR answer it. This proxy adds
the two parts of the API a client sees, and forwards everything else
unchanged (one upstream connection per request, bytes relayed as they come,
never a whole blob in memory):

- a manifest `PUT` whose manifest has a `subject` is forwarded; when the
  registry stored it (201), the proxy lists it for its subject and answers
  with `OCI-Subject: <subject digest>`, as the spec says a registry that
  indexes referrers must;
- `GET /v2/<name>/referrers/<digest>[?artifactType=...]` answers an OCI image
  index of the descriptors listed for that subject (with `artifactType`,
  only those, and `OCI-Filters-Applied: artifactType`). The registry is
  asked first (a `HEAD` of the subject, with the client's credentials), so
  what it refuses the proxy refuses too;
- a manifest `DELETE` by digest that the registry accepts drops that
  referrer from every list.

The index lives in memory, for the life of the proxy (a test session).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import typing as t
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from helpers.loopback import LoopbackListener
from helpers.registry import FaultProxy, Registry, _read_head, start_registry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# Manifests are small; a PUT body larger than this is forwarded without being looked at.
MAX_MANIFEST = 4 * 1024 * 1024

_REFERRERS = re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>sha256:[0-9a-f]{64})(?:\?(?P<query>.*))?$")
_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/?]+)$")


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    request_line, _crlf, header_text = head.decode("latin-1").partition("\r\n")
    method, path = request_line.split(" ")[:2]
    headers = {}
    for line in header_text.split("\r\n"):
        if ":" in line:
            key, _colon, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return method, path, headers


def _recv_exactly(sock: socket.socket, first: bytes, length: int) -> bytes:
    data = bytearray(first)
    while len(data) < length:
        chunk = sock.recv(min(length - len(data), 1024 * 1024))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def _descriptor(manifest: dict[str, t.Any], data: bytes, content_type: str) -> dict[str, t.Any]:
    """The descriptor a referrers list gives for a manifest (artifactType: its own, else its config's type)."""
    entry: dict[str, t.Any] = {
        "mediaType": manifest.get("mediaType") or content_type or OCI_MANIFEST,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    artifact_type = manifest.get("artifactType") or (config or {}).get("mediaType")
    if isinstance(artifact_type, str) and artifact_type:
        entry["artifactType"] = artifact_type
    if isinstance(manifest.get("annotations"), dict) and manifest["annotations"]:
        entry["annotations"] = manifest["annotations"]
    return entry


@dataclass
class ReferrersRegistry(LoopbackListener):
    """docker-registry behind a proxy that implements the referrers API; used like a `Registry`."""

    target: Registry
    # (repository, subject digest) -> referrer digest -> descriptor, in the order they arrived.
    index: dict[tuple[str, str], dict[str, dict[str, t.Any]]] = field(default_factory=dict)
    # (method, path) of every request, for tests that check what was asked.
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.name = self.target.name
        self.storage = self.target.storage
        self.registry_args = dict(self.target.registry_args)
        self.skopeo_args = list(self.target.skopeo_args)
        self.env = dict(self.target.env)
        self.pki = self.target.pki
        self.tls = self.target.tls
        self.username = self.target.username
        self.password = self.target.password
        self.token_server = self.target.token_server
        self.upstream_port = int(self.target.host.rsplit(":", 1)[1])
        self.server_context = self.pki.server_context() if self.pki else None
        self.client_context = self.pki.client_context() if self.pki else None
        self._listen(64)

    # ---- the Registry interface ---------------------------------------------------

    def skopeo_flags(self, prefix: str = "") -> list[str]:
        return self.target.skopeo_flags(prefix)

    def log(self) -> str:
        return self.target.log()

    def stop(self) -> None:
        super().stop()
        self.target.stop()

    def referrers(self, repository: str, subject: str) -> list[dict[str, t.Any]]:
        """What the proxy lists for a subject (for assertions)."""
        with self.lock:
            return list(self.index.get((repository, subject), {}).values())

    # ---- serving ---------------------------------------------------------------------

    def _upstream(self) -> socket.socket:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=120)
        if self.client_context is not None:
            upstream = self.client_context.wrap_socket(upstream, server_hostname="127.0.0.1")
        return upstream

    def _handle(self, client: socket.socket) -> None:
        upstream = None
        try:
            client.settimeout(120)
            if self.server_context is not None:
                client = self.server_context.wrap_socket(client, server_side=True)
            head, rest = _read_head(client)
            if not head:
                return
            method, path, headers = _parse_head(head)
            with self.lock:
                self.requests.append((method, path))
            listing = _REFERRERS.match(path)
            if method == "GET" and listing:
                self._list(client, head, listing)
                return
            upstream = self._upstream()
            manifest = _MANIFEST.match(path)
            length = int(headers.get("content-length", "0") or 0)
            if method == "PUT" and manifest and 0 < length <= MAX_MANIFEST and "transfer-encoding" not in headers:
                self._put_manifest(client, upstream, head, _recv_exactly(client, rest, length), manifest, headers)
                return
            upstream.sendall(FaultProxy._rewrite_head(head))
            if method == "DELETE" and manifest:
                self._delete(client, upstream, rest, manifest.group("reference"))
                return
            FaultProxy._relay(client, upstream, rest, None)
        except (OSError, ValueError):
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass

    def _put_manifest(
        self,
        client: socket.socket,
        upstream: socket.socket,
        head: bytes,
        body: bytes,
        match: re.Match[str],
        headers: dict[str, str],
    ) -> None:
        """Forward the PUT; when it was stored and names a subject, list it and answer OCI-Subject."""
        upstream.sendall(FaultProxy._rewrite_head(head) + body)
        answer, rest = _read_head(upstream)
        subject = self._subject_of(body)
        if subject is not None and answer and _status_of(answer) == 201:
            manifest = json.loads(body)
            entry = _descriptor(manifest, body, headers.get("content-type", ""))
            with self.lock:
                self.index.setdefault((match.group("name"), subject), {})[entry["digest"]] = entry
            answer = answer[:-2] + ("OCI-Subject: %s\r\n\r\n" % subject).encode("latin-1")
        client.sendall(answer)
        FaultProxy._relay(client, upstream, rest, None)

    @staticmethod
    def _subject_of(body: bytes) -> str | None:
        try:
            manifest = json.loads(body)
        except ValueError:
            return None
        subject = manifest.get("subject") if isinstance(manifest, dict) else None
        digest = subject.get("digest") if isinstance(subject, dict) else None
        return digest if isinstance(digest, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else None

    def _delete(self, client: socket.socket, upstream: socket.socket, rest: bytes, reference: str) -> None:
        """Forward the DELETE; when the registry deleted a manifest, it is no one's referrer any more."""
        answer, more = _read_head(upstream)
        if answer and _status_of(answer) == 202:
            with self.lock:
                for entries in self.index.values():
                    entries.pop(reference, None)
        client.sendall(answer + more)
        FaultProxy._relay(client, upstream, rest, None)

    def _list(self, client: socket.socket, head: bytes, match: re.Match[str]) -> None:
        """The referrers index of a subject, once the registry lets the client read the subject."""
        name, digest, query = match.group("name"), match.group("digest"), match.group("query") or ""
        # Access is the registry's to grant: the same request, as a HEAD of the subject.
        _request_line, _crlf, header_lines = head.partition(b"\r\n")
        asking = ("HEAD /v2/%s/manifests/%s HTTP/1.1" % (name, digest)).encode("latin-1") + b"\r\n" + header_lines
        upstream = self._upstream()
        try:
            upstream.sendall(FaultProxy._rewrite_head(asking))
            answer, _rest = _read_head(upstream)
        finally:
            upstream.close()
        status = _status_of(answer) if answer else 502
        if status in (401, 403):
            challenge = _parse_head(answer)[2].get("www-authenticate")
            extra = {"WWW-Authenticate": challenge} if challenge else {}
            error = {"errors": [{"code": "UNAUTHORIZED" if status == 401 else "DENIED", "message": "access denied"}]}
            self._send(client, status, json.dumps(error).encode(), "application/json", extra)
            return
        wanted = [value for key, value in _query(query) if key == "artifactType"]
        with self.lock:
            entries = list(self.index.get((name, digest), {}).values())
        extra = {}
        if wanted:
            entries = [entry for entry in entries if entry.get("artifactType") in wanted]
            extra["OCI-Filters-Applied"] = "artifactType"
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
        self._send(client, 200, body, OCI_INDEX, extra)

    @staticmethod
    def _send(client: socket.socket, status: int, body: bytes, content_type: str, extra: dict[str, str]) -> None:
        lines = ["HTTP/1.1 %d %s" % (status, "OK" if status == 200 else "Error")]
        lines += ["Content-Type: %s" % content_type, "Content-Length: %d" % len(body), "Connection: close"]
        lines += ["%s: %s" % item for item in extra.items()]
        client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def _query(query: str) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(query, keep_blank_values=True)


def start_referrers_registry(
    name: str, directory: str, tls: bool = False, auth: str | None = None
) -> ReferrersRegistry:
    """docker-registry (as start_registry starts it) behind the referrers-API proxy."""
    return ReferrersRegistry(start_registry(name, directory, tls=tls, auth=auth))


def api_listing(registry: ReferrersRegistry, repository: str, subject: str, artifact_type: str | None = None) -> dict:
    """The referrers index the registry's API answers for a subject (anonymous registries; the test's own GET)."""
    query = "?artifactType=" + urllib.parse.quote(artifact_type) if artifact_type else ""
    scheme = "https" if registry.tls else "http"
    url = "%s://%s/v2/%s/referrers/%s%s" % (scheme, registry.host, repository, subject, query)
    with urllib.request.urlopen(url, timeout=60) as answer:
        assert answer.status == 200
        assert answer.headers.get("Content-Type") == OCI_INDEX
        return t.cast(dict, json.loads(answer.read()))
