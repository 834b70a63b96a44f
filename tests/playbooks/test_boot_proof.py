"""Proof that what a node receives boots: real kernel, initramfs and ext4 rootfs, built and pushed to the
real TLS registry by playbooks/build.yml, provisioned by playbooks/provision.yml onto a bare-metal boot
server (over SSH) and a hypervisor, then network-booted by qemu through iPXE from the rendered boot.ipxe."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from helpers import boot
from helpers.inventory import local_host, outcomes, provision_slug, write_inventory

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, "playbooks", "build.yml")
PROVISION = os.path.join(REPO, "playbooks", "provision.yml")


def registry_vars(prefix, registry):
    return {
        prefix + "registry_username": registry.username,
        prefix + "registry_password": registry.password,
        prefix + "registry_ca_cert": registry.pki.ca_cert,
    }


def skopeo_raw(registry, reference):
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", *registry.skopeo_flags(), "docker://" + reference],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def test_built_pushed_provisioned_image_boots(
    ansible, registry_tls, sshd, boot_artifacts, http_server, tmp_path, record_property
):
    name = "%s/ironcore/boot-proof:1.0" % registry_tls.host
    slug = provision_slug(name)  # the default subdirectory and disk name
    boot_dir, pool = tmp_path / "boot", tmp_path / "pool"
    boot_dir.mkdir()
    # The PXE boot server's web server; the guest reaches the host's 127.0.0.1 as 10.0.2.2.
    port = http_server(str(boot_dir))
    boot_url = "http://%s:%d/" % (boot.GUEST_HOST_ADDRESS, port)
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "build_hosts": {
                "builder": local_host(
                    build_name=name,
                    build_layout=str(tmp_path / "layout"),
                    build_push=True,
                    build_artifacts=[boot_artifacts.build_artifact()],
                    **registry_vars("build_", registry_tls),
                )
            },
            "baremetal": {
                "pxe": dict(
                    sshd.host_vars(),
                    provision_boot_dir=str(boot_dir),
                    provision_boot_url=boot_url,
                    provision_cache_dir=str(tmp_path / "cache-pxe"),
                )
            },
            "hypervisors": {
                "hv": local_host(provision_pool_dir=str(pool), provision_cache_dir=str(tmp_path / "cache-hv"))
            },
        },
        dict(provision_name=name, **registry_vars("provision_", registry_tls)),
    )

    rc, built, stderr = ansible.playbook(BUILD, inventory=inventory)
    assert rc == 0, (built, stderr)
    (build_result,) = [r for task, _host, r in outcomes(built)["changed"] if task == "Build the image into the layout"]
    (push_result,) = [r for task, _host, r in outcomes(built)["changed"] if task == "Push the image to the registry"]
    digest = build_result["digest"]
    assert push_result["digest"] == digest
    # An independent client reads the pushed index back, byte for byte.
    assert "sha256:" + hashlib.sha256(skopeo_raw(registry_tls, name)).hexdigest() == digest

    commands_before = sshd.commands_run()
    rc, provisioned, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (provisioned, stderr)
    assert sshd.commands_run() > commands_before, "the boot server was not reached over SSH"
    fetched = {host: r for task, host, r in outcomes(provisioned)["changed"] if task == "Fetch the image's files"}
    assert sorted(fetched) == ["hv", "pxe"]
    assert {r["digest"] for r in fetched.values()} == {digest}
    for output in (built, provisioned):
        assert registry_tls.password not in str(output)

    rc, again, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (again, stderr)
    assert outcomes(again)["changed"] == [], outcomes(again)["changed"]

    # The hypervisor's disk is the ext4 rootfs, files and all.
    disk = str(pool / ("%s.raw" % slug))
    assert boot.read_ext4_file(disk, "/marker") == boot_artifacts.rootfs_marker

    # The bare-metal node: iPXE fetches boot.ipxe, then the kernel and initramfs at the URLs it names, and
    # boots the kernel with the command line it carries. The marker needs both the initramfs and that line.
    script = boot.parse_ipxe((boot_dir / slug / "boot.ipxe").read_text())
    assert script.command_line == "initrd=initramfs " + boot_artifacts.command_line
    result = boot.boot_ipxe(boot_url + slug + "/boot.ipxe", timeout=900)
    record_property("boot_seconds", round(result.seconds, 1))
    print("qemu (TCG) iPXE boot to the marker took %.1f s" % result.seconds)
    assert result.markers() == [boot_artifacts.marker], result.tail()
    (server,) = http_server.servers
    assert ["/%s/boot.ipxe" % slug, "/%s/kernel" % slug, "/%s/initramfs" % slug] == [
        path for path in server.requests if path.startswith("/" + slug)
    ]


def test_arm64_image_built_provisioned_boots(ansible, registry_tls, boot_artifacts, tmp_path, record_property):
    """arm64: a Debian arm64 kernel and a busybox-static arm64 initramfs, built and pushed by build.yml,
    delivered by provision.yml (provision_architecture: arm64), booted on qemu's arm64 virt machine with the
    kernel line of the delivered boot.ipxe. The marker comes from provision_kernel_args, so it proves that
    the role's own arguments reach the kernel too."""
    kernel = boot.debian_kernel(architecture="arm64")
    initramfs = boot.make_initramfs(str(tmp_path / "initramfs-arm64.gz"), busybox=boot.debian_busybox("arm64"))
    marker = boot_artifacts.marker + "-arm64"
    name = "%s/ironcore/boot-proof-arm64:1.0" % registry_tls.host
    slug = provision_slug(name)
    boot_dir = tmp_path / "boot"
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "build_hosts": {
                "builder": local_host(
                    build_name=name,
                    build_layout=str(tmp_path / "layout"),
                    build_push=True,
                    build_platforms=["baremetal"],
                    build_artifacts=[
                        {
                            "architecture": "arm64",
                            "kernel": kernel,
                            "initramfs": initramfs,
                            "rootfs": boot_artifacts.rootfs,
                            "cmdline": "console=ttyAMA0 panic=-1",
                        }
                    ],
                    **registry_vars("build_", registry_tls),
                )
            },
            "baremetal": {
                "pxe": local_host(
                    provision_boot_dir=str(boot_dir),
                    provision_cache_dir=str(tmp_path / "cache"),
                    provision_boot_url="http://pxe.example.com/boot",
                    provision_architecture="arm64",
                    provision_kernel_args="%s=%s" % (boot.MARKER_PARAMETER, marker),
                )
            },
        },
        dict(provision_name=name, **registry_vars("provision_", registry_tls)),
    )
    rc, built, stderr = ansible.playbook(BUILD, inventory=inventory)
    assert rc == 0, (built, stderr)
    rc, provisioned, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (provisioned, stderr)
    (fetched,) = [r for task, _host, r in outcomes(provisioned)["changed"] if task == "Fetch the image's files"]
    assert fetched["architecture"] == "arm64"

    image_dir = boot_dir / slug
    with open(kernel, "rb") as stream:
        assert (image_dir / "kernel").read_bytes() == stream.read()
    script = boot.parse_ipxe((image_dir / "boot.ipxe").read_text())
    assert script.kernel_url == "http://pxe.example.com/boot/%s/kernel" % slug
    assert script.command_line == "initrd=initramfs console=ttyAMA0 panic=-1 %s=%s" % (boot.MARKER_PARAMETER, marker)
    result = boot.boot_kernel(
        str(image_dir / "kernel"), str(image_dir / "initramfs"), script.command_line, architecture="arm64", timeout=900
    )
    record_property("arm64_boot_seconds", round(result.seconds, 1))
    assert result.markers() == [marker], result.tail()
