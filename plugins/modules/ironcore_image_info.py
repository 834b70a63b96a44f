#!/usr/bin/python
# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0).
# Compatible with the GNU General Public License version 3, ansible-core's license.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ironcore_image_info
short_description: Describe an IronCore OS image in a registry or a local OCI layout
version_added: 0.1.0
description:
  - Resolves O(name) in a registry (or in a local OCI image layout with O(layout)) and returns the index, every
    platform and architecture it holds with the manifest digest, the layers (role, media type, digest, size) and
    the config.
  - With O(platform), also selects the manifest for O(platform) and O(architecture) the way
    M(ironcore.image.ironcore_image_fetch) does, and returns for each of its layers the blob URL and the HTTP
    headers needed to GET it, so an HTTP boot server can stream the layers straight from the registry.
  - For every manifest it reports the platform it serves and which rule decided it (RV(manifests[].decided_by)),
    by the order of evidence M(ironcore.image.ironcore_image_fetch) describes.
  - With O(layout) and no O(name), lists every name the layout records in RV(images) instead, each with its
    digest, the platforms and architectures it serves and the bytes of all the blobs it reaches.
  - With O(name) a registry repository without a tag, lists its releases in RV(releases), newest first. Every
    tag is read through the paginated C(/v2/<name>/tags/list); tags are grouped by digest, so a release's platform
    tags and aliases, its C(.sig) tags and its referrers-tag-schema (C(sha256-<hex>)) tags belong to it rather than
    standing as releases of their own. See C(docs/lifecycle.md).
  - Reads only; every manifest is checked against its digest and refused above 4 MiB.
author:
  - IronCore image collection maintainers (@ironcore-dev)
extends_documentation_fragment:
  - ironcore.image.attributes
  - ironcore.image.signature_identity
  - ironcore.image.registry
  - ironcore.image.registry.mirrors
attributes:
  check_mode:
    support: full
    details: The module never changes anything, so check mode behaves the same.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Always reports RV(ignore:changed=false).
options:
  name:
    description:
      - Image reference, with a tag or an C(@sha256:) digest, for example V(registry.example.com/os/gardenlinux:1.0).
      - Without O(layout) it must start with the registry host (and port).
      - Required unless O(layout) is given; without it the layout's names are listed in RV(images).
      - A registry repository without a tag or digest (V(registry.example.com/os/gardenlinux)) lists its releases
        in RV(releases) instead, every tag grouped by the image it points into.
    type: str
  layout:
    description:
      - Read the image from this local OCI image layout directory instead of a registry. Blob URLs are then
        C(file://) URLs with no headers.
    type: path
  platform:
    description:
      - Select the manifest for this platform and return blob URLs and headers for its layers in RV(selected).
      - V(metal) is a synonym of V(baremetal) and V(kvm) one of V(virtualization).
      - Needs O(name).
    type: str
    choices: [baremetal, virtualization, metal, kvm]
  architecture:
    description:
      - CPU architecture to select with O(platform). V(auto) uses the machine this runs on.
      - V(x86_64) and V(aarch64) are accepted for V(amd64) and V(arm64); RV(selected.architecture) gives the OCI
        name.
    type: str
    choices: [amd64, arm64, x86_64, aarch64, auto]
    default: auto
  layers:
    description:
      - With O(platform), only these layers; each must be in the selected manifest.
    type: list
    elements: str
    choices: [kernel, initramfs, rootfs, squashfs, uki, iso]
  include_credentials:
    description:
      - Put the C(Authorization) header (a bearer token, or the basic authentication of O(username) and
        O(password)) into the C(headers) of RV(selected).
      - Off by default so that credentials never reach logs; C(auth_scheme) still says which scheme is needed.
        When you turn it on, use C(no_log) on the task.
    type: bool
    default: false
  signature_keys:
    description:
      - PEM public keys (EC P-256), inline or as paths, to check the image's signatures and provenance with, as
        M(ironcore.image.ironcore_image_fetch) does. Info reports what it finds and never fails for it (see
        RV(signatures) and RV(provenance)).
      - Implies O(show_signatures).
    type: list
    elements: str
    version_added: 0.2.0
  show_signatures:
    description:
      - Report the image's signatures (RV(signatures)) and its provenance and SBOM referrers (RV(provenance),
        RV(sbom)). Without O(signature_keys) the signers are the fingerprints the signatures claim, unverified.
      - Off by default since it costs requests for every digest.
    type: bool
    default: false
    version_added: 0.2.0
  url_from:
    description:
      - Whose address the C(url) and C(headers) of the layers in RV(selected) give when O(mirrors) are set.
      - V(origin), the default, gives the origin's (the registry of O(name), or the file in O(layout)), whatever
        the mirrors hold. A consumer that streams the URL without hashing it, such as an HTTP boot server, then
        gets what the origin serves.
      - V(mirror) gives the first mirror's address instead (with that mirror's own credentials, never the
        origin's), the origin's when no mirror fits. B(The consumer must verify the digest) of what it gets from
        that address, since a mirror is trusted for nothing and only verified bytes are safe. A plain-HTTP mirror
        is never handed out for an https origin.
      - Without O(mirrors) this option changes nothing.
    type: str
    choices: [origin, mirror]
    default: origin
    version_added: 0.2.0
