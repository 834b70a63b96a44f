# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

import re
import textwrap

_OWN_OPTION_RE = re.compile(r"O\((username|password|docker_config|validate_certs|ca_cert|plain_http)\)")


def _suboptions(text: str, side: str) -> str:
    """Connection option text for one side of a copy: its O() references point at that side's sub-options."""
    return _OWN_OPTION_RE.sub(lambda match: "O(%s.%s)" % (side, match.group(1)), text)


class ModuleDocFragment:
    # Kept as text once and indented where it is used: the top-level options of
    # push, fetch and info, and the sub-options of each side of a copy.
    _CONNECTION = r"""
username:
  description:
    - User name for the registry. Takes precedence over credentials found in O(docker_config).
    - Must be given together with O(password).
  type: str
password:
  description:
    - Password or access token for O(username). Never logged nor returned.
  type: str
docker_config:
  description:
    - Docker C(config.json) to read credentials from when O(username) is not given, including
      C(credsStore) and C(credHelpers) credential helpers.
    - Defaults to C($DOCKER_CONFIG/config.json), else C(~/.docker/config.json). It is only read, never written.
    - When the registry asks for credentials and there are none, the error says why (a O(docker_config)
      given here that does not exist, a C(docker-credential-*) helper that is not on C(PATH)).
    - Credential helper names must be plain program names (letters, digits, C(.), C(_), C(-)); a
      config naming anything else, such as a path, is refused.
  type: path
validate_certs:
  description:
    - Verify the registry's TLS certificate. Set to V(false) only for a registry you trust by other means.
  type: bool
  default: true
ca_cert:
  description:
    - PEM file of the CA (or CAs) that signed the registry's certificate, when it is not in the system trust store.
  type: path
plain_http:
  description:
    - Talk plain HTTP instead of HTTPS. HTTP is used only when asked for here; there is never a silent downgrade.
  type: bool
  default: false
"""
    _TRANSFER = r"""
timeout:
  description:
    - Seconds to wait for a connection, and for each read or write to make progress, before treating the
      request as failed (and retrying it).
    - With the defaults of O(timeout) and O(retries), a registry that accepts connections but never
      answers fails within about two minutes.
  type: float
  default: 20
retries:
  description:
    - How many times a failed request is retried on a connection error, a timeout, or a registry answer of
      429, 500, 502, 503 or 504, with exponential backoff (honouring C(Retry-After)).
    - Each retry is reported as a warning naming the operation, the attempt and the reason.
  type: int
  default: 4
concurrency:
  description:
    - How many blobs are transferred in parallel.
  type: int
  default: 4
"""
    _REQUIREMENTS = r"""
requirements:
  - oras >= 0.2.43
  - requests >= 2.28
"""
    _ENDPOINT = r"""
name:
  description:
    - The image reference, C([host[:port]/]repository[:tag][@digest]).
    - For a registry, C(host[:port]/repository[:tag]) names the registry and repository too; for a layout, the
      name the image is recorded under (as given, as its normalised reference, or as a bare tag).
    - Required for O(source). For O(destination) it defaults to the source's name; without a tag there, the
      source's tag is used. A destination digest is refused.
  type: str
layout:
  description:
    - Path of an OCI image layout directory to read from (O(source)) or write to (O(destination)), instead of a
      registry. A destination layout is created when it does not exist.
  type: path
"""

    # The registry connection options shared by every registry-facing module.
    DOCUMENTATION = (
        "options:\n"
        + textwrap.indent(_CONNECTION.strip("\n"), "  ")
        + "\n"
        + textwrap.indent(_TRANSFER.strip("\n"), "  ")
        + _REQUIREMENTS
    )

    # ironcore.image.registry.endpoints: the `source` and `destination` of a copy,
    # each with the connection options of its own registry, plus the transfer options.
    ENDPOINTS = (
        "options:\n"
        "  source:\n"
        "    description:\n"
        "      - Where the image is copied from, a registry or (with O(source.layout)) an OCI image layout.\n"
        "    type: dict\n"
        "    required: true\n"
        "    suboptions:\n"
        + textwrap.indent(_suboptions(_ENDPOINT + _CONNECTION, "source").strip("\n"), "      ")
        + "\n"
        "  destination:\n"
        "    description:\n"
        "      - Where the image is copied to, a registry or (with O(destination.layout)) an OCI image layout.\n"
        "    type: dict\n"
        "    required: true\n"
        "    suboptions:\n"
        + textwrap.indent(_suboptions(_ENDPOINT + _CONNECTION, "destination").strip("\n"), "      ")
        + "\n"
        + textwrap.indent(_TRANSFER.strip("\n"), "  ")
        + _REQUIREMENTS
    )
