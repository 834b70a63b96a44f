"""ironcore_image_info driven through the real ansible CLI, against local layouts and real registries."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.parse

import pytest
from helpers.images import build_ours, skopeo_push, write_upstream_image
from helpers.tasks import run_tasks

from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout

MODULE = "ironcore.image.ironcore_image_info"
OURS = "registry.example.com/os/ours:1.0"
UPSTREAM = "registry.example.com/os/upstream:1.0"
LEGACY = "registry.example.com/os/legacy:0.9"

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("info")
    layout = str(workdir / "layout")
    return {
        "layout": layout,
        OURS: build_ours(layout, OURS, workdir),
        UPSTREAM: write_upstream_image(layout, UPSTREAM, architectures=("amd64", "arm64")),
        LEGACY: write_upstream_image(layout, LEGACY, architectures=("arm64",), legacy=True, tag="legacy"),
    }


def test_layout_images_described_and_selected(ansible, images, tmp_path):
    layout = images["layout"]
    tasks = [
        (MODULE, {"layout": layout, "name": OURS, "platform": "baremetal", "architecture": "arm64"}),
        (
            MODULE,
            {"layout": layout, "name": UPSTREAM, "platform": "virtualization", "architecture": "amd64"},
            {"check_mode": True},
        ),
        (MODULE, {"layout": layout, "name": LEGACY}),
        (
            MODULE,
            {
                "layout": layout,
                "name": OURS + "-virtualization-amd64",
                "platform": "virtualization",
                "architecture": "amd64",
            },
        ),
        (
            MODULE,
            {"layout": layout, "name": UPSTREAM, "platform": "baremetal", "architecture": "arm64", "layers": ["uki"]},
        ),
        (MODULE, {"layout": layout, "name": LEGACY, "platform": "baremetal", "architecture": "amd64"}),
        (MODULE, {"layout": layout, "name": UPSTREAM, "layers": ["kernel"]}),
    ]
    ours, upstream, legacy, plain, no_uki, no_amd64, layers_alone = run_tasks(ansible, str(tmp_path), tasks)

    assert ours["changed"] is False and ours["name"] == OURS
    assert ours["media_type"] == "application/vnd.oci.image.index.v1+json" and len(ours["index"]["manifests"]) == 4
    assert [(m["architecture"], m["platform"], m["platforms"], m["decided_by"]) for m in ours["manifests"]] == [
        ("amd64", "baremetal", ["baremetal"], "platform_variant"),
        ("amd64", "virtualization", ["virtualization"], "platform_variant"),
        ("arm64", "baremetal", ["baremetal"], "platform_variant"),
        ("arm64", "virtualization", ["virtualization"], "platform_variant"),
    ]
    assert [layer["role"] for layer in ours["manifests"][0]["layers"]] == ["kernel", "initramfs", "squashfs", "rootfs"]
    assert ours["manifests"][2]["config"] == {"commandLine": "console=ttyS0 arch=arm64"}
    selected = ours["selected"]
    assert selected["platform"] == "baremetal" and selected["architecture"] == "arm64"
    assert selected["manifest_digest"] == ours["manifests"][2]["digest"]
    assert selected["decided_by"] == "platform_variant"
    for layer in selected["layers"]:
        # The URL leads to the very blob: read it and hash it.
        with open(urllib.parse.urlparse(layer["url"]).path, "rb") as stream:
            data = stream.read()
        assert sha256(data) == layer["digest"] and data == images[OURS][("arm64", layer["role"])]
        assert layer["headers"] == {}

    assert upstream["changed"] is False
    assert [(m["architecture"], m["platform"], m["platforms"], m["decided_by"]) for m in upstream["manifests"]] == [
        ("amd64", None, ["baremetal", "virtualization"], "layers"),
        ("arm64", None, ["baremetal", "virtualization"], "layers"),
    ]
    assert [layer["role"] for layer in upstream["selected"]["layers"]] == ["rootfs"]
    assert upstream["selected"]["layers"][0]["digest"] == images[UPSTREAM].blobs[("amd64", "rootfs")]

    assert legacy["selected"] is None
    (manifest,) = legacy["manifests"]
    assert [(layer["role"], layer["media_type"]) for layer in manifest["layers"]] == [
        ("rootfs", "application/vnd.ironcore.image.rootfs.v1alpha1.rootfs"),
        ("initramfs", "application/vnd.ironcore.image.initramfs.v1alpha1.initramfs"),
        ("kernel", "application/vnd.ironcore.image.vmlinuz.v1alpha1.vmlinuz"),
    ]

    assert plain["index"] is None and plain["media_type"] == "application/vnd.oci.image.manifest.v1+json"
    assert [(m["architecture"], m["platform"], m["decided_by"]) for m in plain["manifests"]] == [
        (None, "virtualization", "manifest_annotation")
    ]
    assert plain["selected"]["manifest_digest"] == plain["digest"]

    assert (
        no_uki["failed"] is True
        and "the manifest has no uki layer (it has: rootfs, initramfs, kernel)" in no_uki["msg"]
    )
    assert no_amd64["failed"] is True and "has no linux/amd64 manifest; it has: linux/arm64" in no_amd64["msg"]
    assert (
        layers_alone["failed"] is True and "missing parameter(s) required by 'layers': platform" in layers_alone["msg"]
    )


def curl_blob(url: str, headers: dict, ca_cert: str | None, target) -> bytes:
    """GET a blob the way an HTTP boot server would: a plain client, only the URL and headers info gave."""
    command = ["curl", "--silent", "--show-error", "--fail", "--location", "--output", str(target)]
    for key, value in headers.items():
        command += ["--header", "%s: %s" % (key, value)]
    if ca_cert:
        command += ["--cacert", ca_cert]
    subprocess.run([*command, url], check=True, timeout=60)
    return target.read_bytes()


@pytest.mark.parametrize("fixture", ["registry_plain", "registry_token"])
def test_registry_image_and_blob_urls_a_plain_client_can_use(ansible, request, images, tmp_path, fixture):
    registry = request.getfixturevalue(fixture)
    store = OciLayout(images["layout"])
    for name in (OURS, UPSTREAM):
        skopeo_push(
            images["layout"], name, "%s/%s" % (registry.host, name.split("/", 1)[1]), registry.skopeo_flags("dest-")
        )
    args = dict(registry.registry_args, name="%s/os/ours:1.0" % registry.host)
    upstream_args = dict(registry.registry_args, name="%s/os/upstream:1.0" % registry.host)
    ours, upstream = run_tasks(
        ansible,
        str(tmp_path),
        [
            (
                MODULE,
                dict(
                    args,
                    platform="baremetal",
                    architecture="amd64",
                    layers=["kernel", "initramfs"],
                    include_credentials=True,
                ),
            ),
            (MODULE, dict(upstream_args, platform="virtualization", architecture="arm64")),
        ],
    )
    assert ours["changed"] is False and ours["digest"] == store.resolve(OURS)["digest"]
    assert [(m["architecture"], m["platform"]) for m in ours["manifests"]] == [
        ("amd64", "baremetal"),
        ("amd64", "virtualization"),
        ("arm64", "baremetal"),
        ("arm64", "virtualization"),
    ]
    assert ours["manifests"][0]["config"] == {"commandLine": "console=ttyS0 arch=amd64"}
    selected = ours["selected"]
    assert selected["manifest_digest"] == ours["manifests"][0]["digest"]
    assert [layer["role"] for layer in selected["layers"]] == ["kernel", "initramfs"]
    scheme = "https" if registry.tls else "http"
    for layer in selected["layers"]:
        assert layer["url"] == "%s://%s/v2/os/ours/blobs/%s" % (scheme, registry.host, layer["digest"])
        if registry.username:
            assert layer["headers"]["Authorization"].startswith("Bearer ")
        else:
            assert layer["headers"] == {}
        data = curl_blob(
            layer["url"], layer["headers"], registry.registry_args.get("ca_cert"), tmp_path / layer["role"]
        )
        assert sha256(data) == layer["digest"] and data == images[OURS][("amd64", layer["role"])]

    assert upstream["digest"] == images[UPSTREAM].digest
    assert [layer["role"] for layer in upstream["selected"]["layers"]] == ["rootfs"]
    rootfs = upstream["selected"]["layers"][0]
    # Without include_credentials the credential stays out of the result; only its scheme is told.
    assert "Authorization" not in rootfs["headers"]
    assert rootfs["auth_scheme"] == ("Bearer" if registry.username else None)
    if not registry.username:
        assert (
            curl_blob(rootfs["url"], rootfs["headers"], registry.registry_args.get("ca_cert"), tmp_path / "rootfs")
            == images[UPSTREAM].files[("arm64", "rootfs")]
        )
    if registry.password:
        assert registry.password not in json.dumps([ours, upstream])


def test_layout_listing_names_the_subject_of_signatures_and_referrers_with_their_own_size(ansible, tmp_path):
    from helpers.signing import make_key

    layout = str(tmp_path / "layout")
    name = "registry.example.com/os/signed:1.0"
    image = write_upstream_image(layout, name, architectures=("amd64",))
    key = make_key(tmp_path, "signer")
    signed, listing = run_tasks(
        ansible,
        str(tmp_path),
        [
            (
                "ironcore.image.ironcore_image_sign",
                {"layout": layout, "name": name, "key": key["sec1"], "provenance": True, "signature_format": "legacy"},
            ),
            (MODULE, {"layout": layout}),
        ],
    )
    assert signed["changed"] is True, signed
    entries = {entry["name"]: entry for entry in listing["images"]}
    attachments = {
        entry_name: entry
        for entry_name, entry in entries.items()
        if entry_name != name and entry["subject"] is not None
    }
    tag = "sha256-" + image.digest[len("sha256:") :]
    # Signatures of the index and of its manifest, named after the image's repository; the index's referrers
    # list (its provenance) is a bare tag, as the tag schema has it.
    tags = sorted(entry_name.rsplit(":", 1)[-1] for entry_name in attachments)
    assert tags == sorted([tag, tag + ".sig", "sha256-%s.sig" % image.manifests["amd64"][len("sha256:") :]]), tags
    assert entries[name]["subject"] is None

    def blob(digest):
        with open("%s/blobs/sha256/%s" % (layout, digest[len("sha256:") :]), "rb") as stream:
            return stream.read()

    def own_size(digest):
        """The document, and what it lists (manifests, config, layers), never its subject."""
        data = blob(digest)
        document = json.loads(data)
        children = document.get("manifests", [])
        total = len(data) + sum(own_size(child["digest"]) for child in children)
        return total + sum(part["size"] for part in [document.get("config"), *document.get("layers", [])] if part)

    image_size = entries[name]["size"]
    for entry_name, entry in attachments.items():
        assert entry["subject"] == "sha256:" + entry_name.rsplit("sha256-", 1)[1][:64], entry
        assert entry["size"] == own_size(entry["digest"]) < image_size, entry
