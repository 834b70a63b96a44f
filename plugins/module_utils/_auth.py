# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Registry authentication: challenges, origins, credentials and bearer tokens.

Who may see our credentials is decided here: only the registry's own scheme,
host and port (`same_origin`), and a token server the registry names when it
is HTTPS (or the registry itself is plain HTTP). Credentials come from the
options or from one docker config file (docker_config, else docker's default
place; never several merged): its inline `auths` (`auth`, `username`+`password`, `identitytoken`),
`credHelpers` and `credsStore`, whose `docker-credential-<name> get` programs
we run ourselves (argv, the server on stdin, bounded output, a timeout), with
no registry library beside requests. Tokens are cached per scope. The
HTTP exchange itself is the client's: `fetch_token` is handed the client's
one request loop.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shutil
import subprocess
import threading
import time
import typing as t
import urllib.parse
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._errors import RegistryError
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import RegistryOptions

# A token answer is a few KiB; the cap keeps a broken or hostile server from filling memory.
MAX_TOKEN_RESPONSE = 1024 * 1024
# Refresh a token this long before the registry would reject it.
TOKEN_EXPIRY_MARGIN = 10.0
# What docker itself accepts after "docker-credential-": a program name, never a path.
CREDENTIAL_HELPER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A helper's answer is a small JSON object; a helper that hangs or floods is cut off.
MAX_HELPER_OUTPUT = 64 * 1024
CREDENTIAL_HELPER_TIMEOUT = 30.0
# What docker's credential helpers answer as Username when Secret is an identity token.
IDENTITY_TOKEN_USERNAME = "<token>"
_CHALLENGE_PARAM = re.compile(r'([A-Za-z]+)="([^"]*)"')


# ---- challenges and origins --------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """A parsed WWW-Authenticate challenge."""

    scheme: str
    realm: str | None = None
    service: str | None = None
    scope: str | None = None


def parse_challenge(header: str | None) -> Challenge | None:
    """The first challenge of a WWW-Authenticate header (scheme lower-cased), or None."""
    if not header or not header.strip():
        return None
    scheme = header.strip().split(None, 1)[0].rstrip(",").lower()
    params: dict[str, str] = {}
    for key, value in _CHALLENGE_PARAM.findall(header):
        if value:
            params.setdefault(key.lower(), value)
    return Challenge(scheme=scheme, realm=params.get("realm"), service=params.get("service"), scope=params.get("scope"))


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an absolute http(s) URL, default ports filled in; None for anything else."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def same_origin(url: str, base_url: str) -> bool:
    """Whether `url` has the scheme, host and port of `base_url`: only then may it see our credentials."""
    origin = origin_of(url)
    return origin is not None and origin == origin_of(base_url)


def origin_text(url: str) -> str:
    """scheme://host:port of a URL, without the path and query (a pre-signed URL's query is a secret)."""
    origin = origin_of(url)
    if origin is None:
        return "an address that is not http(s)"
    scheme, host, port = origin
    return "%s://%s:%d" % (scheme, "[%s]" % host if ":" in host else host, port)


def check_token_realm(realm: str, plain_http: bool, registry: str, what: str) -> None:
    """Refuse a token realm our credentials must not go to: plain HTTP unless the registry is plain HTTP too."""
    origin = origin_of(realm)
    if origin is None:
        raise RegistryError(
            "%s failed: registry %s names %r as its token server, which is not an http(s) URL; check the registry's"
            " token auth configuration" % (what, registry, realm),
            code="TOKEN_REALM_INVALID",
        )
    if origin[0] == "http" and not plain_http:
        raise RegistryError(
            "%s failed: registry %s asks for credentials over plain HTTP at %s; refusing to send them unencrypted;"
            " configure its token server (realm) for HTTPS; plain_http=true allows this only for a registry"
            " served over plain HTTP" % (what, registry, realm),
            code="INSECURE_TOKEN_REALM",
            option="plain_http",
        )


def repository_scope(repository: str, actions: t.Sequence[str]) -> str:
    return "repository:%s:%s" % (repository, ",".join(actions))


