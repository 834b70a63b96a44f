#!/usr/bin/python
# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0).
# Compatible with the GNU General Public License version 3, ansible-core's license.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ironcore_image_build
short_description: Assemble a platform-aware IronCore OS image into an OCI image layout
version_added: 0.1.0
description:
  - Builds an IronCore OS image from boot artifacts (kernel, initramfs, rootfs and optional squashfs, UKI, ISO)
    of one or more CPU architectures into a local OCI image layout directory, with no registry involved.
  - Records a combined index under O(name) with one manifest per architecture and platform
    (C(platform.variant) V(baremetal) or V(virtualization)), baremetal first within each architecture.
    Its entries also carry the published spec's C(variant) (V(metal) or V(virtualization)) and C(architecture)
    annotations.
  - Every manifest carries the spec's annotations C(variant) (V(metal) for baremetal, V(virtualization)),
    C(architecture) and C(org.opencontainers.image.title) (C(<image>-<variant>-<arch>), the last path
    component of O(name) without its tag), plus C(io.ironcore.image.platform).
  - With O(platform_tags=true) it also records C(<tag>-<platform>) (an index without variants, the shape
    today's IronCore consumers accept) and C(<tag>-<platform>-<arch>) (the manifest itself); with
    O(platform_tag_aliases=true) also the os-images names C(<tag>-metal), C(<tag>-kvm), C(<tag>-metal-<arch>)
    and C(<tag>-kvm-<arch>) for the same documents.
  - A baremetal manifest lists its layers in the order kernel, initramfs, squashfs, rootfs, uki, iso;
    squashfs comes before rootfs so that consumers which let the later of the two become a VM disk take the rootfs.
  - Each artifact is read once, hashed while it is copied into the blob store; a digest cache keyed on the
    file's device, inode, size and modification time lets a rebuild skip unchanged files entirely.
  - Every document is validated against the collection's JSON Schema before it is recorded; every file is
    written to a temporary file and renamed, and C(index.json) updates are serialised with a lock.
author:
  - IronCore image collection maintainers (@ironcore-dev)
requirements:
  - jsonschema >= 4.0
  - cryptography, sbsign and sbverify (Debian's sbsigntool), with O(uki_sign_key) or O(uki_require_signature)
extends_documentation_fragment:
  - ironcore.image.attributes
  - ironcore.image.shared_layout.lock_timeout
attributes:
  check_mode:
    support: full
    details: Hashes the artifacts and reports digests and whether names would move; writes nothing.
  diff_mode:
    support: full
    details: Shows the names whose digest moves.
  idempotent:
    support: full
    details: Unchanged inputs give the same digests and report RV(ignore:changed=false).
options:
  layout:
    description:
      - Path of the OCI image layout directory. Created when missing.
      - Must not be a regular file, nor a non-empty directory that is not an OCI layout.
    type: path
    required: true
  name:
    description:
      - Image reference to record the combined index under, for example V(registry.example.com/os/gardenlinux:1.0).
      - Without a tag, V(latest) is used. A digest reference is refused.
    type: str
    required: true
  artifacts:
    description:
      - One entry per CPU architecture, each listing that architecture's files on the build host.
      - Each file must be a readable regular file; an empty (0-byte) one is refused, since it is a build step
        that failed or has not run.
    type: list
    elements: dict
    required: true
    suboptions:
      architecture:
        description:
          - CPU architecture of the files.
          - V(x86_64) and V(aarch64) (the kernel's and Ironic's names) are accepted for V(amd64) and V(arm64); the
            image and the results carry the OCI names.
        type: str
        required: true
        choices: [amd64, arm64, x86_64, aarch64]
      kernel:
        description: Path of the kernel image. Needed by the V(baremetal) platform.
        type: path
      initramfs:
        description: Path of the initramfs. Needed by the V(baremetal) platform.
        type: path
      rootfs:
        description:
          - Path of the root file system as a raw disk image. Needed by the V(virtualization) platform.
          - V(baremetal) needs this or O(artifacts[].squashfs) as its root.
        type: path
      squashfs:
        description:
          - Path of a squashfs image; added to V(baremetal) manifests only.
          - Without O(artifacts[].rootfs) it is the baremetal node's live root (the Garden Linux PXE layout).
        type: path
      uki:
        description:
          - Path of a unified kernel image; added to V(baremetal) manifests only, as layer C(uki) with media type
            C(application/vnd.ironcore.image.uki), which boot-operator serves for UEFI HTTP boot.
          - V(auto) assembles one from this entry's O(artifacts[].kernel), O(artifacts[].initramfs) and
            O(artifacts[].cmdline), an os-release (O(artifacts[].os_release), or one naming the image and its tag)
            and the kernel's release (read from the kernel image), on systemd's EFI stub
            (O(artifacts[].uki_stub)) with the sections C(.osrel), C(.cmdline), C(.uname), C(.initrd) and
            C(.linux) appended, each at a virtual address aligned to the stub's section alignment. The same inputs
            give the same bytes. With O(uki_sign_key) it is signed for Secure Boot. A file named C(auto) is given as
            C(./auto).
        type: path
      uki_stub:
        description:
          - With O(artifacts[].uki=auto), the systemd EFI stub to build on.
          - Defaults to C(/usr/lib/systemd/boot/efi/linuxx64.efi.stub) for V(amd64) and C(linuxaa64.efi.stub) for
            V(arm64), from Debian's C(systemd-boot-efi) of that architecture (on an amd64 build host, unpack the arm64
            package with C(apt-get download systemd-boot-efi:arm64) and C(dpkg-deb -x) and give its stub here).
        type: path
        version_added: 0.2.0
      os_release:
        description:
          - With O(artifacts[].uki=auto), the os-release file for the C(.osrel) section (what boot menus show).
          - Without it, one with C(NAME), C(ID), C(VERSION_ID) (the tag of O(name)) and C(PRETTY_NAME) is made.
        type: path
        version_added: 0.2.0
      iso:
        description: Path of an ISO image; added to V(baremetal) manifests only.
        type: path
      cmdline:
        description:
          - Kernel command line, stored in the image config as C(commandLine).
          - It ends up on the C(kernel) line of an iPXE script, so control characters (newlines included), C($),
            a token C(;), C(&&) or C(||), a token starting with C(#) and a double quote that is never closed (the
            kernel would read the rest of the line as one value) are refused; a trailing newline is trimmed.
        type: str
  uki_sign_key:
    description:
      - PEM private key to sign every UKI of O(artifacts[].uki=auto) with for Secure Boot (an Authenticode signature
        made by C(sbsign) from Debian's C(sbsigntool), after every section is in place and before the UKI is hashed
        into its layer). Needs O(uki_sign_cert).
      - A UKI given as a path is taken as it is.
      - The layer of a UKI signed here (or checked with O(uki_require_signature)) carries the annotation
        C(io.ironcore.image.uki.signer), the certificate's C(sha256:) fingerprint, which the image's provenance
        names.
    type: path
    version_added: 0.2.0
  uki_sign_cert:
    description:
      - PEM certificate of O(uki_sign_key), the one firmware must trust (enrolled in C(db), or as a MOK for shim).
    type: path
    version_added: 0.2.0
  uki_sign_key_passphrase:
    description:
      - Passphrase of a passphrase-protected O(uki_sign_key). The key is decrypted into a temporary file only
        the module's user can read, removed once C(sbsign) is done; neither is ever printed.
    type: str
    version_added: 0.2.0
  uki_require_signature:
    description:
      - Refuse the build unless every UKI (assembled or given) is signed by O(uki_sign_cert), as C(sbverify --cert)
        checks it. Needs O(uki_sign_cert).
    type: bool
    default: false
    version_added: 0.2.0
  platforms:
    description:
      - Platforms to build manifests for. Order does not matter; baremetal is always listed first.
      - V(metal) is a synonym of V(baremetal) and V(kvm) one of V(virtualization).
    type: list
    elements: str
    choices: [virtualization, baremetal, metal, kvm]
    default: [virtualization, baremetal]
  layer_format:
    description:
      - V(raw) stores each file as it is, with media type C(application/vnd.ironcore.image.<role>); this is what
        IronCore consumers read.
      - V(tar+gzip) stores each file in a reproducible single-file tar.gz with media type
        C(application/vnd.oci.image.layer.v1.tar+gzip).
    type: str
    choices: [raw, tar+gzip]
    default: raw
  annotations:
    description: Annotations to put on the combined index. Nothing time-dependent is added unless given here.
    type: dict
  platform_tags:
    description: Also record the per-platform and per-platform-per-architecture names.
    type: bool
    default: true
  platform_tag_aliases:
    description:
      - With O(platform_tags=true), also record C(<tag>-metal), C(<tag>-kvm), C(<tag>-metal-<arch>) and
        C(<tag>-kvm-<arch>), the names IronCore's os-images publishes, pointing at the same digests as
        C(<tag>-baremetal), C(<tag>-virtualization) and their per-architecture names. No blob is added.
    type: bool
    default: true
    version_added: 0.2.0
  allow_shared_dest:
    description:
      - Build into a O(layout) whose directory, or whose C(blobs) or C(blobs/sha256) directory, other users can write
        to (writable by its group or others without the sticky bit, or owned by another user than root or the one
        running the module).
      - By default such a layout is refused, since whoever can write there could plant links or swap files where the
        module writes blobs and C(index.json), as root on a build host.
      - A symbolic link at C(blobs) or C(blobs/sha256) is refused even then.
      - Set it only when everyone who can write to the directory is trusted.
    type: bool
    default: false
  overwrite:
    description:
      - With V(true), the build moves O(name) and its platform names to the image it makes, wherever they pointed.
      - With V(false), a name (O(name) or one of its platform names) that already points at a different digest is
        refused with a message naming the digest it points at now, and nothing is recorded; a name that already
        points at the same digest is fine (C(changed=false) when nothing else changes). Check mode refuses the same
        way. Use it for release tags, which must never move.
      - Blobs imported before the refusal stay in the layout until M(ironcore.image.ironcore_image_prune) removes them.
    type: bool
    default: true
    version_added: 0.2.0
  block_index:
    description:
      - Write a block index for every raw (O(layer_format=raw)) C(rootfs), C(squashfs) and C(iso) layer of at least
        64 MiB, that is one 128-bit hash per block of the layer (see O(block_index_hash)) and a map of the all-zero
        blocks, so that a node holding an older file can fetch only the blocks that changed.
      - The index is made from the same bytes the layer is copied into the layout with, so it costs no extra read.
        It is a blob of its own (format in the collection's C(docs/image-format.md)), attached to each platform
        manifest that holds the layer as an OCI referrer (artifact type
        C(application/vnd.ironcore.image.blockindex.v1), listed under the name C(sha256-<manifest hex>) in the
        layout); the image's own manifests and digests never change.
      - A rebuild of an unchanged layer finds its index attached and reads neither; a layout built without the
        index gets it from one read of the layer.
      - With V(false), no index is written.
    type: bool
    default: true
    version_added: 0.2.0
  block_index_block_size:
    description:
      - Block size of the block index in bytes, a power of two from V(512) to V(16777216) (16 MiB).
      - Match the file system's block size (4 KiB for ext4 and most others) so that unchanged files land on
        unchanged blocks.
      - M(ironcore.image.ironcore_image_fetch) uses indexes of V(4096) bytes or more for a delta; a finer index
        is written, but a node downloads the whole layer instead (it would cost the node more than the layer
        warrants).
    type: int
    default: 4096
    version_added: 0.2.0
  block_index_hash:
    description:
      - The hash of every block in the block index, named in the index's header.
      - V(xxh3-128) writes index format v2. It hashes about six times faster than sha256, on the build host and
        on every node that hashes its seeds, and needs the Python package C(xxhash) where the build runs and where
        the image is fetched (it is in the collection's requirements). A fetch without it, or of a release before
        format v2, downloads the whole layer instead.
      - V(sha256) writes index format v1 (the first 16 bytes of the sha256 of every block), which every release
        of M(ironcore.image.ironcore_image_fetch) uses for a delta.
      - The block hash needs no cryptographic strength. The file a node assembles must hash to the layer digest,
        so a colliding block hash can only cost bandwidth, never a wrong byte.
      - An index already attached is reused only when its block size and hash are the ones asked for.
    type: str
    choices: [xxh3-128, sha256]
    default: xxh3-128
    version_added: 0.2.0
seealso:
  - module: ironcore.image.ironcore_image_push
  - module: ironcore.image.ironcore_image_fetch
notes:
  - SIGINT, SIGTERM and SIGHUP (Ctrl-C in C(ansible-playbook), a cancelled AWX job) end the module within
    seconds with C(interrupted by SIGTERM; partial downloads are kept and the next run resumes); its locks are
    released.
  - The layout can be read by any OCI tool, for example C(skopeo inspect --raw oci:LAYOUT:NAME).
"""

EXAMPLES = r"""
- name: Build a two-architecture image for both platforms
  ironcore.image.ironcore_image_build:
    layout: /var/lib/ironcore/layout
    name: registry.example.com/os/gardenlinux:1.0
    artifacts:
      - architecture: amd64
        kernel: out/amd64/vmlinuz
        initramfs: out/amd64/initrd
        rootfs: out/amd64/rootfs.raw
        cmdline: console=ttyS0 root=LABEL=ROOT
      - architecture: arm64
        kernel: out/arm64/vmlinuz
        initramfs: out/arm64/initrd
        rootfs: out/arm64/rootfs.raw
  register: image

- name: Build a bare-metal image with a Secure Boot signed UKI assembled from the kernel and initramfs
  ironcore.image.ironcore_image_build:
    layout: /var/lib/ironcore/layout
    name: registry.example.com/os/gardenlinux:1.1
    platforms: [baremetal]
    uki_sign_key: /etc/ironcore/secureboot/db.key
    uki_sign_cert: /etc/ironcore/secureboot/db.pem
    uki_sign_key_passphrase: "{{ vault_db_key_passphrase }}"
    uki_require_signature: true
    artifacts:
      - architecture: amd64
        kernel: out/amd64/vmlinuz
        initramfs: out/amd64/initrd
        squashfs: out/amd64/root.squashfs
        cmdline: console=ttyS0
        uki: auto

- name: Build a hypervisor-only image
  ironcore.image.ironcore_image_build:
    layout: /var/lib/ironcore/layout
    name: registry.example.com/os/vm-base:2.3
    platforms: [virtualization]
    artifacts:
      - architecture: amd64
        rootfs: out/amd64/rootfs.raw
"""

RETURN = r"""
name:
  description: The normalised name the combined index is recorded under.
  returned: always
  type: str
  sample: registry.example.com/os/gardenlinux:1.0
digest:
  description: Digest of the combined index.
  returned: always
  type: str
  sample: sha256:0f3c...
size:
  description:
    - The image's bytes - the combined index and every manifest, config and layer it reaches, each blob counted
      once (a rootfs shared by both platforms once), as M(ironcore.image.ironcore_image_info) counts a layout's
      images. Block indexes, which are referrers beside the image, are not counted.
  returned: always
  type: int
  sample: 1073751234
index_size:
  description: Size in bytes of the combined index document (what a descriptor of RV(digest) gives as C(size)).
  returned: always
  type: int
  sample: 1234
  version_added: 0.2.0
manifests:
  description: One entry per architecture and platform, in index order.
  returned: always
  type: list
  elements: dict
  contains:
    platform:
      description: V(baremetal) or V(virtualization).
      type: str
    architecture:
      description: V(amd64) or V(arm64).
      type: str
    digest:
      description: Digest of the manifest.
      type: str
    size:
      description: Size of the manifest in bytes.
      type: int
    layers:
      description:
        - The manifest's layers in order, each with C(title), C(mediaType), C(digest), C(size) and C(block_index).
        - C(block_index) is the layer's block index (see O(block_index)) as C(digest), C(size), C(block_size) and
          C(hash) (see O(block_index_hash)), or V(null) when the layer has none.
      type: list
      elements: dict
refs:
  description: Every name recorded for this image in the layout.
  returned: always
  type: list
  elements: str
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ironcore.image.plugins.module_utils._build import build_image
from ansible_collections.ironcore.image.plugins.module_utils._deps import require
from ansible_collections.ironcore.image.plugins.module_utils._layout import wait_for_layout_locks
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    ARCHITECTURE_CHOICES,
    LAYER_FORMATS,
    PLATFORM_CHOICES,
    ROLES,
)
from ansible_collections.ironcore.image.plugins.module_utils._module import run


def main() -> None:
    artifact_options: dict[str, dict[str, t.Any]] = {role: {"type": "path"} for role in ROLES}
    artifact_options["architecture"] = {"type": "str", "required": True, "choices": list(ARCHITECTURE_CHOICES)}
    artifact_options["cmdline"] = {"type": "str"}
    artifact_options["uki_stub"] = {"type": "path"}
    artifact_options["os_release"] = {"type": "path"}
    module = AnsibleModule(
        argument_spec={
            "layout": {"type": "path", "required": True},
            "name": {"type": "str", "required": True},
            "artifacts": {"type": "list", "elements": "dict", "required": True, "options": artifact_options},
            "platforms": {
                "type": "list",
                "elements": "str",
                "choices": list(PLATFORM_CHOICES),
                "default": ["virtualization", "baremetal"],
            },
            "layer_format": {"type": "str", "choices": list(LAYER_FORMATS), "default": "raw"},
            "annotations": {"type": "dict"},
            "platform_tags": {"type": "bool", "default": True},
            "platform_tag_aliases": {"type": "bool", "default": True},
            "allow_shared_dest": {"type": "bool", "default": False},
            "overwrite": {"type": "bool", "default": True},
            "block_index": {"type": "bool", "default": True},
            "block_index_block_size": {"type": "int", "default": 4096},
            "block_index_hash": {"type": "str", "choices": ["xxh3-128", "sha256"], "default": "xxh3-128"},
            "lock_timeout": {"type": "float"},
            "uki_sign_key": {"type": "path"},
            "uki_sign_cert": {"type": "path"},
            "uki_sign_key_passphrase": {"type": "str", "no_log": True},
            "uki_require_signature": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    uki_signing = module.params["uki_sign_key"] or module.params["uki_require_signature"]
    needs = ("jsonschema",) + (("cryptography",) if uki_signing else ())
    if module.params["block_index"] and module.params["block_index_hash"] == "xxh3-128":
        needs += ("xxhash",)
    require(module, *needs)
    wait_for_layout_locks(module.params["lock_timeout"], module.warn)
    run(module, lambda: build_image(module.params, module.check_mode))


if __name__ == "__main__":
    main()
