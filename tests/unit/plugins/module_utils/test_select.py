from __future__ import annotations

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
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": layer(PREFIX + "config.v1+json", "c"),
        "layers": list(layers),
    }


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
    layer(PREFIX + "rootfs", "a"),
    layer(PREFIX + "initramfs", "b"),
    layer(PREFIX + "kernel", "d"),
    layer(PREFIX + "squashfs", "e"),
)
LEGACY_MANIFEST = manifest(
    layer(PREFIX + "rootfs.v1alpha1.rootfs", "a"),
    layer(PREFIX + "initramfs.v1alpha1.initramfs", "b"),
    layer(PREFIX + "vmlinuz.v1alpha1.vmlinuz", "d"),
)


@pytest.mark.parametrize(
    "platform, arch, expected",
    [
        ("baremetal", "amd64", "1"),
        ("virtualization", "amd64", "2"),
        ("baremetal", "arm64", "3"),
        ("virtualization", "arm64", "4"),
    ],
)
def test_combined_index_selects_by_variant(platform, arch, expected):
    chosen, decision = select.select_entry(COMBINED, platform, arch)
    assert chosen["digest"] == digest(expected) and decision == select.Decision((platform,), "platform_variant")


@pytest.mark.parametrize("platform, synonym", [("baremetal", "metal"), ("virtualization", "kvm")])
def test_synonyms_select_like_the_platform_name(platform, synonym):
    assert select.select_entry(COMBINED, synonym, "amd64") == select.select_entry(COMBINED, platform, "amd64")
    assert roles(select.select_layers(UPSTREAM_MANIFEST, synonym)) == roles(
        select.select_layers(UPSTREAM_MANIFEST, platform)
    )


@pytest.mark.parametrize("platform", ["baremetal", "virtualization"])
def test_upstream_index_selects_by_architecture_then_layers(platform):
    chosen, decision = select.select_entry(UPSTREAM, platform, "arm64", load=lambda entry: UPSTREAM_MANIFEST)
    assert chosen["digest"] == digest("6")
    assert decision == select.Decision(("baremetal", "virtualization"), "layers")


def test_non_linux_entries_are_skipped():
    chosen, _decision = select.select_entry(
        index(entry("7", "amd64", os_name="windows"), entry("8", "amd64")), "baremetal", "amd64"
    )
    assert chosen["digest"] == digest("8")


def test_unknown_architecture_lists_what_the_image_has():
    with pytest.raises(select.SelectionError) as error:
        select.select_entry(
            index(entry("1", "amd64", "baremetal"), entry("2", "amd64", "virtualization")), "baremetal", "arm64"
        )
    assert str(error.value) == (
        "the image has no linux/arm64 manifest; it has: linux/amd64/baremetal, linux/amd64/virtualization"
    )
    with pytest.raises(select.SelectionError, match=r"no linux/arm64 manifest; it has: linux/amd64$"):
        select.select_entry(index(entry("5", "amd64")), "virtualization", "arm64")


def test_missing_platform_in_combined_index():
    with pytest.raises(select.SelectionError) as error:
        select.select_entry(index(entry("2", "amd64", "virtualization")), "baremetal", "amd64")
    assert str(error.value) == (
        "the image has nothing for baremetal on linux/amd64; its linux/amd64 entries serve"
        " linux/amd64/virtualization: virtualization (by platform variant)"
    )


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


def test_layers_outside_the_platform_profile_are_left_out():
    spec_virtualization = manifest(
        layer(PREFIX + "disk.img", "a"), layer(PREFIX + "kernel", "d"), layer(PREFIX + "squashfs", "e")
    )
    (disk,) = select.select_layers(spec_virtualization, "virtualization")
    assert (disk.role, disk.media_type, disk.digest) == ("rootfs", PREFIX + "disk.img", digest("a"))


