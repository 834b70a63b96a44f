# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The OCI distribution client: one HTTP session per thread, one request loop, the registry API.

Every request goes through `RegistryClient.request()`: a timeout on every
send; retries with backoff on 429/5xx and connection errors for requests that
can be repeated harmlessly, each reported through `on_retry`; redirects
followed by hand (`allow_redirects=False`), with `Authorization` sent only to
the origin the credentials belong to, a 401 answered only when it comes from
that origin, no https -> http downgrade and a bounded number of hops; bodies
that are not blob streams read with a cap and the connection closed instead
of drained. Token requests run through the same loop with the token server's
origin as theirs. The client knows nothing of images or platforms.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import threading
import time
import typing as t
import urllib.parse
from dataclasses import dataclass

if t.TYPE_CHECKING:  # only for annotations: the import itself is deferred, see _requests()
    import requests

from ansible_collections.ironcore.image.plugins.module_utils._auth import (
    MAX_TOKEN_RESPONSE,
    AuthState,
    Challenge,
    fetch_token,
    load_credentials,
    origin_of,
    origin_text,
    parse_challenge,
    repository_scope,
    same_origin,
    scope_covered,
)
from ansible_collections.ironcore.image.plugins.module_utils._errors import (
    RETRY_STATUSES,
    RegistryError,
    describe_failure,
    parse_error_body,
)
from ansible_collections.ironcore.image.plugins.module_utils._io import sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MAX_DOCUMENT_SIZE,
    OCI_INDEX,
    OCI_MANIFEST,
    SHA256_DIGEST_RE,
    declared_media_type,
    names_hint,
)
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import RegistryOptions
from ansible_collections.ironcore.image.plugins.module_utils._transfer import backoff_delay

ALL_MANIFEST_TYPES: tuple[str, ...] = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)
# http.client sends request bodies in 8 KiB writes by default; 1 MiB writes
# cut the syscall count of a multi-GiB upload by two orders of magnitude.
SEND_BLOCK_SIZE = 1024 * 1024
# Answers that are not blob streams (/v2/, upload answers, error bodies, tag
# lists) are small; more than this is a broken or hostile server.
MAX_SMALL_BODY = 64 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
# How many tags a "tag not found" error lists.
TAG_HINT_COUNT = 10
# Tags read for that hint, so that the closest names are among them: one page, which stays below
# MAX_SMALL_BODY even when every tag has the longest length a tag may have (128 characters).
TAG_HINT_LIST = 400

Body = t.Union[None, bytes, t.Mapping[str, str], t.Callable[[], t.Any]]


# ---- transport -------------------------------------------------------------


# requests (with urllib3 and ssl) is the largest import of a module's start, tens of milliseconds. A module on
# a path that sends no request (a fetch, info or sign from a layout) never pays it: requests is imported on the
# first request, not when this file is. A missing requests is reported by the modules' _deps.require() first.
@functools.lru_cache(maxsize=None)
def _requests() -> t.Any:
    """The requests package, imported on first use."""
    import requests
    import requests.adapters

    return requests


@functools.lru_cache(maxsize=None)
def _retry_exceptions() -> tuple[type[BaseException], ...]:
    """What requests raises for a connection that dropped, timed out or broke mid-body (none without it)."""
    try:
        exceptions = _requests().exceptions
    except ImportError:
        return ()
    return (exceptions.ConnectionError, exceptions.Timeout, exceptions.ChunkedEncodingError)


def _transport_exceptions() -> tuple[type[BaseException], ...]:
    """What a dropped or refused connection raises, whichever layer notices it first."""
    return (*_retry_exceptions(), OSError)


