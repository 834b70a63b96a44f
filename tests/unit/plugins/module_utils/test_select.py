from __future__ import annotations

import json

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _select as select
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    OCI_INDEX,
    OCI_LAYER_TAR_GZIP,
    OCI_MANIFEST,
    TITLE_ANNOTATION,
)

PREFIX = "application/vnd.ironcore.image."


def digest(char: str) -> str:
    return "sha256:" + char * 64


def layer(media_type: str, char: str, size: int = 10, **annotations: str) -> dict:
    result = {"mediaType": media_type, "digest": digest(char), "size": size}
    if annotations:
        result["annotations"] = {key.replace("_", "."): value for key, value in annotations.items()}
    return result


def manifest(*layers: dict) -> dict:
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": layer(PREFIX + "config.v1+json", "c"), "layers": list(layers)}


def entry(char: str, arch: str, variant: str | None = None, os_name: str = "linux") -> dict:
    platform = {"architecture": arch, "os": os_name}
    if variant:
        platform["variant"] = variant
    return {"mediaType": OCI_MANIFEST, "digest": digest(char), "size": 100, "platform": platform}


def index(*entries: dict) -> dict:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)}


COMBINED = index(
    entry("1", "amd64", "baremetal"),
    entry("2", "amd64", "virtualization"),
    entry("3", "arm64", "baremetal"),
    entry("4", "arm64", "virtualization"),
)
UPSTREAM = index(entry("5", "amd64"), entry("6", "arm64"))
UPSTREAM_MANIFEST = manifest(
    layer(PREFIX + "rootfs", "a"), layer(PREFIX + "initramfs", "b"), layer(PREFIX + "kernel", "d"), layer(PREFIX + "squashfs", "e")
)
LEGACY_MANIFEST = manifest(
    layer(PREFIX + "rootfs.v1alpha1.rootfs", "a"),
    layer(PREFIX + "initramfs.v1alpha1.initramfs", "b"),
    layer(PREFIX + "vmlinuz.v1alpha1.vmlinuz", "d"),
)


@pytest.mark.parametrize(
    "platform, arch, expected",
    [("baremetal", "amd64", "1"), ("virtualization", "amd64", "2"), ("baremetal", "arm64", "3"), ("virtualization", "arm64", "4")],
)
def test_combined_index_selects_by_variant(platform, arch, expected):
    chosen, by_variant = select.select_entry(COMBINED, platform, arch)
    assert chosen["digest"] == digest(expected) and by_variant is True


@pytest.mark.parametrize("platform", ["baremetal", "virtualization"])
def test_upstream_index_selects_by_architecture(platform):
    chosen, by_variant = select.select_entry(UPSTREAM, platform, "arm64")
    assert chosen["digest"] == digest("6") and by_variant is False


def test_non_linux_entries_are_skipped():
    chosen, _ = select.select_entry(index(entry("7", "amd64", os_name="windows"), entry("8", "amd64")), "baremetal", "amd64")
    assert chosen["digest"] == digest("8")


def test_unknown_architecture_lists_what_the_image_has():
    with pytest.raises(select.SelectionError) as error:
        select.select_entry(index(entry("1", "amd64", "baremetal"), entry("2", "amd64", "virtualization")), "baremetal", "arm64")
    assert str(error.value) == (
        "the image has no linux/arm64/baremetal manifest; it has: linux/amd64/baremetal, linux/amd64/virtualization"
    )
    with pytest.raises(select.SelectionError, match="no linux/arm64 manifest; it has: linux/amd64$"):
        select.select_entry(index(entry("5", "amd64")), "virtualization", "arm64")


def test_missing_platform_in_combined_index():
    with pytest.raises(select.SelectionError, match="no linux/amd64/baremetal manifest; it has: linux/amd64/virtualization"):
        select.select_entry(index(entry("2", "amd64", "virtualization")), "baremetal", "amd64")


def test_entry_without_digest_is_refused():
    broken = index({"mediaType": OCI_MANIFEST, "platform": {"os": "linux", "architecture": "amd64"}})
    with pytest.raises(select.SelectionError, match="lacks a valid digest and size"):
        select.select_entry(broken, "baremetal", "amd64")


def roles(layers):
    return [item.role for item in layers]


def test_upstream_manifest_gives_each_platform_its_layers():
    assert roles(select.select_layers(UPSTREAM_MANIFEST, "virtualization")) == ["rootfs"]
    assert roles(select.select_layers(UPSTREAM_MANIFEST, "baremetal")) == ["rootfs", "initramfs", "kernel", "squashfs"]


