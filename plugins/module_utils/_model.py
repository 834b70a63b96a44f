# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The IronCore OS image model: roles, media types, platforms and references.

Knows nothing about files, HTTP or Ansible, so every other part can lean on
it and it can be tested on its own.
"""

from __future__ import annotations

import json
import re
import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError

ARCHITECTURES: tuple[str, ...] = ("amd64", "arm64")

# Within one architecture baremetal comes first: consumers that ignore
# platform.variant take the first entry of their architecture, and the
# baremetal manifest carries every layer any consumer looks for.
PLATFORMS: tuple[str, ...] = ("baremetal", "virtualization")

# The IronCore ecosystem names the same two platforms three ways: the published
# spec says metal/virtualization, os-images tags say metal/kvm, this collection
# says baremetal/virtualization. Every input that names a platform takes all.
PLATFORM_SYNONYMS: dict[str, str] = {"metal": "baremetal", "kvm": "virtualization"}
PLATFORM_CHOICES: tuple[str, ...] = PLATFORMS + tuple(PLATFORM_SYNONYMS)
# What the spec's `variant` annotation says for each platform.
SPEC_VARIANTS: dict[str, str] = {"baremetal": "metal", "virtualization": "virtualization"}
# The os-images tag word for each platform (`<tag>-metal`, `<tag>-kvm`).
TAG_ALIASES: dict[str, str] = {"baremetal": "metal", "virtualization": "kvm"}

ROLES: tuple[str, ...] = ("kernel", "initramfs", "rootfs", "squashfs", "uki", "iso")

LAYER_FORMATS: tuple[str, ...] = ("raw", "tar+gzip")

# The most a manifest, index, config or bookkeeping document may be: read in
# whole, so it is capped wherever such a document is read.
MAX_DOCUMENT_SIZE = 4 * 1024 * 1024
# The most entries an index may list; each is a manifest to read and describe.
MAX_INDEX_ENTRIES = 1024

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)

MEDIA_TYPE_PREFIX = "application/vnd.ironcore.image."
CONFIG_MEDIA_TYPE = MEDIA_TYPE_PREFIX + "config.v1+json"
LEGACY_CONFIG_MEDIA_TYPE = MEDIA_TYPE_PREFIX + "config.v1alpha1+json"

TITLE_ANNOTATION = "org.opencontainers.image.title"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
PLATFORM_ANNOTATION = "io.ironcore.image.platform"
# On a uki layer: the sha256 fingerprint of the certificate whose key signed the UKI for Secure Boot.
UKI_SIGNER_ANNOTATION = "io.ironcore.image.uki.signer"
# The published spec's manifest annotations (also written on our index entries).
VARIANT_ANNOTATION = "variant"
ARCHITECTURE_ANNOTATION = "architecture"

# Media types written by older ironcore-image releases; read, never written.
LEGACY_LAYER_MEDIA_TYPES: dict[str, str] = {
    MEDIA_TYPE_PREFIX + "rootfs.v1alpha1.rootfs": "rootfs",
    MEDIA_TYPE_PREFIX + "initramfs.v1alpha1.initramfs": "initramfs",
    MEDIA_TYPE_PREFIX + "vmlinuz.v1alpha1.vmlinuz": "kernel",
    MEDIA_TYPE_PREFIX + "squashfs.v1alpha1.squashfs": "squashfs",
}
# Layer media types other producers write, and the role each one plays; read, never written.
DISK_IMAGE_MEDIA_TYPE = MEDIA_TYPE_PREFIX + "disk.img"
FOREIGN_LAYER_MEDIA_TYPES: dict[str, str] = {
    DISK_IMAGE_MEDIA_TYPE: "rootfs",
    "application/io.gardenlinux.kernel": "kernel",
    "application/io.gardenlinux.initrd": "initramfs",
    "application/io.gardenlinux.squashfs": "squashfs",
}


def layer_media_type(role: str, layer_format: str = "raw") -> str:
    """The media type this collection writes for a role."""
    if layer_format == "tar+gzip":
        return OCI_LAYER_TAR_GZIP
    return MEDIA_TYPE_PREFIX + role


@dataclass(frozen=True)
class PlatformProfile:
    """What one kind of machine needs from an image.

    `required` is what a node cannot boot without; `live_root` lists the
    roles of which a built image must carry at least one (the root file
    system the node runs from); `roles` is every role the platform takes, in
    the order manifests list them.
    """

    name: str
    required: tuple[str, ...]
    roles: tuple[str, ...]
    live_root: tuple[str, ...] = ()

    @property
    def optional(self) -> tuple[str, ...]:
        return tuple(role for role in self.roles if role not in self.required)


PROFILES: dict[str, PlatformProfile] = {
    # Bare metal boots kernel + initramfs; the root is a rootfs written to disk
    # or a squashfs served live (Garden Linux PXE). squashfs comes before rootfs:
    # libvirt-provider takes the first entry of an architecture (this one) and
    # lets the later of the two become the VM disk, which must be the rootfs.
    "baremetal": PlatformProfile(
        "baremetal",
        ("kernel", "initramfs"),
        ("kernel", "initramfs", "squashfs", "rootfs", "uki", "iso"),
        ("rootfs", "squashfs"),
    ),
    # A squashfs beside the rootfs makes libvirt-provider pick the squashfs as
    # the VM disk, so virtualization manifests carry the rootfs alone.
    "virtualization": PlatformProfile("virtualization", ("rootfs",), ("rootfs",)),
}


def canonical_platform(name: t.Any) -> str | None:
    """`baremetal`/`virtualization` for any of the ecosystem's names, None for anything else."""
    if not isinstance(name, str):
        return None
    word = name.strip().lower()
    word = PLATFORM_SYNONYMS.get(word, word)
    return word if word in PLATFORMS else None


