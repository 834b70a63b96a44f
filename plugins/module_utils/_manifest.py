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

import hashlib
import json
import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._model import (
    ARCHITECTURES,
    CONFIG_MEDIA_TYPE,
    OCI_INDEX,
    OCI_MANIFEST,
    PLATFORM_ANNOTATION,
    PLATFORMS,
    PROFILES,
    TITLE_ANNOTATION,
    layer_role,
)

Descriptor = t.Dict[str, t.Any]


class InvalidDocument(ValueError):
    """A manifest or index that breaks the OCI or IronCore rules."""


def canonical_json(document: t.Mapping[str, t.Any]) -> bytes:
    """Sorted keys, no insignificant white space, UTF-8: same input, same bytes."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def declared_media_type(data: bytes) -> str:
    """The `mediaType` a manifest or index declares in its own JSON ("" when none or not JSON)."""
    try:
        document = json.loads(data)
    except ValueError:
        return ""
    value = document.get("mediaType") if isinstance(document, dict) else None
    return value if isinstance(value, str) else ""


def descriptor(media_type: str, data_digest: str, size: int, **extra: t.Any) -> Descriptor:
    result: Descriptor = {"mediaType": media_type, "digest": data_digest, "size": size}
    result.update({key: value for key, value in extra.items() if value})
    return result


def descriptor_for(media_type: str, data: bytes, **extra: t.Any) -> Descriptor:
    return descriptor(media_type, sha256_digest(data), len(data), **extra)


def config_document(cmdline: str | None) -> bytes:
    return canonical_json({"commandLine": cmdline} if cmdline else {})


def build_manifest(platform: str, config: Descriptor, layers: t.Sequence[Descriptor]) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": list(layers),
        "annotations": {PLATFORM_ANNOTATION: platform},
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
    platform = {"architecture": architecture, "os": "linux"}
    if variant:
        platform["variant"] = variant
    return dict(manifest, platform=platform)


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
            "required": [PLATFORM_ANNOTATION],
            "properties": {PLATFORM_ANNOTATION: {"enum": list(PLATFORMS)}},
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
    profile = PROFILES[platform]
    roles = [layer_role(layer) for layer in document["layers"]]
    titles = [layer["annotations"][TITLE_ANNOTATION] for layer in document["layers"]]
    if roles != titles:
        raise InvalidDocument("manifest layer titles %s do not match their media types %s" % (titles, roles))
    missing = [role for role in profile.required if role not in roles]
    if missing:
        raise InvalidDocument("%s manifest lacks the %s layer" % (platform, ", ".join(missing)))
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
        if key in seen:
            raise InvalidDocument("index lists %s twice" % "/".join(part for part in key if part))
        seen.append(key)
    for position, (arch, variant) in enumerate(seen):
        if variant == "virtualization" and (arch, "baremetal") in seen[position:]:
            raise InvalidDocument("index lists %s virtualization before baremetal" % arch)