def scope_covered(scope: str, held: t.Iterable[str]) -> bool:
    """Whether a scope we ask for anyway grants everything `scope` asks for."""
    resource, _colon, actions = scope.rpartition(":")
    for candidate in held:
        held_resource, _colon, held_actions = candidate.rpartition(":")
        if held_resource == resource and set(actions.split(",")) <= set(held_actions.split(",")):
            return True
    return False


# ---- credentials ---------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What we can present: Basic user:password (base64) and/or a docker identity token.

    `missing` says why there are none when the user likely meant to give some
    (a docker_config that does not exist, a credential helper not on PATH):
    it is told only if the registry asks for credentials.
    """

    basic: str | None = None
    identity_token: str | None = None
    missing: str | None = None

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"

    @property
    def present(self) -> bool:
        return bool(self.basic or self.identity_token)


def _read_docker_config(path: str) -> dict[str, t.Any] | None:
    """The auths, credsStore and credHelpers of one docker config file (None when it does not exist)."""
    try:
        with open(path, "rb") as stream:
            document = json.load(stream)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        raise RegistryError("docker_config %s cannot be read: %s" % (path, exc), option="docker_config") from exc
    if not isinstance(document, dict):
        raise RegistryError("docker_config %s is not a JSON object" % path, option="docker_config")
    config: dict[str, t.Any] = {
        "auths": dict(document.get("auths") or {}),
        "credsStore": document.get("credsStore"),
        "credHelpers": dict(document.get("credHelpers") or {}),
    }
    for helper in [config["credsStore"], *config["credHelpers"].values()]:
        if helper is not None and not (isinstance(helper, str) and CREDENTIAL_HELPER_RE.fullmatch(helper)):
            raise RegistryError(
                "docker_config %s names credential helper %r, which is not a plain program name (letters, digits,"
                " '.', '_', '-'); refusing to run it; fix credsStore/credHelpers in that file" % (path, helper),
                code="CREDENTIAL_HELPER_INVALID",
                option="docker_config",
            )
    return config


def basic_auth(username: str, password: str) -> str:
    """The base64 user:password of an HTTP Basic Authorization header."""
    return base64.b64encode(("%s:%s" % (username, password)).encode("utf-8")).decode("ascii")


def host_variants(registry: str) -> list[str]:
    """The names a docker config may know this registry by: localhost and 127.0.0.1 stand for each other."""
    names = [registry]
    if "localhost" in registry:
        names.append(registry.replace("localhost", "127.0.0.1"))
    elif "127.0.0.1" in registry:
        names.append(registry.replace("127.0.0.1", "localhost"))
    return names


def _auths_entry(auths: t.Mapping[str, t.Any], host: str) -> dict[str, t.Any]:
    """The `auths` entry for host; docker also writes keys as URLs (https://host/v1/)."""
    for key, entry in auths.items():
        if not isinstance(entry, dict) or not isinstance(key, str):
            continue
        name = key.split("://", 1)[-1].split("/", 1)[0]
        if key == host or name == host:
            return entry
    return {}


def _inline_credentials(entry: t.Mapping[str, t.Any], path: str, host: str) -> Credentials | None:
    """What an `auths` entry holds itself (auth, username+password, identitytoken), or None."""
    basic = None
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            decoded = base64.b64decode(entry["auth"], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        if ":" not in decoded:
            raise RegistryError(
                "docker_config %s: auths.%s.auth is not base64 of user:password; fix that entry" % (path, host),
                option="docker_config",
            )
        basic = entry["auth"]
    elif isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str) and entry["username"]:
        basic = basic_auth(entry["username"], entry["password"])
    identity = entry.get("identitytoken") if isinstance(entry.get("identitytoken"), str) else None
    if basic or identity:
        return Credentials(basic=basic, identity_token=identity or None)
    return None


def _helper_for(registry: str, config: dict[str, t.Any], path: str) -> tuple[Credentials | None, str | None]:
    """Inline credentials for this registry, else the credential helper to ask (credHelpers before credsStore)."""
    for host in host_variants(registry):
        inline = _inline_credentials(_auths_entry(config["auths"], host), path, host)
        if inline is not None:
            return inline, None
        if config["credHelpers"].get(host):
            return None, str(config["credHelpers"][host])
    return None, config["credsStore"] or None


def ask_credential_helper(helper: str, server: str) -> dict[str, t.Any] | None:
    """`docker-credential-<helper> get` for server: its JSON answer, or None when it has nothing for it.

    Run with an argument vector (never a shell), the server name on stdin;
    at most MAX_HELPER_OUTPUT bytes are read and it is killed after
    CREDENTIAL_HELPER_TIMEOUT seconds. Its stderr is dropped: it may echo secrets.
    """
    program = "docker-credential-" + helper
    try:
        process = subprocess.Popen(
            [program, "get"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
    except OSError as exc:
        raise RegistryError("credential helper %s cannot be run: %s" % (program, exc), option="docker_config") from exc
    timer = threading.Timer(CREDENTIAL_HELPER_TIMEOUT, process.kill)
    timer.start()
    try:
        stdin, stdout = t.cast(t.IO[bytes], process.stdin), t.cast(t.IO[bytes], process.stdout)
        try:
            stdin.write(server.encode("utf-8"))
            stdin.close()
        except BrokenPipeError:
            pass
        output = stdout.read(MAX_HELPER_OUTPUT + 1)
        if len(output) > MAX_HELPER_OUTPUT:
            process.kill()
        returncode = process.wait()
        timed_out = not timer.is_alive() and returncode < 0
    finally:
        timer.cancel()
        t.cast(t.IO[bytes], process.stdout).close()
    if timed_out:
        raise RegistryError(
            "credential helper %s did not answer within %d seconds; check it with `%s get`"
            % (program, CREDENTIAL_HELPER_TIMEOUT, program),
            option="docker_config",
        )
    if len(output) > MAX_HELPER_OUTPUT:
        raise RegistryError(
            "credential helper %s answered more than %d bytes; check it with `%s get`"
            % (program, MAX_HELPER_OUTPUT, program),
            option="docker_config",
        )
    if returncode != 0:
        # Docker's helpers exit 1 with "credentials not found" for a server they do not know.
        return None
    try:
        answer = json.loads(output)
    except (ValueError, RecursionError):
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("Secret"), str):
        raise RegistryError(
            "credential helper %s gave no usable answer for %s; check it with `%s get`" % (program, server, program),
            option="docker_config",
        )
    return answer


def _helper_credentials(helper: str, registry: str) -> Credentials | None:
    for host in host_variants(registry):
        answer = ask_credential_helper(helper, host)
        if answer is None:
            continue
        username = answer.get("Username")
        if username == IDENTITY_TOKEN_USERNAME:
            return Credentials(identity_token=answer["Secret"])
        if isinstance(username, str) and username:
            return Credentials(basic=basic_auth(username, answer["Secret"]))
    return None


def load_credentials(registry: str, options: RegistryOptions) -> Credentials:
    """Explicit username/password first, else the docker config (incl. credential helpers)."""
    if options.username and options.password:
        return Credentials(basic=basic_auth(options.username, options.password))
    if not options.docker_config:
        return Credentials()
    config = _read_docker_config(options.docker_config)
    if config is None:
        missing = "docker_config %s does not exist" % options.docker_config if options.docker_config_given else None
        return Credentials(missing=missing)
    inline, helper = _helper_for(registry, config, options.docker_config)
    if inline is not None:
        return inline
    if not helper:
        return Credentials()
    if shutil.which("docker-credential-" + helper) is None:
        return Credentials(
            missing="docker-credential-%s not found on PATH (named in docker_config %s); install it or put it on"
            " PATH" % (helper, options.docker_config)
        )
    found = _helper_credentials(helper, registry)
    if found is None:
        return Credentials(missing="credential helper docker-credential-%s has no credentials for it" % helper)
    return found


def no_credentials_error(what: str, registry: str, credentials: Credentials) -> RegistryError:
    why = "; " + credentials.missing if credentials.missing else ""
    return RegistryError(
        "%s failed: registry %s requires authentication%s; give username and password, or credentials for it"
        " in docker_config" % (what, registry, why),
        status=401,
        code="UNAUTHORIZED",
        option="docker_config" if credentials.missing else "username",
    )


# ---- bearer tokens --------------------------------------------------------------


class AuthState:
    """What the client learnt about the registry's authentication, shared by all threads."""

    def __init__(self, registry: str, credentials: Credentials):
        self.registry = registry
        self.credentials = credentials
        self.lock = threading.Lock()
        self.token_lock = threading.Lock()
        self.basic_preemptive = False
        self.tokens: dict[tuple[str, ...], tuple[str, float]] = {}

    def header_for(self, scopes: tuple[str, ...]) -> dict[str, str]:
        with self.lock:
            token = self.tokens.get(scopes)
            if token and token[1] > time.monotonic():
                return {"Authorization": "Bearer " + token[0]}
            if self.basic_preemptive and self.credentials.basic:
                return {"Authorization": "Basic " + self.credentials.basic}
        return {}

    def forget_token(self, scopes: tuple[str, ...]) -> None:
        with self.lock:
            self.tokens.pop(scopes, None)

    def store_token(self, scopes: tuple[str, ...], token: str, expires_in: float) -> None:
        with self.lock:
            self.tokens[scopes] = (token, time.monotonic() + max(expires_in - TOKEN_EXPIRY_MARGIN, 1.0))

    def no_credentials_error(self, what: str) -> RegistryError:
        return no_credentials_error(what, self.registry, self.credentials)


class TokenRequest(t.Protocol):
    """The client's request loop as fetch_token uses it: credentials go to `realm`'s origin only."""

    def __call__(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: dict[str, str],
        params: list[tuple[str, str]],
        data: dict[str, str] | None,
        ok: t.Collection[int],
    ) -> t.Any: ...


def fetch_token(
    send: TokenRequest, challenge: Challenge, scopes: t.Sequence[str], state: AuthState, what: str, plain_http: bool
) -> tuple[str, float]:
    """A bearer token from the challenge's realm for these scopes (docker token protocol)."""
    realm = str(challenge.realm)
    check_token_realm(realm, plain_http, state.registry, what)
    credentials = state.credentials
    params: list[tuple[str, str]] = []
    if challenge.service:
        params.append(("service", challenge.service))
    params.extend(("scope", scope) for scope in scopes)
    headers: dict[str, str] = {}
    method, data = "GET", None
    if credentials.identity_token:
        # A docker identity token is an OAuth2 refresh token.
        method = "POST"
        data = {
            "grant_type": "refresh_token",
            "refresh_token": credentials.identity_token,
            "service": challenge.service or "",
            "scope": " ".join(scopes),
            "client_id": "ironcore.image",
        }
        params = []
    elif credentials.basic:
        headers["Authorization"] = "Basic " + credentials.basic
    token_what = "%s (token from %s)" % (what, realm)
    response = send(method, realm, what=token_what, headers=headers, params=params, data=data, ok=(200, 401, 403))
    if response.status_code in (401, 403):
        if not credentials.present:
            raise state.no_credentials_error(what)
        raise RegistryError(
            "%s failed: the token server %s refused the credentials (HTTP %d); check username and password"
            " (or the docker_config entry for %s)" % (what, realm, response.status_code, state.registry),
            status=401,
            code="UNAUTHORIZED",
            option="password",
        )
    try:
        document = json.loads(response.content)
    except (ValueError, RecursionError):
        document = {}
    token = document.get("token") or document.get("access_token") if isinstance(document, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryError("%s failed: the token server %s answered without a token" % (what, realm))
    try:
        expires_in = float(document.get("expires_in") or 60)
    except (TypeError, ValueError):
        expires_in = 60.0
    return token, expires_in
