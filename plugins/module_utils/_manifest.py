# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Manifest and index assembly with canonical JSON, and their validation.

The bytes produced here are the bytes stored and pushed: a digest is taken
once, from them, and never from a re-serialisation.
"""

from __future__ import annotations

import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import canonical_json, sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    ARCHITECTURE_ANNOTATION,
    ARCHITECTURES,
    CONFIG_MEDIA_TYPE,
    OCI_INDEX,
    OCI_LAYER_TAR_GZIP,
    OCI_MANIFEST,
    PLATFORM_ANNOTATION,
    PLATFORMS,
    PROFILES,
    SPEC_VARIANTS,
    TITLE_ANNOTATION,
    VARIANT_ANNOTATION,
    layer_media_type,
    layer_role,
)

Descriptor = t.Dict[str, t.Any]


class InvalidDocument(ImageError, ValueError):
    """A manifest or index that breaks the OCI or IronCore rules."""


def descriptor(media_type: str, data_digest: str, size: int, **extra: t.Any) -> Descriptor:
    result: Descriptor = {"mediaType": media_type, "digest": data_digest, "size": size}
    result.update({key: value for key, value in extra.items() if value})
    return result


def descriptor_for(media_type: str, data: bytes, **extra: t.Any) -> Descriptor:
    return descriptor(media_type, sha256_digest(data), len(data), **extra)


class UnsafeCommandLine(ImageError, ValueError):
    """A kernel command line that would do more than pass arguments once pasted into boot.ipxe."""


# iPXE runs the kernel line as a command: these tokens end it and start another.
_IPXE_COMMAND_SEPARATORS = (";", "&&", "||")


def check_command_line(cmdline: str) -> str:
    """The kernel command line, safe to paste into an iPXE `kernel` line; else UnsafeCommandLine.

    The provision role writes the image's `commandLine` into boot.ipxe, where
    iPXE, not the kernel, reads it first. Refused, with the offending token
    named:
      - control characters (newline, tab, carriage return, DEL and the rest of
        C0 and C1): a newline starts a new iPXE command (`chain`, `imgfetch`);
      - `$` anywhere: iPXE expands `${...}` settings, and the text must reach
        the kernel as written;
      - a token (split at spaces) that is exactly `;`, `&&` or `||`: iPXE
        separates commands there even on one line;
      - a token starting with `#`: iPXE drops it and the rest of the line as a
        comment;
      - a double quote that is never closed: the kernel would read the rest of
        the line, and whatever boot.ipxe appends to it, as one value.
    Trailing newlines, which images built by older tools carry, are trimmed,
    not refused. Returns the command line to store.
    """
    trimmed = cmdline.rstrip("\r\n")
    for token in trimmed.split(" "):
        bad = next((char for char in token if ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F), None)
        if bad is not None:
            raise UnsafeCommandLine(
                "%r holds the control character %r; iPXE would read it as a new line" % (token, bad)
            )
        if "$" in token:
            raise UnsafeCommandLine("%r holds '$', which iPXE expands as a setting" % token)
        if token in _IPXE_COMMAND_SEPARATORS:
            raise UnsafeCommandLine("%r would end iPXE's kernel command and start another" % token)
        if token.startswith("#"):
            raise UnsafeCommandLine("%r starts with '#', which iPXE takes for a comment to the end of the line" % token)
    opening = unclosed_quote(trimmed)
    if opening is not None:
        raise UnsafeCommandLine(
            "%r opens a double quote that is never closed; the kernel would read the rest of the line as one value"
            % opening
        )
    return trimmed


def unclosed_quote(cmdline: str) -> str | None:
    """The word that opens a double quote the command line never closes, else None.

    The kernel's parser (`next_arg()` in lib/cmdline.c) knows double quotes
    alone and no escapes: a quote opens, the next one closes. Single quotes
    mean nothing to it, so `shlex` (which knows both) would refuse good lines.
    """
    inside, opened = False, None
    for token in cmdline.split(" "):
        for char in token:
            if char == '"':
                inside = not inside
                if inside:
                    opened = token
    return opened if inside else None


def config_document(cmdline: str | None) -> bytes:
    return canonical_json({"commandLine": cmdline} if cmdline else {})


def platform_annotations(platform: str, architecture: str) -> dict[str, str]:
    """The spec's `variant` and `architecture` annotations: what a reader that ignores
    `platform.variant` looks at to tell a metal entry from a virtualization one."""
    return {VARIANT_ANNOTATION: SPEC_VARIANTS[platform], ARCHITECTURE_ANNOTATION: architecture}


def manifest_title(repository: str, platform: str, architecture: str) -> str:
    """`<image>-<variant>-<arch>`: the image's last path component, not its tag,
    so one build's manifests keep their digests under any tag."""
    return "%s-%s-%s" % (repository.rsplit("/", 1)[-1], SPEC_VARIANTS[platform], architecture)


