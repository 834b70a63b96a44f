# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The OCI distribution client: requests, authentication, retries and errors.

Built on oras-py (`oras.provider.Registry`): its docker config credential
helpers, its WWW-Authenticate parsing and its paginated tag listing are used
as they are. Everything oras-py does unsafely for multi-GiB OS images is done
here instead: every request has a timeout; safe requests are retried with
backoff on 429/5xx and connection errors; Basic credentials are sent up front
once a Basic challenge was seen; Bearer tokens are kept per scope and fetched
again on 401; credentials go only to the registry's own scheme, host and port
and to an HTTPS token server, never to a Location elsewhere; bodies are
streamed from file objects; documents are PUT as the exact bytes given. The
client knows nothing of images or platforms.
"""

from __future__ import annotations

import json
import random
import re
import socket
import ssl
import threading
import time
import typing as t
import urllib.parse
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy

try:
    import oras.auth.basic
    import oras.auth.utils
    import oras.container
    import oras.provider
    import oras.utils
    import requests
    import requests.adapters
    import urllib3.exceptions
except ImportError:  # modules report it through _deps.require(module, "oras", "requests")
    _OrasRegistry: t.Any = object
    _HTTPAdapter: t.Any = object
    _RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = ()
else:
    _OrasRegistry = oras.provider.Registry
    _HTTPAdapter = requests.adapters.HTTPAdapter
    _RETRY_EXCEPTIONS = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
    )

from ansible_collections.ironcore.image.plugins.module_utils._layout import MAX_DOCUMENT_SIZE
from ansible_collections.ironcore.image.plugins.module_utils._manifest import declared_media_type, sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    SHA256_DIGEST_RE,
)
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import RegistryOptions

ALL_MANIFEST_TYPES: tuple[str, ...] = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE = 0.5
BACKOFF_CAP = 10.0
RETRY_AFTER_CAP = 30.0
# http.client sends request bodies in 8 KiB writes by default; 1 MiB writes
# cut the syscall count of a multi-GiB upload by two orders of magnitude.
SEND_BLOCK_SIZE = 1024 * 1024
# A token answer is a few KiB; the cap keeps a broken or hostile server from filling memory.
MAX_TOKEN_RESPONSE = 1024 * 1024
# Refresh a token this long before the registry would reject it.
TOKEN_EXPIRY_MARGIN = 10.0
_REGISTRY_MESSAGE_LIMIT = 300

Body = t.Union[None, bytes, t.Callable[[], t.Any]]


class RegistryError(Exception):
    """A registry operation failed; the message says what and what to do.

    `status` is the HTTP status when the registry answered, `code` the first
    OCI error code of its answer, `retryable` whether doing the same again
    may succeed (a dropped connection, a timeout, a busy registry).
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None, retryable: bool = False):
        super().__init__(one_line(message))
        self.status = status
        self.code = code
        self.retryable = retryable


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---- OCI error bodies ------------------------------------------------------

# What to do about each OCI distribution error code (and the common extras).
ERROR_ADVICE: dict[str, str] = {
    "UNAUTHORIZED": "check username and password (or the docker_config entry for this registry)",
    "DENIED": "the account is not allowed to do this on the repository: check its permissions",
    "NAME_UNKNOWN": "the repository does not exist on the registry: check the name (or create the repository)",
    "NAME_INVALID": "the repository name is not valid for this registry: use lower-case path components",
    "MANIFEST_UNKNOWN": "the tag or digest does not exist in the repository",
    "MANIFEST_INVALID": "the registry rejected the document: it may not accept these media types",
    "MANIFEST_BLOB_UNKNOWN": "a blob or child manifest it names is missing: push those first",
    "MANIFEST_UNVERIFIED": "the registry could not verify the manifest signature",
    "BLOB_UNKNOWN": "the blob does not exist in the repository",
    "BLOB_UPLOAD_INVALID": "the upload was rejected or interrupted: run the push again",
    "BLOB_UPLOAD_UNKNOWN": "the upload session expired or was lost: run the push again",
    "DIGEST_INVALID": "the data received does not match its digest: the local blob may be corrupt",
    "SIZE_INVALID": "the data received does not match its declared size: the local blob may be corrupt",
    "TAG_INVALID": "the tag is not valid for this registry",
    "RANGE_INVALID": "the registry refused the byte range: run the transfer again",
    "PAGINATION_NUMBER_INVALID": "the registry refused the page size",
    "UNSUPPORTED": "the registry does not support this operation or media type",
    "TOOMANYREQUESTS": "the registry is rate limiting: retry later, or lower concurrency",
}

