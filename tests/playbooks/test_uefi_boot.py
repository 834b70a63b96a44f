"""Proof in UEFI firmware: playbooks/build.yml assembles a UKI (build_uki: auto) and signs it with Debian's snakeoil
test key, playbooks/provision.yml delivers it to a boot directory, and OVMF with Secure Boot on (the snakeoil
certificate enrolled in db) boots it: a snakeoil-signed Debian iPXE on the ESP takes the script URL from qemu's
DHCP, loads the role's boot.ipxe and the UKI over HTTP, and the initramfs prints its marker and command line.
The firmware refuses the UKI unsigned and with one byte changed; with Secure Boot off the same UKI boots, and so
does the kernel + initrd boot.ipxe. The snakeoil key is a public test key: never for anything but tests."""

from __future__ import annotations

import glob
import os

import pytest
from helpers import boot, uefi
from helpers.inventory import local_host, outcomes, write_inventory

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, "playbooks", "build.yml")
PROVISION = os.path.join(REPO, "playbooks", "provision.yml")


def test_signed_uki_boots_in_secure_boot_firmware_and_altered_ones_do_not(
    ansible, boot_artifacts, http_server, tmp_path, record_property
):
    name = "registry.example.com/ironcore/uefi-proof:1.0"
    layout = str(tmp_path / "layout")
    served = tmp_path / "srv"
    served.mkdir()
    port = http_server(str(served))
    base_url = "http://%s:%d" % (boot.GUEST_HOST_ADDRESS, port)

    def boot_server(mode: str) -> dict:
        return local_host(
            provision_layout=layout,
            provision_boot_dir=str(served / mode),
            provision_boot_url="%s/%s" % (base_url, mode),
            provision_cache_dir=str(tmp_path / ("cache-" + mode)),
            provision_boot_mode={"uki": "auto", "kernel": "ipxe-kernel"}[mode],
        )

    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "build_hosts": {
                "builder": local_host(
                    build_name=name,
                    build_layout=layout,
                    build_platforms=["baremetal"],
                    **uefi.SNAKEOIL_BUILD_VARS,
                    build_artifacts=[boot_artifacts.build_artifact()],
                )
            },
            "baremetal": {"uki": boot_server("uki"), "kernel": boot_server("kernel")},
        },
        {"provision_name": name},
    )
    rc, built, stderr = ansible.playbook(BUILD, inventory=inventory)
    assert rc == 0, (built, stderr)
    assert uefi.SNAKEOIL_PASSPHRASE not in str(built)
    (build_result,) = [r for task, _h, r in outcomes(built)["changed"] if task == "Build the image into the layout"]
    (layers,) = [m["layers"] for m in build_result["manifests"] if m["platform"] == "baremetal"]
    (uki_layer,) = [layer for layer in layers if layer["title"] == "uki"]
    rc, provisioned, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (provisioned, stderr)

    # What the role delivered: the UKI, boot-operator's sha256-<digest>.efi (the same inode), a script that
    # chains it, and the stable entry's boot.efi through the current link.
    (version,) = [d for d in glob.glob(str(served / "uki" / "*")) if not d.endswith("-current")]
    operator_name = "sha256-%s.efi" % uki_layer["digest"].split(":", 1)[1]
    uki_path = os.path.join(version, "uki")
    assert os.stat(os.path.join(version, operator_name)).st_ino == os.stat(uki_path).st_ino
    script = open(os.path.join(version, "boot.ipxe")).read()
    version_url = "%s/uki/%s" % (base_url, os.path.basename(version))
    assert "chain %s/%s %s\n" % (version_url, operator_name, boot_artifacts.command_line) in script, script
    (entry,) = glob.glob(str(served / "uki" / "*-current"))
    assert os.readlink(os.path.join(entry, "boot.efi")) == "current/uki"
    assert open(os.path.join(entry, "boot.efi"), "rb").read() == open(uki_path, "rb").read()
    checked = uefi.sbverify(os.path.join(entry, "boot.efi"))
    assert checked.returncode == 0 and "Signature verification OK" in checked.stdout, checked
    kernel_script = glob.glob(str(served / "kernel" / "*-current" / "boot.ipxe"))[0]
    assert "\nkernel " in open(kernel_script).read()

    signed_ipxe = uefi.sign_snakeoil(uefi.IPXE_EFI, str(tmp_path / "ipxe-signed.efi"), str(tmp_path))
    entry_script_url = "%s/uki/%s/boot.ipxe" % (base_url, os.path.basename(entry))
    seconds = {}

    # 1. Secure Boot on: the signed iPXE, the role's script, the signed UKI, the initramfs.
    result = uefi.boot_uefi(str(tmp_path / "sb-uki"), signed_ipxe, secure_boot=True, bootfile_url=entry_script_url)
    seconds["secure_boot_uki"] = result.seconds
    assert result.markers() == [boot_artifacts.marker], result.tail()
    assert result.command_line() == boot_artifacts.command_line, result.tail()
    assert not result.refused(), result.tail()
    (server,) = http_server.servers
    assert "/uki/%s/%s" % (os.path.basename(version), operator_name) in server.requests

    # 2. and 3. Secure Boot on: the same UKI without its signature, and signed with one byte changed.
    unsigned = uefi.unsigned_copy(uki_path, str(tmp_path / "unsigned.efi"))
    offset, _size = uefi.section_range(uki_path, ".cmdline")
    tampered = uefi.with_byte_changed(uki_path, str(tmp_path / "tampered.efi"), offset)
    assert uefi.sbverify(unsigned).returncode != 0 and uefi.sbverify(tampered).returncode != 0
    for label, image in (("unsigned", unsigned), ("tampered", tampered)):
        result = uefi.boot_uefi(str(tmp_path / label), image, secure_boot=True)
        seconds[label] = result.seconds
        assert result.refused(), (label, result.tail())
        assert result.markers() == [], (label, result.tail())

    # 4. Secure Boot off: the same UKI boots, loaded by the firmware from the ESP (its embedded command line).
    result = uefi.boot_uefi(str(tmp_path / "uki-off"), uki_path, secure_boot=False)
    seconds["uki_secure_boot_off"] = result.seconds
    assert result.markers() == [boot_artifacts.marker], result.tail()

    # 5. Secure Boot off: today's kernel + initrd boot.ipxe, under UEFI iPXE (unsigned: nothing checks it).
    kernel_entry_url = "%s/kernel/%s/boot.ipxe" % (base_url, os.path.basename(os.path.dirname(kernel_script)))
    result = uefi.boot_uefi(
        str(tmp_path / "kernel-off"), uefi.IPXE_EFI, secure_boot=False, bootfile_url=kernel_entry_url
    )
    seconds["kernel_secure_boot_off"] = result.seconds
    assert result.markers() == [boot_artifacts.marker], result.tail()
    for label, value in seconds.items():
        record_property(label + "_seconds", round(value, 1))
    print("UEFI boots (%s): %s" % (result.accelerator, ", ".join("%s %.1f s" % item for item in seconds.items())))
