#!/usr/bin/python
# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0).
# Compatible with the GNU General Public License version 3, ansible-core's license.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ironcore_image_sign
short_description: Sign an IronCore OS image in cosign's signature format, offline, with a local key
version_added: 0.2.0
description:
  - Signs the digest O(name) resolves to and every manifest it reaches, in a registry repository or, with
    O(layout), in an OCI image layout.
  - Also signs the platform indexes the names beside O(name) point at (C(<tag>-baremetal), C(<tag>-metal),
    C(<tag>-virtualization), C(<tag>-kvm)), whose manifests all belong to the image, so that a node can fetch
    every name the build published with signature checking on.
  - Uses cosign's legacy signature format, which cosign, containers/image, Kyverno and policy-controller read.
    The signatures of a digest are the manifest tagged C(sha256-<hex>.sig) beside it. Each of its layers is a
    simple-signing payload (C(application/vnd.dev.cosign.simplesigning.v1+json)) naming the repository and
    the digest, and its annotation C(dev.cosignproject.cosign/signature) holds the base64 of the ASN.1 DER
    ECDSA P-256/SHA-256 signature over the payload's bytes.
  - A second key appends its signature as another layer. Signing again with a key that already signed a
    digest changes nothing.
  - With O(signature_format=bundle) or V(both) (the default), each digest also gets a Sigstore bundle, the format
    cosign 3 writes; see O(signature_format).
  - The private key is read from O(key), never copied, logged or returned; the results give its public key's
    fingerprint.
extends_documentation_fragment:
  - ironcore.image.shared_layout
  - ironcore.image.shared_layout.lock_timeout
  - ironcore.image.attributes
  - ironcore.image.registry
author:
  - IronCore image collection maintainers (@ironcore-dev)
attributes:
  check_mode:
    support: full
    details: Reads the image and its signatures and reports which digests would be signed; writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Digests the key already signed are left alone; a second run reports RV(ignore:changed=false).
