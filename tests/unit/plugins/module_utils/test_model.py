from __future__ import annotations

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _model as model


@pytest.mark.parametrize(
    "text, registry, repository, tag, digest",
    [
        ("registry.example.com/os/gardenlinux:1.0", "registry.example.com", "os/gardenlinux", "1.0", None),
        ("127.0.0.1:5000/os/img", "127.0.0.1:5000", "os/img", "latest", None),
        ("localhost/img:v1", "localhost", "img", "v1", None),
        ("os/img:v1", "", "os/img", "v1", None),
        ("r.io/a@sha256:" + "a" * 64, "r.io", "a", None, "sha256:" + "a" * 64),
    ],
)
def test_parse_reference(text, registry, repository, tag, digest):
    ref = model.ImageReference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize("text", ["", "UPPER/case", "a//b", "r.io/a:", "r.io/a@md5:abc", "r.io/a:" + "x" * 129, "a b"])
def test_parse_reference_rejects(text):
    with pytest.raises(model.InvalidReference):
        model.ImageReference.parse(text)


def test_default_tag_and_str():
    assert str(model.ImageReference.parse("r.io/a")) == "r.io/a:latest"


def test_platform_refs_suffix_the_tag():
    ref = model.ImageReference.parse("r.io/os/x:1.0")
    refs = model.platform_refs(ref, ["baremetal"], ["amd64", "arm64"])
    assert {key: str(value) for key, value in refs.items()} == {
        "baremetal": "r.io/os/x:1.0-baremetal",
        "baremetal/amd64": "r.io/os/x:1.0-baremetal-amd64",
        "baremetal/arm64": "r.io/os/x:1.0-baremetal-arm64",
    }


def test_platform_refs_with_aliases_add_the_os_images_words():
    ref = model.ImageReference.parse("r.io/os/x:1.0")
    refs = model.platform_refs(ref, ["baremetal", "virtualization"], ["arm64"], aliases=True)
    assert {key: value.tag for key, value in refs.items()} == {
        "baremetal": "1.0-baremetal",
        "baremetal/arm64": "1.0-baremetal-arm64",
        "metal": "1.0-metal",
        "metal/arm64": "1.0-metal-arm64",
        "virtualization": "1.0-virtualization",
        "virtualization/arm64": "1.0-virtualization-arm64",
        "kvm": "1.0-kvm",
        "kvm/arm64": "1.0-kvm-arm64",
    }


@pytest.mark.parametrize(
    "name, platform",
    [
        ("baremetal", "baremetal"),
        ("metal", "baremetal"),
        ("kvm", "virtualization"),
        ("Virtualization", "virtualization"),
        ("v8", None),
        (None, None),
    ],
)
def test_canonical_platform(name, platform):
    assert model.canonical_platform(name) == platform


@pytest.mark.parametrize(
    "tag, platform",
    [
        ("1.0-metal", "baremetal"),
        ("1.0-kvm-amd64", "virtualization"),
        ("1.0-baremetal-arm64", "baremetal"),
        ("1.0-virtualization", "virtualization"),
        ("1.0-metal-s390x", None),
        ("metal-1.0", None),
        ("1.0-gardenmetal", None),
        (None, None),
    ],
)
def test_platform_of_tag(tag, platform):
    assert model.platform_of_tag(tag) == platform


def test_platform_tag_too_long_is_refused():
    ref = model.ImageReference.parse("r.io/x:" + "t" * 120)
    with pytest.raises(model.InvalidReference):
        ref.with_tag_suffix("virtualization", "amd64")


@pytest.mark.parametrize(
    "descriptor, role",
    [
        ({"mediaType": "application/vnd.ironcore.image.kernel"}, "kernel"),
        ({"mediaType": "application/vnd.ironcore.image.rootfs.v1alpha1.rootfs"}, "rootfs"),
        ({"mediaType": "application/vnd.ironcore.image.vmlinuz.v1alpha1.vmlinuz"}, "kernel"),
        ({"mediaType": "application/vnd.ironcore.image.squashfs.v1alpha1.squashfs"}, "squashfs"),
        (
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "annotations": {model.TITLE_ANNOTATION: "initramfs"},
            },
            "initramfs",
        ),
        (
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "annotations": {model.TITLE_ANNOTATION: "../etc"},
            },
            None,
        ),
        ({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}, None),
        ({"mediaType": "application/vnd.ironcore.image.unknown"}, None),
        ({"mediaType": "application/vnd.ironcore.image.disk.img"}, "rootfs"),
        ({"mediaType": "application/io.gardenlinux.kernel"}, "kernel"),
        ({"mediaType": "application/io.gardenlinux.initrd"}, "initramfs"),
        ({"mediaType": "application/io.gardenlinux.squashfs"}, "squashfs"),
        ({"mediaType": "application/octet-stream"}, None),
    ],
)
def test_layer_role(descriptor, role):
    assert model.layer_role(descriptor) == role


