"""ironcore_image_push through the real ansible CLI against real registries, read back with skopeo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from helpers.ansible import task_results
from helpers.registry import PASSWORD, blob_data_path, free_port
from helpers.signing import make_key

from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient
from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import registry_options

BUILD = "ironcore.image.ironcore_image_build"
PUSH = "ironcore.image.ironcore_image_push"
SIGN = "ironcore.image.ironcore_image_sign"
NAME = "registry.example.com/os/gardenlinux:1.0"
ARCHS = ("amd64", "arm64")
ROLES = ("kernel", "initramfs", "rootfs")
# Per-architecture manifests, then per-platform indexes; each with its os-images alias (metal, kvm).
PLATFORM_TAGS = [
    "1.0-baremetal-amd64",
    "1.0-baremetal-arm64",
    "1.0-kvm-amd64",
    "1.0-kvm-arm64",
    "1.0-metal-amd64",
    "1.0-metal-arm64",
    "1.0-virtualization-amd64",
    "1.0-virtualization-arm64",
    "1.0-baremetal",
    "1.0-kvm",
    "1.0-metal",
    "1.0-virtualization",
]
ALL_TAGS = [*PLATFORM_TAGS, "1.0"]
# config (one per architecture: same command line, so one blob) + 3 roles x 2 architectures
BLOB_COUNT = 1 + len(ROLES) * len(ARCHS)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def image(ansible, tmp_path_factory):
    """A two-architecture, two-platform image built by the build module; returns the layout path."""
    root = tmp_path_factory.mktemp("push-image")
    artifacts = []
    for arch in ARCHS:
        item = {"architecture": arch, "cmdline": "console=ttyS0"}
        for role in ROLES:
            path = root / "in" / arch / role
            path.parent.mkdir(parents=True, exist_ok=True)
            # Incompressible and distinct, a few hundred KiB: several PATCH chunks of 64 KiB.
            path.write_bytes(os.urandom(150_000 if role != "rootfs" else 300_000))
            item[role] = str(path)
        artifacts.append(item)
    layout = str(root / "layout")
    built = ansible.module(BUILD, {"layout": layout, "name": NAME, "artifacts": artifacts})
    assert built.get("failed") is not True, built
    return layout


def layout_documents(layout: str) -> dict[str, bytes]:
    """Destination tag -> exact bytes the layout holds for it."""
    store = OciLayout(layout)
    refs = store.refs()
    result = {}
    for tag in ALL_TAGS:
        name = NAME.rsplit(":", 1)[0] + ":" + tag
        result[tag] = store.read_document(refs[name]["digest"])
    return result


def push(ansible, args, check=False, diff=False):
    result = ansible.module(PUSH, args, check=check, diff=diff)
    # The password never reaches any output, in success or failure.
    assert PASSWORD not in result["_stdout"] and PASSWORD not in result["_stderr"]
    return result


def push_args(image, target, repository, **extra):
    args = {"layout": image, "name": NAME, "destination": "%s/%s" % (target.host, repository)}
    args.update(target.registry_args)
    args.update(extra)
    return args


def skopeo(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["skopeo", *args], check=False, capture_output=True, env=dict(os.environ, **(env or {})), timeout=300
    )


def remote_raw(target, repository: str, tag: str) -> bytes:
    proc = skopeo(
        "inspect", "--raw", *target.skopeo_args, "docker://%s/%s:%s" % (target.host, repository, tag), env=target.env
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def remote_digest(target, repository: str, tag: str) -> str | None:
    client = RegistryClient(target.host, registry_options(target.registry_args))
    found = client.head_manifest(repository, tag)
    return found["digest"] if found else None


@pytest.mark.parametrize("fixture", ["registry_plain", "registry_tls", "registry_token"])
def test_check_push_readback_idempotent(request, ansible, image, tmp_path, fixture):
    target = request.getfixturevalue(fixture)
    repository = "push/full-" + fixture.split("_")[1]
    args = push_args(image, target, repository)
    expected = layout_documents(image)

    checked = push(ansible, args, check=True, diff=True)
    assert checked["changed"] is True, checked
    assert checked["tags"] == ALL_TAGS
    assert checked["blobs"]["uploaded"] == BLOB_COUNT and checked["blobs"]["skipped"] == 0
    assert remote_digest(target, repository, "1.0") is None  # check mode sent nothing

    pushed = push(ansible, args, diff=True)
    assert pushed["changed"] is True and pushed["tags"] == ALL_TAGS, pushed
    assert pushed["destination"] == "%s/%s:1.0" % (target.host, repository)
    assert pushed["blobs"] == {
        "uploaded": BLOB_COUNT,
        "bytes_uploaded": checked["blobs"]["bytes_uploaded"],
        "skipped": 0,
        "mounted": 0,
    }
    assert pushed["diff"]["after"]["1.0"] == pushed["digest"] and pushed["diff"]["before"]["1.0"] is None
    for tag, data in expected.items():
        assert remote_raw(target, repository, tag) == data, tag
    assert pushed["digest"] == "sha256:" + __import__("hashlib").sha256(expected["1.0"]).hexdigest()

    copy = tmp_path / "copy"
    proc = skopeo(
        "copy",
        "--all",
        *target.skopeo_flags("src-"),
        "docker://%s/%s:1.0" % (target.host, repository),
        "oci:%s:copied" % copy,
        env=target.env,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert skopeo("inspect", "--raw", "oci:%s:copied" % copy).stdout == expected["1.0"]
    index = json.loads(expected["1.0"])
    reachable = _layer_digests(image) | {entry["digest"] for entry in index["manifests"]} | {pushed["digest"]}
    assert set(os.listdir(copy / "blobs" / "sha256")) == {digest[7:] for digest in reachable}

    again_check = push(ansible, args, check=True)
    again = push(ansible, args)
    for result in (again_check, again):
        assert result["changed"] is False and result["tags"] == [], result
        assert result["blobs"]["uploaded"] == 0 and result["blobs"]["bytes_uploaded"] == 0
        assert result["digest"] == pushed["digest"]


def test_platform_tags_later_and_mount_from(ansible, image, registry_plain):
    source = push(ansible, push_args(image, registry_plain, "push/mount-source", platform_tags=False))
    assert source["tags"] == ["1.0"] and source["blobs"]["uploaded"] == BLOB_COUNT
    assert remote_digest(registry_plain, "push/mount-source", "1.0-baremetal") is None

    # Only the platform tags are missing: they move, every blob is skipped.
    later = push(ansible, push_args(image, registry_plain, "push/mount-source"))
    assert later["changed"] is True and later["tags"] == PLATFORM_TAGS
    assert later["blobs"] == {"uploaded": 0, "bytes_uploaded": 0, "skipped": BLOB_COUNT, "mounted": 0}

    args = push_args(image, registry_plain, "push/mounted:2.0", mount_from=["push/elsewhere", "push/mount-source"])
    would = push(ansible, args, check=True)
    assert would["blobs"]["mounted"] == BLOB_COUNT and would["blobs"]["uploaded"] == 0
    mounted = push(ansible, args)
    assert mounted["blobs"] == {"uploaded": 0, "bytes_uploaded": 0, "skipped": 0, "mounted": BLOB_COUNT}
    assert mounted["tags"][-1] == "2.0" and "2.0-virtualization-arm64" in mounted["tags"]
    assert remote_raw(registry_plain, "push/mounted", "2.0") == layout_documents(image)["1.0"]


def test_faults_are_retried(ansible, image, registry_plain, fault_proxy):
    proxy = fault_proxy(registry_plain)
    faults = [
        proxy.add("status", method="POST", status=429),
        proxy.add("reset", method="PUT", path="/blobs/uploads/", after_bytes=50_000),
        proxy.add("status", method="PUT", path="/blobs/uploads/", status=500, skip=1),
        proxy.add("status", method="HEAD", path="/blobs/", status=502),
        proxy.add("status", method="PUT", path="/manifests/", status=503),
        proxy.add("stall", method="HEAD", path="/manifests/"),
        proxy.add("reset", method="GET", path="/v2/$"),
    ]
    result = push(ansible, push_args(image, proxy, "push/faults", timeout=2))
    assert result["changed"] is True and result.get("failed") is not True, result
    assert [fault.hits for fault in faults] == [1] * len(faults)
    assert result["blobs"]["bytes_uploaded"] > sum(
        os.path.getsize(os.path.join(image, "blobs", "sha256", d[7:])) for d in _layer_digests(image)
    )
    for tag, data in layout_documents(image).items():
        assert remote_raw(registry_plain, "push/faults", tag) == data


def _layer_digests(layout: str) -> set[str]:
    store = OciLayout(layout)
    digests: set[str] = set()
    for tag in PLATFORM_TAGS[:8]:
        manifest = json.loads(store.read_document(store.refs()[NAME[:-4] + ":" + tag]["digest"]))
        digests.update(layer["digest"] for layer in manifest["layers"])
        digests.add(manifest["config"]["digest"])
    return digests


def test_chunked_upload_resumes_where_the_registry_says(ansible, image, registry_tls, fault_proxy):
    proxy = fault_proxy(registry_tls)
    proxy.add("reset", method="PATCH", after_bytes=10_000, skip=1)
    proxy.add("status", method="PATCH", status=503, skip=3)
    result = push(ansible, push_args(image, proxy, "push/chunked", chunk_size=65536, concurrency=2))
    assert result["changed"] is True and result.get("failed") is not True, result
    patches = [entry for entry in proxy.log if entry[0] == "PATCH"]
    status_queries = [entry for entry in proxy.log if entry[0] == "GET" and "/blobs/uploads/" in entry[1]]
    # One status query per injected fault at least; a loaded machine may add a retry, never remove one.
    assert len(patches) > BLOB_COUNT and len(status_queries) >= 2, proxy.log
    for tag, data in layout_documents(image).items():
        assert remote_raw(registry_tls, "push/chunked", tag) == data


def test_failures_leave_no_tag(ansible, image, registry_plain, fault_proxy):
    proxy = fault_proxy(registry_plain)
    proxy.add("status", method="PUT", path="/blobs/uploads/", status=503, times=-1)
    failed = push(ansible, push_args(image, proxy, "push/broken", retries=1))
    assert failed["failed"] is True and "HTTP 503" in failed["msg"] and "uploading blob" in failed["msg"]
    assert "\n" not in failed["msg"] and "Traceback" not in failed["msg"]
    assert all(remote_digest(registry_plain, "push/broken", tag) is None for tag in ALL_TAGS)

    proxy.clear()
    proxy.add("stall", method="PUT", path="/manifests/1.0$", times=-1)
    stalled = push(ansible, push_args(image, proxy, "push/broken", retries=1, timeout=1))
    assert stalled["failed"] is True and "did not answer within timeout=1s" in stalled["msg"], stalled["msg"]
    # Everything before the main tag is there; the main tag was never written half.
    assert remote_digest(registry_plain, "push/broken", "1.0") is None
    assert remote_digest(registry_plain, "push/broken", "1.0-baremetal") is not None


def test_rejected_media_type_is_a_clear_failure(ansible, image, registry_plain, tmp_path):
    layout = str(tmp_path / "layout")
    shutil.copytree(image, layout)
    with open(os.path.join(layout, "index.json")) as stream:
        index = json.load(stream)
    for entry in index["manifests"]:
        if entry["annotations"]["org.opencontainers.image.ref.name"] == NAME:
            entry["mediaType"] = "application/vnd.example.not-a-manifest+json"
    with open(os.path.join(layout, "index.json"), "w") as stream:
        json.dump(index, stream)
    result = push(ansible, dict(push_args(layout, registry_plain, "push/mediatype"), platform_tags=False))
    assert result["failed"] is True
    assert "MANIFEST_INVALID" in result["msg"] and "media types" in result["msg"], result["msg"]
    assert remote_digest(registry_plain, "push/mediatype", "1.0") is None


def test_errors_are_clear(ansible, image, registry_plain, registry_tls, registry_token, tmp_path):
    """Each failure in one playbook run: wrong credentials, TLS, scheme, refused, names."""
    dead = "127.0.0.1:%d" % free_port()
    cases = {
        "wrong password (basic)": (
            push_args(image, registry_tls, "push/e", password="wrong-" + PASSWORD[:4]),
            ["HTTP 401", "UNAUTHORIZED", "check username and password"],
        ),
        "wrong password (token)": (
            push_args(image, registry_token, "push/e", password="wrong-" + PASSWORD[:4]),
            ["refused the credentials", "check username and password"],
        ),
        "no credentials": (
            dict(
                push_args(image, registry_tls, "push/e", username=None, password=None),
                docker_config=str(tmp_path / "none.json"),
            ),
            ["requires authentication", "username and password"],
        ),
        "untrusted certificate": (
            push_args(image, registry_tls, "push/e", ca_cert=None),
            ["not trusted", "ca_cert", "validate_certs"],
        ),
        "plain HTTP to TLS": (push_args(image, registry_tls, "push/e", plain_http=True), ["plain_http=false"]),
        "TLS to plain HTTP": (push_args(image, registry_plain, "push/e", plain_http=False), ["plain_http=true"]),
        "connection refused": (
            dict(push_args(image, registry_plain, "push/e"), destination=dead + "/push/e", retries=0),
            ["refused", dead],
        ),
        "name not in layout": (
            dict(push_args(image, registry_plain, "push/e"), name=NAME + "-nope"),
            ["is not recorded in layout", NAME],
        ),
        "no registry in destination": (
            dict(push_args(image, registry_plain, "push/e"), destination="os/only"),
            ["names no registry host"],
        ),
        "not a layout": (
            dict(push_args(image, registry_plain, "push/e"), layout=str(tmp_path)),
            ["is not an OCI image layout"],
        ),
        "invalid repository name": (
            dict(push_args(image, registry_plain, "push/e"), destination=registry_plain.host + "/Push/E"),
            ["destination", "lower-case"],
        ),
        "platform tags longer than a tag may be": (
            dict(push_args(image, registry_plain, "push/e"), destination=registry_plain.host + "/push/e:" + "t" * 120),
            ["destination: a platform tag of", "at most 128 characters", "platform_tags=false"],
        ),
    }
    tasks = [
        {"name": label, "ironcore.image.ironcore_image_push": args, "ignore_errors": True}
        for label, (args, _words) in cases.items()
    ]
    playbook = tmp_path / "errors.yml"
    playbook.write_text(
        json.dumps([{"hosts": "localhost", "gather_facts": False, "connection": "local", "tasks": tasks}])
    )
    _rc, document, stderr = ansible.playbook(str(playbook))
    results = {name: result for name, _host, result in task_results(document)}
    assert PASSWORD not in json.dumps(document) and PASSWORD not in stderr
    for label, (_args, words) in cases.items():
        result = results[label]
        assert result.get("failed") is True, (label, result)
        message = result["msg"]
        assert "\n" not in message and "Traceback" not in message, (label, message)
        # An uncaught exception fails the task too, with "Task failed: Module failed: ..." as msg.
        assert not message.startswith("Task failed"), (label, message)
        for word in words:
            assert word in message, (label, message)


def _repository_blobs(registry, repository: str) -> dict[str, int]:
    """Digest -> stored size of every blob linked into `repository`, read from the registry's own storage.

    docker-registry links a blob into a repository's `_layers` when an upload to it completes (manifests
    have links of their own elsewhere), so this is what the push uploaded there, whoever else holds it.
    """
    layers = os.path.join(registry.storage, "docker", "registry", "v2", "repositories", repository, "_layers", "sha256")
    digests = ["sha256:" + hex_digest for hex_digest in os.listdir(layers)]
    return {digest: os.path.getsize(blob_data_path(registry.storage, digest)) for digest in digests}


def test_bytes_uploaded_is_what_the_registry_stored_with_referrers(ansible, image, registry_plain, tmp_path):
    """Signatures travel with the image in a second round of blobs; it must not count the first round again."""
    layout = str(tmp_path / "layout")
    shutil.copytree(image, layout)
    key = make_key(tmp_path, "signer")
    signed = ansible.module(SIGN, {"layout": layout, "name": NAME, "key": key["sec1"]})
    assert signed["changed"] is True and signed["signed"], signed

    pushed = push(ansible, push_args(layout, registry_plain, "push/signed"))
    assert pushed["changed"] is True and pushed["signatures"] == len(signed["signed"]), pushed
    stored = _repository_blobs(registry_plain, "push/signed")
    # Every blob went up (nothing to mount from, a new repository): the image's and the signatures' own.
    assert pushed["blobs"]["uploaded"] == len(stored) > BLOB_COUNT, (pushed["blobs"], stored)
    assert pushed["blobs"]["bytes_uploaded"] == sum(stored.values()), (pushed["blobs"], stored)
    # The rate is over the same bytes (elapsed is rounded to a millisecond in the result, hence the slack).
    rate_bytes = pushed["bytes_per_second"] * pushed["elapsed"]
    assert abs(rate_bytes - pushed["blobs"]["bytes_uploaded"]) <= 0.1 * pushed["blobs"]["bytes_uploaded"], pushed
