# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The collection's one error family, and what registries say when they refuse.

`ImageError` is the base every failure a user sees derives from: a one-line
message (what failed and what to do), whether trying again may help, and the
option to look at. `RegistryError` adds the HTTP status and OCI error code of
a registry's answer; the OCI error-body parsing and the advice per code and
status live here with it. Nothing here does I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_REGISTRY_MESSAGE_LIMIT = 300


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def naming_option(message: str, option: str | None) -> str:
    """The message, with the option to look at named when it does not name it already."""
    if not option or re.search(r"(?<![\w.])%s(?!\w)" % re.escape(option), message):
        return message
    return "%s (option: %s)" % (message, option)


class ImageError(Exception):
    """A failure to show the user as one line.

    `retryable` says whether doing the same again may succeed (a dropped
    connection, a timeout, a busy registry); `option` names the option the
    user should look at, when one is to blame.
    """

    def __init__(self, message: str, retryable: bool = False, option: str | None = None):
        super().__init__(naming_option(one_line(message), option))
        self.retryable = retryable
        self.option = option


class RegistryError(ImageError):
    """A registry operation failed; `status` is the HTTP status when the registry answered, `code` its OCI code."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        retryable: bool = False,
        option: str | None = None,
    ):
        super().__init__(message, retryable=retryable, option=option)
        self.status = status
        self.code = code


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
    except (ValueError, UnicodeDecodeError, RecursionError):
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
    advice = ERROR_ADVICE.get(code or "") or status_advice(status)
    message = "%s failed: registry answered HTTP %d (%s)" % (what, status, said)
    if advice:
        message += "; " + advice
    return RegistryError(message, status=status, code=code, retryable=status in RETRY_STATUSES)


def status_advice(status: int) -> str:
    if status == 404:
        return "it does not exist on the registry"
    if status == 415:
        return "the registry does not accept this media type"
    if status in RETRY_STATUSES:
        return "the registry is failing or overloaded: retry later"
    return ""