notes:
  - With O(layout) the module reads the image from disk and does not need C(requests).
  - The module reads O(docker_config) (C(auths) with C(auth), C(username)/C(password) or C(identitytoken);
    C(credHelpers); C(credsStore)) and runs C(docker-credential-<name> get) itself.
  - With O(include_credentials=true) the C(headers) in RV(selected) carry a credential. Use C(no_log) on the
    task, or do not register the result, when the output is logged.
seealso:
  - module: ironcore.image.ironcore_image_fetch
  - module: ironcore.image.ironcore_image_tag
  - module: ironcore.image.ironcore_image_remove
  - module: ironcore.image.ironcore_image_prune
"""

EXAMPLES = r"""
- name: What does the image hold?
  ironcore.image.ironcore_image_info:
    name: registry.example.com/os/gardenlinux:1.0
  register: image

- name: Show which platforms each architecture's manifest serves
  ansible.builtin.debug:
    msg: "{{ item.architecture }}: {{ item.platforms | join(', ') }}"
  loop: "{{ image.manifests }}"

- name: Where does an amd64 boot server get kernel and initramfs from?
  ironcore.image.ironcore_image_info:
    name: registry.example.com/os/gardenlinux:1.0
    platform: baremetal
    architecture: amd64
    layers: [kernel, initramfs]
    include_credentials: true
  register: boot
  no_log: true

- name: Which releases does the repository hold, newest first?
  ironcore.image.ironcore_image_info:
    name: registry.example.com/os/gardenlinux
    signature_keys: [/etc/ironcore/release.pub]
  register: releases

- name: Which images does the layout hold, and how big is each?
  ironcore.image.ironcore_image_info:
    layout: /var/lib/ironcore/layout
  register: listing
"""

RETURN = r"""
name:
  description: The image reference as it was read.
  returned: when O(name) is given
  type: str
digest:
  description: Digest of what O(name) resolved to.
  returned: when O(name) is given
  type: str
media_type:
  description: Media type of what O(name) resolved to (an image index or an image manifest).
  returned: when O(name) is given
  type: str
index:
  description: The image index as stored, or null when O(name) is a plain manifest.
  returned: when O(name) is given
  type: dict
