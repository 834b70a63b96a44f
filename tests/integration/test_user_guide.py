"""The plays of docs/user-guide.md, run as written against the real registries."""

from __future__ import annotations

import base64
import hashlib
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
from helpers.registry import blob_data_path, free_port, start_registry
from helpers.signing import openssl_verifies, sig_tag, skopeo_raw

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
        "delta",
        "fetch-signed",
        "lifecycle",
        "mirror",
        "pin",
        "promote",
        "push-basic",
        "push-docker-config",
        "push-plain",
        "push-token",
        "sign",
    ]
    assert sorted(guide_shell_blocks()) == ["first-push", "signing-key"]


def test_guide_sections_are_numbered_in_order_with_the_reference_last():
    with open(GUIDE, encoding="utf-8") as stream:
        headings = re.findall(r"^## (.*)$", stream.read(), re.M)
    numbers = [int(heading.split(".", 1)[0]) for heading in headings[:-1]]
    assert numbers == list(range(len(numbers))), headings
    assert headings[-1] == "Reference"


def run_play(ansible, tmp_path, name: str, variables: dict, expect_failure: bool = False) -> list:
    """Run the guide's play `name` as written; its task results."""
    playbook = tmp_path / ("%s.yml" % name)
    playbook.write_text(guide_plays()[name])
    rc, document, stderr = ansible.playbook(str(playbook), extra_vars=variables)
    results = task_results(document)
    if expect_failure:
        assert rc != 0, (name, results)
        return results
    assert rc == 0, (name, stderr, [result.get("msg") for _task, _host, result in results])
    assert results and not any(result.get("failed") for _task, _host, result in results), (name, results)
    assert variables["registry_password"] not in json.dumps(document) + stderr
    return results


def make_signing_key(tmp_path, passphrase: str) -> dict[str, str]:
    """The guide's openssl commands, run as written in `tmp_path`; the key's files and printed fingerprint."""
    env = dict(os.environ, SIGNING_PASSPHRASE=passphrase)
    shell = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", guide_shell_blocks()["signing-key"]],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shell.returncode == 0, shell.stderr
    assert not (tmp_path / "signing.ec.pem").exists()
    assert (tmp_path / "signing-key.pem").stat().st_mode & 0o077 == 0
    assert "ENCRYPTED PRIVATE KEY" in (tmp_path / "signing-key.pem").read_text()
    return {
        "key": str(tmp_path / "signing-key.pem"),
        "pub": str(tmp_path / "signing-pub.pem"),
        "fingerprint": "SHA256:" + shell.stdout.split()[0],
    }


def signers(registry, repository: str, digest: str, tmp_path, public: str) -> list[str]:
    """The repositories the `.sig` of `digest` names, each signature checked by openssl against `public`."""
    manifest = skopeo_raw(registry, "%s/%s:%s" % (registry.host, repository, sig_tag(digest)))
    named = []
    for layer in manifest["layers"]:
        with open(blob_data_path(registry.storage, layer["digest"]), "rb") as stream:
            payload = stream.read()
        assert openssl_verifies(tmp_path, public, payload, layer["annotations"]["dev.cosignproject.cosign/signature"])
        body = json.loads(payload)
        assert body["critical"]["image"]["docker-manifest-digest"] == digest
        named.append(body["critical"]["identity"]["docker-reference"])
    return named


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
    digests = set()
    for name in ("build", "push-basic", "push-token", "push-docker-config", "push-plain", "pin", "lifecycle"):
        for _task, _host, result in run_play(ansible, tmp_path, name, variables):
            if result.get("digest"):
                digests.add(result["digest"])
    # Every push and the pinned fetch saw the one image the build made.
    assert len(digests) == 1, digests
    (digest,) = digests
    assert sorted(os.listdir(tmp_path / "boot"))[-3:] == ["initramfs", "kernel", "rootfs"]
    assert (tmp_path / "boot" / "kernel").read_bytes() == b"vmlinuz" * 4096
    # The lifecycle play moved 1.0 to stable (with its platform names) and freed nothing.
    with open(tmp_path / "layout" / "index.json", "rb") as stream:
        names = {entry["annotations"]["org.opencontainers.image.ref.name"] for entry in json.load(stream)["manifests"]}
    assert "%s/os/gardenlinux:stable-baremetal-amd64" % registry_tls.host in names
    assert not any(name.startswith("%s/os/gardenlinux:1.0" % registry_tls.host) for name in names)

    # 6. Signing: the node refuses the image until it is signed, then takes it.
    key = make_signing_key(tmp_path, "guide passphrase")
    variables.update(
        signing_key=key["key"],
        signing_public_key=key["pub"],
        signing_passphrase="guide passphrase",
        mirror_registry=registry_plain.host,
        node_dir=str(tmp_path / "node"),
    )
    ((_task, _host, refused),) = [
        entry for entry in run_play(ansible, tmp_path, "fetch-signed", variables, True) if entry[2].get("failed")
    ]
    assert "is unsigned" in refused["msg"], refused
    run_play(ansible, tmp_path, "sign", variables)
    assert signers(registry_tls, "os/gardenlinux", digest, tmp_path, key["pub"]) == [
        "%s/os/gardenlinux" % registry_tls.host
    ]
    results = run_play(ansible, tmp_path, "fetch-signed", variables)
    (fetched,) = [result for _task, _host, result in results if "signatures" in result]
    assert fetched["signatures"][digest] == key["fingerprint"]
    assert fetched["provenance"]["verified"] and fetched["provenance"]["keyid"] == key["fingerprint"]
    # The guide's passphrase never shows.
    assert "guide passphrase" not in json.dumps(results)

    # 7. Promotion: the carried signature and the production one, both by the key, at the production name.
    run_play(ansible, tmp_path, "promote", variables)
    assert sorted(signers(registry_token, "prod/gardenlinux", digest, tmp_path, key["pub"])) == sorted(
        ["%s/os/gardenlinux" % registry_tls.host, "%s/prod/gardenlinux" % registry_token.host]
    )
    # The provenance travelled as a referrer of the index (the tag schema: distribution has no referrers API).
    referrers = skopeo_raw(registry_token, "%s/prod/gardenlinux:%s" % (registry_token.host, digest.replace(":", "-")))
    assert "application/vnd.in-toto+json" in [entry.get("artifactType") for entry in referrers["manifests"]]
    for _task, _host, result in run_play(ansible, tmp_path, "promote", variables):
        assert not result.get("changed"), result

    # 8. Mirrors: the rootfs came from the site's registry; the origin only resolved the tag.
    results = run_play(ansible, tmp_path, "mirror", variables)
    (fetched,) = [result for _task, _host, result in results if "bytes_from_origin" in result]
    sources = fetched["files"]["rootfs"]["sources"]
    assert [source["url"] for source in sources] == ["http://%s" % registry_plain.host], sources
    assert (tmp_path / "node" / "rootfs").read_bytes() == b"rootfs.raw" * 4096
    assert fetched["bytes_from_origin"] < 40960, fetched["bytes_from_origin"]
    assert skopeo_raw(registry_plain, "%s/os/gardenlinux:%s" % (registry_plain.host, sig_tag(digest)))["layers"]


