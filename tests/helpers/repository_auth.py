"""A registry front that authorises per repository, the way Harbor, GHCR or a token server do.

distribution's htpasswd set-up lets every user read every repository, so two users who may read
different repositories need something in front of it: this HTTP server checks Basic credentials and the
repository in the path, then passes the request on to an anonymous docker-registry behind it. Real
bytes from the real registry; only the decision who may read what is made here.
"""

from __future__ import annotations

import base64
import re
import typing as t

import requests

from helpers.registry import Answer, Recorded, Registry, ScriptedServer

# /v2/<repository>/(blobs|manifests|tags)/...: the repository is everything before the last of those words.
_REPOSITORY = re.compile(r"^/v2/(?P<name>.+)/(?:blobs|manifests|tags)/[^/]+(?:/[^/]*)?$")
_PASSED_HEADERS = ("range", "accept")
_RETURNED_HEADERS = ("Content-Type", "Content-Range", "Docker-Content-Digest", "Accept-Ranges", "Location")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    body = ('{"errors":[{"code":"%s","message":"%s"}]}' % (code, message)).encode()
    return status, dict(headers or {}, **{"Content-Type": "application/json"}), body


class RepositoryAuthFront:
    """Plain HTTP on 127.0.0.1; `grants` maps user -> (password, repository prefixes that user may read)."""

    def __init__(self, backend: Registry, grants: t.Mapping[str, tuple[str, t.Sequence[str]]]):
        self.backend = "http://%s" % backend.host
        self.grants = dict(grants)
        # (user or None, method, path, status answered): what the registry front saw and decided.
        self.decisions: list[tuple[str | None, str, str, int]] = []
        self.server = ScriptedServer(self._answer)
        self.host = self.server.host
        self.url = self.server.base_url

    def _user(self, authorization: str) -> str | None:
        if not authorization.startswith("Basic "):
            return None
        name, _colon, secret = base64.b64decode(authorization[6:]).decode("utf-8", "replace").partition(":")
        grant = self.grants.get(name)
        return name if grant is not None and grant[0] == secret else None

    def _answer(self, request: Recorded) -> Answer:
        user = self._user(request.headers.get("authorization", ""))
        answer = self._decide(user, request)
        self.decisions.append((user, request.method, request.path, answer[0]))
        return answer

    def _decide(self, user: str | None, request: Recorded) -> Answer:
        if user is None:
            return _error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": 'Basic realm="test"'})
        path = request.path.split("?", 1)[0]
        if path != "/v2/":
            match = _REPOSITORY.match(path)
            prefixes = self.grants[user][1]
            if match is None or not any(match.group("name").startswith(prefix) for prefix in prefixes):
                return _error(403, "DENIED", "requested access to the resource is denied")
        headers = {name: request.headers[name] for name in _PASSED_HEADERS if name in request.headers}
        upstream = requests.request(
            request.method, self.backend + request.path, headers=headers, allow_redirects=False, timeout=60
        )
        returned = {name: upstream.headers[name] for name in _RETURNED_HEADERS if name in upstream.headers}
        return upstream.status_code, returned, upstream.content

    def stop(self) -> None:
        self.server.stop()
