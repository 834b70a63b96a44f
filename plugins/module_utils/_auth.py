# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Registry authentication: challenges, origins, credentials and bearer tokens.

Who may see our credentials is decided here: only the registry's own scheme,
host and port (`same_origin`), and a token server the registry names when it
is HTTPS (or the registry itself is plain HTTP). Credentials come from the
options or from one docker config file, read with oras-py's docker-config and
credential-helper code (composition: its `BasicAuth` backend fed the one file
we were given). Tokens are cached per scope. The HTTP exchange itself is the
client's: `fetch_token` is handed the client's one request loop.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import typing as t
import urllib.parse
from dataclasses import dataclass

try:
    import oras.auth.basic
    import oras.auth.utils
    import oras.container
    import oras.utils
except ImportError:  # modules report it through _deps.require(module, "oras", "requests")
    pass

from ansible_collections.ironcore.image.plugins.module_utils._errors import RegistryError
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import RegistryOptions

# A token answer is a few KiB; the cap keeps a broken or hostile server from filling memory.
MAX_TOKEN_RESPONSE = 1024 * 1024
# Refresh a token this long before the registry would reject it.
TOKEN_EXPIRY_MARGIN = 10.0
# What docker itself accepts after "docker-credential-": a program name, never a path.
CREDENTIAL_HELPER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
    parsed = oras.auth.utils.parse_auth_header(header)
    return Challenge(scheme=scheme, realm=parsed.realm, service=parsed.service, scope=parsed.scope)


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
    except (OSError, ValueError) as exc:
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


def _helper_for(registry: str, config: dict[str, t.Any]) -> str | None:
    """The credential helper oras-py will run for this registry, or None when inline auths answer."""
    for host in oras.utils.iter_localhosts(registry):
        if (config["auths"].get(host) or {}).get("auth"):
            return None
        if config["credHelpers"].get(host):
            return str(config["credHelpers"][host])
    return config["credsStore"] or None


def load_credentials(registry: str, options: RegistryOptions) -> Credentials:
    """Explicit username/password first, else the docker config (incl. credential helpers)."""
    if options.username and options.password:
        return Credentials(basic=oras.auth.utils.get_basic_auth(options.username, options.password))
    if not options.docker_config:
        return Credentials()
    config = _read_docker_config(options.docker_config)
    if config is None:
        missing = "docker_config %s does not exist" % options.docker_config if options.docker_config_given else None
        return Credentials(missing=missing)
    helper = _helper_for(registry, config)
    if helper and shutil.which("docker-credential-" + helper) is None:
        return Credentials(
            missing="docker-credential-%s not found on PATH (named in docker_config %s); install it or put it on"
            " PATH" % (helper, options.docker_config)
        )
    # oras-py resolves inline auths, credHelpers and credsStore
    # (docker-credential-* programs). Only the one file we were given is used:
    # oras' own load_configs() would always merge ~/.docker/config.json too.
    backend = oras.auth.basic.BasicAuth()
    backend._basic_auth = None
    backend._auth_config = config
    try:
        backend.load_configs(oras.container.Container("library/probe", registry=registry))
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(
            "credential helper docker-credential-%s gave no usable answer for %s; check it with"
            " `docker-credential-%s get`" % (helper, registry, helper),
            option="docker_config",
        ) from exc
    identity = None
    for host in oras.utils.iter_localhosts(registry):
        entry = config["auths"].get(host) or {}
        identity = identity or entry.get("identitytoken")
    basic = getattr(backend, "_basic_auth", None) or None
    if not (basic or identity) and helper:
        return Credentials(missing="credential helper docker-credential-%s has no credentials for it" % helper)
    return Credentials(basic=basic, identity_token=identity)


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
    except ValueError:
        document = {}
    token = document.get("token") or document.get("access_token") if isinstance(document, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryError("%s failed: the token server %s answered without a token" % (what, realm))
    try:
        expires_in = float(document.get("expires_in") or 60)
    except (TypeError, ValueError):
        expires_in = 60.0
    return token, expires_in
