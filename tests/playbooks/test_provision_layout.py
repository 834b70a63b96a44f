"""playbooks/provision.yml from a local OCI layout: a boot server over real SSH, a block device, qcow2 with
a libvirt pool refresh; check mode writes nothing, a second run changes nothing, a new image is delivered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings

import pytest
from helpers.boot import parse_ipxe
from helpers.inventory import local_host, outcomes, provision_slug, write_inventory

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROVISION = os.path.join(REPO, "playbooks", "provision.yml")
NAME = "registry.example.com/os/layout-provision:2.0"
SLUG = provision_slug(NAME)


@pytest.fixture
def loop_device(tmp_path):
    """A real block device (loop) backed by a 1 MiB file, or None where loop devices cannot be made."""
    backing = tmp_path / "disk.img"
    backing.write_bytes(b"\0" * (1 << 20))
    proc = None
    if shutil.which("losetup") is not None:
        proc = subprocess.run(
            ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=False
        )
    if proc is None or proc.returncode != 0:
        # CI runs as root where loop devices work: there the device write must be proven, not skipped.
        if os.environ.get("CI"):
            pytest.fail(
                "cannot create a loop device for the rootfs device write: %s" % (proc.stderr if proc else "no losetup")
            )
        warnings.warn("no loop device here: the rootfs device write is not exercised", stacklevel=2)
        yield None
        return
    device = proc.stdout.strip()
    yield device
    subprocess.run(["losetup", "--detach", device], check=False)


def build(ansible, layout, directory, generation):
    artifact = {"architecture": "amd64", "cmdline": "console=ttyS0 generation=%d" % generation}
    for role in ("kernel", "initramfs", "rootfs"):
        path = directory / ("%s-%d" % (role, generation))
        path.write_bytes(("%s generation %d\n" % (role, generation)).encode() * 300)
        artifact[role] = str(path)
    result = ansible.module(
        "ironcore.image.ironcore_image_build", {"layout": layout, "name": NAME, "artifacts": [artifact]}
    )
    assert result.get("failed") is not True, result
    return result["digest"], artifact


def read_prefix(path, size):
    with open(path, "rb") as stream:
        return stream.read(size)


def test_provision_from_layout(ansible, sshd, loop_device, tmp_path):
    layout = str(tmp_path / "layout")
    digest, artifact = build(ansible, layout, tmp_path, 1)
    boot_dir, pool, cache = tmp_path / "boot", tmp_path / "pool", tmp_path / "cache"
    pxe = dict(
        sshd.host_vars(),
        provision_boot_dir=str(boot_dir),
        provision_boot_url="http://pxe.example.com/boot/",
        provision_cache_dir=str(tmp_path / "cache-pxe"),
    )
    if loop_device:
        pxe.update(provision_rootfs_device=loop_device, provision_rootfs_device_confirm=True)
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "baremetal": {"pxe": pxe},
            "hypervisors": {
                "hv": local_host(
                    provision_pool_dir=str(pool),
                    provision_cache_dir=str(cache),
                    provision_disk_format="qcow2",
                    provision_disk_name="vm-disk",
                    provision_libvirt_pool="default-pool",
                    # libvirt's built-in test driver: real virsh, no daemon needed.
                    provision_libvirt_uri="test:///default",
                )
            },
        },
        {"provision_name": NAME, "provision_layout": layout},
    )

    commands_before = sshd.commands_run()
    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory, check=True)
    assert rc == 0, (document, stderr)
    assert sshd.commands_run() > commands_before, "the baremetal node was not reached over SSH"
    assert not boot_dir.exists() and not pool.exists() and not cache.exists()
    assert {task for task, _host, _result in outcomes(document)["changed"]} >= {"Fetch the image's files"}

    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (document, stderr)
    image_dir = boot_dir / SLUG
    for role in ("kernel", "initramfs", "rootfs"):
        assert (image_dir / role).read_bytes() == open(artifact[role], "rb").read()
    script = (image_dir / "boot.ipxe").read_text()
    parsed = parse_ipxe(script)
    assert parsed.kernel_url == "http://pxe.example.com/boot/%s/kernel" % SLUG
    assert parsed.command_line == "initrd=initramfs console=ttyS0 generation=1"
    assert parsed.initrd_urls == ["http://pxe.example.com/boot/%s/initramfs" % SLUG]
    assert "# digest:   %s\n" % digest in script
    assert oct(os.stat(image_dir / "boot.ipxe").st_mode & 0o777) == "0o644"

    qcow2 = pool / "vm-disk.qcow2"
    # Converted in a private directory that is gone afterwards; only the owner may read the disk.
    assert sorted(os.listdir(pool)) == ["vm-disk.qcow2"]
    assert oct(os.stat(qcow2).st_mode & 0o777) == "0o600"
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", str(qcow2)], capture_output=True, check=True).stdout
    )
    assert info["format"] == "qcow2"
    compare = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", artifact["rootfs"], str(qcow2)],
        capture_output=True,
        check=False,
    )
    assert compare.returncode == 0, "the qcow2 disk does not hold the rootfs"
    changed = {(task, host) for task, host, _result in outcomes(document)["changed"]}
    assert ("Refresh the pool so libvirt sees the new disk image", "hv") in changed
    rootfs_size = os.path.getsize(artifact["rootfs"])
    if loop_device:
        assert ("Copy the rootfs onto the device", "pxe") in changed
        assert read_prefix(loop_device, rootfs_size) == open(artifact["rootfs"], "rb").read()

    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (document, stderr)
    assert outcomes(document)["changed"] == [], outcomes(document)["changed"]
    skipped = {(task, host) for task, host, _result in outcomes(document)["skipped"]}
    assert ("Convert the rootfs with qemu-img", "hv") in skipped
    if loop_device:
        assert ("Copy the rootfs onto the device", "pxe") in skipped

    # A new image under the same name: every node gets it, qcow2 is converted again, the device rewritten.
    new_digest, new_artifact = build(ansible, layout, tmp_path, 2)
    assert new_digest != digest
    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (document, stderr)
    changed = {(task, host) for task, host, _result in outcomes(document)["changed"]}
    assert ("Convert the rootfs with qemu-img", "hv") in changed
    assert (image_dir / "rootfs").read_bytes() == open(new_artifact["rootfs"], "rb").read()
    assert (
        parse_ipxe((image_dir / "boot.ipxe").read_text()).command_line == "initrd=initramfs console=ttyS0 generation=2"
    )
    compare = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", new_artifact["rootfs"], str(qcow2)],
        capture_output=True,
        check=False,
    )
    assert compare.returncode == 0
    if loop_device:
        assert ("Copy the rootfs onto the device", "pxe") in changed
        assert read_prefix(loop_device, rootfs_size) == open(new_artifact["rootfs"], "rb").read()