_TAG_SUFFIX_RE = re.compile(
    r"-(?P<platform>%s)(?:-(?P<arch>%s))?$" % ("|".join(PLATFORM_CHOICES), "|".join(ARCHITECTURES))
)


def platform_of_tag(tag: str | None) -> str | None:
    """The platform a tag names by its suffix (`1.0-metal`, `1.0-kvm-arm64`, ...), else None."""
    match = _TAG_SUFFIX_RE.search(tag or "")
    return canonical_platform(match.group("platform")) if match else None


def architecture_of_tag(tag: str | None) -> str | None:
    """The architecture a platform tag names (`1.0-kvm-arm64` -> arm64), else None."""
    match = _TAG_SUFFIX_RE.search(tag or "")
    return match.group("arch") if match else None


def document_kind(document: t.Mapping[str, t.Any], media_type: str | None = None) -> str | None:
    """ "index" or "manifest", by media type first and by shape when none is given; None when neither."""
    declared = document.get("mediaType") or media_type
    if declared in INDEX_MEDIA_TYPES:
        return "index"
    if declared in MANIFEST_MEDIA_TYPES:
        return "manifest"
    if isinstance(document.get("manifests"), list):
        return "index"
    if isinstance(document.get("layers"), list):
        return "manifest"
    return None


def declared_media_type(data: bytes) -> str:
    """The `mediaType` a manifest or index declares in its own JSON ("" when none or not JSON)."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return ""
    value = document.get("mediaType") if isinstance(document, dict) else None
    return value if isinstance(value, str) else ""


def descriptors(value: t.Any) -> list[t.Mapping[str, t.Any]]:
    """The JSON objects of a descriptor field (one object, or a list of them); anything else is skipped."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []


