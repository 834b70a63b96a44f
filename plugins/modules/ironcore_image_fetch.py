#!/usr/bin/python
# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0).
# Compatible with the GNU General Public License version 3, ansible-core's license.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ironcore_image_fetch
short_description: Fetch the layers of an IronCore OS image a node needs, verified, into a directory
version_added: 0.1.0
description:
  - Resolves O(name) in a registry (or in a local OCI image layout with O(layout)), picks the manifest for
    the node's O(platform) and O(architecture), and delivers the layers that platform needs as files in O(dest).
  - "Selection: the C(linux) entries of the O(architecture) are taken in index order, and the first that serves
    O(platform) wins. What an entry (or a plain manifest) serves is decided by the first of these that says
    anything: 1. C(platform.variant) (the combined index M(ironcore.image.ironcore_image_build) writes);
    2. the entry's C(variant) annotation; 3. the manifest's C(variant) annotation (the published IronCore spec:
    V(metal) or V(virtualization)) or its C(io.ironcore.image.platform) annotation; 4. the suffix of the tag
    asked for, C(-baremetal), C(-metal), C(-virtualization) or C(-kvm), optionally followed by C(-<arch>)
    (the os-images per-platform tags); 5. the layers: a disk serves V(virtualization), a kernel and an
    initramfs serve V(baremetal). Manifests are only read for this when rules 1 and 2 say nothing."
  - "Layers delivered: V(virtualization) gets the C(rootfs); V(baremetal) gets C(kernel) and C(initramfs)
    (required) and whichever of C(rootfs), C(squashfs), C(uki) and C(iso) the manifest has."
  - Layers are recognised by media type, C(application/vnd.ironcore.image.<role>), the legacy v1alpha1 types
    (C(rootfs.v1alpha1.rootfs), C(initramfs.v1alpha1.initramfs), C(vmlinuz.v1alpha1.vmlinuz),
    C(squashfs.v1alpha1.squashfs)), the spec's C(application/vnd.ironcore.image.disk.img) (as C(rootfs)),
    Garden Linux's C(application/io.gardenlinux.kernel), C(.initrd) (as C(initramfs)) and C(.squashfs), and
    C(application/vnd.oci.image.layer.v1.tar+gzip) layers whose C(org.opencontainers.image.title) annotation
    names a role; those are unpacked to their single file. Other layers are skipped. Where a current and a
    legacy type give the same role, the current one is used.
  - Each blob streams into a partial file in the state directory (see O(state_dir)), is hashed as it arrives,
    checked for size and digest, synced to disk and only then renamed into place in O(dest). A mismatch fails the
    task and leaves any existing file as it was.
  - Before anything is written (O(dest), the state directory and its lock file included), the layers that are
    not in place are added up (a tar+gzip layer counts its blob, and what it unpacks to when the state record
    knows it; a kept partial file counts what it still lacks; a delta update counts its whole file). When the
    filesystem of O(dest) has less free space, the fetch fails in one line giving what is needed, what is free
    and the shortfall, in check mode too.
  - An interrupted transfer continues from where it stopped with an HTTP C(Range) request, both within a run
    and, from the partial file it keeps, on the next run.
  - A small state record in the state directory (C(.ironcore-fetch.state.json)) remembers which blob each file
    holds, with the file's device, inode, size, mtime and ctime, so a re-run neither downloads nor re-hashes
    unchanged files. Files without a matching record are hashed once. The record is only ever used to skip a hash
    when it is a regular file owned by the user running the module and writable by no one else.
  - "While it runs (not in check mode), the fetch keeps a progress record, C(progress.json) in the state
    directory, replaced atomically at most every half second (or every 64 MiB), never more than half a second
    behind the bytes (also while a download stalls), and once at the end: C(phase)
    (V(plan), V(download), V(commit), then V(finished) or V(failed)), C(done) (V(true) once every file is in
    place), C(started) and C(updated) (Unix time), C(bytes_done) and C(bytes_total) of the layers it downloads,
    and the same two per layer under C(layers.<role>). With C(async) and C(poll: 0), a play can read it with
    M(ansible.builtin.slurp) while the fetch runs (see the user guide)."
  - Besides the layer files, O(dest) holds only the hidden state directory C(.ironcore) (unless O(state_dir)
    puts it elsewhere). Files that earlier versions kept in O(dest) itself (C(.ironcore-fetch.state.json),
    C(.ironcore-fetch.lock), C(.ironcore-fetch.*.partial)) are removed, never followed.
  - Every file the module creates or reuses is opened without following symbolic links and checked to be a
    regular file of its own with a single link, so a user who can write to O(dest) cannot make it write, chmod
    or truncate another file.
