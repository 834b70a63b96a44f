"""Bad input stops the roles with one clear message, before anything on the node changes."""

from __future__ import annotations

import os

import pytest
from helpers.inventory import failures_by_host, local_host, outcomes, write_inventory

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, "playbooks", "build.yml")
PROVISION = os.path.join(REPO, "playbooks", "provision.yml")


def assert_nothing_changed(document, *paths):
    assert outcomes(document)["changed"] == [], outcomes(document)["changed"]
    for path in paths:
        assert not os.path.exists(path), "%s was created although the role failed" % path


def test_provision_bad_input_fails_per_host_before_changing_anything(ansible, layout_image, tmp_path):
    base = tmp_path / "nodes"

    def baremetal(host, **overrides):
        host_vars = {
            "provision_name": layout_image.name,
            "provision_layout": layout_image.layout,
            "provision_boot_dir": str(base / host / "boot"),
            "provision_boot_url": "http://pxe.example.com/boot",
        }
        host_vars.update(overrides)
        return local_host(**{key: value for key, value in host_vars.items() if value is not None})

    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "baremetal": {
                "no-name": baremetal("no-name", provision_name=None),
                "no-layout": baremetal("no-layout", provision_layout=str(tmp_path / "no-such-layout")),
                "no-reference": baremetal("no-reference", provision_name="registry.example.com/os/layout-image:9.9"),
                "unconfirmed-device": baremetal("unconfirmed-device", provision_rootfs_device="/dev/loop7"),
                "no-boot-url": baremetal("no-boot-url", provision_boot_url=None),
                "ftp-boot-url": baremetal("ftp-boot-url", provision_boot_url="ftp://pxe.example.com/boot"),
                # The image has no uki layer.
                "uki-mode": baremetal("uki-mode", provision_boot_mode="uki"),
            },
        },
    )
    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc != 0
    failures = failures_by_host(document)
    assert sorted(failures) == sorted(
        ["no-name", "no-layout", "no-reference", "unconfirmed-device", "no-boot-url", "ftp-boot-url", "uki-mode"]
    ), ({host: failure[1] for host, failure in failures.items()}, stderr)

    def message(host):
        return failures[host][1]

    assert "missing required arguments: provision_name" in message("no-name")
    assert "no-such-layout" in message("no-layout")
    assert failures["no-layout"][0] == "Stop when the image cannot be resolved"
    assert "9.9" in message("no-reference")
    assert failures["no-reference"][0] == "Stop when the image cannot be resolved"
    assert message("unconfirmed-device") == (
        "provision_rootfs_device=/dev/loop7 would be overwritten: set provision_rootfs_device_confirm: true to allow it"
    )
    assert message("no-boot-url").startswith("provision_boot_url is required for provision_platform=baremetal")
    assert (
        message("ftp-boot-url")
        == "provision_boot_url must be an http:// or https:// URL, got ftp://pxe.example.com/boot"
    )
    assert message("uki-mode").startswith(
        "provision_boot_mode: uki, but %s has no uki layer for amd64; build it with uki: auto" % layout_image.name
    ), message("uki-mode")
    for text in map(message, failures):
        assert "Traceback" not in text
    assert_nothing_changed(document, str(base))


def test_provision_bad_hypervisor_input(ansible, layout_image, tmp_path):
    pool = tmp_path / "pool"

    def hypervisor(**overrides):
        return local_host(
            provision_name=layout_image.name,
            provision_layout=layout_image.layout,
            provision_pool_dir=str(pool),
            **overrides,
        )

    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "hypervisors": {
                "bad-format": hypervisor(provision_disk_format="vmdk"),
                "device": hypervisor(provision_rootfs_device="/dev/loop7", provision_rootfs_device_confirm=True),
                "escaping-name": hypervisor(provision_disk_name="../etc/passwd"),
            }
        },
    )
    rc, document, _stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc != 0
    failures = failures_by_host(document)
    assert "value of provision_disk_format must be one of: raw, qcow2, got: vmdk" in failures["bad-format"][1]
    assert failures["device"][1] == "provision_rootfs_device is for provision_platform=baremetal only"
    assert failures["escaping-name"][1] == "provision_disk_name must be a plain file name, got ../etc/passwd"
    assert_nothing_changed(document, str(pool))


def test_provision_unknown_platform(ansible, layout_image, tmp_path):
    boot_dir = tmp_path / "boot"
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {"baremetal": {"pxe": local_host(provision_boot_dir=str(boot_dir), provision_boot_url="http://pxe/boot")}},
        {"provision_name": layout_image.name, "provision_layout": layout_image.layout},
    )
    # Extra vars beat the platform the playbook sets for the group.
    rc, document, _stderr = ansible.playbook(PROVISION, inventory=inventory, extra_vars={"provision_platform": "cloud"})
    assert rc != 0
    failures = list(failures_by_host(document).values())
    assert len(failures) == 1, failures
    text = failures[0][1]
    assert "value of provision_platform must be one of: baremetal, virtualization, metal, kvm, got: cloud" in text
    assert_nothing_changed(document, str(boot_dir))


def test_build_missing_artifacts_listed_in_one_message(ansible, tmp_path):
    present = tmp_path / "vmlinuz"
    present.write_bytes(b"kernel")
    layout = tmp_path / "layout"
    artifacts = [
        {
            "architecture": "amd64",
            "kernel": str(present),
            "initramfs": str(tmp_path / "missing-initrd"),
            "rootfs": str(tmp_path),
        },
        {
            "architecture": "arm64",
            "kernel": str(present),
            "initramfs": str(present),
            "rootfs": str(tmp_path / "missing-rootfs"),
        },
    ]
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "build_hosts": {
                "missing-files": local_host(
                    build_name="registry.example.com/os/x:1", build_layout=str(layout), build_artifacts=artifacts
                ),
                "no-name": local_host(build_layout=str(layout), build_artifacts=artifacts[:1]),
                "bad-arch": local_host(
                    build_name="registry.example.com/os/x:1",
                    build_layout=str(layout),
                    build_artifacts=[{"architecture": "sparc", "rootfs": str(present)}],
                ),
            }
        },
    )
    rc, document, _stderr = ansible.playbook(BUILD, inventory=inventory)
    assert rc != 0
    failures = failures_by_host(document)
    assert failures["missing-files"] == (
        "Check that every artifact is there",
        "build_artifacts names files that are missing or not regular files on missing-files: %s, %s, %s"
        % (tmp_path / "missing-initrd", tmp_path / "missing-rootfs", tmp_path),
    )
    assert "missing required arguments: build_name" in failures["no-name"][1]
    assert (
        "value of architecture must be one of: amd64, arm64, x86_64, aarch64, got: sparc found in build_artifacts"
        in failures["bad-arch"][1]
    )
    assert_nothing_changed(document, str(layout))