manifests:
  description: Every manifest, in index order (one entry for a plain manifest).
  returned: when O(name) is given
  type: list
  elements: dict
  contains:
    digest:
      description: Manifest digest.
      type: str
    size:
      description: Manifest size in bytes.
      type: int
    media_type:
      description: Manifest media type.
      type: str
    os:
      description: C(platform.os) of the index entry; null for a plain manifest.
      type: str
    architecture:
      description: C(platform.architecture) of the index entry; null for a plain manifest.
      type: str
    platform:
      description:
        - The one platform this manifest serves (V(baremetal) or V(virtualization), whatever name the image uses);
          null when its layers serve both or neither.
      type: str
    platforms:
      description: The platforms this manifest serves; empty when it serves none.
      type: list
      elements: str
    decided_by:
      description:
        - Which evidence decided RV(manifests[].platforms), the first of these that says anything.
        - V(platform_variant), the entry's C(platform.variant); V(descriptor_annotation), the entry's C(variant)
          annotation; V(manifest_annotation), the manifest's C(variant) (or C(io.ironcore.image.platform))
          annotation; V(tag_suffix), the tag of O(name) ends in C(-metal), C(-kvm), C(-baremetal) or
          C(-virtualization) (optionally C(-<arch>)); V(layers), the layers it has.
      type: str
      choices: [platform_variant, descriptor_annotation, manifest_annotation, tag_suffix, layers]
      version_added: 0.2.0
    layers:
      description: The IronCore layers, each with C(role), C(media_type), C(digest), C(size) and C(packed).
      type: list
      elements: dict
    config:
      description: 'The parsed config, for example C({"commandLine": "console=ttyS0"}).'
      type: dict
selected:
  description: The manifest and layers for O(platform) and O(architecture); null without O(platform).
  returned: when O(name) is given
  type: dict
  contains:
    platform:
      description: The platform asked for (V(metal) and V(kvm) given as V(baremetal) and V(virtualization)).
      type: str
    architecture:
      description:
        - The architecture asked for (V(auto) resolved), by its OCI name (V(x86_64) given is V(amd64) here).
      type: str
    manifest_digest:
      description: Digest of the selected manifest.
      type: str
    decided_by:
      description:
        - Which evidence decided that the selected manifest serves O(platform), as in RV(manifests[].decided_by).
      type: str
      choices: [platform_variant, descriptor_annotation, manifest_annotation, tag_suffix, layers]
      version_added: 0.2.0
    layers:
      description:
        - The layers to fetch, each with C(role), C(media_type), C(digest), C(size), C(packed), C(url), C(headers)
          (what C(ironcore-image url) prints upstream) and C(auth_scheme) (V(Basic), V(Bearer) or V(null)).
        - C(headers) holds C(Authorization) only with O(include_credentials=true).
        - With O(mirrors), C(url) and C(headers) are the origin's, unless O(url_from=mirror) asks for the first
          mirror's (with that mirror's own credentials, never the origin's); the consumer must then verify the
          digest.
      type: list
      elements: dict
  sample:
    platform: baremetal
    architecture: amd64
    manifest_digest: sha256:4c1e...
    decided_by: platform_variant
    layers:
      - role: kernel
        media_type: application/vnd.ironcore.image.kernel
        digest: sha256:5b1d...
        size: 12582912
        packed: false
        url: https://registry.example.com/v2/os/gardenlinux/blobs/sha256:5b1d...
        headers:
          Authorization: Bearer eyJ...
        auth_scheme: Bearer
signatures:
  description:
    - With O(show_signatures) or O(signature_keys), for the digest O(name) resolves to, the digests its platform
      names (C(<tag>-metal), C(<tag>-kvm-arm64), ...) point at and each manifest it lists, what its
      C(sha256-<hex>.sig) and its Sigstore bundle referrers hold; null otherwise.
  returned: when O(name) is given
  type: dict
  sample: {"sha256:0f3c...": {"signed": true, "signers": ["SHA256:4b1e..."], "bundles": ["sha256:5d2a..."],
                              "verified_by": "SHA256:4b1e...", "verified_format": "legacy", "reason": null}}
  contains:
    signed:
      description: Whether the digest has a C(.sig) or a Sigstore bundle referrer at all.
      type: bool
    signers:
      description: The fingerprints the signatures claim (recorded by their writer, not verified).
      type: list
      elements: str
    bundles:
      description: The digests of the referrer manifests carrying a Sigstore bundle of the digest (not verified).
      type: list
      elements: str
      version_added: 0.2.0
    verified_by:
      description: With O(signature_keys), the fingerprint of the key whose signature verified; null if none did.
      type: str
    verified_format:
      description:
        - With O(signature_keys), the format of the signature that verified, V(legacy) or V(bundle); null if none
          did.
      type: str
      version_added: 0.2.0
    reason:
      description: With O(signature_keys), the one-line reason no signature verified (what fetch would fail with).
      type: str
  version_added: 0.2.0