options:
  name:
    description:
      - The image to sign, for example V(registry.example.com/os/gardenlinux:1.0). Without O(layout), a
        registry reference; with it, a name the layout records.
      - Its repository (V(registry.example.com/os/gardenlinux)) is the identity the signatures name, so sign
        an image under the name nodes will fetch it by.
    type: str
    required: true
  layout:
    description:
      - Sign the image in this OCI image layout instead of a registry. The C(.sig) manifests are recorded as
        names of the layout, C(<repository>:sha256-<hex>.sig).
    type: path
  key:
    description:
      - PEM file of the EC P-256 private key, PKCS#8 (C(BEGIN PRIVATE KEY), C(BEGIN ENCRYPTED PRIVATE KEY)) or
        SEC1 (C(BEGIN EC PRIVATE KEY)).
    type: path
    required: true
  key_passphrase:
    description: Passphrase of an encrypted O(key). Never logged nor returned.
    type: str
  provenance:
    description:
      - Also attach a provenance of the image, signed with O(key).
      - An in-toto Statement v1 (C(https://in-toto.io/Statement/v1)) with a SLSA provenance v1 predicate
        (C(https://slsa.dev/provenance/v1)) whose subject is the digest O(name) resolves to (the combined index).
        Its resolved dependencies are every artifact the manifests carry (title, digest, architecture,
        platforms); its parameters what the image records of the build (platforms, architectures, kernel command
        lines, layer media types, index annotations) and the collection's version.
      - It is a DSSE envelope (C(payloadType) C(application/vnd.in-toto+json)) whose signature is the base64 ASN.1 DER
        ECDSA P-256/SHA-256 signature over the DSSE pre-authentication encoding, with the key's fingerprint as
        C(keyid), attached as a referrer of the image (C(artifactType) C(application/vnd.in-toto+json)). On a
        registry without the referrers API it is listed in the C(sha256-<hex>) tag-schema index.
      - Attaching it again with the same key changes nothing.
    type: bool
    default: false
  signature_format:
    description:
      - Which signature formats to write for each digest.
      - V(legacy) is cosign's C(sha256-<hex>.sig) manifest described above.
      - V(bundle) is a Sigstore bundle v0.3 (C(application/vnd.dev.sigstore.bundle.v0.3+json)), what cosign 3 writes
        for C(cosign sign). It is keyed (C(verificationMaterial.publicKey.hint), the base64 SHA-256 of the DER
        public key; no certificate) and with no transparency-log entry. It holds a DSSE envelope around an in-toto
        Statement v1 whose C(predicateType) is C(https://sigstore.dev/cosign/sign/v1) and whose subject names the
        repository and the digest. It is attached as an OCI referrer of the digest as cosign's bundle specification
        describes (C(artifactType) the bundle media type, the empty config, one layer holding the bundle, the
        annotations C(dev.sigstore.bundle.content=dsse-envelope) and C(dev.sigstore.bundle.predicateType)); on a
        registry without the referrers API it is listed in the C(sha256-<hex>) tag-schema index. C(@sigstore/verify)
        verifies it with the public key as trust material (see docs/signing.md).
      - V(both) writes the two. A digest that already has a bundle verifying with O(key) gets no new one.
      - Fetch and info accept either format.
    type: str
    choices: [legacy, bundle, both]
    default: both
    version_added: 0.2.0
  sbom:
    description:
      - Also attach a CycloneDX 1.5 JSON SBOM of the image as a referrer (C(artifactType)
        C(application/vnd.cyclonedx+json)).
      - It lists, as components of type C(library) with a C(pkg:deb/debian/<name>@<version>?arch=<arch>) purl, the
        Debian packages installed (C(Status) C(install ok installed)) in each ext4 rootfs layer, read from its
        C(/var/lib/dpkg/status) with C(debugfs) (e2fsprogs) without mounting it. Without an ext4 rootfs (or
        with a C(tar+gzip) one) it lists no packages.
      - In a registry the rootfs blob is streamed to a temporary file first, which is removed afterwards; in a
        layout its blob is read in place.
    type: bool
    default: false
notes:
  - The registry options are only used without O(layout).
  - cosign's own encrypted key files (C(BEGIN ENCRYPTED SIGSTORE PRIVATE KEY)) are refused; they need scrypt and
    NaCl secretbox (PyNaCl). Convert such a key, or make one with openssl (see docs/signing.md).
requirements:
  - cryptography
  - debugfs (e2fsprogs) on the host that runs the module, with O(sbom)
seealso:
  - module: ironcore.image.ironcore_image_fetch
  - module: ironcore.image.ironcore_image_build
"""

EXAMPLES = r"""
- name: Sign an image after pushing it
  ironcore.image.ironcore_image_sign:
    name: registry.example.com/os/gardenlinux:1.0
    key: /etc/ironcore/signing-key.pem
    key_passphrase: "{{ signing_passphrase }}"
  register: signed

- name: Sign an image in a local layout
  ironcore.image.ironcore_image_sign:
    layout: /var/lib/ironcore/layout
    name: registry.example.com/os/gardenlinux:1.0
    key: /etc/ironcore/signing-key.pem

- name: Sign, and attach a provenance and an SBOM
  ironcore.image.ironcore_image_sign:
    name: registry.example.com/os/gardenlinux:1.0
    key: /etc/ironcore/signing-key.pem
    provenance: true
    sbom: true
"""

RETURN = r"""
digest:
  description: The digest O(name) resolves to (usually the combined index).
  returned: always
  type: str
  sample: sha256:0f3c...
fingerprint:
  description: C(SHA256:) and the hex SHA-256 of the DER public key (C(openssl pkey -pubout -outform DER | sha256sum)).
  returned: always
  type: str
  sample: SHA256:4b1e...
signed:
  description: The digests newly signed (in check mode, that would be signed); empty when nothing changed.
  returned: always
  type: list
  elements: str
signatures:
  description:
    - Every digest of the image, mapped to the tag of its legacy signatures; empty with O(signature_format=bundle).
  returned: always
  type: dict
  sample: {"sha256:0f3c...": "sha256-0f3c....sig"}
bundles:
  description:
    - With O(signature_format=bundle) or V(both), every digest of the image, mapped to the digest of the referrer
      manifest carrying its Sigstore bundle (null in check mode when it would be new); empty with V(legacy).
  returned: always
  type: dict
  sample: {"sha256:0f3c...": "sha256:5d2a..."}
  version_added: 0.2.0
provenance:
  description: The provenance referrer, with O(provenance); null otherwise.
  returned: always
  type: dict
  sample: {"changed": true, "referrer": "sha256:9a1d...", "keyid": "SHA256:4b1e..."}
  contains:
    changed:
      description: Whether it was attached now (in check mode, would be).
      type: bool
    referrer:
      description: The digest of the referrer manifest that carries the envelope (null in check mode when new).
      type: str
    keyid:
      description: The fingerprint of the key that signed it.
      type: str
sbom:
  description: The SBOM referrer, with O(sbom); null otherwise.
  returned: always
  type: dict
  sample: {"changed": true, "referrer": "sha256:77c0...", "packages": 412, "rootfs": ["sha256:5e2b..."]}
  contains:
    changed:
      description: Whether it was attached now (in check mode, would be).
      type: bool
    referrer:
      description: The digest of the referrer manifest that carries the SBOM (null in check mode when new).
      type: str
    packages:
      description: How many packages it lists.
      type: int
    rootfs:
      description: The digests of the ext4 rootfs layers whose packages were read.
      type: list
      elements: str
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ironcore.image.plugins.module_utils._deps import require
from ansible_collections.ironcore.image.plugins.module_utils._layout import wait_for_layout_locks
from ansible_collections.ironcore.image.plugins.module_utils._module import run
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import (
    REGISTRY_ARGUMENT_SPEC,
    REGISTRY_REQUIRED_TOGETHER,
)


def main() -> None:
    # Signing moves no large blob, so the shared registry options' concurrency means nothing here.
    argument_spec = {key: value for key, value in REGISTRY_ARGUMENT_SPEC.items() if key != "concurrency"}
    argument_spec.update(
        name={"type": "str", "required": True},
        layout={"type": "path"},
        allow_shared_dest={"type": "bool", "default": False},
        lock_timeout={"type": "float"},
        key={"type": "path", "required": True, "no_log": False},
        key_passphrase={"type": "str", "no_log": True},
        provenance={"type": "bool", "default": False},
        sbom={"type": "bool", "default": False},
        signature_format={"type": "str", "default": "both", "choices": ["legacy", "bundle", "both"]},
    )
    module = AnsibleModule(
        argument_spec=argument_spec, required_together=REGISTRY_REQUIRED_TOGETHER, supports_check_mode=True
    )
    require(module, "cryptography", *(() if module.params["layout"] else ("requests",)))
    wait_for_layout_locks(module.params["lock_timeout"], module.warn)
    from ansible_collections.ironcore.image.plugins.module_utils._signatures import open_store, sign_image

    def sign() -> dict[str, t.Any]:
        store = open_store(module.params, module.warn)
        result = sign_image(
            store,
            module.params["name"],
            module.params["key"],
            module.params["key_passphrase"],
            module.check_mode,
            provenance=module.params["provenance"],
            sbom=module.params["sbom"],
            signature_format=module.params["signature_format"],
        )
        return {
            "changed": result.changed,
            "digest": result.digest,
            "fingerprint": result.fingerprint,
            "signed": result.signed,
            "signatures": result.signatures,
            "bundles": result.bundles,
            "provenance": result.provenance,
            "sbom": result.sbom,
        }

    run(module, sign)


if __name__ == "__main__":
    main()