author:
  - IronCore image collection maintainers (@ironcore-dev)
extends_documentation_fragment:
  - ansible.builtin.files
  - ironcore.image.attributes
  - ironcore.image.signature_identity
  - ironcore.image.registry
  - ironcore.image.registry.mirrors
  - ironcore.image.registry.transfer
attributes:
  check_mode:
    support: full
    details: Resolves the image and reports which files would change; writes nothing, not even O(dest).
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Files that already hold the right layer are left alone and the task reports RV(ignore:changed=false).
options:
  name:
    description:
      - Image reference, with a tag or an C(@sha256:) digest, for example V(registry.example.com/os/gardenlinux:1.0).
      - Without O(layout) it must start with the registry host (and port).
    type: str
    required: true
  layout:
    description:
      - Read the image from this local OCI image layout directory instead of a registry.
      - O(name) is looked up as given, as M(ironcore.image.ironcore_image_build) records it, and as its bare tag.
    type: path
  platform:
    description:
      - What the node is, which decides the manifest and the layers it gets.
      - V(metal) is a synonym of V(baremetal) and V(kvm) one of V(virtualization).
    type: str
    required: true
    choices: [baremetal, virtualization, metal, kvm]
  architecture:
    description:
      - CPU architecture of the node. V(auto) uses the machine this runs on
        (C(x86_64) is V(amd64), C(aarch64) is V(arm64)).
      - V(x86_64) and V(aarch64) are accepted for V(amd64) and V(arm64); RV(architecture) gives the OCI name.
    type: str
    choices: [amd64, arm64, x86_64, aarch64, auto]
    default: auto
  layers:
    description:
      - Only these layers; each must be in the selected manifest.
      - By default every layer the platform takes that the selected manifest has.
    type: list
    elements: str
    choices: [kernel, initramfs, rootfs, squashfs, uki, iso]
  dest:
    description:
      - Directory to put the files in. Created when missing. Nothing is ever written outside it.
    type: path
    required: true
  filenames:
    description:
      - "File name inside O(dest) per role, for example C({kernel: vmlinuz, initramfs: initrd}). Roles not
        listed are stored under the role name."
      - Names are plain file names; paths, C(..) and names starting with C(.ironcore-fetch.) are refused.
        Names never come from the image's annotations.
    type: dict
  digest:
    description:
      - Expected digest of what O(name) resolves to (the index, or the manifest for a plain manifest).
        The task fails before fetching anything when it differs.
    type: str
  verify:
    description:
      - Re-hash files already present instead of trusting the state record.
      - A file unpacked from a tar+gzip layer is checked against what the layer's blob unpacks to, so the blob is
        read again (and verified by digest); the state record's own word is never taken for it.
    type: bool
    default: false
  max_unpacked_size:
    description:
      - Most bytes the single file of a tar+gzip layer may unpack to. A layer declaring more is refused before
        anything is written, as is one that needs more than the free space in O(dest).
      - By default 2048 times the layer's blob size, at most 64 GiB (68719476736). Deflate cannot compress more
        than about 1032 to 1, so this passes even a raw disk image that is almost all zeros, and refuses what only
        a crafted archive (a sparse member, a forged size field) can declare.
      - Raw layers are bounded by their descriptor's size and are not affected.
    type: int
  state_dir:
    description:
      - Directory for the state record, the lock and partial files of interrupted transfers. Created (mode 0700)
        when missing.
      - By default the hidden subdirectory C(.ironcore) of O(dest), created with mode 0700 so that a web server
        serving O(dest) cannot read it. To keep it out of what is served entirely (an HTTP server that lists
        hidden files, a libvirt C(dir) pool that would see it as a volume), name a directory outside O(dest),
        for example V(/var/lib/ironcore/fetch/boot-amd64); use one per O(dest).
      - Partial files must be on the file system of O(dest) for the final rename; when O(state_dir) is on
        another one, they are kept in C(.ironcore) inside O(dest) instead.
      - Must not be O(dest) itself.
    type: path
  allow_shared_dest:
    description:
      - Write into a O(dest) (and read a O(layout), and keep state in a O(state_dir)) that other users can write
        to (writable by its group or others without the sticky bit, or owned by another user than root or the one
        running the module).
      - By default such a directory is refused, since whoever can write there could plant links or swap files
        where the module, often root, writes.
      - Set it only when everyone who can write to the directory is trusted.
    type: bool
    default: false
  signature_keys:
    description:
      - PEM public keys (EC P-256) to trust, each given inline (C(-----BEGIN PUBLIC KEY-----)...) or as the path of
        a PEM file on the host that runs the module.
      - The digest O(name) resolves to and the platform manifest delivered must each carry a signature in
        cosign's format (the C(sha256-<hex>.sig) manifest beside them, as M(ironcore.image.ironcore_image_sign)
        writes it) by one of these keys, whose payload names exactly that digest and the repository of O(name).
      - Checked before any blob byte is written. Without a valid signature the task fails with one line saying
        why (unsigned; signed by an unknown key, with the fingerprints found; a signature for another digest;
        a payload for another repository; a malformed signature) and files already in O(dest) stay untouched.
    type: list
    elements: str
  require_signature:
    description:
      - Refuse an image without a valid signature by one of O(signature_keys).
      - Defaults to V(true) when O(signature_keys) are given, else to V(false). V(true) without keys fails.
    type: bool
  require_provenance:
    description:
      - Also demand a provenance (an in-toto statement with a SLSA provenance predicate, in a DSSE envelope, as
        M(ironcore.image.ironcore_image_sign) attaches it with O(ironcore.image.ironcore_image_sign#module:provenance))
        signed by one of O(signature_keys), whose subject is the digest O(name) resolves to.
      - Checked before any blob byte is written, like the signatures. Without one the task fails with one line
        saying why (no provenance; signed by an unknown key; a provenance for another digest; a malformed
        envelope; a payload changed after signing; a statement whose predicate type is not accepted).
      - Only a statement whose C(predicateType) is one of O(provenance_predicate_types) counts as a provenance;
        a vulnerability scan or another statement signed by the same key does not.
    type: bool
    default: false
    version_added: 0.2.0
  provenance_predicate_types:
    description:
      - The in-toto predicate types that O(require_provenance) accepts as a provenance.
      - The default accepts SLSA provenance v1 only, which M(ironcore.image.ironcore_image_sign) writes. Add others
        (for example C(https://slsa.dev/provenance/v0.2)) only if a build system you trust signs them.
    type: list
    elements: str
    default: [https://slsa.dev/provenance/v1]
    version_added: 0.2.0
  delta:
    description:
      - V(auto) builds a raw layer that has a block index (attached to the platform manifest as a referrer, see
        docs/delta.md) from the blocks local O(seeds) already hold, and fetches only the other blocks, with
        single-range GETs. Every block read from a seed is hashed again before it is used, all-zero blocks become
        holes, and the assembled file must hash to the layer digest before it replaces anything. With no seed (the
        first delivery), a layer whose index marks at least 40 % of it as zero blocks is fetched the same way, only
        its non-zero blocks, into a sparse file. Otherwise, and whenever the image has no index, the index does not
        fit the layer, the delta would download more than 60 % of the layer, or the source ignores Range, the whole
        blob is downloaded as with V(never).
      - Only indexes shaped as the build writes them are used (16-byte hashes, blocks of 4 KiB to 16 MiB), so that
        what a node spends on its seeds stays a fixed share of the layer whatever the index claims. Each seed is
        read once and its blocks looked up as they stream past; seeds too small to supply 40 % of the layer are
        not read at all.
      - RV(files.delta) says whether it was used, or why not.
    type: str
    choices: [auto, never]
    default: auto
    version_added: 0.2.0
  seeds:
    description:
      - Local files or block devices that may hold blocks of the new layers, for example the previous release's
        rootfs. The file currently at the destination is always a seed too.
      - A seed that is missing, a directory or neither a regular file nor a block device is skipped with a
        warning. Seeds are only read.
      - The block hashes of a regular file are kept in the state directory, keyed on the file's device, inode,
        size, mtime and ctime, so an unchanged seed is read only for the blocks it gives. Such a cache entry is
        at most 1/256 of its seed. Block devices are hashed on every run.
    type: list
    elements: path
    default: []
    version_added: 0.2.0
  lock_timeout:
    description:
      - Seconds to wait for another fetch into the same O(dest) (they share the state directory's lock) before
        failing in one line. Unset waits as long as that run takes.
      - A run that has to wait says so at once in a warning naming the other run's O(dest) and since when.
    type: float
    version_added: 0.2.0
notes:
  - With O(layout) the module reads the image from disk and does not need C(requests).
  - SIGINT, SIGTERM and SIGHUP (Ctrl-C in C(ansible-playbook), a cancelled AWX job, a closed terminal) stop every
    transfer within seconds and end the module process, which fails with
    C(interrupted by SIGTERM; partial downloads are kept and the next run resumes). The lock is released, and
    the next run resumes the partial files.
  - The module reads O(docker_config) (C(auths) with C(auth), C(username)/C(password) or C(identitytoken);
    C(credHelpers); C(credsStore)) and runs C(docker-credential-<name> get) itself.
  - O(concurrency) layers are downloaded in parallel; O(timeout) and O(retries) also apply to interrupted transfers,
    which are resumed from the last byte received.
  - Manifests, indexes and configs larger than 4 MiB are refused.
  - O(signature_keys) need the Python library C(cryptography) on the host that runs the module.
  - A tar+gzip layer must hold exactly one regular file. Links, devices, directories, sparse members, names that
    leave their directory, a second member, and more than 1 MiB of headers before the file are refused.
seealso:
  - module: ironcore.image.ironcore_image_info
  - module: ironcore.image.ironcore_image_build
  - module: ironcore.image.ironcore_image_push
"""

EXAMPLES = r"""
- name: Put kernel, initramfs and rootfs on a boot server
  ironcore.image.ironcore_image_fetch:
    name: registry.example.com/os/gardenlinux:1.0
    platform: baremetal
    architecture: amd64
    dest: /srv/boot/gardenlinux-1.0/amd64
    filenames:
      kernel: vmlinuz
      initramfs: initrd
      rootfs: root.img
    mode: "0644"
  register: boot_files

- name: Put the rootfs of the hypervisor's own architecture on it, pinned to a digest
  ironcore.image.ironcore_image_fetch:
    name: registry.example.com/os/gardenlinux:1.0
    digest: sha256:0f3c1d2e4b5a69788796a5b4c3d2e1f00f3c1d2e4b5a69788796a5b4c3d2e1f0
    platform: virtualization
    dest: /var/lib/images/gardenlinux-1.0

- name: Only the kernel, from a local OCI layout
  ironcore.image.ironcore_image_fetch:
    layout: /var/lib/ironcore/layout
    name: registry.example.com/os/gardenlinux:1.0
    platform: baremetal
    architecture: arm64
    layers: [kernel]
    dest: /srv/boot/arm64
"""

RETURN = r"""
name:
  description: The image as it was read.
  returned: always
  type: str
  sample: registry.example.com/os/gardenlinux:1.0
digest:
  description: Digest of what O(name) resolved to.
  returned: always
  type: str
  sample: sha256:0f3c1d2e4b5a69788796a5b4c3d2e1f00f3c1d2e4b5a69788796a5b4c3d2e1f0
manifest_digest:
  description: Digest of the manifest selected for the platform and architecture.
  returned: always
  type: str
platform:
  description: The platform the layers were selected for.
  returned: always
  type: str
  sample: baremetal
architecture:
  description:
    - The architecture the layers were selected for (V(auto) resolved), by its OCI name (V(x86_64) given is
      V(amd64) here).
  returned: always
  type: str
  sample: amd64
config:
  description: 'The image config, for example C({"commandLine": "console=ttyS0"}); null when it is not a JSON object.'
  returned: always
  type: dict
files:
  description: One entry per delivered layer, keyed by role.
  returned: always
  type: dict
  contains:
    path:
      description: Absolute path of the file.
      type: str
    digest:
      description: Digest of the layer blob the file comes from.
      type: str
    media_type:
      description: Media type of the layer.
      type: str
    size:
      description: Size of the layer blob in bytes (for a tar+gzip layer, the compressed size).
      type: int
    content_size:
      description:
        - Size in bytes of the file as delivered in O(dest); for a tar+gzip layer, what it unpacks to.
        - Equal to RV(files.size) for raw layers. In check mode, null for a tar+gzip layer whose file is neither
          in O(dest) nor known from the state record.
      type: int
    unpacked:
      description: Whether the file was unpacked from a tar+gzip layer.
      type: bool
    changed:
      description: Whether this file was (or, in check mode, would be) written or had its attributes changed.
      type: bool
    sources:
      description:
        - With O(mirrors) only. Which sources served the bytes of this file's blob in this run, in the order they
          served them, each with C(url) (the mirror's O(mirrors[].url), or the origin's address) and C(bytes).
        - Several entries for one blob mean a transfer failed over mid-blob and went on at the same byte.
        - Empty when the file was already in place.
      type: list
      elements: dict
      version_added: 0.2.0
    delta:
      description:
        - "How the file was delivered: C(used) V(true) with C(seed_bytes) (taken from seeds), C(fetched_bytes)
          (received in ranges), C(requests) (range GETs sent, retries included), C(zero_bytes) (all-zero blocks
          neither fetched nor read, left as holes in the sparse file) and C(seed_hashed_bytes) (seed bytes read to
          hash them, 0 when every seed's cached hashes answered); or C(used) V(false) with C(reason), for example
          that the image has no block index, the index was wrong (the file was then downloaded whole), or that
          nothing was downloaded."
        - With no seed (a first delivery), C(used) is V(true) with C(seed_bytes) V(0) when only the non-zero blocks
          were fetched (see O(delta)).
      type: dict
      version_added: 0.2.0
  sample:
    kernel:
      path: /srv/boot/amd64/vmlinuz
      digest: sha256:5b1d...
      media_type: application/vnd.ironcore.image.kernel
      size: 12582912
      content_size: 12582912
      unpacked: false
      changed: true
      delta:
        used: false
        reason: the layer is packed (tar+gzip); only raw layers have block indexes
bytes_downloaded:
  description: Bytes received from the source in this run (0 in check mode).
  returned: always
  type: int
elapsed:
  description: Seconds the fetch took, from resolving O(name) to the last file in place.
  returned: always
  type: float
  sample: 42.125
  version_added: 0.2.0
bytes_per_second:
  description: RV(bytes_downloaded) divided by RV(elapsed), rounded down; 0 when nothing was downloaded.
  returned: always
  type: int
  sample: 104857600
  version_added: 0.2.0
signatures:
  description:
    - For each digest checked (the image's and the platform manifest's), the fingerprint of the key whose
      signature verified it, C(SHA256:) and the hex SHA-256 of the DER public key.
    - Empty when no signature was required.
  returned: always
  type: dict
  sample: {"sha256:0f3c...": "SHA256:4b1e..."}
signature_formats:
  description:
    - For each digest in RV(signatures), the format of the signature that verified it, V(legacy) (a
      C(sha256-<hex>.sig)) or V(bundle) (a Sigstore bundle referrer). The legacy format is checked first.
    - Empty when no signature was required.
  returned: always
  type: dict
  sample: {"sha256:0f3c...": "bundle"}
  version_added: 0.2.0
bytes_from_origin:
  description:
    - With O(mirrors) only. Bytes the origin served in this run (blobs and documents), what the mirrors did not
      take off it.
  returned: when O(mirrors) is given
  type: int
  sample: 0
  version_added: 0.2.0
mirror_errors:
  description:
    - With O(mirrors) only. Each time a mirror failed and the next source was asked instead, with C(url) (the
      mirror), C(digest) (the blob or manifest asked for, or the name when a mirror resolved a tag) and C(reason)
      (one line, for example an HTTP status, a broken connection, or bytes that failed verification).
    - Empty when every mirror answered.
    - Each entry is also reported as a warning naming the mirror, so that a broken site cache does not go
      unnoticed.
  returned: when O(mirrors) is given
  type: list
  elements: dict
  sample:
    - url: https://cache.rack1.example:5000
      digest: sha256:5b1d...
      reason: "served bytes that failed verification: ..."
  version_added: 0.2.0
provenance:
  description:
    - The provenance that was verified, with O(require_provenance); null otherwise.
  returned: always
  type: dict
  sample: {"verified": true, "keyid": "SHA256:4b1e...", "predicate_type": "https://slsa.dev/provenance/v1"}
  contains:
    verified:
      description: Always V(true) (an unverified provenance fails the task).
      type: bool
    keyid:
      description: The fingerprint of the key whose DSSE signature verified.
      type: str
    predicate_type:
      description: The statement's predicate type.
      type: str
  version_added: 0.2.0
retries:
  description:
    - How many registry requests were retried (after a connection error, a timeout or an answer of 429 or 5xx),
      plus every broken blob transfer that was resumed, even one whose resumed attempt gained bytes.
    - Always 0 with O(layout).
    - Each retry is also reported as a warning naming the operation, the attempt and the reason; a resumed
      transfer as C(resuming <role> (<digest>) at byte <n> of <size>) followed by the reason.
  returned: always
  type: int
  sample: 0
"""


import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ironcore.image.plugins.module_utils._deps import require
from ansible_collections.ironcore.image.plugins.module_utils._fetch import fetch_image
from ansible_collections.ironcore.image.plugins.module_utils._identity import SIGNATURE_IDENTITY_SPEC
from ansible_collections.ironcore.image.plugins.module_utils._mirrors import warn_mirror_errors
from ansible_collections.ironcore.image.plugins.module_utils._module import run
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import (
    MIRRORS_ARGUMENT_SPEC,
    REGISTRY_REQUIRED_TOGETHER,
)
from ansible_collections.ironcore.image.plugins.module_utils._source import image_argument_spec


def main() -> None:
    argument_spec = image_argument_spec(platform_required=True)
    argument_spec.update(
        dest={"type": "path", "required": True},
        filenames={"type": "dict"},
        digest={"type": "str"},
        verify={"type": "bool", "default": False},
        max_unpacked_size={"type": "int"},
        state_dir={"type": "path"},
        allow_shared_dest={"type": "bool", "default": False},
        signature_keys={"type": "list", "elements": "str", "no_log": False},
        signature_identity=SIGNATURE_IDENTITY_SPEC,
        require_signature={"type": "bool"},
        require_provenance={"type": "bool", "default": False},
        provenance_predicate_types={"type": "list", "elements": "str", "default": ["https://slsa.dev/provenance/v1"]},
        delta={"type": "str", "choices": ["auto", "never"], "default": "auto"},
        seeds={"type": "list", "elements": "path", "default": []},
        lock_timeout={"type": "float"},
    )
    argument_spec.update(MIRRORS_ARGUMENT_SPEC)
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_together=REGISTRY_REQUIRED_TOGETHER,
        add_file_common_args=True,
        supports_check_mode=True,
    )
    needs: tuple[str, ...] = () if module.params["layout"] else ("requests",)
    if module.params["signature_keys"] or module.params["require_signature"] or module.params["require_provenance"]:
        needs += ("cryptography",)
    if needs:
        require(module, *needs)

    def apply_attributes(path: str, changed: bool) -> bool:
        return module.set_fs_attributes_if_different(
            module.load_file_common_arguments(module.params, path=path), changed
        )

    def fetch() -> dict[str, t.Any]:
        result = fetch_image(module.params, module.check_mode, apply_attributes, module.warn, module.warn)
        return warn_mirror_errors(result, module.warn)

    run(module, fetch)


if __name__ == "__main__":
    main()