unsigned:
  description:
    - With O(show_signatures) or O(signature_keys), the names a node could fetch that are not signed (O(name), the
      platform names beside it that exist (C(<tag>-baremetal), C(<tag>-metal), C(<tag>-kvm-amd64), ...), and
      each manifest the image lists, as C(<repository>@<digest>)). Empty when all are signed; null otherwise.
    - With O(signature_keys), unsigned means that no signature by one of the keys verifies (what fetch would refuse);
      without, that there is no C(.sig) and no Sigstore bundle at all.
  returned: when O(name) is given
  type: list
  elements: str
  sample: ["registry.example.com/os/gardenlinux:1.0-metal"]
  version_added: 0.2.0
provenance:
  description:
    - With O(show_signatures) or O(signature_keys), the provenance referrers of the image's digest; null otherwise.
  returned: when O(name) is given
  type: dict
  sample: {"referrers": ["sha256:9a1d..."], "verified": {"verified": true, "keyid": "SHA256:4b1e...",
           "predicate_type": "https://slsa.dev/provenance/v1"}, "reason": null}
  contains:
    referrers:
      description: Digests of the referrer manifests with C(artifactType) C(application/vnd.in-toto+json).
      type: list
      elements: str
    verified:
      description: With O(signature_keys), the provenance a key verified (keyid, predicate_type); null if none.
      type: dict
    reason:
      description: With O(signature_keys), why no provenance verified.
      type: str
  version_added: 0.2.0
sbom:
  description:
    - With O(show_signatures) or O(signature_keys), the SBOM referrers of the image's digest; null otherwise.
  returned: when O(name) is given
  type: dict
  sample: {"referrers": ["sha256:77c0..."]}
  contains:
    referrers:
      description: Digests of the referrer manifests with C(artifactType) C(application/vnd.cyclonedx+json).
      type: list
      elements: str
  version_added: 0.2.0
releases:
  description:
    - With O(name) a registry repository without a tag, its releases, newest first (by creation time, then by the
      highest version among the tags).
  returned: when O(name) is a repository without a tag
  type: list
  elements: dict
  version_added: 0.2.0
  contains:
    tags:
      description: Every tag that points into the release (its name, platform tags, aliases), sorted.
      type: list
      elements: str
    digest:
      description: Digest of the release's combined index (the largest document its tags reach).
      type: str
    platforms:
      description: The platforms its manifests serve.
      type: list
      elements: str
    architectures:
      description: The architectures of its manifests.
      type: list
      elements: str
    size:
      description: Bytes of its documents and blobs, each counted once.
      type: int
    size_human:
      description: RV(releases[].size) in binary units, for example V(1.5 GiB).
      type: str
    created:
      description:
        - The C(org.opencontainers.image.created) annotation, else the C(created) of a config; null when neither
          records it.
      type: str
    signed:
      description: Whether the index digest has a C(.sig).
      type: bool
    signers:
      description:
        - With O(signature_keys), the fingerprint of the key whose signature verified (empty when none did);
          without, the fingerprints the signatures claim, unverified.
      type: list
      elements: str
    referrers:
      description: Digests of the referrers of the index (provenance, SBOM).
      type: list
      elements: str
  sample:
    - tags: ["1.2", "1.2-baremetal", "1.2-kvm", "latest"]
      digest: sha256:0f3c...
      platforms: [baremetal, virtualization]
      architectures: [amd64, arm64]
      size: 1073751234
      size_human: 1.0 GiB
      created: "2026-05-04T10:00:00Z"
      signed: true
      signers: ["SHA256:4b1e..."]
      referrers: ["sha256:9a1d..."]
