#!/usr/bin/python
# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0).
# Compatible with the GNU General Public License version 3, ansible-core's license.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ironcore_image_sign
short_description: Sign an IronCore OS image in cosign's signature format, offline, with a local key
version_added: 0.3.0
description:
  - Signs the digest O(name) resolves to and every platform index and manifest it reaches, in a registry
    repository or, with O(layout), in an OCI image layout.
  - Uses cosign's legacy signature format, which cosign, containers/image, Kyverno and policy-controller read.
    The signatures of a digest are the manifest tagged C(sha256-<hex>.sig) beside it. Each of its layers is a
    simple-signing payload (C(application/vnd.dev.cosign.simplesigning.v1+json)) naming the repository and
    the digest, and its annotation C(dev.cosignproject.cosign/signature) holds the base64 of the ASN.1 DER
    ECDSA P-256/SHA-256 signature over the payload's bytes.
  - A second key appends its signature as another layer. Signing again with a key that already signed a
    digest changes nothing.
  - The private key is read from O(key), never copied, logged or returned; the results give its public key's
    fingerprint.
extends_documentation_fragment:
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
notes:
  - The registry options are only used without O(layout).
requirements:
  - cryptography
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
  description: Every digest of the image, mapped to the tag of its signatures.
  returned: always
  type: dict
  sample: {"sha256:0f3c...": "sha256-0f3c....sig"}
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ironcore.image.plugins.module_utils._deps import require
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
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
        key={"type": "path", "required": True, "no_log": False},
        key_passphrase={"type": "str", "no_log": True},
    )
    module = AnsibleModule(
        argument_spec=argument_spec, required_together=REGISTRY_REQUIRED_TOGETHER, supports_check_mode=True
    )
    require(module, "cryptography", *(() if module.params["layout"] else ("requests", "oras")))
    from ansible_collections.ironcore.image.plugins.module_utils._signatures import open_store, sign_image

    try:
        store = open_store(module.params, module.warn)
        result = sign_image(
            store, module.params["name"], module.params["key"], module.params["key_passphrase"], module.check_mode
        )
    except ImageError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
    module.exit_json(
        changed=result.changed,
        digest=result.digest,
        fingerprint=result.fingerprint,
        signed=result.signed,
        signatures=result.signatures,
    )


if __name__ == "__main__":
    main()
