"""The provision role's stable boot entry on a PXE server, served over HTTP by a real server: two releases, then
rollbacks, each served in turn from one URL; the second release downloads none of the files it shares with the
first; retention keeps what the entry points to; a rollback with nothing to go back to fails in one line."""

from __future__ import annotations

import hashlib
import os
import urllib.request

import pytest
from helpers.boot import parse_ipxe
from helpers.inventory import failures_by_host, local_host, outcomes, provision_slug, write_inventory

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROVISION = os.path.join(REPO, "playbooks", "provision.yml")
REPOSITORY = "registry.example.com/os/entry"
NAMES = ["%s:%d" % (REPOSITORY, release) for release in (1, 2, 3)]
# Worked out independently of the role: last element of the repository, its hash, "-current".
ENTRY = "entry-%s-current" % hashlib.sha256(REPOSITORY.encode()).hexdigest()[:8]


def build_releases(ansible, layout, directory):
    """Three releases with the same kernel and initramfs and a rootfs of their own; role -> content per name."""
    shared = {role: ("%s shared by every release\n" % role).encode() * 300 for role in ("kernel", "initramfs")}
    releases = {}
    for release, name in enumerate(NAMES, start=1):
        files = dict(shared, rootfs=("rootfs of release %d\n" % release).encode() * 500)
        artifact = {"architecture": "amd64", "cmdline": "console=ttyS0 release=%d" % release}
        for role, content in files.items():
            path = directory / ("%s-%d" % (role, release))
            path.write_bytes(content)
            artifact[role] = str(path)
        result = ansible.module(
            "ironcore.image.ironcore_image_build", {"layout": layout, "name": name, "artifacts": [artifact]}
        )
        assert result.get("failed") is not True, result
        releases[name] = files
    return releases


def get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def served_release(entry_url):
    """The release number the entry serves, after checking that every file it names is served as built."""
    script = parse_ipxe(get(entry_url).decode())
    release = int(script.command_line.rsplit("release=", 1)[1])
    return release, script


def task_result(document, task, host="pxe"):
    (found,) = [
        result
        for name, who, result in outcomes(document)["changed"] + outcomes(document)["ok"]
        if name == task and who == host
    ]
    return found