_STATUS_CODES: dict[int, str] = {401: "UNAUTHORIZED", 403: "DENIED", 429: "TOOMANYREQUESTS"}


@dataclass(frozen=True)
class OciErrorEntry:
    code: str
    message: str


def parse_error_body(body: bytes | str | None) -> list[OciErrorEntry]:
    """The entries of an OCI error body (`{"errors": [{"code", "message", "detail"}]}`), or []."""
    if not body:
        return []
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return []
    entries = []
    for error in errors:
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            message = error.get("message")
            entries.append(OciErrorEntry(error["code"].upper(), message if isinstance(message, str) else ""))
    return entries


def describe_failure(what: str, status: int, body: bytes | str | None, reason: str = "") -> RegistryError:
    """One RegistryError for a failed answer: what failed, what the registry said, what to do."""
    entries = parse_error_body(body)
    code = entries[0].code if entries else _STATUS_CODES.get(status)
    said = "; ".join("%s%s" % (entry.code, (": " + entry.message) if entry.message else "") for entry in entries) or (
        reason or "no error details"
    )
    if len(said) > _REGISTRY_MESSAGE_LIMIT:
        said = said[:_REGISTRY_MESSAGE_LIMIT] + "..."
    advice = ERROR_ADVICE.get(code or "") or _status_advice(status)
    message = "%s failed: registry answered HTTP %d (%s)" % (what, status, said)
    if advice:
        message += "; " + advice
    return RegistryError(message, status=status, code=code, retryable=status in RETRY_STATUSES)


def _status_advice(status: int) -> str:
    if status == 404:
        return "it does not exist on the registry"
    if status == 415:
        return "the registry does not accept this media type"
    if status in RETRY_STATUSES:
        return "the registry is failing or overloaded: retry later"
    return ""


# ---- authentication --------------------------------------------------------


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


def _origin_text(url: str) -> str:
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


@dataclass(frozen=True)
class Credentials:
    """What we can present: Basic user:password (base64) and/or a docker identity token."""

    basic: str | None = None
    identity_token: str | None = None

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"


def _read_docker_config(path: str | None) -> dict[str, t.Any]:
    """The auths, credsStore and credHelpers of one docker config file ({} when absent)."""
    if not path:
        return {}
    try:
        with open(path, "rb") as stream:
            document = json.load(stream)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RegistryError("docker_config %s cannot be read: %s" % (path, exc)) from None
    if not isinstance(document, dict):
        raise RegistryError("docker_config %s is not a JSON object" % path)
    return {
        "auths": dict(document.get("auths") or {}),
        "credsStore": document.get("credsStore"),
        "credHelpers": dict(document.get("credHelpers") or {}),
    }


def load_credentials(registry: str, options: RegistryOptions) -> Credentials:
    """Explicit username/password first, else the docker config (incl. credential helpers)."""
    if options.username and options.password:
        return Credentials(basic=oras.auth.utils.get_basic_auth(options.username, options.password))
    config = _read_docker_config(options.docker_config)
    if not config:
        return Credentials()
    # oras-py resolves inline auths, credHelpers and credsStore
    # (docker-credential-* programs). Only the one file we were given is used:
    # oras' own load_configs() would always merge ~/.docker/config.json too.
    backend = oras.auth.basic.BasicAuth()
    backend._basic_auth = None
    backend._auth_config = config
    backend.load_configs(oras.container.Container("library/probe", registry=registry))
    identity = None
    for host in oras.utils.iter_localhosts(registry):
        entry = config["auths"].get(host) or {}
        identity = identity or entry.get("identitytoken")
    return Credentials(basic=getattr(backend, "_basic_auth", None) or None, identity_token=identity)


class _AuthState:
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
        return RegistryError(
            "%s failed: registry %s requires authentication; give username and password, or credentials for it"
            " in docker_config" % (what, self.registry),
            status=401,
            code="UNAUTHORIZED",
        )


# ---- transport -------------------------------------------------------------


class _Adapter(_HTTPAdapter):
    """Connection pool that sends bodies in large writes."""

    def init_poolmanager(self, *args: t.Any, **kwargs: t.Any) -> None:
        kwargs["blocksize"] = SEND_BLOCK_SIZE
        super().init_poolmanager(*args, **kwargs)