def test_user_guide_delta_play_fetches_only_what_changed(ansible, tmp_path):
    """Sections 2 to 4 with a rootfs large enough for a block index, then section 9's release 1.1."""
    registry = start_registry("guide-delta", str(tmp_path / "registry"), tls=True, auth="htpasswd")
    try:
        old, new = tmp_path / "artifacts", tmp_path / "artifacts-1.1"
        old.mkdir()
        new.mkdir()
        rootfs = bytearray(os.urandom(64 * 1024 * 1024))
        for directory in (old, new):
            for name in ("vmlinuz", "initrd"):
                (directory / name).write_bytes(name.encode() * 4096)
        (old / "rootfs.raw").write_bytes(rootfs)
        # An update that rewrites 256 KiB of the 64 MiB.
        rootfs[8 * 1024 * 1024 : 8 * 1024 * 1024 + 256 * 1024] = os.urandom(256 * 1024)
        (new / "rootfs.raw").write_bytes(rootfs)
        (tmp_path / "boot").mkdir()
        variables = {
            "layout": str(tmp_path / "layout"),
            "artifacts": str(old),
            "new_artifacts": str(new),
            "registry": registry.host,
            "registry_username": registry.username,
            "registry_password": registry.password,
            "registry_ca_cert": registry.registry_args["ca_cert"],
            "boot_dir": str(tmp_path / "boot"),
            "new_boot_dir": str(tmp_path / "boot-1.1"),
        }
        for name in ("build", "push-basic", "pin"):
            run_play(ansible, tmp_path, name, variables)
        results = run_play(ansible, tmp_path, "delta", variables)
        (fetched,) = [result for _task, _host, result in results if "files" in result and "bytes_downloaded" in result]
        delta = fetched["files"]["rootfs"]["delta"]
        assert delta["used"], delta
        assert delta["fetched_bytes"] < 4 * 1024 * 1024 < delta["seed_bytes"], delta
        assert fetched["bytes_downloaded"] < 8 * 1024 * 1024, fetched["bytes_downloaded"]
        assert (tmp_path / "boot-1.1" / "rootfs").read_bytes() == bytes(rootfs)
        # What the registry holds for 1.1 is what the node got: its rootfs layer is the new artifact's digest.
        index = skopeo_raw(registry, "%s/os/gardenlinux:1.1" % registry.host)
        (entry,) = [m for m in index["manifests"] if m["platform"].get("variant") == "baremetal"]
        manifest = skopeo_raw(registry, "%s/os/gardenlinux@%s" % (registry.host, entry["digest"]))
        rootfs_digest = "sha256:" + hashlib.sha256(rootfs).hexdigest()
        assert rootfs_digest in [layer["digest"] for layer in manifest["layers"]]
    finally:
        registry.stop()


def test_first_real_push_commands_work_as_written(tmp_path):
    """The guide's shell block, pasted into a shell set up as section 0 says; only REGISTRY_PORT is ours."""
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is missing: install it (make system-deps)")
    commands = guide_shell_blocks()["first-push"]
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