@functools.lru_cache(maxsize=None)
def _adapter_class() -> t.Any:
    """requests' HTTPAdapter that sends bodies in large writes (a class built on first use, see _requests())."""

    class _Adapter(_requests().adapters.HTTPAdapter):  # type: ignore[misc]
        """Connection pool that sends bodies in large writes."""

        def init_poolmanager(self, *args: t.Any, **kwargs: t.Any) -> None:
            kwargs["blocksize"] = SEND_BLOCK_SIZE
            super().init_poolmanager(*args, **kwargs)

    return _Adapter


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
    import ssl  # deferred with requests (see _requests()): only a failed request gets here

    causes = list(_causes(exc))
    if any(isinstance(cause, ssl.SSLCertVerificationError) for cause in causes):
        detail = next(c for c in causes if isinstance(c, ssl.SSLCertVerificationError))
        return RegistryError(
            "%s failed: the TLS certificate of registry %s is not trusted (%s); give the CA that signed it in"
            " ca_cert, or set validate_certs=false if you trust the registry otherwise"
            % (what, registry, getattr(detail, "verify_message", None) or "verification failed"),
            code="CERTIFICATE_UNTRUSTED",
            option="ca_cert",
        )
    ssl_errors = [cause for cause in causes if isinstance(cause, ssl.SSLError)]
    if any(getattr(cause, "reason", None) in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE") for cause in ssl_errors):
        return RegistryError(
            "%s failed: registry %s does not speak TLS; if it really serves plain HTTP, set plain_http=true"
            % (what, registry),
            code="TLS_FAILED",
            option="plain_http",
        )
    if ssl_errors:
        return RegistryError(
            "%s failed: TLS handshake with registry %s failed (%s); check ca_cert and validate_certs"
            % (what, registry, getattr(ssl_errors[0], "reason", None) or ssl_errors[0].__class__.__name__),
            code="TLS_FAILED",
            option="ca_cert",
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
    import urllib3.exceptions  # loaded with requests, which raised what is examined here

    if any(
        isinstance(cause, (_requests().exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))
        for cause in causes
    ):
        return RegistryError(
            "%s failed: registry %s did not answer within timeout=%ss; retry later or raise timeout"
            % (what, registry, _seconds(options.timeout)),
            code="TIMEOUT",
            retryable=True,
            option="timeout",
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


def _size_text(size: int) -> str:
    return "%d MiB" % (size // (1024 * 1024)) if size >= 1024 * 1024 else "%d KiB" % (size // 1024)


# How a guarded stream (options.min_rate) is read: in pieces this small, so that the watch sees its progress
# within a window even at the minimum rate, however large the caller's chunks are.
STALL_PIECE = 64 * 1024


def _shut_down(response: t.Any) -> None:
    """Wake a read blocked on this response's socket: shutdown() ends a recv() in another thread, close() does not."""
    raw = getattr(response, "raw", None)
    connection = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is None:
        # Below urllib3 2's connection: http.client's buffered socket file.
        sock = getattr(getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None), "_sock", None)
    if isinstance(sock, socket.socket):
        try:
            # The plain socket's shutdown, also for TLS: SSLSocket.shutdown() would drop the TLS state under
            # the reading thread's feet.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


class _StallWatch:
    """Cuts a stream that gains fewer than `rate` bytes per second over a window of `window` seconds.

    A socket timeout only notices silence: a server that sends one byte every
    few seconds keeps every read alive and a transfer running for days. This
    thread looks at what the reader received once a window, and shuts the
    connection down when it is below the rate (less one piece, which may
    still be in flight), so that the blocked read ends and the caller can ask
    another source.
    """

    def __init__(self, response: t.Any, rate: float, window: float):
        self.received = 0
        self.stalled: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(response, rate, window), daemon=True)
        self._thread.start()

    def _watch(self, response: t.Any, rate: float, window: float) -> None:
        needed = max(1, int(rate * window) - STALL_PIECE)
        checked = 0
        while not self._stop.wait(window):
            gained = self.received - checked
            # Stopped meanwhile: the body is read and its connection may be back in the pool for another request.
            if gained < needed and not self._stop.is_set():
                self.stalled = "the stream stalled: %d bytes in %ss, below the minimum rate of %s/s" % (
                    gained,
                    _seconds(window),
                    _size_text(int(rate)),
                )
                _shut_down(response)
                return
            checked = self.received

    def stop(self) -> None:
        self._stop.set()


class BlobStream:
    """The body of a blob GET, read in chunks; close() when done."""

    def __init__(self, response: requests.Response, offset: int, what: str, client: RegistryClient):
        self._response = response
        self.offset = offset
        # Whether the server answered a range (206); a 200 is the whole blob, whatever was asked.
        self.ranged = response.status_code == 206
        self._what = what
        self._client = client

    def iter_chunks(self, size: int = 1024 * 1024) -> t.Iterator[bytes]:
        rate = self._client.options.min_rate
        try:
            if rate > 0:
                yield from self._guarded_chunks(size, rate)
            else:
                yield from self._response.iter_content(size)
        except _transport_exceptions() as exc:
            error = connection_failure(exc, self._what, self._client.registry, self._client.options)
            error.retryable = True
            raise error from exc

    def _stalled(self, reason: str) -> RegistryError:
        return RegistryError("%s failed: %s" % (self._what, reason), code="STALLED", retryable=True)

    def _guarded_chunks(self, size: int, rate: float) -> t.Iterator[bytes]:
        """Chunks of `size` bytes, read in pieces under a _StallWatch over `timeout` seconds."""
        watch = _StallWatch(self._response, rate, self._client.options.timeout)
        try:
            gathered = bytearray()
            for piece in self._response.iter_content(min(size, STALL_PIECE)):
                watch.received += len(piece)
                gathered += piece
                if len(gathered) >= size:
                    yield bytes(gathered)
                    gathered = bytearray()
            if gathered:
                yield bytes(gathered)
        except Exception as exc:
            # Whatever the cut connection raised (TLS or HTTP framing), the cause is the stall.
            if watch.stalled:
                raise self._stalled(watch.stalled) from exc
            raise
        finally:
            watch.stop()
        if watch.stalled:
            # A body without a length just ends when its connection is shut down.
            raise self._stalled(watch.stalled)

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()


@dataclass(frozen=True)
class UploadSession:
    """Where to send an upload's data, and the smallest PATCH the registry accepts."""

    location: str
    chunk_min: int = 0


@dataclass
class _Send:
    """One request as it goes out, and as it changes along redirects."""

    method: str
    url: str
    headers: t.Mapping[str, str]
    body: Body
    params: t.Any
    # The origin the credentials belong to: only it gets `authorization`, only its 401s are answered.
    credential_origin: str
    authorization: t.Mapping[str, str]
    # The body itself is a secret (an OAuth2 refresh token): it must not follow a redirect elsewhere.
    secret_body: bool = False


class RegistryClient:
    """One registry (`host[:port]`), spoken to with our transport and auth."""

    def __init__(self, registry: str, options: RegistryOptions, on_retry: t.Callable[[str], None] | None = None):
        self.registry = registry
        self.options = options
        self.verify: bool | str = (options.ca_cert or True) if options.validate_certs else False
        self.scheme = "http" if options.plain_http else "https"
        self.base_url = "%s://%s" % (self.scheme, registry)
        self._auth = AuthState(registry, load_credentials(registry, options))
        self._local = threading.local()
        self._sleep = time.sleep
        # Told of every retry, as one line (modules pass module.warn); `retries` counts them.
        self.on_retry = on_retry
        self.retries = 0
        self._retry_lock = threading.Lock()

    # ---- plumbing ----------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            from http.cookiejar import DefaultCookiePolicy  # deferred with requests (see _requests())

            session = _requests().Session()
            # Registries that set cookies would take us for a browser: keep none.
            session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
            adapter = _adapter_class()(pool_connections=1, pool_maxsize=2, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.verify = self.verify
            self._local.session = session
        return t.cast("requests.Session", session)

    def url(self, repository: str, kind: str, reference: str = "") -> str:
        return "%s/v2/%s/%s/%s" % (self.base_url, repository, kind, reference)

    def absolute(self, location: str) -> str:
        """A Location header made absolute (registries may answer with a path)."""
        return urllib.parse.urljoin(self.base_url + "/", location)

    def blob_url(self, repository: str, digest: str) -> str:
        return self.url(repository, "blobs", digest)

    def wait_before_retry(self, attempt: int, what: str = "", reason: str = "") -> None:
        """Report and sleep the backoff of the given (0-based) retry, for callers with retry loops of their own."""
        if what:
            self._note_retry(what, attempt, reason)
        self._sleep(self._backoff(attempt))

    def _note_retry(self, what: str, attempt: int, reason: str) -> None:
        with self._retry_lock:
            self.retries += 1
        if self.on_retry is not None:
            self.on_retry("retrying %s (attempt %d of %d): %s" % (what, attempt + 2, self.options.retries + 1, reason))

    def _backoff(self, attempt: int, response: requests.Response | None = None) -> float:
        return backoff_delay(attempt, response.headers.get("Retry-After") if response is not None else None)

    def _send_following_redirects(self, send: _Send, what: str) -> tuple[requests.Response, str]:
        """Send, following redirects by hand; (final response, the URL that gave it).

        requests would decide once, for the first URL, whether credentials go
        along: here every hop decides again for its own origin.
        """
        method, url, body, params = send.method, send.url, send.body, send.params
        for _hop in range(MAX_REDIRECTS + 1):
            headers = dict(send.headers)
            if same_origin(url, send.credential_origin):
                headers.update(send.authorization)
            response = self._session().request(
                method,
                url,
                data=body() if callable(body) else body,
                headers=headers,
                params=params,
                stream=True,
                timeout=(self.options.timeout, self.options.timeout),
                allow_redirects=False,
                # Explicit: requests lets REQUESTS_CA_BUNDLE override a session's CA file.
                verify=self.verify,
            )
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                return response, url
            response.close()
            target = urllib.parse.urljoin(response.url or url, location)
            self._check_redirect(url, target, send, what)
            if response.status_code == 303 or (response.status_code in (301, 302) and method not in ("GET", "HEAD")):
                method, body = "GET", None
            # The query is part of the Location now.
            url, params = target, None
        raise RegistryError(
            "%s failed: more than %d redirects, the last to %s; check the registry (or the proxy in front of it)"
            % (what, MAX_REDIRECTS, origin_text(url)),
            code="TOO_MANY_REDIRECTS",
        )

    def _check_redirect(self, current: str, target: str, send: _Send, what: str) -> None:
        origin = origin_of(target)
        if origin is None:
            raise RegistryError(
                "%s failed: %s redirected to %s; refusing to follow"
                % (what, origin_text(current), origin_text(target)),
                code="REDIRECT_REFUSED",
            )
        if origin[0] == "http" and (origin_of(current) or ("",))[0] == "https":
            raise RegistryError(
                "%s failed: %s redirected from HTTPS to plain HTTP at %s; refusing the downgrade; the registry (or the"
                " proxy in front of it) must redirect to HTTPS" % (what, origin_text(current), origin_text(target)),
                code="REDIRECT_REFUSED",
            )
        if send.secret_body and not same_origin(target, send.credential_origin):
            raise RegistryError(
                "%s failed: %s redirected to %s; refusing to send credentials there; configure the token server"
                " (realm) at its final address" % (what, origin_text(current), origin_text(target)),
                code="REDIRECT_REFUSED",
            )

    def _loop(
        self,
        send: _Send,
        *,
        what: str,
        ok: t.Collection[int],
        stream: bool,
        safe: bool,
        authorize: t.Callable[[], t.Mapping[str, str]],
        answer: t.Callable[[requests.Response, t.Mapping[str, str]], bool] | None = None,
        body_cap: int = MAX_SMALL_BODY,
    ) -> requests.Response:
        """The one request/retry loop: registry requests and token requests alike."""
        attempt = 0
        while True:
            send.authorization = authorize()
            try:
                response, final_url = self._send_following_redirects(send, what)
            except _requests().exceptions.SSLError as exc:
                raise connection_failure(exc, what, self.registry, self.options) from exc
            except _transport_exceptions() as exc:
                error = connection_failure(exc, what, self.registry, self.options)
                if safe and error.retryable and attempt < self.options.retries:
                    self.wait_before_retry(attempt, what, str(error).partition(" failed: ")[2])
                    attempt += 1
                    continue
                raise error from exc
            status = response.status_code
            if status == 401 and 401 not in ok:
                if not same_origin(final_url, send.credential_origin):
                    response.close()
                    raise self._credentials_withheld(what, final_url, send.credential_origin)
                if answer is not None and answer(response, send.authorization):
                    response.close()
                    continue
                raise self.failure(what, response)
            if status in RETRY_STATUSES and safe and attempt < self.options.retries:
                delay = self._backoff(attempt, response)
                response.close()
                self._note_retry(what, attempt, "registry answered HTTP %d" % status)
                self._sleep(delay)
                attempt += 1
                continue
            if status not in ok:
                raise self.failure(what, response)
            if not stream:
                self._read_small(response, what, final_url, body_cap)
            return response

    def _read_small(self, response: requests.Response, what: str, url: str, cap: int) -> None:
        """Read a body that is not a blob stream, at most `cap` bytes, and close without draining the rest."""
        body = bytearray()
        try:
            for chunk in response.iter_content(65536):
                body += chunk
                if len(body) > cap:
                    raise RegistryError(
                        "%s failed: %s answered with more than %s; refusing it"
                        % (what, origin_text(url), _size_text(cap))
                    )
        except _requests().exceptions.RequestException as exc:
            raise connection_failure(exc, what, self.registry, self.options) from exc
        finally:
            response.close()
        response._content = bytes(body)
        # requests' own flag that the body was read (no public setter), so .content returns ours.
        response._content_consumed = True  # type: ignore[attr-defined]

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
    ) -> requests.Response:
        """Send one request with auth, timeouts and (when `safe`) retries.

        `body` is bytes or a callable returning a fresh body (a file object
        positioned where the body starts), called again for every resend so
        a streamed body is never sent half-consumed. Returns the response
        when its status is in `ok`; raises RegistryError otherwise. Unless
        `stream`, the body is read (at most 64 KiB) and the response closed.
        """
        scopes: tuple[str, ...] = tuple(
            sorted(set(([repository_scope(repository, actions)] if repository else []) + list(extra_scopes)))
        )
        answered: list[bool] = []

        def answer(response: requests.Response, sent: t.Mapping[str, str]) -> bool:
            if answered:
                return False
            answered.append(True)
            challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
            return self._answer(challenge, scopes, sent.get("Authorization"), what)

        send = _Send(method, url, headers or {}, body, params, self.base_url, {})
        return self._loop(
            send,
            what=what,
            ok=ok,
            stream=stream,
            safe=safe,
            authorize=lambda: self._auth.header_for(scopes),
            answer=answer,
        )

    def _credentials_withheld(self, what: str, url: str, credential_origin: str) -> RegistryError:
        return RegistryError(
            "%s failed: %s asks for credentials, but credentials for registry %s go only to %s; the registry"
            " (or a proxy in front of it) must send clients to its own address or to pre-signed URLs"
            % (what, origin_text(url), self.registry, origin_text(credential_origin)),
            status=401,
            code="UNAUTHORIZED",
        )

    def failure(self, what: str, response: requests.Response) -> RegistryError:
        """The RegistryError for an unexpected answer (reads at most 64 KiB of its body)."""
        try:
            if getattr(response, "_content_consumed", False) or response.raw is None:
                body = response.content[:MAX_SMALL_BODY]
            else:
                body = response.raw.read(MAX_SMALL_BODY, decode_content=True)
        except Exception:  # pylint: disable=broad-exception-caught  # the body only adds detail
            body = b""
        finally:
            response.close()
        if response.status_code == 401 and not self._auth.credentials.present:
            return self._auth.no_credentials_error(what)
        error = describe_failure(what, response.status_code, body, response.reason or "")
        if response.status_code == 400 and self.options.plain_http and not parse_error_body(body):
            error = RegistryError(
                "%s failed: registry %s answered HTTP 400 to plain HTTP; if it serves HTTPS, set plain_http=false"
                % (what, self.registry),
                status=400,
                option="plain_http",
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
        return fetch_token(self._token_request, challenge, scopes, self._auth, what, self.options.plain_http)

    def _token_request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: dict[str, str],
        params: list[tuple[str, str]],
        data: dict[str, str] | None,
        ok: t.Collection[int],
    ) -> requests.Response:
        """A token request through the one loop; the credentials belong to the realm's origin only."""
        authorization = {key: value for key, value in headers.items() if key == "Authorization"}
        plain = {key: value for key, value in headers.items() if key != "Authorization"}
        send = _Send(method, url, plain, data, params, url, authorization, secret_body=data is not None)
        return self._loop(
            send,
            what=what,
            ok=ok,
            stream=False,
            safe=True,
            authorize=lambda: authorization,
            body_cap=MAX_TOKEN_RESPONSE,
        )

    # ---- public API ----------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/: fails early and clearly on a wrong address, TLS, scheme or credentials."""
        self.request("GET", self.base_url + "/v2/", what="connecting to registry %s" % self.registry, ok=(200,))

    def list_tags(self, repository: str, limit: int = 100) -> list[str] | None:
        """Up to `limit` tags of a repository (one page), or None when the registry does not know it."""
        response = self.request(
            "GET",
            self.url(repository, "tags", "list"),
            what="listing tags of %s/%s" % (self.registry, repository),
            repository=repository,
            params={"n": str(limit)},
            ok=(200, 404),
        )
        if response.status_code == 404:
            return None
        try:
            tags = json.loads(response.content).get("tags")
        except (ValueError, AttributeError, RecursionError):
            return []
        return [tag for tag in tags or [] if isinstance(tag, str)][:limit]

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
            # Only the status matters: the list itself may be long.
            stream=True,
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
        try:
            response = self._manifest_request("GET", repository, reference, what, accept, stream=True)
        except RegistryError as exc:
            if exc.status == 404 and not SHA256_DIGEST_RE.match(reference):
                raise RegistryError(
                    "%s; %s" % (exc, self._tag_hint(repository, reference)), status=exc.status, code=exc.code
                ) from exc
            raise
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

    def _tag_hint(self, repository: str, reference: str) -> str:
        """What the repository has instead of a missing tag, the closest to it first, for the error message."""
        try:
            tags = self.list_tags(repository, TAG_HINT_LIST)
        except RegistryError:
            return "its tags could not be listed"
        if tags is None:
            return "the registry does not know repository %s" % repository
        if not tags:
            return "repository %s has no tags" % repository
        return "repository %s has tags, closest first: %s" % (repository, names_hint(reference, tags, TAG_HINT_COUNT))

    def head_manifest(self, repository: str, reference: str) -> dict[str, t.Any] | None:
        """{digest, mediaType, size} of a tag or digest, or None when the repository lacks it."""
        what = "checking manifest %s/%s %s" % (self.registry, repository, reference)
        response = self._manifest_request("HEAD", repository, reference, what, ALL_MANIFEST_TYPES, ok=(200, 404))
        if response.status_code == 404:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        length = response.headers.get("Content-Length", "")
        if not digest or not SHA256_DIGEST_RE.match(digest) or not length.isdigit():
            # Registries need not send the digest on HEAD: hash the document instead.
            data, media_type, digest = self.get_manifest(repository, reference)
            return {"digest": digest, "mediaType": media_type, "size": len(data)}
        return {"digest": digest, "mediaType": _media_type(response.headers.get("Content-Type")), "size": int(length)}

    def get_referrers(self, repository: str, subject_digest: str, artifact_type: str | None = None) -> bytes | None:
        """The body of GET /v2/<repository>/referrers/<digest> (an index, at most 4 MiB), or None on 404.

        A registry without the referrers API (distribution 2.8) answers 404;
        one with it answers 200 even for a subject without referrers.
        """
        what = "listing the referrers of %s in %s/%s" % (subject_digest, self.registry, repository)
        response = self.request(
            "GET",
            self.url(repository, "referrers", subject_digest),
            what=what,
            repository=repository,
            headers={"Accept": OCI_INDEX},
            params={"artifactType": artifact_type} if artifact_type else None,
            ok=(200, 404),
            stream=True,
        )
        try:
            if response.status_code == 404:
                return None
            data = bytearray()
            for chunk in BlobStream(response, 0, what, self).iter_chunks(65536):
                data += chunk
                if len(data) > MAX_DOCUMENT_SIZE:
                    raise RegistryError("%s failed: the registry answered with more than 4 MiB; refusing it" % what)
        finally:
            response.close()
        return bytes(data)

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
        if response.status_code == 404:
            return None
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else 0

    def open_blob(self, repository: str, digest: str, offset: int = 0, length: int | None = None) -> BlobStream:
        """A streaming GET of a blob, from `offset` (and `length` bytes of it) when the registry honours Range.

        A registry that ignores Range answers 200 and the whole blob: the stream's offset is then 0.
        """
        what = "downloading blob %s from %s/%s" % (digest, self.registry, repository)
        headers: dict[str, str] = {}
        if length is not None:
            headers["Range"] = "bytes=%d-%d" % (offset, offset + max(length, 1) - 1)
        elif offset > 0:
            headers["Range"] = "bytes=%d-" % offset
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
        return self.put_manifest_answer(repository, reference, data, media_type, what)[0]

    def put_manifest_answer(
        self, repository: str, reference: str, data: bytes, media_type: str, what: str | None = None
    ) -> tuple[str, t.Mapping[str, str]]:
        """put_manifest(), with the headers of the registry's answer (OCI-Subject, say)."""
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
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise RegistryError(
                "%s failed: the registry stored digest %s, not %s (it rewrote the document)" % (what, stored, digest),
                code="DIGEST_INVALID",
            )
        return digest, response.headers

    def open_upload(
        self, repository: str, mount: str | None = None, mount_from: str | None = None, what: str | None = None
    ) -> UploadSession | None:
        """POST an upload session (with mount/mount_from: try a cross-repository mount first).

        Returns the session and its chunk minimum, or None when the blob was
        mounted. A registry that cannot mount answers with an upload session
        instead, which the caller may use.
        """
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
        if response.status_code == 201 and params:
            return None
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(
                "%s failed: the registry answered without an upload Location" % what, code="BLOB_UPLOAD_INVALID"
            )
        minimum = response.headers.get("OCI-Chunk-Min-Length", "")
        return UploadSession(self.absolute(location), int(minimum) if minimum.isdigit() else 0)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip()


def _kind(media_type: str) -> str:
    return "index" if media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST) else "manifest"
