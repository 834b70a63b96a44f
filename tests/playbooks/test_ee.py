"""The execution environment, built for real with podman and no network inside the build (tools/build_ee.py,
what `make ee` runs), then used the way AWX's workers use it: ansible-runner with process isolation runs
playbooks/build.yml (build, push, sign with provenance and SBOM: debugfs inside the EE) and
playbooks/provision.yml (fetch, verify, deliver) inside containers of that image, against a registry on the
host's network. What was delivered is read back on the host with sha256sum.

Podman works in storage of its own under the test's temporary directory, so the user's images are never
touched; the Debian base tarball and the wheels are cached in .build/ee/test between sessions."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import typing as t

import pytest
import yaml
from helpers.inventory import clean_ansible_env, provision_slug, tool
from helpers.signing import make_key, skopeo_bytes, skopeo_raw

# One worker builds the EE once into .build/ee/test and runs both tests with it.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ee")]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = "localhost/ironcore-image-ee:test"
CYCLONEDX = "application/vnd.cyclonedx+json"
IN_TOTO = "application/vnd.in-toto+json"
# An ext4 rootfs with a dpkg status, so the SBOM has something to list (read with debugfs inside the EE).
DPKG_STATUS = """Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4+deb12u5

Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u4
"""


class Podman:
    """podman with the test's own storage and this host's settings, for this script and ansible-runner."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def __call__(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, check=False, timeout=timeout
        )


@pytest.fixture(scope="module")
def ee(tmp_path_factory) -> t.Iterator[Podman]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (make system-deps installs it)")
    storage = tmp_path_factory.mktemp("podman-storage")
    (storage / "storage.conf").write_text(
        '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' % (storage / "root", storage / "run")
    )
    build_dir = os.path.join(REPO, ".build", "ee", "test")
    env = clean_ansible_env(CONTAINERS_STORAGE_CONF=str(storage / "storage.conf"))
    env.pop("CONTAINERS_CONF", None)
    script = [sys.executable, os.path.join(REPO, "tools", "build_ee.py"), "--tag", IMAGE, "--build-dir", build_dir]
    conf = subprocess.run([*script, "--podman-conf-only"], env=env, capture_output=True, text=True, check=True)
    if conf.stdout.strip():
        env["CONTAINERS_CONF"] = conf.stdout.strip()
    podman = Podman(env)
    info = podman("info")
    if info.returncode != 0:
        pytest.skip("podman cannot run here: %s" % (info.stderr.strip().splitlines() or ["podman info failed"])[-1])
    try:
        built = subprocess.run(script, env=env, capture_output=True, text=True, check=False, timeout=1200)
        assert built.returncode == 0, built.stdout + built.stderr
        print(built.stdout.strip())
        yield podman
    finally:
        podman("rmi", "--all", "--force")


def test_ee_holds_the_collection_its_requirements_and_tools(ee):
    # No network in the container: everything it needs is in the image.
    check = (
        "ansible-doc ironcore.image.ironcore_image_fetch | head -1"
        " && python3 -c 'import jsonschema, requests, cryptography, xxhash, ansible_runner; print(\"imports ok\")'"
        " && debugfs -V 2>&1 | head -1 && qemu-img --version | head -1 && command -v ssh"
    )
    proc = ee("run", "--rm", "--network", "none", IMAGE, "sh", "-c", check)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ironcore.image.ironcore_image_fetch" in proc.stdout
    assert "imports ok" in proc.stdout
    assert "debugfs" in proc.stdout and "qemu-img version" in proc.stdout
    # Lean: no compiler, no pip or apt cache.
    lean = ee(
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "ls /var/lib/apt/lists /root/.cache 2>&1; command -v gcc cc || true",
    )
    assert lean.returncode == 0, lean.stderr
    assert "gcc" not in lean.stdout and "/cc" not in lean.stdout
    assert "Packages" not in lean.stdout


def ext4_rootfs(directory) -> str:
    tree = directory / "tree"
    (tree / "var" / "lib" / "dpkg").mkdir(parents=True)
    (tree / "var" / "lib" / "dpkg" / "status").write_text(DPKG_STATUS)
    image = str(directory / "rootfs.ext4")
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), image, "2M"], check=True, timeout=60)
    return image


def events_of(private, ident: str) -> list[dict[str, t.Any]]:
    events = []
    for path in glob.glob(os.path.join(str(private), "artifacts", ident, "job_events", "*.json")):
        with open(path) as stream:
            events.append(json.load(stream))
    return sorted(events, key=lambda event: event["counter"])


