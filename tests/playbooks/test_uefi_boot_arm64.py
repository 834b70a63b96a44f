"""arm64 in UEFI firmware (AAVMF, emulated): playbooks/build.yml assembles UKIs for amd64 and arm64 (the arm64 one
on the arm64 systemd stub, from a Debian arm64 kernel and a busybox-static arm64 initramfs) and signs both with the
snakeoil test key, which sbverify accepts; AAVMF with the snakeoil certificate enrolled boots the arm64 one, and
refuses it unsigned. Slow under TCG: `make test-arm64-uefi` runs it (CI runs that after `make test`); `make test`
leaves it out (marker arm64_uefi)."""

from __future__ import annotations

import json
import os

import pytest
from helpers import boot, uefi
from helpers.inventory import local_host, outcomes, write_inventory

pytestmark = [pytest.mark.integration, pytest.mark.arm64_uefi]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, "playbooks", "build.yml")


def test_arm64_signed_uki_boots_in_secure_boot_firmware(ansible, boot_artifacts, tmp_path, record_property):
    kernel = boot.debian_kernel(architecture="arm64")
    initramfs = boot.make_initramfs(str(tmp_path / "initramfs-arm64.gz"), busybox=boot.debian_busybox("arm64"))
    marker = boot_artifacts.marker + "-arm64"
    command_line = "console=ttyAMA0 panic=-1 %s=%s" % (boot.MARKER_PARAMETER, marker)
    layout = str(tmp_path / "layout")
    # What a release engineer runs: build.yml with build_uki: auto and a signing key, for both architectures.
    # This amd64 host has no arm64 stub installed, so that artifact names the one unpacked from Debian's arm64
    # systemd-boot-efi package.
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "build_hosts": {
                "builder": local_host(
                    build_name="registry.example.com/ironcore/uefi-proof-arm64:1.0",
                    build_layout=layout,
                    build_platforms=["baremetal"],
                    **uefi.SNAKEOIL_BUILD_VARS,
                    build_artifacts=[
                        boot_artifacts.build_artifact(),
                        {
                            "architecture": "arm64",
                            "kernel": kernel,
                            "initramfs": initramfs,
                            "rootfs": boot_artifacts.rootfs,
                            "cmdline": command_line,
                            "uki_stub": boot.debian_efi_stub("arm64"),
                        },
                    ],
                )
            }
        },
    )
    rc, built, stderr = ansible.playbook(BUILD, inventory=inventory)
    assert rc == 0, (built, stderr)
    assert uefi.SNAKEOIL_PASSPHRASE not in json.dumps(built)
    (build_result,) = [r for task, _h, r in outcomes(built)["changed"] if task == "Build the image into the layout"]
    ukis = {}
    for manifest in build_result["manifests"]:
        (uki_layer,) = [layer for layer in manifest["layers"] if layer["title"] == "uki"]
        ukis[manifest["architecture"]] = os.path.join(layout, "blobs", "sha256", uki_layer["digest"].split(":", 1)[1])
    assert sorted(ukis) == ["amd64", "arm64"], build_result["manifests"]
    for architecture, path in ukis.items():
        checked = uefi.sbverify(path)
        assert checked.returncode == 0 and "Signature verification OK" in checked.stdout, (architecture, checked)
    uki = ukis["arm64"]

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