def _causes(exc: BaseException) -> t.Iterator[BaseException]:
    """The exception and everything it wraps (requests -> urllib3 -> ssl/socket)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nested in (getattr(current, "reason", None), current.__cause__, current.__context__, *current.args):
            if isinstance(nested, BaseException):
                pending.append(nested)


def connection_failure(exc: BaseException, what: str, registry: str, options: RegistryOptions) -> RegistryError:
    """A clear message for a request that got no HTTP answer."""
    causes = list(_causes(exc))
    if any(isinstance(cause, ssl.SSLCertVerificationError) for cause in causes):
        detail = next(c for c in causes if isinstance(c, ssl.SSLCertVerificationError))
        return RegistryError(
            "%s failed: the TLS certificate of registry %s is not trusted (%s); give the CA that signed it in"
            " ca_cert, or set validate_certs=false if you trust the registry otherwise"
            % (what, registry, getattr(detail, "verify_message", None) or "verification failed"),
            code="CERTIFICATE_UNTRUSTED",
        )
    ssl_errors = [cause for cause in causes if isinstance(cause, ssl.SSLError)]
    if any(getattr(cause, "reason", None) in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE") for cause in ssl_errors):
        return RegistryError(
            "%s failed: registry %s does not speak TLS; if it really serves plain HTTP, set plain_http=true"
            % (what, registry),
            code="TLS_FAILED",
        )
    if ssl_errors:
        return RegistryError(
            "%s failed: TLS handshake with registry %s failed (%s); check ca_cert and validate_certs"
            % (what, registry, getattr(ssl_errors[0], "reason", None) or ssl_errors[0].__class__.__name__),
            code="TLS_FAILED",
        )
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return RegistryError(
            "%s failed: connection to registry %s refused; check the address and port and that the registry is"
            " running" % (what, registry),
            code="CONNECTION_REFUSED",
            retryable=True,
        )
    if any(isinstance(cause, socket.gaierror) for cause in causes):
        return RegistryError(
            "%s failed: the host name of registry %s does not resolve; check the registry name" % (what, registry),
            code="NAME_RESOLUTION",
        )
    if any(
        isinstance(cause, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))
        for cause in causes
    ):
        return RegistryError(
            "%s failed: registry %s did not answer within timeout=%ss; retry later or raise timeout"
            % (what, registry, _seconds(options.timeout)),
            code="TIMEOUT",
            retryable=True,
        )
    return RegistryError(
        "%s failed: the connection to registry %s broke (%s); retry later"
        % (what, registry, _exception_summary(causes)),
        code="CONNECTION_FAILED",
        retryable=True,
    )


def _seconds(value: float) -> str:
    return "%g" % value


def _exception_summary(causes: list[BaseException]) -> str:
    """The innermost low-level error, without URLs or headers."""
    for cause in reversed(causes):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    names = [cause.__class__.__name__ for cause in causes]
    return names[-1] if names else "unknown error"


_REPOSITORY_IN_URL = re.compile(r"/v2/(?P<name>.+?)/(?:tags|manifests|blobs|referrers)/")


class BlobStream:
    """The body of a blob GET, read in chunks; close() when done."""

    def __init__(self, response: requests.Response, offset: int, what: str, client: RegistryClient):
        self._response = response
        self.offset = offset
        self._what = what
        self._client = client
        length = response.headers.get("Content-Length")
        self.length: int | None = int(length) if length and length.isdigit() else None

    def iter_chunks(self, size: int = 1024 * 1024) -> t.Iterator[bytes]:
        try:
            yield from self._response.iter_content(size)
        except (*_RETRY_EXCEPTIONS, OSError) as exc:
            error = connection_failure(exc, self._what, self._client.registry, self._client.options)
            error.retryable = True
            raise error from None

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()


class RegistryClient(_OrasRegistry):
    """One registry (`host[:port]`), spoken to with our transport and auth."""

    def __init__(self, registry: str, options: RegistryOptions):
        verify: bool | str = (options.ca_cert or True) if options.validate_certs else False
        super().__init__(hostname=registry, insecure=options.plain_http, tls_verify=verify, auth_backend="basic")
        self.registry = registry
        self.options = options
        self.verify = verify
        self.scheme = "http" if options.plain_http else "https"
        self.base_url = "%s://%s" % (self.scheme, registry)
        self._auth = _AuthState(registry, load_credentials(registry, options))
        self._local = threading.local()
        self._sleep = time.sleep

    # ---- plumbing ----------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # Like oras-py: registries that set cookies take us for a browser.
            session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
            adapter = _Adapter(pool_connections=1, pool_maxsize=2, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.verify = self.verify
            self._local.session = session
        return session

    def url(self, repository: str, kind: str, reference: str = "") -> str:
        return "%s/v2/%s/%s/%s" % (self.base_url, repository, kind, reference)

    def absolute(self, location: str) -> str:
        """A Location header made absolute (registries may answer with a path)."""
        return urllib.parse.urljoin(self.base_url + "/", location)

    def blob_url(self, repository: str, digest: str) -> str:
        return self.url(repository, "blobs", digest)

    def wait_before_retry(self, attempt: int) -> None:
        """Sleep the backoff of the given (0-based) retry, for callers with retry loops of their own."""
        self._sleep(self._backoff(attempt))

    def _backoff(self, attempt: int, response: requests.Response | None = None) -> float:
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), RETRY_AFTER_CAP)
        delay = min(BACKOFF_CAP, BACKOFF_BASE * (2**attempt))
        return delay * random.uniform(0.8, 1.2)

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        repository: str | None = None,
        actions: t.Sequence[str] = ("pull",),
        extra_scopes: t.Sequence[str] = (),
        headers: t.Mapping[str, str] | None = None,
        body: Body = None,
        params: t.Mapping[str, str] | None = None,
        ok: t.Collection[int] = (200,),
        stream: bool = False,
        safe: bool = True,
        allow_redirects: bool = True,
    ) -> requests.Response:
        """Send one request with auth, timeouts and (when `safe`) retries.

        `body` is bytes or a callable returning a fresh body (a file object
        positioned where the body starts), called again for every resend so
        a streamed body is never sent half-consumed. Returns the response
        when its status is in `ok`; raises RegistryError otherwise.
        """
        scopes: tuple[str, ...] = tuple(
            sorted(set(([repository_scope(repository, actions)] if repository else []) + list(extra_scopes)))
        )
        # Locations the registry sends (uploads, redirects to blob storage)
        # may name another host or plain http://: those never see credentials.
        with_credentials = same_origin(url, self.base_url)
        attempt = 0
        answered_challenge = False
        while True:
            send_headers = dict(headers or {})
            if with_credentials:
                send_headers.update(self._auth.header_for(scopes))
            try:
                response = self._session().request(
                    method,
                    url,
                    data=body() if callable(body) else body,
                    headers=send_headers,
                    params=params,
                    stream=stream,
                    timeout=(self.options.timeout, self.options.timeout),
                    allow_redirects=allow_redirects,
                    # Explicit: requests lets REQUESTS_CA_BUNDLE override a session's CA file.
                    verify=self.verify,
                )
            except requests.exceptions.SSLError as exc:
                raise connection_failure(exc, what, self.registry, self.options) from None
            except (*_RETRY_EXCEPTIONS, OSError) as exc:
                error = connection_failure(exc, what, self.registry, self.options)
                if safe and error.retryable and attempt < self.options.retries:
                    self._sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                raise error from None
            if response.status_code == 401 and not with_credentials and 401 not in ok:
                response.close()
                raise self._credentials_withheld(what, url)
            if response.status_code == 401 and not answered_challenge and with_credentials:
                answered_challenge = True
                challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
                if self._answer(challenge, scopes, send_headers.get("Authorization"), what):
                    response.close()
                    continue
                raise self.failure(what, response)
            if response.status_code in RETRY_STATUSES and safe and attempt < self.options.retries:
                delay = self._backoff(attempt, response)
                response.close()
                self._sleep(delay)
                attempt += 1
                continue
            if response.status_code in ok:
                return response
            raise self.failure(what, response)

    def _credentials_withheld(self, what: str, url: str) -> RegistryError:
        return RegistryError(
            "%s failed: %s asks for credentials, but credentials for registry %s go only to %s; the registry"
            " (or a proxy in front of it) must send clients to its own address or to pre-signed URLs"
            % (what, _origin_text(url), self.registry, _origin_text(self.base_url)),
            status=401,
            code="UNAUTHORIZED",
        )

    def failure(self, what: str, response: requests.Response) -> RegistryError:
        """The RegistryError for an unexpected answer (reads at most 64 KiB of its body)."""
        try:
            if getattr(response, "_content_consumed", False) or response.raw is None:
                body = response.content[:65536]
            else:
                body = response.raw.read(65536, decode_content=True)
        except Exception:
            body = b""
        finally:
            response.close()
        if response.status_code == 401 and not (self._auth.credentials.basic or self._auth.credentials.identity_token):
            return self._auth.no_credentials_error(what)
        error = describe_failure(what, response.status_code, body, response.reason or "")
        if response.status_code == 400 and self.options.plain_http and not parse_error_body(body):
            error = RegistryError(
                "%s failed: registry %s answered HTTP 400 to plain HTTP; if it serves HTTPS, set plain_http=false"
                % (what, self.registry),
                status=400,
            )
        return error

    def _answer(self, challenge: Challenge | None, scopes: tuple[str, ...], sent: str | None, what: str) -> bool:
        """Prepare credentials for a 401's challenge; True when a resend may succeed."""
        if challenge is None:
            return False
        if challenge.scheme == "basic":
            if not self._auth.credentials.basic or (sent or "").startswith("Basic "):
                return False
            with self._auth.lock:
                self._auth.basic_preemptive = True
            return True
        if challenge.scheme == "bearer" and challenge.realm:
            # One fetch at a time: threads refused together share the new token.
            with self._auth.token_lock:
                current = self._auth.header_for(scopes).get("Authorization", "")
                if current.startswith("Bearer ") and current != sent:
                    return True
                self._auth.forget_token(scopes)
                wanted = list(scopes)
                if challenge.scope and not scope_covered(challenge.scope, wanted):
                    wanted.append(challenge.scope)
                token, expires_in = self._fetch_token(challenge, wanted, what)
                self._auth.store_token(scopes, token, expires_in)
            return True
        return False

    def _fetch_token(self, challenge: Challenge, scopes: t.Sequence[str], what: str) -> tuple[str, float]:
        """A bearer token from the challenge's realm for these scopes (docker token protocol)."""
        check_token_realm(str(challenge.realm), self.options.plain_http, self.registry, what)
        credentials = self._auth.credentials
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
        realm = str(challenge.realm)
        attempt = 0
        while True:
            try:
                response = self._session().request(
                    method,
                    realm,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=(self.options.timeout, self.options.timeout),
                    verify=self.verify,
                    # Read below with a cap: a token answer is small, whatever the server sends.
                    stream=True,
                )
            except requests.exceptions.SSLError as exc:
                raise connection_failure(exc, what + " (token from %s)" % realm, self.registry, self.options) from None
            except (*_RETRY_EXCEPTIONS, OSError) as exc:
                error = connection_failure(exc, what + " (token from %s)" % realm, self.registry, self.options)
                if error.retryable and attempt < self.options.retries:
                    self._sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                raise error from None
            if response.status_code in RETRY_STATUSES and attempt < self.options.retries:
                response.close()
                self._sleep(self._backoff(attempt, response))
                attempt += 1
                continue
            break
        if response.status_code in (401, 403):
            response.close()
            if not (credentials.basic or credentials.identity_token):
                raise self._auth.no_credentials_error(what)
            raise RegistryError(
                "%s failed: the token server %s refused the credentials (HTTP %d); check username and password"
                " (or the docker_config entry for %s)" % (what, realm, response.status_code, self.registry),
                status=401,
                code="UNAUTHORIZED",
            )
        if response.status_code != 200:
            raise self.failure("%s (token from %s)" % (what, realm), response)
        document = self._token_document(response, what, realm)
        token = document.get("token") or document.get("access_token") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError("%s failed: the token server %s answered without a token" % (what, realm))
        try:
            expires_in = float(document.get("expires_in") or 60)
        except (TypeError, ValueError):
            expires_in = 60.0
        return token, expires_in

    def _token_document(self, response: requests.Response, what: str, realm: str) -> t.Any:
        """The token server's JSON answer, read up to MAX_TOKEN_RESPONSE bytes ({} when it is not JSON)."""
        body = bytearray()
        try:
            for chunk in response.iter_content(65536):
                body += chunk
                if len(body) > MAX_TOKEN_RESPONSE:
                    raise RegistryError(
                        "%s failed: the token server %s answered with more than 1 MiB; refusing it" % (what, realm)
                    )
        except requests.exceptions.RequestException as exc:
            raise connection_failure(exc, what + " (token from %s)" % realm, self.registry, self.options) from None
        finally:
            response.close()
        try:
            return json.loads(bytes(body))
        except ValueError:
            return {}

    # ---- oras-py integration -----------------------------------------------

    def do_request(  # type: ignore[override]
        self,
        url: str,
        method: str = "GET",
        data: t.Any = None,
        headers: dict[str, str] | None = None,
        json: t.Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """oras-py's request hook, routed through our auth, timeouts and retries."""
        match = _REPOSITORY_IN_URL.search(urllib.parse.urlparse(url).path)
        repository = match.group("name") if match else None
        body = data if json is None else _json_bytes(json)
        return self.request(
            method,
            url,
            what="%s %s" % (method, url),
            repository=repository,
            headers=headers,
            body=body,
            ok=range(100, 600),
            stream=stream,
            safe=method in ("GET", "HEAD"),
        )

    def _check_200_response(self, response: requests.Response) -> None:
        if response.status_code != 200:
            raise self.failure("listing tags on registry %s" % self.registry, response)

    # ---- public API ----------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/: fails early and clearly on a wrong address, TLS, scheme or credentials."""
        self.request("GET", self.base_url + "/v2/", what="connecting to registry %s" % self.registry, ok=(200,))

    def list_tags(self, repository: str) -> list[str]:
        """Every tag of a repository (oras-py follows the pagination links)."""
        return list(self.get_tags(oras.container.Container(repository, registry=self.registry)))

    def auth_headers(self, repository: str, actions: t.Sequence[str] = ("pull",)) -> dict[str, str]:
        """Headers a plain HTTP client needs to GET this repository's blobs."""
        scopes = (repository_scope(repository, actions),)
        header = self._auth.header_for(scopes)
        if header:
            return header
        # Learn the scheme the registry wants from a harmless read.
        self.request(
            "GET",
            self.url(repository, "tags", "list"),
            what="authenticating to %s" % self.registry,
            repository=repository,
            actions=actions,
            ok=(200, 404),
        ).close()
        return self._auth.header_for(scopes)

    def _manifest_request(
        self, method: str, repository: str, reference: str, what: str, accept: t.Sequence[str], **kwargs: t.Any
    ) -> requests.Response:
        return self.request(
            method,
            self.url(repository, "manifests", reference),
            what=what,
            repository=repository,
            headers={"Accept": ", ".join(accept)},
            **kwargs,
        )

    def get_manifest(
        self, repository: str, reference: str, accept: t.Sequence[str] = ALL_MANIFEST_TYPES
    ) -> tuple[bytes, str, str]:
        """(exact bytes, media type, digest of the bytes) of a manifest or index."""
        what = "reading manifest %s/%s%s%s" % (self.registry, repository, "@" if ":" in reference else ":", reference)
        response = self._manifest_request("GET", repository, reference, what, accept, stream=True)
        try:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > MAX_DOCUMENT_SIZE:
                raise RegistryError(
                    "%s failed: the document is %s bytes, more than a manifest may be (4 MiB)" % (what, declared)
                )
            chunks: list[bytes] = []
            size = 0
            for chunk in BlobStream(response, 0, what, self).iter_chunks(65536):
                size += len(chunk)
                if size > MAX_DOCUMENT_SIZE:
                    raise RegistryError("%s failed: the document is more than a manifest may be (4 MiB)" % what)
                chunks.append(chunk)
        finally:
            response.close()
        data = b"".join(chunks)
        digest = sha256_digest(data)
        if SHA256_DIGEST_RE.match(reference) and digest != reference:
            raise RegistryError(
                "%s failed: the registry sent a document whose digest is %s" % (what, digest), code="DIGEST_INVALID"
            )
        media_type = _media_type(response.headers.get("Content-Type")) or declared_media_type(data)
        return data, media_type, digest

    def head_manifest(self, repository: str, reference: str) -> dict[str, t.Any] | None:
        """{digest, mediaType, size} of a tag or digest, or None when the repository lacks it."""
        what = "checking manifest %s/%s %s" % (self.registry, repository, reference)
        response = self._manifest_request("HEAD", repository, reference, what, ALL_MANIFEST_TYPES, ok=(200, 404))
        response.close()
        if response.status_code == 404:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        length = response.headers.get("Content-Length", "")
        if not digest or not SHA256_DIGEST_RE.match(digest) or not length.isdigit():
            # Registries need not send the digest on HEAD: hash the document instead.
            data, media_type, digest = self.get_manifest(repository, reference)
            return {"digest": digest, "mediaType": media_type, "size": len(data)}
        return {"digest": digest, "mediaType": _media_type(response.headers.get("Content-Type")), "size": int(length)}

    def head_blob(self, repository: str, digest: str, actions: t.Sequence[str] = ("pull",)) -> int | None:
        """The size of a blob the repository holds, or None when it does not."""
        response = self.request(
            "HEAD",
            self.blob_url(repository, digest),
            what="checking blob %s in %s/%s" % (digest, self.registry, repository),
            repository=repository,
            actions=actions,
            ok=(200, 404),
        )
        response.close()
        if response.status_code == 404:
            return None
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else 0

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> BlobStream:
        """A streaming GET of a blob, from `offset` when the registry honours Range."""
        what = "downloading blob %s from %s/%s" % (digest, self.registry, repository)
        headers = {"Range": "bytes=%d-" % offset} if offset > 0 else {}
        response = self.request(
            "GET",
            self.blob_url(repository, digest),
            what=what,
            repository=repository,
            headers=headers,
            stream=True,
            ok=(200, 206),
        )
        start = 0
        if response.status_code == 206:
            content_range = response.headers.get("Content-Range", "")
            match = re.match(r"bytes (\d+)-", content_range)
            if not match or int(match.group(1)) != offset:
                response.close()
                raise RegistryError(
                    "%s failed: the registry answered Range %d- with %r" % (what, offset, content_range),
                    code="RANGE_INVALID",
                    retryable=False,
                )
            start = offset
        return BlobStream(response, start, what, self)

    def put_manifest(
        self, repository: str, reference: str, data: bytes, media_type: str, what: str | None = None
    ) -> str:
        """PUT exactly these bytes under a tag or digest; returns their digest."""
        digest = sha256_digest(data)
        what = what or "pushing %s %s to %s/%s" % (_kind(media_type), reference, self.registry, repository)
        response = self.request(
            "PUT",
            self.url(repository, "manifests", reference),
            what=what,
            repository=repository,
            actions=("pull", "push"),
            headers={"Content-Type": media_type},
            body=data,
            ok=(200, 201),
        )
        response.close()
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise RegistryError(
                "%s failed: the registry stored digest %s, not %s (it rewrote the document)" % (what, stored, digest),
                code="DIGEST_INVALID",
            )
        return digest

    def start_upload(
        self, repository: str, mount: str | None = None, mount_from: str | None = None, what: str | None = None
    ) -> tuple[bool, str | None]:
        """POST an upload session; with mount/mount_from try a cross-repository mount first.

        Returns (mounted, upload location). A registry that cannot mount
        answers with an upload session instead, which the caller may use.
        """
        session = self.open_upload(repository, mount, mount_from, what)
        return (True, None) if session is None else (False, session.location)

    def open_upload(
        self, repository: str, mount: str | None = None, mount_from: str | None = None, what: str | None = None
    ) -> UploadSession | None:
        """Like start_upload, with the session's chunk minimum; None when the blob was mounted."""
        params = {"mount": mount, "from": mount_from} if mount and mount_from else None
        extra = (repository_scope(mount_from, ("pull",)),) if params and mount_from else ()
        what = what or "starting an upload to %s/%s" % (self.registry, repository)
        response = self.request(
            "POST",
            self.url(repository, "blobs", "uploads/"),
            what=what,
            repository=repository,
            actions=("pull", "push"),
            extra_scopes=extra,
            params=params,
            ok=(201, 202),
        )
        response.close()
        if response.status_code == 201 and params:
            return None
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(
                "%s failed: the registry answered without an upload Location" % what, code="BLOB_UPLOAD_INVALID"
            )
        minimum = response.headers.get("OCI-Chunk-Min-Length", "")
        return UploadSession(self.absolute(location), int(minimum) if minimum.isdigit() else 0)


@dataclass(frozen=True)
class UploadSession:
    """Where to send an upload's data, and the smallest PATCH the registry accepts."""

    location: str
    chunk_min: int = 0


def _json_bytes(document: t.Any) -> bytes:
    return json.dumps(document).encode("utf-8")


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip()


def _kind(media_type: str) -> str:
    return "index" if media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST) else "manifest"