def ok_result(events: list[dict[str, t.Any]], task: str) -> dict[str, t.Any]:
    (event,) = [e for e in events if e["event"] == "runner_on_ok" and e["event_data"].get("task") == task]
    result: dict[str, t.Any] = event["event_data"]["res"]
    return result


def sha256sum(path: str) -> str:
    proc = subprocess.run(["sha256sum", path], capture_output=True, text=True, check=True)
    return "sha256:" + proc.stdout.split()[0]


def test_runner_runs_build_and_provision_inside_the_ee(ee, registry_plain, tmp_path):
    # Everything the jobs read or write lies under `work`, mounted at the same path inside the containers.
    work = tmp_path / "work"
    work.mkdir()
    private = tmp_path / "private"
    (private / "project").mkdir(parents=True)
    shutil.copytree(os.path.join(REPO, "playbooks"), private / "project" / "playbooks")
    shutil.copy(os.path.join(REPO, "ansible.cfg"), private / "project" / "ansible.cfg")
    (private / "env").mkdir()
    (private / "inventory").mkdir()
    local = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    (private / "inventory" / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "build_hosts": {"hosts": {"builder": local}},
                        "baremetal": {"hosts": {"pxe": local}},
                    }
                }
            }
        )
    )
    key = make_key(work, "ee")
    artifact = {"architecture": "amd64", "cmdline": "console=ttyS0", "rootfs": ext4_rootfs(work)}
    for role in ("kernel", "initramfs"):
        (work / role).write_bytes(("%s of the EE test\n" % role).encode() * 50)
        artifact[role] = str(work / role)
    reference = "%s/ee/os:1.0" % registry_plain.host
    boot = work / "boot"
    extravars = {
        "build_name": "registry.example.com/ee/os:1.0",
        "build_destination": reference,
        "build_artifacts": [artifact],
        "build_platforms": ["baremetal"],
        "build_layout": str(work / "layout"),
        "build_push": True,
        "build_registry_plain_http": True,
        "build_sign_key": key["key"],
        "provision_name": reference,
        "provision_architecture": "amd64",
        "provision_registry_plain_http": True,
        "provision_boot_dir": str(boot),
        "provision_cache_dir": str(work / "cache"),
        "provision_boot_url": "http://pxe.example.com/boot",
        "provision_signature_keys": [key["pub"]],
        "provision_require_provenance": True,
    }
    (private / "env" / "extravars").write_text(yaml.safe_dump(extravars))

    for ident, playbook in (("build", "playbooks/build.yml"), ("provision", "playbooks/provision.yml")):
        command = [tool("ansible-runner"), "run", str(private), "--playbook", playbook, "--ident", ident]
        command += ["--process-isolation", "--process-isolation-executable", "podman", "--container-image", IMAGE]
        command += ["--container-volume-mount", "%s:%s" % (work, work), "--container-option=--network=host"]
        proc = subprocess.run(command, env=ee.env, capture_output=True, text=True, check=False, timeout=600)
        status = (private / "artifacts" / ident / "status").read_text().strip()
        assert (proc.returncode, status) == (0, "successful"), proc.stdout[-4000:] + proc.stderr[-2000:]

    build_events = events_of(private, "build")
    signed = ok_result(build_events, "Sign the image where it was put (the registry when pushed, else the layout)")
    assert signed["sbom"]["packages"] == 2, signed
    # The registry holds the signed index and its provenance and SBOM referrers (tag schema: sha256-<hex>).
    index_bytes = skopeo_bytes(registry_plain, reference)
    index = json.loads(index_bytes)
    digest = ok_result(build_events, "Build the image into the layout")["digest"]
    assert "sha256:" + hashlib.sha256(index_bytes).hexdigest() == digest
    referrers = skopeo_raw(registry_plain, "%s/ee/os:%s" % (registry_plain.host, digest.replace(":", "-")))
    assert {CYCLONEDX, IN_TOTO} <= {entry.get("artifactType") for entry in referrers["manifests"]}

    # Delivered on the host: each file's sha256sum is the digest of the layer it came from.
    layers = set()
    for entry in index["manifests"]:
        manifest = skopeo_raw(registry_plain, "%s/ee/os@%s" % (registry_plain.host, entry["digest"]))
        layers |= {layer["digest"] for layer in manifest.get("layers", [])}
    directory = boot / provision_slug(reference)
    delivered = {role: sha256sum(str(directory / role)) for role in ("kernel", "initramfs", "rootfs")}
    assert set(delivered.values()) <= layers
    originals = {sha256sum(artifact[role]) for role in ("kernel", "initramfs", "rootfs")}
    assert set(delivered.values()) == originals
