"""The build and provision roles print how far their long transfers are, as ansible-playbook shows it.

One playbook run through a throttled link: the build role pushes (without platform tags), the provision role
fetches for virtualization; both print progress lines while the bytes move, and the provision output names no
task of the other platform.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOTFS_SIZE = 20 * 1024 * 1024
# About four seconds each way: several progress lines at one a second.
RATE = 5 * 1024 * 1024
# Tasks of the baremetal side of the provision role: none may show on a virtualization node.
BAREMETAL_FILES = ("prepare_baremetal.yml", "device.yml", "baremetal.yml", "entry.yml", "retention_baremetal.yml")
VIRTUALIZATION_FILES = ("prepare_virtualization.yml", "virtualization.yml", "retention_virtualization.yml")


def task_names(path):
    with open(path, encoding="utf-8") as stream:
        tasks = yaml.safe_load(stream) or []
    found = []
    for task in tasks:
        found.append(task["name"])
        for key in ("block", "rescue", "always"):
            found.extend(inner["name"] for inner in task.get(key, []))
    return found


def test_roles_print_progress_and_provision_stays_on_its_platform(ansible, registry_plain, fault_proxy, tmp_path):
    rootfs = tmp_path / "rootfs.raw"
    rootfs.write_bytes(os.urandom(ROOTFS_SIZE))
    proxy = fault_proxy(registry_plain)
    proxy.add("throttle", path="/blobs/", times=-1, rate=RATE)
    name = "%s/os/progress:1.0" % proxy.host
    playbook = [
        {
            "name": "Build and push",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "roles": [
                {
                    "role": "ironcore.image.build",
                    "vars": {
                        "build_name": name,
                        "build_layout": str(tmp_path / "layout"),
                        "build_artifacts": [{"architecture": "amd64", "rootfs": str(rootfs)}],
                        "build_platforms": ["virtualization"],
                        "build_push": True,
                        "build_registry_plain_http": True,
                        "build_platform_tags": False,
                        "build_progress_interval": 1,
                    },
                }
            ],
        },
        {
            "name": "Provision",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "roles": [
                {
                    "role": "ironcore.image.provision",
                    "vars": {
                        "provision_name": name,
                        "provision_platform": "virtualization",
                        "provision_architecture": "amd64",
                        "provision_pool_dir": str(tmp_path / "pool"),
                        "provision_cache_dir": str(tmp_path / "cache"),
                        "provision_registry_plain_http": True,
                        "provision_progress_interval": 1,
                    },
                }
            ],
        },
    ]
    path = tmp_path / "progress.yml"
    path.write_text(yaml.safe_dump(playbook))
    # Ansible's own output, as an operator or an AWX job sees it.
    rc, document, stderr = ansible.playbook(
        str(path),
        env={
            "ANSIBLE_STDOUT_CALLBACK": "default",
            "ANSIBLE_PYTHON_INTERPRETER": ansible.env["ANSIBLE_PYTHON_INTERPRETER"],
        },
    )
    stdout = document.get("raw", "")
    assert rc == 0, (stdout, stderr)
    build_part, provision_part = stdout.split("PLAY [Provision]", 1)

    moving = r'"msg": "%s to %s: %s, [\d.]+ of 20\.0 MiB \(\d+ %%\), [\d.]+ MiB/s(, [\d ]+(min \d+ )?s left)?"'
    assert re.search(moving % ("push", re.escape(name), "copy"), build_part), build_part
    assert re.search(r'"msg": "push to %s: finished, 20\.0 MiB in \d+ s' % re.escape(name), build_part), build_part
    fetching = r'"msg": "fetch of %s: download, [\d.]+ of 20\.0 MiB \(\d+ %%\)' % re.escape(name)
    assert re.search(fetching, provision_part), provision_part
    assert re.search(r'"msg": "fetch of %s: finished, 20\.0 MiB in' % re.escape(name), provision_part)

    # Nothing of the baremetal side shows, not even as a skipped task.
    tasks = os.path.join(REPO, "roles", "provision", "tasks")
    shared = {task for filename in VIRTUALIZATION_FILES for task in task_names(os.path.join(tasks, filename))}
    baremetal = {task for filename in BAREMETAL_FILES for task in task_names(os.path.join(tasks, filename))} - shared
    assert len(baremetal) > 10, baremetal
    shown = set(re.findall(r"TASK \[ironcore\.image\.provision : (.*?)\] \*", provision_part))
    assert not shown & baremetal, shown & baremetal
    assert (tmp_path / "pool").is_dir() and os.path.getsize(next((tmp_path / "pool").glob("*.raw"))) == ROOTFS_SIZE

    # build_platform_tags: false pushed the main tag alone.
    with urllib.request.urlopen("http://%s/v2/os/progress/tags/list" % registry_plain.host) as answer:
        assert json.load(answer)["tags"] == ["1.0"]
