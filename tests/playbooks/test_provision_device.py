"""The provision role's rootfs device write with a tar+gzip rootfs, on real loop devices.

The blob of a packed rootfs is much smaller than the file it unpacks to: the
role must compare, size-check and write by the unpacked size, resolve the
device once and leave a device it refuses byte for byte as it was.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import typing as t

import pytest
from helpers.inventory import failures_by_host, local_host, outcomes, write_inventory

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROVISION = os.path.join(REPO, "playbooks", "provision.yml")
NAME = "registry.example.com/os/device-provision:1.0"
ROOTFS_SIZE = 512 * 1024


@pytest.fixture
def loop_devices(tmp_path) -> t.Iterator[t.Callable[[bytes], str]]:
    """Factory: a loop device backed by a file in tmp holding `content`; every one detached afterwards."""
    attached: list[str] = []

    def attach(content: bytes) -> str:
        backing = tmp_path / ("disk-%d.img" % len(attached))
        backing.write_bytes(content)
        proc = None
        if shutil.which("losetup") is not None:
            proc = subprocess.run(
                ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=False
            )
        if proc is None or proc.returncode != 0:
            reason = proc.stderr.strip() if proc else "no losetup"
            if os.environ.get("CI"):
                pytest.fail("cannot create a loop device: %s" % reason)
            pytest.skip("no loop device here: %s" % reason)
        attached.append(proc.stdout.strip())
        return attached[-1]

    try:
        yield attach
    finally:
        for device in attached:
            subprocess.run(["losetup", "--detach", device], check=False)


def rootfs_bytes() -> bytes:
    """Compresses to a small fraction of its size, yet every block differs from the next."""
    lines = b"".join(b"rootfs block %08d of a packed image\n" % number for number in range(ROOTFS_SIZE // 32))
    return lines[:ROOTFS_SIZE]


@pytest.fixture
def packed_image(ansible, tmp_path) -> tuple[str, bytes, int]:
    """A baremetal image whose layers are tar+gzip; returns (layout, rootfs bytes, rootfs blob size)."""
    artifact: dict[str, t.Any] = {"architecture": "amd64", "cmdline": "console=ttyS0"}
    contents = {"kernel": b"kernel\n" * 100, "initramfs": b"initramfs\n" * 100, "rootfs": rootfs_bytes()}
    for role, data in contents.items():
        path = tmp_path / ("artifact-" + role)
        path.write_bytes(data)
        artifact[role] = str(path)
    layout = str(tmp_path / "layout")
    result = ansible.module(
        "ironcore.image.ironcore_image_build",
        {"layout": layout, "name": NAME, "artifacts": [artifact], "layer_format": "tar+gzip"},
    )
    assert result.get("failed") is not True, result
    (baremetal,) = [entry for entry in result["manifests"] if entry["platform"] == "baremetal"]
    (rootfs_layer,) = [layer for layer in baremetal["layers"] if layer["title"] == "rootfs"]
    blob_size = rootfs_layer["size"]
    assert blob_size * 4 < ROOTFS_SIZE, "the packed rootfs must be much smaller than the file"
    return layout, contents["rootfs"], blob_size


def inventory_for(tmp_path, layout: str, device: str) -> str:
    pxe = local_host(
        provision_boot_dir=str(tmp_path / "boot"),
        provision_boot_url="http://pxe.example.com/boot/",
        provision_rootfs_device=device,
        provision_rootfs_device_confirm=True,
    )
    return write_inventory(
        str(tmp_path / "hosts.yml"), {"baremetal": {"pxe": pxe}}, {"provision_name": NAME, "provision_layout": layout}
    )


def read(path: str, size: int | None = None) -> bytes:
    with open(path, "rb") as stream:
        return stream.read() if size is None else stream.read(size)


def test_packed_rootfs_is_compared_and_written_by_its_unpacked_size(ansible, packed_image, loop_devices, tmp_path):
    """The device already starts with the blob-size prefix of the rootfs: comparing by blob size skips the write."""
    layout, rootfs, blob_size = packed_image
    device = loop_devices(rootfs[:blob_size] + b"\xaa" * (1024 * 1024 - blob_size))
    link = tmp_path / "rootfs-device"
    link.symlink_to(device)
    inventory = inventory_for(tmp_path, layout, str(link))

    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (failures_by_host(document), stderr)
    assert ("Copy the rootfs onto the device", "pxe") in [
        (task, host) for task, host, _result in outcomes(document)["changed"]
    ]
    assert read(device, len(rootfs)) == rootfs
    assert (
        subprocess.run(
            ["cmp", "--bytes=%d" % len(rootfs), device, str(tmp_path / "artifact-rootfs")], check=False
        ).returncode
        == 0
    )
    # The link was resolved once and written through, not replaced.
    assert link.is_symlink() and os.path.realpath(link) == device

    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (failures_by_host(document), stderr)
    assert ("Copy the rootfs onto the device", "pxe") in [
        (task, host) for task, host, _result in outcomes(document)["skipped"]
    ]
    assert not outcomes(document)["changed"]


def test_too_small_device_is_refused_and_left_as_it_was(ansible, packed_image, loop_devices, tmp_path):
    """Larger than the blob, smaller than the rootfs: refused after the first fetch and, once the file is known,
    before the fetch; either way not one byte of the device changes."""
    layout, rootfs, blob_size = packed_image
    size = 256 * 1024
    assert blob_size < size < len(rootfs)
    before = os.urandom(size)
    device = loop_devices(before)
    inventory = inventory_for(tmp_path, layout, device)
    message = "provision_rootfs_device: %s holds %d bytes, the rootfs needs %d; nothing was written" % (
        device,
        size,
        len(rootfs),
    )

    rc, document, _stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc != 0
    assert failures_by_host(document) == {"pxe": ("Check that the rootfs fits on the device", message)}
    assert read(device) == before

    rc, document, _stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc != 0
    assert failures_by_host(document) == {"pxe": ("Check that the image has what this node needs", message)}
    assert read(device) == before


def test_a_regular_file_as_the_device_is_refused_untouched(ansible, packed_image, tmp_path):
    layout, _rootfs, _blob_size = packed_image
    not_a_device = tmp_path / "not-a-device"
    not_a_device.write_bytes(b"keep me\n" * 1000)
    link = tmp_path / "link-to-file"
    link.symlink_to(not_a_device)
    rc, document, _stderr = ansible.playbook(PROVISION, inventory=inventory_for(tmp_path, layout, str(link)))
    assert rc != 0
    assert failures_by_host(document) == {
        "pxe": (
            "Check that the image has what this node needs",
            "provision_rootfs_device: %s is not a block device" % link,
        )
    }
    assert not_a_device.read_bytes() == b"keep me\n" * 1000
    assert not (tmp_path / "boot").exists()


def test_device_node_swapped_before_the_write_is_refused(ansible, packed_image, loop_devices, tmp_path):
    """Between the checks and dd, the node is replaced by one for another device: neither device is written."""
    layout, _rootfs, _blob_size = packed_image
    checked_content, other_content = os.urandom(1024 * 1024), os.urandom(1024 * 1024)
    checked, other = loop_devices(checked_content), loop_devices(other_content)
    node = tmp_path / "rootfs-node"
    os.mknod(node, stat.S_IFBLK | 0o600, os.stat(checked).st_rdev)
    other_rdev = os.stat(other).st_rdev
    env = {
        "ANSIBLE_CALLBACKS_ENABLED": "swap_device",
        "IRONCORE_TEST_SWAP_TASK": "Look at the device again right before the write",
        "IRONCORE_TEST_SWAP_DEVICE": "%s:%d:%d" % (node, os.major(other_rdev), os.minor(other_rdev)),
    }
    rc, document, _stderr = ansible.playbook(PROVISION, inventory=inventory_for(tmp_path, layout, str(node)), env=env)
    assert rc != 0
    failures = failures_by_host(document)
    assert failures["pxe"][0] == "Check that the device is still the one that was checked", failures
    assert failures["pxe"][1].startswith(
        "provision_rootfs_device: %s is no longer the device that was checked (block special file %x:%x, now "
        % (node, os.major(os.stat(checked).st_rdev), os.minor(os.stat(checked).st_rdev))
    ), failures
    assert failures["pxe"][1].endswith("); nothing was written")
    assert read(checked) == checked_content and read(other) == other_content