def layer_role(descriptor: t.Mapping[str, t.Any]) -> str | None:
    """The role of a layer descriptor, or None when it is not an IronCore layer."""
    media_type = str(descriptor.get("mediaType", ""))
    if media_type in LEGACY_LAYER_MEDIA_TYPES:
        return LEGACY_LAYER_MEDIA_TYPES[media_type]
    if media_type in FOREIGN_LAYER_MEDIA_TYPES:
        return FOREIGN_LAYER_MEDIA_TYPES[media_type]
    if media_type.startswith(MEDIA_TYPE_PREFIX):
        role = media_type[len(MEDIA_TYPE_PREFIX) :]
        return role if role in ROLES else None
    if media_type == OCI_LAYER_TAR_GZIP:
        annotations = descriptor.get("annotations")
        title = annotations.get(TITLE_ANNOTATION) if isinstance(annotations, dict) else None
        return title if title in ROLES else None
    return None


def is_current_media_type(descriptor: t.Mapping[str, t.Any]) -> bool:
    """True for the media types this collection writes (preferred over legacy and foreign ones)."""
    media_type = descriptor.get("mediaType")
    return media_type == OCI_LAYER_TAR_GZIP or (
        isinstance(media_type, str)
        and media_type.startswith(MEDIA_TYPE_PREFIX)
        and media_type[len(MEDIA_TYPE_PREFIX) :] in ROLES
    )


def is_packed(descriptor: t.Mapping[str, t.Any]) -> bool:
    """True when the layer blob is a tar+gzip wrapping the file."""
    return descriptor.get("mediaType") == OCI_LAYER_TAR_GZIP


# The kernel's (and Ironic's) names for the architectures; images carry the OCI names (ARCHITECTURES).
ARCHITECTURE_SYNONYMS: dict[str, str] = {"x86_64": "amd64", "aarch64": "arm64"}
# What an `architecture` option accepts: the OCI names and the kernel's.
ARCHITECTURE_CHOICES: tuple[str, ...] = (*ARCHITECTURES, *ARCHITECTURE_SYNONYMS)


def canonical_architecture(name: t.Any) -> str | None:
    """`amd64`/`arm64` for the OCI or the kernel's name (`x86_64`, `aarch64`), None for anything else."""
    if not isinstance(name, str):
        return None
    word = name.strip().lower()
    word = ARCHITECTURE_SYNONYMS.get(word, word)
    return word if word in ARCHITECTURES else None


def architecture_of_machine(machine: str) -> str | None:
    """Map `uname -m` output to an OCI architecture name."""
    return canonical_architecture(machine)


class InvalidReference(ImageError, ValueError):
    """An image reference that does not follow the OCI distribution grammar."""