images:
  description: With O(layout) and no O(name), every name the layout records, sorted by name.
  returned: when O(name) is not given
  type: list
  elements: dict
  contains:
    name:
      description: The name as C(index.json) records it.
      type: str
    digest:
      description: Digest of what the name points at.
      type: str
    platforms:
      description:
        - Each C(platform) and C(architecture) pair the image serves (C(architecture) is null when the layout does
          not say, for a plain manifest no index of the layout lists).
      type: list
      elements: dict
    size:
      description:
        - Bytes of every blob the name reaches (index, manifests, configs, layers), each blob counted once.
        - For a signature or referrers name (see RV(images[].subject)), its own documents and blobs only, never the
          image it is about.
      type: int
    subject:
      description:
        - For a signature (C(sha256-<hex>.sig)) or a referrers list (C(sha256-<hex>), the tag schema), the digest
          of the image or manifest it is about; V(null) for every other name.
      type: str
      version_added: 0.2.0
  sample:
    - name: registry.example.com/os/gardenlinux:1.0
      digest: sha256:0f3c...
      platforms:
        - platform: baremetal
          architecture: amd64
        - platform: virtualization
          architecture: amd64
      size: 1073751234
      subject: null
    - name: registry.example.com/os/gardenlinux:sha256-0f3c....sig
      digest: sha256:77c0...
      platforms: []
      size: 1234
      subject: sha256:0f3c...
bytes_from_origin:
  description:
    - With O(mirrors) only. Bytes of documents the origin served in this run, what the mirrors did not take off it.
  returned: when O(mirrors) and O(name) are given
  type: int
  sample: 0
  version_added: 0.2.0
mirror_errors:
  description:
    - With O(mirrors) only. Each time a mirror failed and the next source was asked instead, with C(url) (the
      mirror), C(digest) (the document asked for, or the name when a mirror resolved a tag) and C(reason) (one
      line).
    - Each entry is also reported as a warning naming the mirror, so that a broken site cache does not go unnoticed.
    - Empty when every mirror answered.
  returned: when O(mirrors) and O(name) are given
  type: list
  elements: dict
  sample: []
  version_added: 0.2.0
"""


import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ironcore.image.plugins.module_utils._deps import require
from ansible_collections.ironcore.image.plugins.module_utils._identity import SIGNATURE_IDENTITY_SPEC
from ansible_collections.ironcore.image.plugins.module_utils._info import image_info, layout_images
from ansible_collections.ironcore.image.plugins.module_utils._mirrors import warn_mirror_errors
from ansible_collections.ironcore.image.plugins.module_utils._module import run
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import (
    MIRRORS_ARGUMENT_SPEC,
    REGISTRY_REQUIRED_TOGETHER,
)
from ansible_collections.ironcore.image.plugins.module_utils._source import image_argument_spec


def argument_spec() -> dict:
    spec = dict(
        image_argument_spec(platform_required=False),
        include_credentials={"type": "bool", "default": False},
        signature_keys={"type": "list", "elements": "str", "no_log": False},
        signature_identity=SIGNATURE_IDENTITY_SPEC,
        show_signatures={"type": "bool", "default": False},
        url_from={"type": "str", "choices": ["origin", "mirror"], "default": "origin"},
    )
    spec.update(MIRRORS_ARGUMENT_SPEC)
    # Without a name, info lists the layout's images.
    spec["name"] = dict(spec["name"], required=False)
    # Info transfers no blob, so the shared registry options' concurrency means nothing here.
    del spec["concurrency"]
    return spec


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_together=REGISTRY_REQUIRED_TOGETHER,
        required_by={"layers": "platform", "platform": "name"},
        required_one_of=[("name", "layout")],
        supports_check_mode=True,
    )
    needs: tuple[str, ...] = () if module.params["layout"] else ("requests",)
    if module.params["signature_keys"]:
        needs += ("cryptography",)
    if needs:
        require(module, *needs)
    run(module, lambda: _describe(module.params, module.warn))


def _describe(params: dict, warn: t.Callable[[str], None]) -> dict:
    # Imported here, and never for a layout (which is not a repository listing): only a listing needs the
    # signatures layer, and through it the image stores and the registry client.
    if not params["layout"]:
        from ansible_collections.ironcore.image.plugins.module_utils._releases import registry_releases, wants_releases

        if wants_releases(params):
            return registry_releases(params)
    return warn_mirror_errors(image_info(params), warn) if params["name"] else layout_images(params)


if __name__ == "__main__":
    main()
