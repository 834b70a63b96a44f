"""uki: auto through the real ansible CLI: a UKI per architecture on systemd's EFI stubs, Secure-Boot signed with
Debian's snakeoil test key, read back with sbverify, objdump-free PE parsing and skopeo."""

from __future__ import annotations

import json
import os
import struct
import subprocess

import pytest
from helpers import boot

from ansible_collections.ironcore.image.plugins.module_utils import _uki

pytestmark = pytest.mark.integration

MODULE = "ironcore.image.ironcore_image_build"
NAME = "registry.example.com/os/uki-proof:2.0"
UKI_MEDIA_TYPE = "application/vnd.ironcore.image.uki"
# Debian's public test key (package ovmf), enrolled in OVMF_VARS_4M.snakeoil.fd. Never for production.
SNAKEOIL_KEY = "/usr/share/ovmf/PkKek-1-snakeoil.key"
SNAKEOIL_CERT = "/usr/share/ovmf/PkKek-1-snakeoil.pem"
SNAKEOIL_PASSPHRASE = "snakeoil"


def fake_bzimage(path, release: bytes):
    """An amd64 kernel as far as the build looks: the setup header pointing at the release."""
    image = bytearray(0x3000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x600 - 0x200)
    image[0x600 : 0x600 + len(release) + 1] = release + b"\0"
    path.write_bytes(bytes(image))
    return str(path)


def sections(data: bytes) -> dict[str, bytes]:
    headers = _uki.parse_stub(data)
    return {s.name: data[s.raw_pointer : s.raw_pointer + s.virtual_size] for s in headers.sections}


def sbverify(path) -> subprocess.CompletedProcess:
    return subprocess.run(["sbverify", "--cert", SNAKEOIL_CERT, str(path)], capture_output=True, text=True, check=False)


def openssl_fingerprint(cert: str) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", cert],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "sha256:" + out.split("=", 1)[1].strip().replace(":", "").lower()


def test_uki_auto_signed_for_both_architectures(ansible, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    kernel_amd64 = fake_bzimage(inputs / "vmlinuz-amd64", b"6.1.0-test-amd64 (builder) #1")
    kernel_arm64 = inputs / "Image-arm64"
    kernel_arm64.write_bytes(b"\0" * 4096 + b"Linux version 6.1.0-test-arm64 (builder) #1" + b"\0" * 64)
    initramfs = inputs / "initramfs"
    initramfs.write_bytes(b"INITRAMFS" * 1000)
    squashfs = inputs / "root.squashfs"
    squashfs.write_bytes(b"SQUASHFS" * 1000)
    osrel = inputs / "os-release"
    osrel.write_bytes(b'NAME="Proof OS"\nID=proof\n')
    layout = str(tmp_path / "layout")
    common = {"initramfs": str(initramfs), "squashfs": str(squashfs), "uki": "auto"}
    args = {
        "layout": layout,
        "name": NAME,
        "platforms": ["baremetal"],
        "uki_sign_key": SNAKEOIL_KEY,
        "uki_sign_cert": SNAKEOIL_CERT,
        "uki_sign_key_passphrase": SNAKEOIL_PASSPHRASE,
        "uki_require_signature": True,
        "artifacts": [
            dict(common, architecture="amd64", kernel=kernel_amd64, cmdline="console=ttyS0 quiet"),
            dict(
                common,
                architecture="arm64",
                kernel=str(kernel_arm64),
                cmdline="console=ttyAMA0",
                uki_stub=boot.debian_efi_stub("arm64"),
                os_release=str(osrel),
            ),
        ],
    }
    built = ansible.module(MODULE, args)
    assert built.get("changed") is True, built
    assert SNAKEOIL_PASSPHRASE not in json.dumps(built)
    fingerprint = openssl_fingerprint(SNAKEOIL_CERT)
    expected = {
        "amd64": (kernel_amd64, b"console=ttyS0 quiet", b"6.1.0-test-amd64", b'PRETTY_NAME="uki-proof 2.0"', 0x8664),
        "arm64": (str(kernel_arm64), b"console=ttyAMA0", b"6.1.0-test-arm64", b'NAME="Proof OS"', 0xAA64),
    }
    for entry in built["manifests"]:
        architecture = entry["architecture"]
        # skopeo reads the manifest: the uki layer comes after squashfs, with the media type boot-operator serves.
        manifest = json.loads(
            subprocess.run(
                ["skopeo", "inspect", "--raw", "oci:%s:%s-baremetal-%s" % (layout, NAME, architecture)],
                capture_output=True,
                check=True,
            ).stdout
        )
        (layer,) = [layer for layer in manifest["layers"] if layer["mediaType"] == UKI_MEDIA_TYPE]
        assert [lay["annotations"]["org.opencontainers.image.title"] for lay in manifest["layers"]] == [
            "kernel",
            "initramfs",
            "squashfs",
            "uki",
        ]
        assert layer["annotations"]["io.ironcore.image.uki.signer"] == fingerprint
        blob = os.path.join(layout, "blobs", "sha256", layer["digest"].split(":", 1)[1])
        checked = sbverify(blob)
        assert checked.returncode == 0 and "Signature verification OK" in checked.stdout, checked
        data = open(blob, "rb").read()
        kernel, cmdline, release, osrel_line, machine = expected[architecture]
        found = sections(data)
        assert found[".linux"] == open(kernel, "rb").read()
        assert found[".initrd"] == initramfs.read_bytes()
        assert found[".cmdline"] == cmdline
        assert found[".uname"] == release
        assert osrel_line in found[".osrel"]
        assert struct.unpack_from("<H", data, _uki.parse_stub(data).coff_offset)[0] == machine

    # Same inputs, same image: the unsigned UKI is the same bytes, so the signed one the layout holds is kept.
    again = ansible.module(MODULE, args)
    assert again["digest"] == built["digest"], (again, built)
    assert again.get("changed") is False, again

    # A given UKI that is not signed by the certificate is refused when a signature is required.
    unsigned = inputs / "unsigned.efi"
    unsigned.write_bytes(boot_stub_bytes())
    refused = ansible.module(
        MODULE,
        dict(
            args,
            name=NAME + "-given",
            artifacts=[dict(common, architecture="amd64", kernel=kernel_amd64, uki=str(unsigned))],
        ),
    )
    assert refused.get("failed") is True
    assert "is not signed by uki_sign_cert" in refused["msg"] and "sbverify" in refused["msg"], refused["msg"]
    # A wrong passphrase is one line that names the option, never the key.
    wrong = ansible.module(MODULE, dict(args, layout=str(tmp_path / "other"), uki_sign_key_passphrase="not-it"))
    assert wrong.get("failed") is True
    assert "uki_sign_key_passphrase does not open uki_sign_key" in wrong["msg"], wrong["msg"]
    assert "not-it" not in json.dumps(wrong)


def boot_stub_bytes() -> bytes:
    with open(boot.debian_efi_stub("amd64"), "rb") as stream:
        return stream.read()
