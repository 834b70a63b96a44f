from __future__ import annotations

import json

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _manifest as manifest
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    CONFIG_MEDIA_TYPE,
    OCI_MANIFEST,
    TITLE_ANNOTATION,
)

DIGEST = "sha256:" + "0" * 64


def layer(role: str) -> dict:
    return manifest.descriptor(
        "application/vnd.ironcore.image." + role, DIGEST, 1, annotations={TITLE_ANNOTATION: role}
    )


def config() -> dict:
    return manifest.descriptor_for(CONFIG_MEDIA_TYPE, manifest.config_document("console=ttyS0"))


def test_canonical_json_is_sorted_and_compact():
    assert manifest.canonical_json({"b": 1, "a": [1, {"d": 2, "c": "é"}]}) == '{"a":[1,{"c":"é","d":2}],"b":1}'.encode()


def test_config_document():
    assert json.loads(manifest.config_document("x y")) == {"commandLine": "x y"}
    assert manifest.config_document(None) == b"{}"


def test_baremetal_manifest_in_order():
    data = manifest.build_manifest("baremetal", config(), [layer("kernel"), layer("initramfs"), layer("rootfs")])
    document = json.loads(data)
    assert document["mediaType"] == OCI_MANIFEST
    assert [entry["annotations"][TITLE_ANNOTATION] for entry in document["layers"]] == ["kernel", "initramfs", "rootfs"]
    assert manifest.canonical_json(document) == data


@pytest.mark.parametrize("field", ["digest", "mediaType"])
def test_descriptor_with_a_trailing_newline_is_invalid(field):
    rootfs = layer("rootfs")
    rootfs[field] += "\n"
    with pytest.raises(manifest.InvalidDocument, match="invalid"):
        manifest.build_manifest("virtualization", config(), [rootfs])


@pytest.mark.parametrize(
    "platform, roles, message",
    [
        ("baremetal", ["initramfs", "rootfs"], "lacks the kernel"),
        ("baremetal", ["initramfs", "kernel", "rootfs"], "must be ordered"),
        ("virtualization", ["rootfs", "squashfs"], "must not carry squashfs"),
        ("virtualization", [], "invalid"),
    ],
)
def test_manifest_profile_rules(platform, roles, message):
    with pytest.raises(manifest.InvalidDocument, match=message):
        manifest.build_manifest(platform, config(), [layer(role) for role in roles])


def test_manifest_title_must_match_media_type():
    bad = layer("kernel")
    bad["annotations"][TITLE_ANNOTATION] = "rootfs"
    with pytest.raises(manifest.InvalidDocument, match="titles"):
        manifest.build_manifest("virtualization", config(), [bad])


def entry(arch: str, variant: str | None) -> dict:
    return manifest.platform_entry(manifest.descriptor(OCI_MANIFEST, DIGEST, 10), arch, variant)


def test_index_accepts_baremetal_first():
    data = manifest.build_index([entry("amd64", "baremetal"), entry("amd64", "virtualization")], {"a": "b"})
    assert json.loads(data)["annotations"] == {"a": "b"}


@pytest.mark.parametrize(
    "entries, message",
    [
        ([("amd64", "virtualization"), ("amd64", "baremetal")], "before baremetal"),
        ([("amd64", None), ("amd64", None)], "twice"),
        ([("s390x", None)], "invalid"),
        ([], "invalid"),
    ],
)
def test_index_rules(entries, message):
    with pytest.raises(manifest.InvalidDocument, match=message):
        manifest.build_index([entry(arch, variant) for arch, variant in entries])


def test_index_annotations_must_be_strings():
    with pytest.raises(manifest.InvalidDocument, match="annotations"):
        manifest.build_index([entry("amd64", None)], {"n": 1})