def test_tar_gzip_layer_with_title_is_packed():
    packed = manifest(layer(OCI_LAYER_TAR_GZIP, "a", org_opencontainers_image_title="rootfs"))
    assert packed["layers"][0]["annotations"] == {TITLE_ANNOTATION: "rootfs"}
    (chosen,) = select.select_layers(packed, "virtualization")
    assert (chosen.role, chosen.packed) == ("rootfs", True)


def test_unknown_layers_are_ignored():
    mixed = manifest(
        layer("application/octet-stream", "f"), layer(OCI_LAYER_TAR_GZIP, "9"), layer(PREFIX + "rootfs", "a")
    )
    assert roles(select.select_layers(mixed, "virtualization")) == ["rootfs"]


def test_missing_required_layer_is_named():
    metal_only = manifest(layer(PREFIX + "kernel", "d"), layer(PREFIX + "initramfs", "b"))
    assert roles(select.select_layers(metal_only, "baremetal")) == ["kernel", "initramfs"]
    disk_only = manifest(layer(PREFIX + "rootfs", "a"))
    with pytest.raises(select.SelectionError) as error:
        select.select_layers(disk_only, "baremetal")
    assert (
        str(error.value)
        == "the manifest has no kernel and initramfs layer, which platform baremetal needs (it has: rootfs)"
    )
    with pytest.raises(select.SelectionError, match="no rootfs layer, which platform virtualization needs"):
        select.select_layers(metal_only, "virtualization")


def test_explicit_layers_pick_exactly_those():
    assert roles(select.select_layers(UPSTREAM_MANIFEST, "baremetal", ["kernel", "initramfs"])) == [
        "initramfs",
        "kernel",
    ]
    metal_only = manifest(layer(PREFIX + "kernel", "d"), layer(PREFIX + "initramfs", "b"))
    assert roles(select.select_layers(metal_only, "baremetal", ["kernel"])) == ["kernel"]
    with pytest.raises(select.SelectionError, match=r"^the manifest has no uki layer \(it has: kernel, initramfs\)$"):
        select.select_layers(metal_only, "baremetal", ["kernel", "uki"])


def test_duplicate_roles_are_ambiguous():
    twice = manifest(layer(PREFIX + "rootfs", "a"), layer(PREFIX + "rootfs", "b"))
    with pytest.raises(select.SelectionError, match="more than one rootfs layer"):
        select.select_layers(twice, "virtualization")
    legacy_twice = manifest(layer(PREFIX + "rootfs.v1alpha1.rootfs", "a"), layer(PREFIX + "disk.img", "b"))
    with pytest.raises(select.SelectionError, match="more than one rootfs layer"):
        select.select_layers(legacy_twice, "virtualization")


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_current_media_type_wins_over_legacy(order):
    types = {"a": PREFIX + "rootfs", "b": PREFIX + "rootfs.v1alpha1.rootfs"}
    both = manifest(*(layer(types[char], char) for char in order))
    (chosen,) = select.select_layers(both, "virtualization")
    assert chosen.digest == digest("a")


def test_platforms_served():
    assert select.platforms_served(select.manifest_layers(UPSTREAM_MANIFEST)) == ["baremetal", "virtualization"]
    assert select.platforms_served(select.manifest_layers(manifest(layer(PREFIX + "rootfs", "a")))) == [
        "virtualization"
    ]


def test_document_kind():
    assert select.is_index(COMBINED) is True
    assert select.is_index(UPSTREAM_MANIFEST) is False
    assert select.is_index({"manifests": []}) is True
    assert select.is_index({"layers": []}, "application/vnd.oci.image.manifest.v1+json") is False
    assert select.is_index({"manifests": []}, "application/vnd.docker.distribution.manifest.list.v2+json") is True
    with pytest.raises(select.SelectionError, match="neither an image index nor an image manifest"):
        select.is_index({"foo": 1}, "application/json")


@pytest.mark.parametrize("machine, arch", [("x86_64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64")])
def test_auto_architecture(machine, arch):
    assert select.node_architecture("auto", machine) == arch
    assert select.node_architecture("arm64", machine) == "arm64"