def test_stable_entry_two_releases_rollback_and_retention(ansible, http_server, tmp_path):
    layout = str(tmp_path / "layout")
    releases = build_releases(ansible, layout, tmp_path)
    # A real HTTP server (it follows the current link, as nginx does) in front of the boot directory.
    boot_dir = tmp_path / "pxe"
    boot_url = "http://127.0.0.1:%d/pxe" % http_server(str(tmp_path))
    entry_url = "%s/%s/boot.ipxe" % (boot_url, ENTRY)
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "baremetal": {
                "pxe": local_host(
                    provision_boot_dir=str(boot_dir),
                    provision_boot_url=boot_url,
                    provision_cache_dir=str(tmp_path / "cache"),
                    provision_layout=layout,
                )
            }
        },
    )

    def provision(name, **extra):
        rc, document, stderr = ansible.playbook(
            PROVISION, inventory=inventory, extra_vars=dict(provision_name=name, **extra)
        )
        assert rc == 0, (failures_by_host(document), stderr)
        return document

    def check_served(release):
        number, script = served_release(entry_url)
        assert number == release
        slug = provision_slug(NAMES[release - 1])
        assert script.kernel_url == "%s/%s/kernel" % (boot_url, slug)
        assert get(script.kernel_url) == releases[NAMES[release - 1]]["kernel"]
        assert [get(url) for url in script.initrd_urls] == [releases[NAMES[release - 1]]["initramfs"]]
        # The current link names the same version's directory.
        assert get("%s/%s/current/rootfs" % (boot_url, ENTRY)) == releases[NAMES[release - 1]]["rootfs"]
        assert os.readlink(boot_dir / ENTRY / "current") == "../%s" % slug

    document = provision(NAMES[0])
    facts = task_result(document, "Tell where the stable boot entry is")["ansible_facts"]
    assert facts["provision_boot_entry"] == str(boot_dir / ENTRY / "boot.ipxe")
    assert facts["provision_boot_entry_url"] == entry_url
    first = task_result(document, "Fetch the image's files")
    assert first["bytes_downloaded"] == sum(len(content) for content in releases[NAMES[0]].values())
    check_served(1)

    # The second release: only its rootfs is downloaded; kernel and initramfs are the first release's files.
    document = provision(NAMES[1])
    second = task_result(document, "Fetch the image's files")
    assert second["bytes_downloaded"] == len(releases[NAMES[1]]["rootfs"])
    for role in ("kernel", "initramfs"):
        assert second["files"][role]["changed"] is False
        assert second["files"][role]["delta"] == {"used": False, "reason": "nothing was downloaded"}
        old, new = (os.stat(boot_dir / provision_slug(name) / role) for name in NAMES[:2])
        assert (old.st_ino, old.st_dev) == (new.st_ino, new.st_dev), role
    facts = task_result(document, "Tell where the stable boot entry is")["ansible_facts"]
    assert facts["provision_boot_entry_url"] == entry_url
    check_served(2)

    # Rollback: the entry serves the first release again, and nothing is fetched or removed.
    before = sorted(os.listdir(boot_dir))
    for _again in range(2):
        document = provision(NAMES[1], provision_rollback=True)
        ran = {name for name, _host, _result in outcomes(document)["changed"] + outcomes(document)["ok"]}
        assert "Fetch the image's files" not in ran and "Resolve the image for this node (reads only)" not in ran
        check_served(1)
        assert sorted(os.listdir(boot_dir)) == before
    # Run again, the same rollback changes nothing.
    assert outcomes(document)["changed"] == [], outcomes(document)["changed"]
    # Forward again, by naming the version (its tag).
    provision(NAMES[1], provision_rollback="2")
    check_served(2)
    provision(NAMES[1], provision_rollback=provision_slug(NAMES[0]))
    check_served(1)

    # A third release: retention keeps two versions and what the entry points to; the first release goes.
    document = provision(NAMES[2])
    third = task_result(document, "Fetch the image's files")
    assert third["bytes_downloaded"] == len(releases[NAMES[2]]["rootfs"])
    check_served(3)
    assert sorted(os.listdir(boot_dir)) == sorted([ENTRY] + [provision_slug(name) for name in NAMES[1:]])
    # The kernel the first release's directory held is still served by the releases that share it.
    assert get("%s/%s/kernel" % (boot_url, provision_slug(NAMES[2]))) == releases[NAMES[2]]["kernel"]

    # Keep one: the second release goes too, and a rollback has nothing to go back to.
    provision(NAMES[2], provision_keep_versions=1)
    assert sorted(os.listdir(boot_dir)) == sorted([ENTRY, provision_slug(NAMES[2])])
    check_served(3)
    # The files it shared with the versions now gone are its own; a second run changes nothing.
    document = provision(NAMES[2], provision_keep_versions=1)
    assert outcomes(document)["changed"] == [], outcomes(document)["changed"]
    assert task_result(document, "Fetch the image's files")["bytes_downloaded"] == 0
    rc, document, stderr = ansible.playbook(
        PROVISION, inventory=inventory, extra_vars={"provision_name": NAMES[2], "provision_rollback": True}
    )
    assert rc != 0
    assert failures_by_host(document) == {
        "pxe": (
            "Stop when there is no version to roll back to",
            "provision_rollback: no version of %s earlier than %s is kept here (kept: %s); nothing was changed"
            % (REPOSITORY, NAMES[2], NAMES[2]),
        )
    }, stderr
    check_served(3)


def test_rollback_refusals_are_one_line_and_change_nothing(ansible, layout_image, tmp_path):
    boot_url = "http://pxe.example.com/boot"
    delivered_dir = tmp_path / "delivered"

    def node(boot_dir, **extra):
        return local_host(
            provision_boot_dir=str(boot_dir),
            provision_boot_url=boot_url,
            provision_cache_dir=str(boot_dir) + "-cache",
            provision_layout=layout_image.layout,
            provision_name=layout_image.name,
            **extra,
        )

    # One version delivered, so a rollback has a record to read and nothing earlier in it.
    inventory = write_inventory(str(tmp_path / "deliver.yml"), {"baremetal": {"pxe": node(delivered_dir)}})
    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (failures_by_host(document), stderr)
    repository = layout_image.name.rsplit(":", 1)[0]

    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "baremetal": {
                "never-delivered": node(tmp_path / "empty", provision_rollback=True),
                "unknown-version": node(delivered_dir, provision_rollback="0.9"),
            },
        },
    )
    before = sorted(os.listdir(delivered_dir))
    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc != 0
    assert failures_by_host(document) == {
        "never-delivered": (
            "Stop when there is no version to roll back to",
            "provision_rollback: nothing of %s was delivered to %s by this role; nothing was changed"
            % (repository, tmp_path / "empty"),
        ),
        "unknown-version": (
            "Stop when there is no version to roll back to",
            "provision_rollback: 0.9 is not a version of %s kept here (kept: %s); nothing was changed"
            % (repository, layout_image.name),
        ),
    }, stderr
    assert outcomes(document)["changed"] == []
    assert not (tmp_path / "empty").exists()
    assert sorted(os.listdir(delivered_dir)) == before

    # A hypervisor has no boot entry to switch.
    inventory = write_inventory(
        str(tmp_path / "hv.yml"), {"hypervisors": {"hv": node(tmp_path / "pool", provision_rollback=True)}}
    )
    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc != 0
    assert failures_by_host(document) == {
        "hv": (
            "Check the variables that depend on the platform",
            "provision_rollback is for provision_platform=baremetal only: it switches the stable boot entry",
        ),
    }, stderr
