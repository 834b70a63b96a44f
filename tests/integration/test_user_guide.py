"""The plays of docs/user-guide.md, run as written against the real registries."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from helpers.ansible import task_results
from helpers.inventory import clean_ansible_env
from helpers.registry import free_port

pytestmark = pytest.mark.integration

GUIDE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "user-guide.md"
)
BLOCK = re.compile(r"<!-- guide-test: (?P<name>[\w-]+) -->\s*```yaml\n(?P<body>.*?)```", re.S)
SHELL_BLOCK = re.compile(r"<!-- guide-test: (?P<name>[\w-]+) -->\s*```sh\n(?P<body>.*?)```", re.S)
COLLECTIONS = os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep)[0]


def guide_plays() -> dict[str, str]:
    with open(GUIDE, encoding="utf-8") as stream:
        return {match.group("name"): match.group("body") for match in BLOCK.finditer(stream.read())}


def guide_shell_blocks() -> dict[str, str]:
    with open(GUIDE, encoding="utf-8") as stream:
        return {match.group("name"): match.group("body") for match in SHELL_BLOCK.finditer(stream.read())}


def test_guide_has_the_tested_plays():
    assert sorted(guide_plays()) == [
        "build",
        "lifecycle",
        "pin",
        "progress",
        "progress-round",
        "push-basic",
        "push-docker-config",
        "push-plain",
        "push-token",
    ]


def test_user_guide_plays_work_as_written(ansible, registry_tls, registry_token, registry_plain, tmp_path):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for name in ("vmlinuz", "initrd", "rootfs.raw"):
        (artifacts / name).write_bytes(name.encode() * 4096)
    docker_config = tmp_path / "docker" / "config.json"
    docker_config.parent.mkdir()
    token_auth = base64.b64encode(("%s:%s" % (registry_token.username, registry_token.password)).encode()).decode()
    docker_config.write_text(json.dumps({"auths": {registry_token.host: {"auth": token_auth}}}))
    variables = {
        "layout": str(tmp_path / "layout"),
        "artifacts": str(artifacts),
        "registry": registry_tls.host,
        "registry_username": registry_tls.username,
        "registry_password": registry_tls.password,
        "registry_ca_cert": registry_tls.registry_args["ca_cert"],
        "token_registry": registry_token.host,
        "token_registry_username": registry_token.username,
        "token_registry_password": registry_token.password,
        "token_registry_ca_cert": registry_token.registry_args["ca_cert"],
        "plain_registry": registry_plain.host,
        "docker_config": str(docker_config),
        "boot_dir": str(tmp_path / "boot"),
    }
    (tmp_path / "boot").mkdir()
    plays = guide_plays()
    digests = set()
    for name in ("build", "push-basic", "push-token", "push-docker-config", "push-plain", "pin", "lifecycle"):
        playbook = tmp_path / ("%s.yml" % name)
        playbook.write_text(plays[name])
        rc, document, stderr = ansible.playbook(str(playbook), extra_vars=variables)
        results = task_results(document)
        assert rc == 0, (name, stderr, [result.get("msg") for _task, _host, result in results])
        assert results and not any(result.get("failed") for _task, _host, result in results), (name, results)
        for _task, _host, result in results:
            if result.get("digest"):
                digests.add(result["digest"])
        assert registry_tls.password not in json.dumps(document) + stderr
    # Every push and the pinned fetch saw the one image the build made.
    assert len(digests) == 1, digests
    assert sorted(os.listdir(tmp_path / "boot"))[-3:] == ["initramfs", "kernel", "rootfs"]
    assert (tmp_path / "boot" / "kernel").read_bytes() == b"vmlinuz" * 4096
    # The lifecycle play moved 1.0 to stable (with its platform names) and freed nothing.
    with open(tmp_path / "layout" / "index.json", "rb") as stream:
        names = {entry["annotations"]["org.opencontainers.image.ref.name"] for entry in json.load(stream)["manifests"]}
    assert "%s/os/gardenlinux:stable-baremetal-amd64" % registry_tls.host in names
    assert not any(name.startswith("%s/os/gardenlinux:1.0" % registry_tls.host) for name in names)


def test_first_real_push_commands_work_as_written(tmp_path):
    """The guide's shell block, pasted into a shell set up as section 0 says; only REGISTRY_PORT is ours."""
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is missing: install it (make system-deps)")
    (commands,) = guide_shell_blocks().values()
    port = free_port()
    env = clean_ansible_env(
        REGISTRY_PORT=str(port),
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    # Its own session, so that whatever the block leaves running (the registry, if it fails half-way)
    # is stopped with it.
    shell = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", commands],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = shell.communicate(timeout=600)
    finally:
        try:
            os.killpg(shell.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    work = tmp_path / "ironcore-first-push"
    assert shell.returncode == 0, stdout[-4000:] + stderr[-4000:]
    assert "failed=0" in stdout and "127.0.0.1:%d" % port in (work / "registry.yml").read_text()
    for fetched, artifact in (("kernel", "vmlinuz"), ("initramfs", "initrd"), ("rootfs", "rootfs.raw")):
        assert (work / "boot" / fetched).read_bytes() == (work / "artifacts" / artifact).read_bytes(), fetched
    # What skopeo printed: the combined index the registry served, one entry per platform.
    (index,) = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert sorted(entry["platform"]["variant"] for entry in index["manifests"]) == ["baremetal", "virtualization"]
    # The registry really stored the pushed blobs.
    assert list((work / "storage").rglob("data"))