def test_auto_architecture_unknown_machine():
    with pytest.raises(
        select.SelectionError, match="cannot map machine type riscv64 to amd64 or arm64; set architecture explicitly"
    ):
        select.node_architecture("auto", "riscv64")


GARDENLINUX_MANIFEST = manifest(
    layer("application/io.gardenlinux.kernel", "d"),
    layer("application/io.gardenlinux.initrd", "b"),
    layer("application/io.gardenlinux.squashfs", "e"),
)


def test_gardenlinux_layers_serve_baremetal():
    chosen = select.select_layers(GARDENLINUX_MANIFEST, "baremetal")
    assert roles(chosen) == ["kernel", "initramfs", "squashfs"]
    assert select.platforms_served(select.manifest_layers(GARDENLINUX_MANIFEST)) == ["baremetal"]


def annotated(document: dict, **annotations: str) -> dict:
    return dict(document, annotations=annotations)


def with_annotations(descriptor: dict, **annotations: str) -> dict:
    return dict(descriptor, annotations=annotations)


@pytest.mark.parametrize(
    "entry_, manifest_, tag, expected",
    [
        # 1: platform.variant, over everything else.
        (
            entry("1", "amd64", "kvm"),
            annotated(UPSTREAM_MANIFEST, variant="metal"),
            "1-metal",
            (("virtualization",), "platform_variant"),
        ),
        # A variant that is no platform (arm64 "v8") says nothing.
        (
            with_annotations(entry("1", "arm64", "v8"), variant="metal"),
            UPSTREAM_MANIFEST,
            None,
            (("baremetal",), "descriptor_annotation"),
        ),
        # 2: the descriptor's variant annotation.
        (
            with_annotations(entry("1", "amd64"), variant="virtualization"),
            annotated(UPSTREAM_MANIFEST, variant="metal"),
            None,
            (("virtualization",), "descriptor_annotation"),
        ),
        # Garden Linux's descriptor annotations name no variant.
        (
            with_annotations(entry("1", "amd64"), cname="metal_pxe-amd64-1", architecture="amd64"),
            GARDENLINUX_MANIFEST,
            None,
            (("baremetal",), "layers"),
        ),
        # 3: the manifest's variant annotation, and our own platform annotation.
        (
            entry("1", "amd64"),
            annotated(UPSTREAM_MANIFEST, variant="metal"),
            "1-kvm",
            (("baremetal",), "manifest_annotation"),
        ),
        (
            None,
            annotated(UPSTREAM_MANIFEST, **{"io.ironcore.image.platform": "virtualization"}),
            None,
            (("virtualization",), "manifest_annotation"),
        ),
        # 4: the tag suffix, with or without an architecture.
        (entry("1", "amd64"), UPSTREAM_MANIFEST, "1.0-kvm", (("virtualization",), "tag_suffix")),
        (None, UPSTREAM_MANIFEST, "1.0-metal-arm64", (("baremetal",), "tag_suffix")),
        (None, UPSTREAM_MANIFEST, "1.0-baremetal", (("baremetal",), "tag_suffix")),
        (None, UPSTREAM_MANIFEST, "1.0-virtualization-amd64", (("virtualization",), "tag_suffix")),
        # Not a suffix: the word in the middle of the tag.
        (None, manifest(layer(PREFIX + "rootfs", "a")), "kvm-1.0", (("virtualization",), "layers")),
        # 5: the layers.
        (None, LEGACY_MANIFEST, "0.9", (("baremetal", "virtualization"), "layers")),
        (None, manifest(layer("application/octet-stream", "f")), None, ((), "layers")),
    ],
)
def test_decide_platform_takes_the_first_rule_that_says_something(entry_, manifest_, tag, expected):
    assert select.decide_platform(entry_, manifest_, tag) == select.Decision(*expected)