# The distribution reference grammar, written out once here.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = r"(?:%s(?:\.%s)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?" % (_DOMAIN_COMPONENT, _DOMAIN_COMPONENT)
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}"
# Used with fullmatch, and anchored with \Z besides: `$` would also accept a trailing newline.
_REFERENCE_RE = re.compile(
    r"(?:(?P<domain>%s)/)?(?P<path>%s(?:/%s)*)(?::(?P<tag>%s))?(?:@(?P<digest>%s))?\Z"
    % (_DOMAIN, _PATH_COMPONENT, _PATH_COMPONENT, _TAG, _DIGEST)
)
_PATH_RE = re.compile(r"%s(?:/%s)*\Z" % (_PATH_COMPONENT, _PATH_COMPONENT))
TAG_RE = re.compile(r"%s\Z" % _TAG)
SHA256_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference: [registry/]repository[:tag][@digest]."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str, default_tag: str | None = "latest") -> ImageReference:
        if not isinstance(text, str) or not text:
            raise InvalidReference("an image reference must be a non-empty string")
        scheme, separator, rest = text.partition("://")
        if separator and scheme.lower() in ("http", "https"):
            raise InvalidReference(
                "%r: drop the scheme and write %r; HTTPS is the default (plain_http=true for plain HTTP)" % (text, rest)
            )
        match = _REFERENCE_RE.fullmatch(text)
        if not match:
            raise InvalidReference(
                "%r is not a valid image reference (expected [registry/]repository[:tag][@sha256:...],"
                " lower-case repository)" % text
            )
        domain, path = match.group("domain"), match.group("path")
        # Like docker: a first component without '.', ':' or 'localhost' is a path.
        if domain and not ("." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")):
            path = domain + "/" + path
            domain = None
            if not _PATH_RE.fullmatch(path):
                raise InvalidReference("%r is not a valid image reference: the repository must be lower-case" % text)
        digest = match.group("digest")
        if digest and not SHA256_DIGEST_RE.fullmatch(digest):
            raise InvalidReference("%r: only sha256 digests are supported" % text)
        tag = match.group("tag")
        if tag is None and digest is None:
            tag = default_tag
        return cls(registry=domain or "", repository=path, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """registry/repository without tag or digest."""
        return "%s/%s" % (self.registry, self.repository) if self.registry else self.repository

    @property
    def reference(self) -> str:
        """What to ask a registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += ":" + self.tag
        if self.digest:
            text += "@" + self.digest
        return text

    def with_tag(self, tag: str) -> ImageReference:
        if not TAG_RE.fullmatch(tag):
            raise InvalidReference("tag %r is not valid (at most 128 characters of [A-Za-z0-9_.-])" % tag)
        return ImageReference(self.registry, self.repository, tag, None)

    def with_tag_suffix(self, *parts: str) -> ImageReference:
        """`name:tag-part1-part2`, the names platform tags are recorded under."""
        return self.with_tag("-".join((self.tag or "latest", *parts)))


def platform_tag_words(platform: str, aliases: bool) -> tuple[str, ...]:
    """The words platform tags use for a platform: its name, then its os-images alias."""
    return (platform, TAG_ALIASES[platform]) if aliases else (platform,)


def platform_refs(
    ref: ImageReference, platforms: t.Iterable[str], architectures: t.Iterable[str], aliases: bool = False
) -> dict[str, ImageReference]:
    """The extra names recorded beside a combined index.

    Keyed by the tag suffix parts joined with "/" (`baremetal`, `baremetal/amd64`,
    and with `aliases` also `metal`, `metal/amd64`, `kvm`, `kvm/amd64`); an
    alias names the same document as the platform's own name.
    """
    refs: dict[str, ImageReference] = {}
    arch_list = list(architectures)
    for platform in platforms:
        for word in platform_tag_words(platform, aliases):
            refs[word] = ref.with_tag_suffix(word)
            for arch in arch_list:
                refs["%s/%s" % (word, arch)] = ref.with_tag_suffix(word, arch)
    return refs


# Names compared for a "did you mean" hint are cut to this many characters (their ends, where tags differ),
# so that a long list of long names costs milliseconds, not seconds.
_HINT_COMPARE_CHARS = 64


def edit_distance(first: str, second: str) -> int:
    """Levenshtein distance: the fewest single-character insertions, deletions and substitutions."""
    previous = list(range(len(second) + 1))
    for row, char in enumerate(first, start=1):
        current = [row]
        for column, other in enumerate(second, start=1):
            current.append(min(previous[column] + 1, current[column - 1] + 1, previous[column - 1] + (char != other)))
        previous = current
    return previous[-1]


def closest_first(wanted: str, candidates: t.Iterable[str]) -> list[str]:
    """The candidates, the ones nearest `wanted` by edit distance first, ties in name order."""
    tail = wanted[-_HINT_COMPARE_CHARS:]
    return sorted(candidates, key=lambda name: (edit_distance(tail, name[-_HINT_COMPARE_CHARS:]), name))


def names_hint(wanted: str, candidates: t.Iterable[str], count: int = 10) -> str:
    """Up to `count` of the candidates, closest to `wanted` first, for a not-found message; "none" for none."""
    ordered = closest_first(wanted, candidates)
    if not ordered:
        return "none"
    return ", ".join(ordered[:count]) + (", ..." if len(ordered) > count else "")