def build_manifest(
    platform: str, architecture: str, title: str, config: Descriptor, layers: t.Sequence[Descriptor]
) -> bytes:
    annotations = platform_annotations(platform, architecture)
    annotations.update({PLATFORM_ANNOTATION: platform, TITLE_ANNOTATION: title})
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": list(layers),
        "annotations": annotations,
    }
    validate_manifest(document)
    return canonical_json(document)


def build_index(entries: t.Sequence[Descriptor], annotations: t.Mapping[str, str] | None = None) -> bytes:
    document: dict[str, t.Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)}
    if annotations:
        document["annotations"] = dict(annotations)
    validate_index(document)
    return canonical_json(document)


def platform_entry(manifest: Descriptor, architecture: str, variant: str | None) -> Descriptor:
    """An index entry; with a variant (the combined index) also the spec's annotations."""
    platform = {"architecture": architecture, "os": "linux"}
    if not variant:
        return dict(manifest, platform=platform)
    platform["variant"] = variant
    return dict(manifest, platform=platform, annotations=platform_annotations(variant, architecture))


# JSON Schemas of the documents this collection writes: the OCI shape plus the
# IronCore rules. Validation runs before anything is recorded.
# A pattern is searched, and `$` would also accept a trailing newline: `(?![\s\S])` is the end of
# the string in both Python's and ECMA-262's dialects.
_END = r"(?![\s\S])"
_DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}" + _END
_DESCRIPTOR_SCHEMA: dict[str, t.Any] = {
    "type": "object",
    "required": ["mediaType", "digest", "size"],
    "properties": {
        "mediaType": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*" + _END,
        },
        "digest": {"type": "string", "pattern": _DIGEST_PATTERN},
        "size": {"type": "integer", "minimum": 0},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "platform": {
            "type": "object",
            "required": ["architecture", "os"],
            "properties": {
                "architecture": {"enum": list(ARCHITECTURES)},
                "os": {"const": "linux"},
                "variant": {"enum": list(PLATFORMS)},
            },
            "additionalProperties": False,
        },
    },
}
MANIFEST_SCHEMA: dict[str, t.Any] = {
    "type": "object",
    "required": ["schemaVersion", "mediaType", "config", "layers", "annotations"],
    "properties": {
        "schemaVersion": {"const": 2},
        "mediaType": {"const": OCI_MANIFEST},
        "config": {"allOf": [_DESCRIPTOR_SCHEMA, {"properties": {"mediaType": {"const": CONFIG_MEDIA_TYPE}}}]},
        "layers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "allOf": [
                    _DESCRIPTOR_SCHEMA,
                    {"required": ["annotations"], "properties": {"annotations": {"required": [TITLE_ANNOTATION]}}},
                ]
            },
        },
        "annotations": {
            "type": "object",
            "required": [PLATFORM_ANNOTATION, VARIANT_ANNOTATION, ARCHITECTURE_ANNOTATION, TITLE_ANNOTATION],
            "properties": {
                PLATFORM_ANNOTATION: {"enum": list(PLATFORMS)},
                VARIANT_ANNOTATION: {"enum": sorted(set(SPEC_VARIANTS.values()))},
                ARCHITECTURE_ANNOTATION: {"enum": list(ARCHITECTURES)},
                TITLE_ANNOTATION: {"type": "string", "minLength": 1},
            },
            "additionalProperties": {"type": "string"},
        },
    },
}
INDEX_SCHEMA: dict[str, t.Any] = {
    "type": "object",
    "required": ["schemaVersion", "mediaType", "manifests"],
    "properties": {
        "schemaVersion": {"const": 2},
        "mediaType": {"const": OCI_INDEX},
        "manifests": {
            "type": "array",
            "minItems": 1,
            "items": {
                "allOf": [
                    _DESCRIPTOR_SCHEMA,
                    {"required": ["platform"], "properties": {"mediaType": {"const": OCI_MANIFEST}}},
                ]
            },
        },
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _schema_check(document: t.Mapping[str, t.Any], schema: t.Mapping[str, t.Any], what: str) -> None:
    import jsonschema  # guarded by the module's dependency check

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(document))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise InvalidDocument("%s is invalid at %s: %s" % (what, where, error.message))


def validate_manifest(document: t.Mapping[str, t.Any]) -> None:
    """OCI shape, then the platform profile: required roles, order, nothing extra."""
    _schema_check(document, MANIFEST_SCHEMA, "manifest")
    platform = document["annotations"][PLATFORM_ANNOTATION]
    if document["annotations"][VARIANT_ANNOTATION] != SPEC_VARIANTS[platform]:
        raise InvalidDocument(
            "%s manifest must carry variant %s, not %s"
            % (platform, SPEC_VARIANTS[platform], document["annotations"][VARIANT_ANNOTATION])
        )
    profile = PROFILES[platform]
    roles = [layer_role(layer) for layer in document["layers"]]
    titles = [layer["annotations"][TITLE_ANNOTATION] for layer in document["layers"]]
    if roles != titles:
        raise InvalidDocument("manifest layer titles %s do not match their media types %s" % (titles, roles))
    # Only the current types: ceph-provider refuses disk.img and io.gardenlinux.*, boot-operator v1alpha1.
    foreign = [
        layer["mediaType"]
        for layer in document["layers"]
        if layer["mediaType"] not in (OCI_LAYER_TAR_GZIP, layer_media_type(str(layer_role(layer))))
    ]
    if foreign:
        raise InvalidDocument("manifest must not use the media type %s; it is read, never written" % foreign[0])
    missing = [role for role in profile.required if role not in roles]
    if missing:
        raise InvalidDocument("%s manifest lacks the %s layer" % (platform, ", ".join(missing)))
    if profile.live_root and not any(role in roles for role in profile.live_root):
        raise InvalidDocument(
            "%s manifest lacks a root: it needs a %s layer" % (platform, " or a ".join(profile.live_root))
        )
    extra = [role for role in roles if role not in profile.roles]
    if extra:
        raise InvalidDocument("%s manifest must not carry %s" % (platform, ", ".join(str(r) for r in extra)))
    expected_order = [role for role in profile.roles if role in roles]
    if roles != expected_order or len(set(roles)) != len(roles):
        raise InvalidDocument("%s manifest layers must be ordered %s, got %s" % (platform, expected_order, roles))


def validate_index(document: t.Mapping[str, t.Any]) -> None:
    """OCI shape, unique platforms, and baremetal before virtualization per architecture."""
    _schema_check(document, INDEX_SCHEMA, "index")
    seen: list[tuple[str, str]] = []
    for entry in document["manifests"]:
        key = (entry["platform"]["architecture"], entry["platform"].get("variant", ""))
        if key[1] and entry.get("annotations") != platform_annotations(key[1], key[0]):
            raise InvalidDocument(
                "index entry %s must carry the annotations %s"
                % ("/".join(key), canonical_json(platform_annotations(key[1], key[0])).decode())
            )
        if key in seen:
            raise InvalidDocument("index lists %s twice" % "/".join(part for part in key if part))
        seen.append(key)
    for position, (arch, variant) in enumerate(seen):
        if variant == "virtualization" and (arch, "baremetal") in seen[position:]:
            raise InvalidDocument("index lists %s virtualization before baremetal" % arch)