def test_several_entries_per_architecture_are_told_apart_by_their_manifests():
    manifests = {
        digest("1"): annotated(
            manifest(layer(PREFIX + "disk.img", "a"), layer(PREFIX + "kernel", "d")), variant="virtualization"
        ),
        digest("2"): annotated(
            manifest(layer(PREFIX + "kernel", "d"), layer(PREFIX + "initramfs", "b")), variant="metal"
        ),
    }
    spec = index(entry("1", "amd64"), entry("2", "amd64"))
    asked = []

    def load(entry_):
        asked.append(entry_["digest"])
        return manifests[entry_["digest"]]

    chosen, decision = select.select_entry(spec, "baremetal", "amd64", load=load)
    assert chosen["digest"] == digest("2") and decision.rule == "manifest_annotation"
    assert asked == [digest("1"), digest("2")]
    chosen, decision = select.select_entry(spec, "virtualization", "amd64", load=load)
    assert chosen["digest"] == digest("1")


def test_entries_decided_by_their_descriptor_are_not_loaded():
    def load(entry_):
        raise AssertionError("manifest %s was read" % entry_["digest"])

    chosen, _decision = select.select_entry(COMBINED, "virtualization", "arm64", load=load)
    assert chosen["digest"] == digest("4")


def test_first_serving_entry_wins_when_rules_cannot_tell():
    both = index(entry("5", "amd64"), entry("6", "amd64"))
    chosen, decision = select.select_entry(both, "virtualization", "amd64", load=lambda entry_: UPSTREAM_MANIFEST)
    assert chosen["digest"] == digest("5") and decision.rule == "layers"


def test_nothing_for_the_node_lists_what_the_entries_serve():
    kvm = index(entry("5", "amd64"), entry("6", "arm64"))
    with pytest.raises(select.SelectionError) as error:
        select.select_entry(
            kvm, "metal", "arm64", tag="1.0-kvm", load=lambda entry_: manifest(layer(PREFIX + "rootfs", "a"))
        )
    assert str(error.value) == (
        "the image has nothing for baremetal on linux/arm64; its linux/arm64 entries serve"
        " linux/arm64: virtualization (by tag suffix)"
    )


def test_single_manifest_must_serve_the_platform():
    assert select.check_manifest_serves(LEGACY_MANIFEST, "virtualization").rule == "layers"
    with pytest.raises(select.SelectionError) as error:
        select.check_manifest_serves(manifest(layer(PREFIX + "rootfs", "a")), "baremetal", "1.0")
    assert str(error.value) == (
        "the image has nothing for baremetal: it is a single manifest that serves virtualization (by layers);"
        " it has: rootfs"
    )


def test_command_line_is_trimmed_and_extra_keys_kept():
    config = {"commandLine": "console=ttyS0 quiet\n", "os-release": "x", "arch": "amd64"}
    assert select.normalise_config(config) == {"commandLine": "console=ttyS0 quiet", "os-release": "x", "arch": "amd64"}
    assert select.normalise_config({"os-release": "x"}) == {"os-release": "x"}
    assert select.normalise_config(None) is None


def test_single_manifest_for_another_architecture_is_refused():
    arm = dict(UPSTREAM_MANIFEST, annotations={"architecture": "arm64", "variant": "metal"})
    assert select.check_manifest_serves(arm, "baremetal", None, "arm64").rule == "manifest_annotation"
    with pytest.raises(select.SelectionError) as error:
        select.check_manifest_serves(arm, "baremetal", None, "amd64")
    assert str(error.value) == "the image has nothing for linux/amd64: it is a single manifest for linux/arm64"
    with pytest.raises(select.SelectionError, match=r"single manifest for linux/amd64$"):
        select.check_manifest_serves(UPSTREAM_MANIFEST, "kvm", "1.0-kvm-amd64", "arm64")
    # Without any word on it, a single manifest serves any architecture (older images).
    assert select.check_manifest_serves(LEGACY_MANIFEST, "baremetal", "0.9", "arm64").rule == "layers"
