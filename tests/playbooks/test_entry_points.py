"""The ways people start the playbooks: from a checkout with the documented example inventory, by name from
an installed collection, and the site example inventory's variables against the roles' argument specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers.ansible import TESTS
from helpers.inventory import clean_ansible_env, local_host, outcomes, provision_slug, tool, write_inventory

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "docs", "examples")


def run_playbook(arguments, cwd, **env):
    """ansible-playbook as a user starts it: no ANSIBLE_* settings but our results callback."""
    run_env = clean_ansible_env(
        ANSIBLE_STDOUT_CALLBACK="results_json",
        ANSIBLE_CALLBACK_PLUGINS=os.path.join(TESTS, "callback_plugins"),
        **env,
    )
    proc = subprocess.run(
        [tool("ansible-playbook"), *arguments], cwd=cwd, env=run_env, capture_output=True, text=True, check=False
    )
    try:
        document = json.loads(proc.stdout)
    except ValueError:
        document = {}
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return document


def test_local_example_from_the_checkout_as_documented(tmp_path):
    # `make demo` writes the sample artifacts; here into a temporary directory instead of .build/demo.
    demo = tmp_path / "demo"
    demo_command = ["-i", "localhost,", "-c", "local", "playbooks/demo.yml", "-e", "demo_dir=%s" % demo]
    run_playbook(demo_command, cwd=REPO, ANSIBLE_PYTHON_INTERPRETER=sys.executable)  # as the Makefile does
    # The example's two directory variables point into .build; the test keeps its output apart.
    overrides = ["-e", "example_artifacts_dir=%s" % (demo / "artifacts"), "-e", "example_output_dir=%s" % tmp_path]
    inventory = ["-i", "docs/examples/local/hosts.yml"]

    run_playbook([*inventory, "playbooks/build.yml", *overrides], cwd=REPO)
    first = run_playbook([*inventory, "playbooks/provision.yml", *overrides], cwd=REPO)
    assert {host for _task, host, _result in outcomes(first)["changed"]} == {"pxe-server", "hypervisor"}
    slug = provision_slug("demo.example.com/os/sample:1.0")
    image_dir = tmp_path / "boot" / slug
    assert sorted(n for n in os.listdir(image_dir) if not n.startswith(".")) == [
        "boot.ipxe",
        "initramfs",
        "kernel",
        "rootfs",
    ]
    assert (image_dir / "kernel").read_bytes() == (demo / "artifacts" / "amd64" / "vmlinuz").read_bytes()
    assert (
        "kernel http://localhost:8080/%s/kernel initrd=initramfs console=ttyS0\n" % slug
        in (image_dir / "boot.ipxe").read_text()
    )
    disk = tmp_path / "images" / ("%s.qcow2" % slug)
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True, check=True).stdout
    )
    assert info["format"] == "qcow2"

    again = run_playbook([*inventory, "playbooks/provision.yml", *overrides], cwd=REPO)
    assert outcomes(again)["changed"] == []


def test_local_example_paths_are_printed_without_dot_dot():
    message = json.dumps({"msg": "{{ example_artifacts_dir }} {{ example_output_dir }}"})
    proc = subprocess.run(
        [
            tool("ansible"),
            "-i",
            "docs/examples/local/hosts.yml",
            "build-host",
            "-m",
            "ansible.builtin.debug",
            "-a",
            message,
        ],
        cwd=REPO,
        env=clean_ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = "%s/.build/demo/artifacts %s/.build/example" % (REPO, REPO)
    assert '"msg": "%s"' % expected in proc.stdout, proc.stdout


def test_installed_collection_playbooks_by_name(installed_collections, tmp_path):
    rootfs = tmp_path / "rootfs.raw"
    rootfs.write_bytes(b"root file system of the by-name test\n" * 100)
    layout = tmp_path / "layout"
    name = "registry.example.com/os/by-name:3"
    inventory = write_inventory(
        str(tmp_path / "hosts.yml"),
        {
            "build_hosts": {"builder": local_host()},
            "hypervisors": {
                "hv": local_host(provision_pool_dir=str(tmp_path / "pool"), provision_cache_dir=str(tmp_path / "cache"))
            },
        },
        {
            "build_name": name,
            "build_layout": str(layout),
            "build_platforms": ["virtualization"],
            "build_artifacts": [{"architecture": "amd64", "rootfs": str(rootfs)}],
            "provision_name": name,
            "provision_layout": str(layout),
        },
    )
    # A directory without ansible.cfg, and only the installed collection on the collections path.
    env = {"ANSIBLE_COLLECTIONS_PATH": installed_collections, "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false"}
    built = run_playbook(["-i", inventory, "ironcore.image.build"], cwd=str(tmp_path), **env)
    # Nothing else could have provided the roles: no ansible.cfg here, one path on ANSIBLE_COLLECTIONS_PATH.
    assert [
        host for task, host, _result in outcomes(built)["changed"] if task == "Build the image into the layout"
    ] == ["builder"]
    run_playbook(["-i", inventory, "ironcore.image.provision"], cwd=str(tmp_path), **env)
    assert (tmp_path / "pool" / ("%s.raw" % provision_slug(name))).read_bytes() == rootfs.read_bytes()


def argument_spec(role):
    with open(os.path.join(REPO, "roles", role, "meta", "argument_specs.yml")) as stream:
        return yaml.safe_load(stream)["argument_specs"]["main"]["options"]


@pytest.mark.parametrize(
    ("group", "role", "provided"),
    [
        ("build_hosts", "build", {}),
        ("baremetal", "provision", {"provision_platform": "baremetal"}),
        ("hypervisors", "provision", {"provision_platform": "virtualization"}),
    ],
)
def test_site_example_inventory_satisfies_the_argument_specs(group, role, provided, tmp_path):
    """validate_argument_spec runs on the controller: the site's hosts need not exist."""
    arguments = json.dumps({"argument_spec": argument_spec(role), "provided_arguments": provided})
    module = ["-m", "ansible.builtin.validate_argument_spec", "-a", arguments, "-o"]
    proc = subprocess.run(
        [tool("ansible"), "-i", os.path.join(EXAMPLES, "inventory", "hosts.yml"), group, *module],
        env=clean_ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "The arg spec validation passed" in proc.stdout
