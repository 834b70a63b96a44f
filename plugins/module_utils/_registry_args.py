# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The registry connection options every registry-facing module shares.

Declared once here (argument spec) and documented once in the
`ironcore.image.registry` doc fragment; modules merge the spec into their own.
"""

from __future__ import annotations

import os
import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError

# Who we are and how we reach one registry.
CONNECTION_ARGUMENT_SPEC: dict[str, dict[str, t.Any]] = {
    "username": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "docker_config": {"type": "path"},
    "validate_certs": {"type": "bool", "default": True},
    "ca_cert": {"type": "path"},
    "plain_http": {"type": "bool", "default": False},
}

# How requests and blob transfers behave, whatever the registry.
TRANSFER_ARGUMENT_SPEC: dict[str, dict[str, t.Any]] = {
    "timeout": {"type": "float", "default": 20.0},
    "retries": {"type": "int", "default": 4},
    "concurrency": {"type": "int", "default": 4},
}

REGISTRY_ARGUMENT_SPEC: dict[str, dict[str, t.Any]] = {**CONNECTION_ARGUMENT_SPEC, **TRANSFER_ARGUMENT_SPEC}

# For modules that send requests but move no blob (remove and prune on a registry): no concurrency.
REQUEST_ARGUMENT_SPEC: dict[str, dict[str, t.Any]] = {
    name: spec for name, spec in REGISTRY_ARGUMENT_SPEC.items() if name != "concurrency"
}

# For AnsibleModule(required_together=...): a user without a password (or the
# reverse) is always a mistake.
REGISTRY_REQUIRED_TOGETHER: list[list[str]] = [["username", "password"]]

# One side of a copy (its `source` or its `destination`): an image name, a
# layout or a registry, and that side's own connection options, so the two
# sides can carry different credentials. Documented in the
# `ironcore.image.registry.endpoints` fragment.
IMAGE_ENDPOINT_SPEC: dict[str, dict[str, t.Any]] = {
    "name": {"type": "str"},
    "layout": {"type": "path"},
    **CONNECTION_ARGUMENT_SPEC,
}


def endpoint_option(required: bool = True, mirrors: bool = False) -> dict[str, t.Any]:
    """The argument spec of a `source`/`destination` dict option; a source may have `mirrors`."""
    return {
        "type": "dict",
        "required": required,
        "options": {**IMAGE_ENDPOINT_SPEC, **MIRRORS_ARGUMENT_SPEC} if mirrors else IMAGE_ENDPOINT_SPEC,
        "required_together": REGISTRY_REQUIRED_TOGETHER,
    }


# One entry of `mirrors`: where a copy of the origin's image is served, with that
# mirror's own connection options (never the origin's). Documented in the
# `ironcore.image.registry.mirrors` fragment; used by _mirrors.
MIRROR_ENTRY_SPEC: dict[str, dict[str, t.Any]] = {
    "url": {"type": "str", "required": True},
    "type": {"type": "str", "choices": ["registry", "layout"], "default": "registry"},
    "repository": {"type": "str"},
    "ca_cert": {"type": "path"},
    "validate_certs": {"type": "bool", "default": True},
    "username": {"type": "str"},
    "password": {"type": "str", "no_log": True},
}

MIRRORS_ARGUMENT_SPEC: dict[str, dict[str, t.Any]] = {
    "mirrors": {
        "type": "list",
        "elements": "dict",
        "options": MIRROR_ENTRY_SPEC,
        "required_together": REGISTRY_REQUIRED_TOGETHER,
    },
    "mirror_resolve_tags": {"type": "bool", "default": False},
}


class InvalidRegistryOptions(ImageError, ValueError):
    """An option value outside what the client can work with."""


@dataclass(frozen=True)
class RegistryOptions:
    username: str | None = None
    password: str | None = None
    docker_config: str | None = None
    validate_certs: bool = True
    ca_cert: str | None = None
    plain_http: bool = False
    timeout: float = 20.0
    retries: int = 4
    concurrency: int = 4
    # Whether the user named docker_config (rather than the default location).
    docker_config_given: bool = False
    # Bytes per second a blob stream must gain over every `timeout` seconds, or it is cut (0: no floor).
    # Set for mirrors only, so that a trickling mirror fails over; the origin has no next source.
    min_rate: float = 0.0

    def __repr__(self) -> str:
        # Never let the password reach a log line or a traceback.
        return "RegistryOptions(username=%r, password=%s, plain_http=%r, validate_certs=%r, ca_cert=%r)" % (
            self.username,
            "<hidden>" if self.password else None,
            self.plain_http,
            self.validate_certs,
            self.ca_cert,
        )


def default_docker_config() -> str:
    """Where docker itself looks: $DOCKER_CONFIG/config.json, else ~/.docker/config.json."""
    directory = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(directory, "config.json")


def _given(params: t.Mapping[str, t.Any], key: str, default: float) -> float:
    """params[key] unless it is missing or None (a module may pass None for an option left out)."""
    value = params.get(key)
    return default if value is None else value


def registry_options(params: t.Mapping[str, t.Any]) -> RegistryOptions:
    """The shared options out of a module's params, checked and with defaults filled in."""
    timeout = float(_given(params, "timeout", 20.0))
    retries = int(_given(params, "retries", 4))
    concurrency = int(_given(params, "concurrency", 4))
    if timeout <= 0:
        raise InvalidRegistryOptions("timeout must be a positive number of seconds, got %s" % timeout)
    if retries < 0:
        raise InvalidRegistryOptions("retries must be 0 or more, got %d" % retries)
    if concurrency < 1:
        raise InvalidRegistryOptions("concurrency must be 1 or more, got %d" % concurrency)
    ca_cert = params.get("ca_cert") or None
    if ca_cert and not os.path.isfile(ca_cert):
        raise InvalidRegistryOptions("ca_cert: %s is not a readable file" % ca_cert)
    return RegistryOptions(
        username=params.get("username") or None,
        password=params.get("password") or None,
        docker_config=params.get("docker_config") or default_docker_config(),
        docker_config_given=bool(params.get("docker_config")),
        validate_certs=params.get("validate_certs", True) is not False,
        ca_cert=ca_cert,
        plain_http=bool(params.get("plain_http")),
        timeout=timeout,
        retries=retries,
        concurrency=concurrency,
    )