def test_profiles_order_and_content():
    assert model.PLATFORMS[0] == "baremetal"
    # squashfs before rootfs: libvirt-provider lets the later one become the VM disk.
    assert model.PROFILES["baremetal"].roles == ("kernel", "initramfs", "squashfs", "rootfs", "uki", "iso")
    assert model.PROFILES["baremetal"].required == ("kernel", "initramfs")
    assert model.PROFILES["baremetal"].live_root == ("rootfs", "squashfs")
    assert model.PROFILES["virtualization"].roles == ("rootfs",)


@pytest.mark.parametrize("machine, arch", [("x86_64", "amd64"), ("aarch64", "arm64"), ("riscv64", None)])
def test_architecture_of_machine(machine, arch):
    assert model.architecture_of_machine(machine) == arch


@pytest.mark.parametrize(
    "given, arch",
    [("amd64", "amd64"), ("x86_64", "amd64"), ("AARCH64", "arm64"), ("arm64", "arm64"), ("i386", None), (7, None)],
)
def test_canonical_architecture_reads_the_kernels_names(given, arch):
    assert model.canonical_architecture(given) == arch
    if arch is not None:
        assert given.lower() in model.ARCHITECTURE_CHOICES


@pytest.mark.parametrize(
    "text",
    [
        "r.io/a:1.0\n",
        "r.io/a@sha256:" + "a" * 64 + "\n",
        "a/b\n",
        "OS/img\n:1",
        "r.io/a:1.0\nr.io/b:2.0",
    ],
)
def test_parse_reference_rejects_a_trailing_newline(text):
    with pytest.raises(model.InvalidReference):
        model.ImageReference.parse(text)


@pytest.mark.parametrize("pattern", [model.SHA256_DIGEST_RE, model.TAG_RE])
def test_patterns_refuse_a_trailing_newline_even_with_match(pattern):
    good = "sha256:" + "a" * 64 if pattern is model.SHA256_DIGEST_RE else "v1.0"
    assert pattern.fullmatch(good) and pattern.match(good)
    assert not pattern.fullmatch(good + "\n") and not pattern.match(good + "\n")


def test_with_tag_refuses_a_trailing_newline():
    with pytest.raises(model.InvalidReference):
        model.ImageReference.parse("r.io/a:1.0").with_tag("1.0\n")


@pytest.mark.parametrize(
    ("document", "media_type", "kind"),
    [
        ({"mediaType": "application/vnd.oci.image.index.v1+json", "layers": []}, None, "index"),
        ({"layers": []}, "application/vnd.docker.distribution.manifest.list.v2+json", "index"),
        ({"manifests": []}, None, "index"),
        ({"layers": []}, None, "manifest"),
        ({"manifests": "not a list", "layers": "nor this"}, None, None),
        ({"mediaType": "text/plain"}, None, None),
    ],
)
def test_document_kind_by_media_type_then_by_shape(document, media_type, kind):
    assert model.document_kind(document, media_type) == kind


def test_declared_media_type_of_anything_that_is_not_an_object_is_empty():
    assert model.declared_media_type(b'{"mediaType":"application/vnd.oci.image.manifest.v1+json"}') == (
        "application/vnd.oci.image.manifest.v1+json"
    )
    for data in (b"[]", b"not json", b'{"mediaType": 7}', b"[" * 100000):
        assert model.declared_media_type(data) == ""


def test_descriptors_keeps_objects_only():
    one = {"digest": "sha256:" + "0" * 64}
    assert model.descriptors(one) == [one]
    assert model.descriptors([one, "x", 3, None]) == [one]
    assert model.descriptors("x") == []


def test_layer_role_of_a_tar_layer_whose_annotations_are_not_an_object_is_none():
    for given in (["rootfs"], "rootfs", 7):
        assert model.layer_role({"mediaType": model.OCI_LAYER_TAR_GZIP, "annotations": given}) is None


def test_edit_distance():
    assert model.edit_distance("1.0", "1.0") == 0
    assert model.edit_distance("1.0", "1.1") == 1
    assert model.edit_distance("1.0-metal", "1.0") == 6
    assert model.edit_distance("", "abc") == 3


def test_names_hint_puts_the_closest_names_first():
    tags = ["1.%d" % minor for minor in range(20)] + ["1592.3", "1592.4", "latest"]
    assert model.names_hint("1592.5", tags, 3) == "1592.3, 1592.4, 1.5, ..."
    assert model.names_hint("latst", tags, 1) == "latest, ..."
    assert model.names_hint("x", [], 3) == "none"
    assert model.names_hint("b", ["c", "b"], 5) == "b, c"
