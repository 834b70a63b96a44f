"""playbooks/prepare.yml over real SSH: Debian packages (skipped when present) and a virtualenv with the
collection's Python requirements from PyPI; then playbooks/provision.yml runs the modules on that node with
the virtualenv's Python, against a real registry."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from helpers.ansible import TESTS
from helpers.inventory import clean_ansible_env, local_host, outcomes, provision_slug, tool, write_inventory

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREPARE = os.path.join(REPO, "playbooks", "prepare.yml")
PROVISION = os.path.join(REPO, "playbooks", "provision.yml")


def build_and_push(ansible, registry, directory):
    """A small amd64 image, built into a layout and pushed to the registry; returns (name, contents)."""
    name = "%s/ironcore/prepared:1.0" % registry.host
    contents = {role: ("%s for a prepared node\n" % role).encode() * 500 for role in ("kernel", "initramfs", "rootfs")}
    artifact = {"architecture": "amd64", "cmdline": "console=ttyS0"}
    for role, content in contents.items():
        (directory / role).write_bytes(content)
        artifact[role] = str(directory / role)
    layout = str(directory / "layout")
    built = ansible.module(
        "ironcore.image.ironcore_image_build", {"layout": layout, "name": name, "artifacts": [artifact]}
    )
    assert built.get("failed") is not True, built
    pushed = ansible.module(
        "ironcore.image.ironcore_image_push", dict(registry.registry_args, layout=layout, name=name)
    )
    assert pushed.get("failed") is not True, pushed
    return name, contents


def test_prepared_node_runs_the_modules_from_its_virtualenv(ansible, registry_plain, sshd, tmp_path):
    name, contents = build_and_push(ansible, registry_plain, tmp_path)
    venv = tmp_path / "node" / "venv"
    python = venv / "bin" / "python"
    boot_dir = tmp_path / "boot"
    node = dict(
        sshd.host_vars(),
        # What the inventory says once the node is prepared: prepare.yml must not be stopped by it.
        ansible_python_interpreter=str(python),
        # Debian's own Python, as on a fresh host (discovery could find another one on a test machine).
        prepare_python_interpreter="/usr/bin/python3",
        node_venv=str(venv),
        node_qcow2=True,
        provision_boot_dir=str(boot_dir),
        provision_boot_url="http://pxe.example.com/boot/",
    )
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {"baremetal": {"node": node}},
        {
            "provision_name": name,
            "provision_registry_plain_http": True,
            # The role's record of delivered versions stays in the test's own directory.
            "provision_cache_dir": str(tmp_path / "cache"),
        },
    )

    rc, checked, stderr = ansible.playbook(PREPARE, inventory=inventory, check=True)
    assert rc == 0, (outcomes(checked)["failed"], stderr)
    assert not venv.exists(), "check mode created the virtualenv"

    commands_before = sshd.commands_run()
    rc, prepared, stderr = ansible.playbook(PREPARE, inventory=inventory)
    assert rc == 0, (outcomes(prepared)["failed"], stderr)
    assert sshd.commands_run() > commands_before, "the node was not reached over SSH"
    done = outcomes(prepared)
    # Every wanted Debian package is on this machine already: nothing to install, no apt-get update.
    assert ("Install the missing Debian packages", "node") in [(task, host) for task, host, _r in done["skipped"]]
    assert [task for task, _host, _r in done["changed"]] == [
        "Make the virtualenv's directory, writable by its owner only",
        "Install the collection's Python requirements into the virtualenv",
    ]

    # An independent look: a real virtualenv whose Python imports what the modules need.
    assert (venv / "pyvenv.cfg").is_file()
    proc = subprocess.run(
        [str(python), "-c", "import jsonschema, requests, cryptography, xxhash"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr

    rc, again, stderr = ansible.playbook(PREPARE, inventory=inventory)
    assert rc == 0, (outcomes(again)["failed"], stderr)
    assert outcomes(again)["changed"] == [], outcomes(again)["changed"]

    rc, provisioned, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (outcomes(provisioned)["failed"], stderr)
    fetched = [r for task, _host, r in outcomes(provisioned)["changed"] if task == "Fetch the image's files"]
    assert len(fetched) == 1, outcomes(provisioned)
    for role, content in contents.items():
        path = boot_dir / provision_slug(name) / role
        assert path.read_bytes() == content, role


def test_installed_collection_reads_its_own_requirements(installed_collections, tmp_path):
    """From a tarball install, by name, outside any checkout: the role finds meta/requirements.txt."""
    venv = tmp_path / "venv"
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {"hypervisors": {"hv": local_host(node_venv=str(venv), prepare_python_interpreter="/usr/bin/python3")}},
    )
    env = clean_ansible_env(
        ANSIBLE_COLLECTIONS_PATH=installed_collections,
        ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
        ANSIBLE_STDOUT_CALLBACK="results_json",
        ANSIBLE_CALLBACK_PLUGINS=os.path.join(TESTS, "callback_plugins"),
    )
    proc = subprocess.run(
        [tool("ansible-playbook"), "-i", inventory, "ironcore.image.prepare", "--check"],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (said,) = [
        r for task, _host, r in outcomes(json.loads(proc.stdout))["ok"] if task == "Say which interpreter to use"
    ]
    with open(os.path.join(REPO, "meta", "requirements.txt")) as stream:
        wanted = [line.split("#")[0].strip() for line in stream if line.split("#")[0].strip()]
    assert said["msg"] == "ansible_python_interpreter: %s/bin/python (with %s)" % (venv, ", ".join(wanted))
    assert not venv.exists()
