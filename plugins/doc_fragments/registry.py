# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations


class ModuleDocFragment:
    # The registry connection options shared by every registry-facing module.
    DOCUMENTATION = r"""
options:
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
requirements:
  - requests >= 2.28
"""

    # For the modules that move blobs (push, fetch), not for those that only describe an image (info):
    # extends_documentation_fragment: ironcore.image.registry.transfer
    TRANSFER = r"""
options:
  concurrency:
    description:
      - How many blobs are transferred in parallel.
    type: int
    default: 4
"""

    # ironcore.image.registry.mirrors: digest-only mirrors in front of the origin (fetch, info).
    MIRRORS = r"""
options:
  mirrors:
    description:
      - Ordered list of mirrors that serve copies of the image, asked before the origin (the registry of O(name),
        or O(layout)), which is the last fallback.
      - "Trust model, digest-only: a tag is resolved at the origin only (unless O(mirror_resolve_tags)); manifests,
        configs and blobs are then asked for by digest from the first mirror that has them, and every byte is
        verified against its digest exactly as the origin's are. An untrusted mirror can therefore make a transfer
        fail over, never deliver other content."
      - When O(name) is a digest reference (or the module's C(digest) option pins one), the origin is not
        contacted at all, so a site whose mirrors are warm works with the origin down.
      - A blob transfer that breaks on one source continues at the same byte on the next one (HTTP C(Range));
        every request whose length is known asks for exactly that range (C(bytes=X-Y)), a delta's ranges
        included. A mirror that answers a C(Range) request with C(200) and the whole blob is dropped unread and not
        asked for ranges again in that run; the next source serves the range. A source whose bytes fail
        verification loses that blob, the partial file is discarded and the blob is fetched again from the next
        source; RV(ignore:mirror_errors) says which mirror failed and why.
      - A mirror's blob stream must gain at least 64 KiB/s over every C(timeout) seconds. A mirror that trickles
        below that is cut off, left out for the rest of the run, and the next source continues at the same byte;
        RV(ignore:mirror_errors) says the stream stalled. The origin has no such floor.
      - Each mirror is reached with its own client and only its own O(mirrors[].username) and
        O(mirrors[].password); the origin's credentials, and any docker config, are never sent to a mirror.
      - Mirror requests are not retried (the next source is the retry); the origin's are, as set by C(retries).
        A mirror that cannot be reached at all (connection refused or broken, no answer within C(timeout), a TLS
        failure) is not asked again in that run.
    type: list
    elements: dict
    suboptions:
      url:
        description:
          - For O(mirrors[].type=registry), the registry base URL, V(https://host[:port]) or V(http://host[:port])
            (plain HTTP only when written so); without a scheme, HTTPS.
          - For O(mirrors[].type=layout), the HTTP(S) URL of the directory serving an OCI image layout as static
            files (C(<url>/index.json), C(<url>/blobs/sha256/<hex>)).
        type: str
        required: true
      type:
        description:
          - V(registry) for a server speaking the OCI distribution API (a registry mirror, a pull-through cache,
            a site cache); V(layout) for a static copy of an OCI image layout.
        type: str
        choices: [registry, layout]
        default: registry
      repository:
        description:
          - Registry mirrors only; the repository on the mirror when it differs from the origin's.
          - Defaults to the repository of O(name).
        type: str
      ca_cert:
        description:
          - PEM file of the CA that signed this mirror's certificate, when it is not in the system trust store.
        type: path
      validate_certs:
        description:
          - Verify this mirror's TLS certificate. Integrity never depends on it (every byte is verified by
            digest), confidentiality does.
        type: bool
        default: true
      username:
        description:
          - User name for this mirror (Basic or token auth, as the mirror asks). Must be given with
            O(mirrors[].password).
        type: str
      password:
        description:
          - Password or token for O(mirrors[].username). Never logged nor returned.
        type: str
  mirror_resolve_tags:
    description:
      - Let the mirrors resolve a tag too (the first mirror that answers wins, the origin last). Only for mirrors
        you trust to say which image a tag names; digests are verified either way.
    type: bool
    default: false
"""

    # ironcore.image.registry.endpoints: the `source` and `destination` of a copy,
    # each a registry or a layout with its own connection options (one sub-spec,
    # shared by the YAML anchor, merged into the source's with its `mirrors`),
    # plus the transfer options. ansible-test reads fragments as literal strings,
    # so the connection and mirror options' text is written here a second time,
    # as sub-options; validate-modules checks both against the argument specs of
    # _registry_args.py.
    ENDPOINTS = r"""
options:
  source:
    description:
      - Where the image is copied from, a registry or (with O(source.layout)) an OCI image layout.
    type: dict
    required: true
    suboptions:
      <<: &endpoint
        name:
          description:
            - The image reference, C([host[:port]/]repository[:tag][@digest]).
            - For a registry it starts with the registry host (and port) and names the repository; for a layout,
              it is the name the image is recorded under (as given, as its normalised reference, or as a bare tag).
            - Required for O(source). For O(destination) it defaults to the source's name, and without a tag the
              source's tag is used; a destination digest is refused.
          type: str
        layout:
          description:
            - Path of an OCI image layout directory to read from (O(source)) or to write to (O(destination))
              instead of a registry. A destination layout is created when it does not exist.
          type: path
        username:
          description:
            - User name for this side's registry. Takes precedence over credentials found in C(docker_config).
            - Must be given together with C(password).
          type: str
        password:
          description:
            - Password or access token for C(username). Never logged nor returned.
          type: str
        docker_config:
          description:
            - Docker C(config.json) to read this side's credentials from when C(username) is not given, including
              C(credsStore) and C(credHelpers) credential helpers.
            - Defaults to C($DOCKER_CONFIG/config.json), else C(~/.docker/config.json). It is only read, never
              written.
            - Credential helper names must be plain program names (letters, digits, C(.), C(_), C(-)); a
              config naming anything else, such as a path, is refused.
          type: path
        validate_certs:
          description:
            - Verify this side's registry TLS certificate. Set to V(false) only for a registry you trust by other
              means.
          type: bool
          default: true
        ca_cert:
          description:
            - PEM file of the CA (or CAs) that signed this side's registry certificate, when it is not in the system
              trust store.
          type: path
        plain_http:
          description:
            - Talk plain HTTP to this side's registry instead of HTTPS. HTTP is used only when asked for here;
              there is never a silent downgrade.
          type: bool
          default: false
      mirrors:
        description:
          - A registry source only. Ordered list of digest-only mirrors of it, asked before it; the same as the
            C(mirrors) option of M(ironcore.image.ironcore_image_fetch), where the trust model is described.
          - Tags (and, with C(platform_tags), the platform names) are resolved at the source registry unless
            C(mirror_resolve_tags); documents and blobs are then asked for by digest from the first mirror that has
            them, verified, the source registry last. A blob transfer that breaks continues at the same byte on the
            next source, as a bounded range. A mirror that answers a range with the whole blob is not asked for
            ranges again, and one whose stream gains less than 64 KiB/s over C(timeout) seconds is cut off and
            left out, as for M(ironcore.image.ironcore_image_fetch). With a digest in C(name), the source registry
            is not contacted.
          - Each mirror gets only its own C(username) and C(password), never this side's credentials.
        type: list
        elements: dict
        suboptions:
          url:
            description:
              - A registry mirror's base URL, V(https://host[:port]) or V(http://host[:port]); or, with C(type=layout),
                the URL of a directory serving an OCI image layout as static files.
            type: str
            required: true
          type:
            description: V(registry) (the OCI distribution API) or V(layout) (a static copy of an OCI image layout).
            type: str
            choices: [registry, layout]
            default: registry
          repository:
            description: Registry mirrors only; the repository there, when it differs from the source's.
            type: str
          ca_cert:
            description: PEM file of the CA that signed this mirror's certificate.
            type: path
          validate_certs:
            description: Verify this mirror's TLS certificate.
            type: bool
            default: true
          username:
            description: User name for this mirror. Must be given with C(password).
            type: str
          password:
            description: Password or token for this mirror. Never logged nor returned.
            type: str
      mirror_resolve_tags:
        description:
          - Let the mirrors resolve tags too (the first mirror that has the tag wins); only for mirrors you trust to
            say which image a tag names.
        type: bool
        default: false
  destination:
    description:
      - Where the image is copied to, a registry or (with O(destination.layout)) an OCI image layout.
    type: dict
    required: true
    suboptions: *endpoint
  timeout:
    description:
      - Seconds to wait for a connection, and for each read or write to make progress, before treating the
        request as failed (and retrying it). Applies to both sides.
    type: float
    default: 20
  retries:
    description:
      - How many times a failed request is retried on a connection error, a timeout, or a registry answer of
        429, 500, 502, 503 or 504, with exponential backoff (honouring C(Retry-After)).
      - An interrupted blob download into a layout continues where it stopped; only attempts that gained no
        bytes count against O(retries).
      - Each retry is reported as a warning naming the operation, the attempt and the reason.
    type: int
    default: 4
  concurrency:
    description:
      - How many blobs are transferred in parallel.
    type: int
    default: 4
requirements:
  - requests >= 2.28 (not needed when both sides are layouts)
"""
