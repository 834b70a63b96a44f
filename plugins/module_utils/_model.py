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

import re
import typing as t
from dataclasses import dataclass

ARCHITECTURES: tuple[str, ...] = ("amd64", "arm64")

# Within one architecture baremetal comes first: consumers that ignore
# platform.variant take the first entry of their architecture, and the
# baremetal manifest carries every layer any consumer looks for.
PLATFORMS: tuple[str, ...] = ("baremetal", "virtualization")

ROLES: tuple[str, ...] = ("kernel", "initramfs", "rootfs", "squashfs", "uki", "iso")
OPTIONAL_ROLES: tuple[str, ...] = ("squashfs", "uki", "iso")

LAYER_FORMATS: tuple[str, ...] = ("raw", "tar+gzip")

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
CONFIG_MEDIA_TYPES = (CONFIG_MEDIA_TYPE, LEGACY_CONFIG_MEDIA_TYPE)

TITLE_ANNOTATION = "org.opencontainers.image.title"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
PLATFORM_ANNOTATION = "io.ironcore.image.platform"

# Media types written by older ironcore-image releases; read, never written.
LEGACY_LAYER_MEDIA_TYPES: dict[str, str] = {
    MEDIA_TYPE_PREFIX + "rootfs.v1alpha1.rootfs": "rootfs",
    MEDIA_TYPE_PREFIX + "initramfs.v1alpha1.initramfs": "initramfs",
    MEDIA_TYPE_PREFIX + "vmlinuz.v1alpha1.vmlinuz": "kernel",
    MEDIA_TYPE_PREFIX + "squashfs.v1alpha1.squashfs": "squashfs",
}


def layer_media_type(role: str, layer_format: str = "raw") -> str:
    """The media type this collection writes for a role."""
    if layer_format == "tar+gzip":
        return OCI_LAYER_TAR_GZIP
    return MEDIA_TYPE_PREFIX + role


@dataclass(frozen=True)
class PlatformProfile:
    """What one kind of machine needs from an image."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]

    @property
    def roles(self) -> tuple[str, ...]:
        return self.required + self.optional


PROFILES: dict[str, PlatformProfile] = {
    "baremetal": PlatformProfile("baremetal", ("kernel", "initramfs", "rootfs"), OPTIONAL_ROLES),
    # A squashfs beside the rootfs makes libvirt-provider pick the squashfs as
    # the VM disk, so virtualization manifests carry the rootfs alone.
    "virtualization": PlatformProfile("virtualization", ("rootfs",), ()),
}


def layer_role(descriptor: t.Mapping[str, t.Any]) -> str | None:
    """The role of a layer descriptor, or None when it is not an IronCore layer."""
    media_type = str(descriptor.get("mediaType", ""))
    if media_type in LEGACY_LAYER_MEDIA_TYPES:
        return LEGACY_LAYER_MEDIA_TYPES[media_type]
    if media_type.startswith(MEDIA_TYPE_PREFIX):
        role = media_type[len(MEDIA_TYPE_PREFIX) :]
        return role if role in ROLES else None
    if media_type == OCI_LAYER_TAR_GZIP:
        title = (descriptor.get("annotations") or {}).get(TITLE_ANNOTATION)
        return title if title in ROLES else None
    return None


def is_packed(descriptor: t.Mapping[str, t.Any]) -> bool:
    """True when the layer blob is a tar+gzip wrapping the file."""
    return descriptor.get("mediaType") == OCI_LAYER_TAR_GZIP


_MACHINE_TO_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
}


def architecture_of_machine(machine: str) -> str | None:
    """Map `uname -m` output to an OCI architecture name."""
    return _MACHINE_TO_ARCH.get(machine.lower())


class InvalidReference(ValueError):
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


def platform_refs(
    ref: ImageReference, platforms: t.Iterable[str], architectures: t.Iterable[str]
) -> dict[str, ImageReference]:
    """The extra names recorded beside a combined index, keyed by what they hold."""
    refs: dict[str, ImageReference] = {}
    arch_list = list(architectures)
    for platform in platforms:
        refs[platform] = ref.with_tag_suffix(platform)
        for arch in arch_list:
            refs["%s/%s" % (platform, arch)] = ref.with_tag_suffix(platform, arch)
    return refs
