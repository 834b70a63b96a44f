"""arm64 in UEFI firmware (AAVMF, emulated): the build module assembles a UKI on the arm64 systemd stub from a
Debian arm64 kernel and a busybox-static arm64 initramfs and signs it with the snakeoil test key; AAVMF with the
snakeoil certificate enrolled boots it, and refuses it unsigned. Slow under TCG: `make test-arm64-uefi` runs it
(CI runs that after `make test`); `make test` leaves it out (marker arm64_uefi)."""

from __future__ import annotations

import json
import os

import pytest
from helpers import boot, uefi

pytestmark = [pytest.mark.integration, pytest.mark.arm64_uefi]

MODULE = "ironcore.image.ironcore_image_build"


def test_arm64_signed_uki_boots_in_secure_boot_firmware(ansible, boot_artifacts, tmp_path, record_property):
    kernel = boot.debian_kernel(architecture="arm64")
    initramfs = boot.make_initramfs(str(tmp_path / "initramfs-arm64.gz"), busybox=boot.debian_busybox("arm64"))
    marker = boot_artifacts.marker + "-arm64"
    command_line = "console=ttyAMA0 panic=-1 %s=%s" % (boot.MARKER_PARAMETER, marker)
    layout = str(tmp_path / "layout")
    built = ansible.module(
        MODULE,
        {
            "layout": layout,
            "name": "registry.example.com/ironcore/uefi-proof-arm64:1.0",
            "platforms": ["baremetal"],
            "uki_sign_key": uefi.SNAKEOIL_KEY,
            "uki_sign_cert": uefi.SNAKEOIL_CERT,
            "uki_sign_key_passphrase": uefi.SNAKEOIL_PASSPHRASE,
            "uki_require_signature": True,
            "artifacts": [
                {
                    "architecture": "arm64",
                    "kernel": kernel,
                    "initramfs": initramfs,
                    "rootfs": boot_artifacts.rootfs,
                    "cmdline": command_line,
                    "uki": "auto",
                    "uki_stub": boot.debian_efi_stub("arm64"),
                }
            ],
        },
    )
    assert built.get("changed") is True, built
    (layers,) = [m["layers"] for m in built["manifests"]]
    (uki_layer,) = [layer for layer in layers if layer["title"] == "uki"]
    uki = os.path.join(layout, "blobs", "sha256", uki_layer["digest"].split(":", 1)[1])
    checked = uefi.sbverify(uki)
    assert checked.returncode == 0 and "Signature verification OK" in checked.stdout, checked
    assert uefi.SNAKEOIL_PASSPHRASE not in json.dumps(built)

    result = uefi.boot_uefi(str(tmp_path / "sb"), uki, secure_boot=True, architecture="arm64", timeout=600)
    record_property("arm64_secure_boot_seconds", round(result.seconds, 1))
    assert result.markers() == [marker], result.tail()
    assert result.command_line() == command_line, result.tail()

    unsigned = uefi.unsigned_copy(uki, str(tmp_path / "unsigned.efi"))
    refused = uefi.boot_uefi(str(tmp_path / "unsigned"), unsigned, secure_boot=True, architecture="arm64", timeout=600)
    record_property("arm64_refusal_seconds", round(refused.seconds, 1))
    assert refused.refused() and refused.markers() == [], refused.tail()
    print(
        "arm64 UEFI (TCG): signed UKI booted in %.1f s, unsigned refused in %.1f s" % (result.seconds, refused.seconds)
    )