def test_legacy_media_types_are_recognised():
    chosen = select.select_layers(LEGACY_MANIFEST, "baremetal")
    assert roles(chosen) == ["rootfs", "initramfs", "kernel"]
    assert chosen[2].media_type == PREFIX + "vmlinuz.v1alpha1.vmlinuz" and chosen[2].digest == digest("d")


def test_variant_manifest_is_taken_as_is():
    ours = manifest(layer(PREFIX + "rootfs", "a"), layer(PREFIX + "squashfs", "e"))
    assert roles(select.select_layers(ours, "virtualization", by_variant=True)) == ["rootfs", "squashfs"]
    assert roles(select.select_layers(ours, "virtualization", by_variant=False)) == ["rootfs"]


def test_tar_gzip_layer_with_title_is_packed():
    packed = manifest(layer(OCI_LAYER_TAR_GZIP, "a", **{"org_opencontainers_image_title": "rootfs"}))
    assert packed["layers"][0]["annotations"] == {TITLE_ANNOTATION: "rootfs"}
    (chosen,) = select.select_layers(packed, "virtualization")
    assert (chosen.role, chosen.packed) == ("rootfs", True)


def test_unknown_layers_are_ignored():
    mixed = manifest(layer("application/octet-stream", "f"), layer(OCI_LAYER_TAR_GZIP, "9"), layer(PREFIX + "rootfs", "a"))
    assert roles(select.select_layers(mixed, "virtualization")) == ["rootfs"]


def test_missing_required_layer_is_named():
    metal_only = manifest(layer(PREFIX + "kernel", "d"), layer(PREFIX + "initramfs", "b"))
    with pytest.raises(select.SelectionError) as error:
        select.select_layers(metal_only, "baremetal")
    assert str(error.value) == "the manifest has no rootfs layer, which platform baremetal needs (it has: kernel, initramfs)"
    with pytest.raises(select.SelectionError, match="no rootfs layer, which platform virtualization needs"):
        select.select_layers(metal_only, "virtualization")


def test_explicit_layers_pick_exactly_those():
    assert roles(select.select_layers(UPSTREAM_MANIFEST, "baremetal", ["kernel", "initramfs"])) == ["initramfs", "kernel"]
    metal_only = manifest(layer(PREFIX + "kernel", "d"), layer(PREFIX + "initramfs", "b"))
    assert roles(select.select_layers(metal_only, "baremetal", ["kernel"])) == ["kernel"]
    with pytest.raises(select.SelectionError, match="^the manifest has no uki layer \\(it has: kernel, initramfs\\)$"):
        select.select_layers(metal_only, "baremetal", ["kernel", "uki"])


def test_duplicate_roles_are_ambiguous():
    twice = manifest(layer(PREFIX + "rootfs", "a"), layer(PREFIX + "rootfs.v1alpha1.rootfs", "b"))
    with pytest.raises(select.SelectionError, match="more than one rootfs layer"):
        select.select_layers(twice, "virtualization")


def test_platforms_served():
    assert select.platforms_served(select.manifest_layers(UPSTREAM_MANIFEST)) == ["baremetal", "virtualization"]
    assert select.platforms_served(select.manifest_layers(manifest(layer(PREFIX + "rootfs", "a")))) == ["virtualization"]


def test_document_kind():
    assert select.is_index(COMBINED) is True
    assert select.is_index(UPSTREAM_MANIFEST) is False
    assert select.is_index({"manifests": []}) is True
    assert select.is_index({"layers": []}, "application/vnd.oci.image.manifest.v1+json") is False
    assert select.is_index({"manifests": []}, "application/vnd.docker.distribution.manifest.list.v2+json") is True
    with pytest.raises(select.SelectionError, match="neither an image index nor an image manifest"):
        select.is_index({"foo": 1}, "application/json")


def test_parse_document():
    assert select.parse_document(json.dumps(UPSTREAM).encode(), "index") == UPSTREAM
    with pytest.raises(select.SelectionError, match="^index is not valid JSON"):
        select.parse_document(b"{nope", "index")
    with pytest.raises(select.SelectionError, match="is not a JSON object"):
        select.parse_document(b"[]", "manifest")


@pytest.mark.parametrize("machine, arch", [("x86_64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64")])
def test_auto_architecture(machine, arch):
    assert select.node_architecture("auto", machine) == arch
    assert select.node_architecture("arm64", machine) == "arm64"


def test_auto_architecture_unknown_machine():
    with pytest.raises(select.SelectionError, match="cannot map machine type riscv64 to amd64 or arm64; set architecture explicitly"):
        select.node_architecture("auto", "riscv64")
