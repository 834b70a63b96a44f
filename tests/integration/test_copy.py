"""ironcore_image_copy through the real ansible CLI against real registries, read back with skopeo and sha256sum."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest
from helpers.ansible import task_results
from helpers.registry import PASSWORD, start_registry

from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient
from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import registry_options

BUILD = "ironcore.image.ironcore_image_build"
PUSH = "ironcore.image.ironcore_image_push"
COPY = "ironcore.image.ironcore_image_copy"
NAME = "registry.example.com/os/gardenlinux:1.0"
ARCHS = ("amd64", "arm64")
ROLES = ("kernel", "initramfs", "rootfs")
# Per-architecture names first, then per-platform ones (children before parents), each group sorted;
# the os-images names (metal, kvm) that the build records beside ours are copied too.
PLATFORM_WORDS = ("baremetal", "kvm", "metal", "virtualization")
PLATFORM_SUFFIXES = [
    *("-%s-%s" % (word, arch) for word in PLATFORM_WORDS for arch in ARCHS),
    *("-%s" % word for word in PLATFORM_WORDS),
]
ALL_SUFFIXES = [*PLATFORM_SUFFIXES, ""]
# config (same command line for both architectures: one blob) + 3 roles x 2 architectures
BLOB_COUNT = 1 + len(ROLES) * len(ARCHS)
ROOTFS_SIZE = 2_500_000  # more than one network read (1 MiB), so a reset mid-blob keeps some

pytestmark = pytest.mark.integration


def build(ansible, root, name=NAME, seed=b""):
    artifacts = []
    for arch in ARCHS:
        item = {"architecture": arch, "cmdline": "console=ttyS0"}
        for role in ROLES:
            path = root / "in" / arch / role
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(seed + os.urandom(ROOTFS_SIZE if role == "rootfs" else 60_000))
            item[role] = str(path)
        artifacts.append(item)
    layout = str(root / "layout")
    built = ansible.module(BUILD, {"layout": layout, "name": name, "artifacts": artifacts})
    assert built.get("failed") is not True, built
    return layout


@pytest.fixture(scope="module")
def image(ansible, tmp_path_factory):
    """A two-architecture, two-platform image built by the build module; returns the layout path."""
    return build(ansible, tmp_path_factory.mktemp("copy-image"))


@pytest.fixture(scope="module")
def published(ansible, image, registry_plain):
    """The image pushed to registry_plain as copy/dev:1.0 (with its platform tags)."""
    args = {"layout": image, "name": NAME, "destination": registry_plain.host + "/copy/dev:1.0"}
    pushed = ansible.module(PUSH, dict(args, **registry_plain.registry_args))
    assert pushed["changed"] is True, pushed
    return pushed["digest"]


def run(ansible, args, check=False, diff=False):
    result = ansible.module(COPY, args, check=check, diff=diff)
    # The password never reaches any output, in success or failure.
    assert PASSWORD not in result["_stdout"] and PASSWORD not in result["_stderr"]
    return result


def side(target, reference, **extra):
    return dict(target.registry_args, name="%s/%s" % (target.host, reference), **extra)


def skopeo(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["skopeo", *args], check=False, capture_output=True, env=dict(os.environ, **(env or {})), timeout=300
    )


def remote_raw(target, reference: str) -> bytes:
    proc = skopeo("inspect", "--raw", *target.skopeo_args, "docker://%s/%s" % (target.host, reference), env=target.env)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def layout_raw(layout: str, name: str) -> bytes:
    proc = skopeo("inspect", "--raw", "oci:%s:%s" % (layout, name))
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def remote_digest(target, repository: str, tag: str) -> str | None:
    client = RegistryClient(target.host, registry_options(target.registry_args))
    found = client.head_manifest(repository, tag)
    return found["digest"] if found else None


def layout_blobs_verified(layout: str) -> set[str]:
    """Every blob file's name, each checked with sha256sum against its own name."""
    directory = os.path.join(layout, "blobs", "sha256")
    names = sorted(name for name in os.listdir(directory) if not name.startswith("."))
    proc = subprocess.run(["sha256sum", *names], cwd=directory, capture_output=True, text=True, check=True)
    for line in proc.stdout.splitlines():
        digest, name = line.split()
        assert digest == name, line
    return set(names)


def reachable_blobs(layout: str, name: str = NAME) -> dict[str, int]:
    """digest -> size of the config and layer blobs the image recorded under `name` reaches."""
    store = OciLayout(layout)
    index = json.loads(store.read_document(store.refs()[name]["digest"]))
    blobs = {}
    for entry in index["manifests"]:
        manifest = json.loads(store.read_document(entry["digest"]))
        for blob in [manifest["config"], *manifest["layers"]]:
            blobs[blob["digest"]] = blob["size"]
    return blobs


def test_pull_into_layout_then_layout_to_layout_and_back(ansible, image, published, registry_plain, tmp_path):
    pulled = str(tmp_path / "pulled")
    source = side(registry_plain, "copy/dev:1.0")
    args = {"source": source, "destination": {"layout": pulled}}

    checked = run(ansible, args, check=True, diff=True)
    assert checked["changed"] is True and checked["digest"] == published, checked
    assert checked["blobs"] == {
        "copied": BLOB_COUNT,
        "bytes": sum(reachable_blobs(image).values()),
        "skipped": 0,
        "mounted": 0,
    }
    assert not os.path.exists(pulled)  # check mode wrote nothing, not even the layout

    copied = run(ansible, args, diff=True)
    local_name = "%s/copy/dev:1.0" % registry_plain.host
    assert copied["changed"] is True, copied
    assert copied["names"] == [local_name + suffix for suffix in ALL_SUFFIXES]
    assert copied["blobs"]["copied"] == BLOB_COUNT and copied["blobs"]["bytes"] == checked["blobs"]["bytes"]
    assert copied["diff"]["after"][local_name] == published and copied["diff"]["before"][local_name] is None
    # Rates are not asserted (they depend on the machine), only that they are reported and consistent.
    assert isinstance(copied["elapsed"], float) and isinstance(copied["retries"], int)
    assert copied["bytes_per_second"] > 0 or copied["elapsed"] == 0
    for suffix in ALL_SUFFIXES:
        assert layout_raw(pulled, local_name + suffix) == remote_raw(registry_plain, "copy/dev:1.0" + suffix), suffix
    assert layout_blobs_verified(pulled) >= {digest[7:] for digest in reachable_blobs(image)}
    assert not [name for name in os.listdir(os.path.join(pulled, "blobs", "sha256")) if name.endswith(".partial")]

    again = run(ansible, args)
    assert again["changed"] is False and again["names"] == [], again
    assert again["blobs"] == {"copied": 0, "bytes": 0, "skipped": BLOB_COUNT, "mounted": 0}

    # Pinned by digest: the image alone, under the tag the destination names (no platform names to follow).
    pinned = str(tmp_path / "pinned")
    by_digest = run(
        ansible,
        {
            "source": side(registry_plain, "copy/dev@" + published),
            "destination": {"layout": pinned, "name": "example.com/os/pinned:7"},
        },
    )
    assert by_digest["changed"] is True and by_digest["names"] == ["example.com/os/pinned:7"], by_digest
    assert list(OciLayout(pinned).refs()) == ["example.com/os/pinned:7"]
    assert layout_raw(pinned, "example.com/os/pinned:7") == remote_raw(registry_plain, "copy/dev:1.0")

    # layout -> layout, under another name
    second = str(tmp_path / "second")
    local = run(
        ansible, {"source": {"layout": pulled, "name": local_name}, "destination": {"layout": second, "name": NAME}}
    )
    assert local["changed"] is True and local["digest"] == published, local
    for suffix in ALL_SUFFIXES:
        assert layout_raw(second, NAME + suffix) == layout_raw(pulled, local_name + suffix)
    assert layout_blobs_verified(second) == layout_blobs_verified(pulled)

    # layout -> registry, a new repository
    back = run(ansible, {"source": {"layout": second, "name": NAME}, "destination": side(registry_plain, "copy/back")})
    assert back["changed"] is True and back["names"][-1] == registry_plain.host + "/copy/back:1.0", back
    for suffix in ALL_SUFFIXES:
        assert remote_raw(registry_plain, "copy/back:1.0" + suffix) == layout_raw(second, NAME + suffix)


def test_mirror_to_a_second_registry(ansible, published, registry_plain, tmp_path):
    # Its own registry with its own credentials: the two sides do not share them.
    mirror = start_registry("mirror", str(tmp_path / "mirror"), tls=True, auth="htpasswd")
    try:
        args = {"source": side(registry_plain, "copy/dev:1.0"), "destination": side(mirror, "mirrored/os")}
        checked = run(ansible, args, check=True)
        assert checked["changed"] is True and checked["blobs"]["copied"] == BLOB_COUNT, checked
        assert remote_digest(mirror, "mirrored/os", "1.0") is None

        mirrored = run(ansible, args)
        assert mirrored["changed"] is True and mirrored["digest"] == published, mirrored
        assert mirrored["names"] == ["%s/mirrored/os:1.0%s" % (mirror.host, suffix) for suffix in ALL_SUFFIXES]
        assert mirrored["blobs"]["copied"] == BLOB_COUNT and mirrored["blobs"]["mounted"] == 0
        for suffix in ALL_SUFFIXES:
            assert remote_raw(mirror, "mirrored/os:1.0" + suffix) == remote_raw(registry_plain, "copy/dev:1.0" + suffix)
        proc = skopeo(
            "copy",
            "--all",
            *mirror.skopeo_flags("src-"),
            "docker://%s/mirrored/os:1.0" % mirror.host,
            "oci:%s:copied" % (tmp_path / "readback"),
        )
        assert proc.returncode == 0, proc.stderr.decode()
        assert layout_raw(str(tmp_path / "readback"), "copied") == remote_raw(registry_plain, "copy/dev:1.0")

        again = run(ansible, args)
        assert again["changed"] is False and again["blobs"]["skipped"] == BLOB_COUNT, again
    finally:
        mirror.stop()


def test_promote_mounts_and_overwrite_false_refuses(ansible, image, published, registry_plain, fault_proxy, tmp_path):
    proxy = fault_proxy(registry_plain)
    args = {"source": side(proxy, "copy/dev:1.0"), "destination": side(proxy, "copy/prod")}

    would = run(ansible, args, check=True)
    assert would["changed"] is True and would["blobs"]["mounted"] == BLOB_COUNT, would
    assert remote_digest(registry_plain, "copy/prod", "1.0") is None

    proxy.clear()
    promoted = run(ansible, args)
    assert promoted["changed"] is True, promoted
    assert promoted["blobs"] == {"copied": 0, "bytes": 0, "skipped": 0, "mounted": BLOB_COUNT}
    # What the registry was asked: mounts from the source repository, and not one byte of blob upload.
    mounts = [path for method, path, _action in proxy.log if method == "POST" and "mount=" in path]
    mounted = {path.split("mount=", 1)[1].split("&", 1)[0].replace("%3A", ":") for path in mounts}
    assert mounted == set(reachable_blobs(image)), proxy.log
    assert all("from=copy%2Fdev" in path for path in mounts), proxy.log
    assert not [entry for entry in proxy.log if entry[0] in ("PUT", "PATCH") and "/blobs/uploads/" in entry[1]]
    for suffix in ALL_SUFFIXES:
        assert remote_raw(registry_plain, "copy/prod:1.0" + suffix) == remote_raw(
            registry_plain, "copy/dev:1.0" + suffix
        )

    again = run(ansible, args)
    assert again["changed"] is False and again["names"] == [], again

    # Another image on dev:2.0; promoting it onto prod:1.0 without overwrite is refused, prod stays.
    other = build(ansible, tmp_path / "other", seed=b"other")
    pushed = ansible.module(
        PUSH,
        dict(registry_plain.registry_args, layout=other, name=NAME, destination=registry_plain.host + "/copy/dev:2.0"),
    )
    assert pushed["changed"] is True, pushed
    refused = run(
        ansible,
        {
            "source": side(registry_plain, "copy/dev:2.0"),
            "destination": side(registry_plain, "copy/prod:1.0"),
            "overwrite": False,
        },
    )
    assert refused["failed"] is True and "\n" not in refused["msg"], refused
    assert published in refused["msg"] and "overwrite" in refused["msg"], refused["msg"]
    assert remote_digest(registry_plain, "copy/prod", "1.0") == published
    assert remote_digest(registry_plain, "copy/prod", "1.0-baremetal") == remote_digest(
        registry_plain, "copy/dev", "1.0-baremetal"
    )
    # overwrite=false still lets an unchanged copy pass.
    assert run(ansible, dict(args, overwrite=False))["changed"] is False


def blob_ranges(proxy, digest: str) -> list[str | None]:
    """The Range header of every GET of one blob through the proxy, in order."""
    return [
        headers.get("range")
        for method, path, headers in proxy.requests
        if method == "GET" and path.endswith("/blobs/" + digest)
    ]


def test_interrupted_copy_resumes_with_range(ansible, image, published, registry_plain, fault_proxy, tmp_path):
    blobs = reachable_blobs(image)
    largest = max(blobs, key=lambda digest: blobs[digest])
    proxy = fault_proxy(registry_plain)
    layout = str(tmp_path / "resumed")
    args = {"source": side(proxy, "copy/dev:1.0"), "destination": {"layout": layout}, "concurrency": 1}

    # A reset mid-blob, then a registry that fails every further read of it: with no retries
    # left the run ends, and the bytes received stay in the partial file.
    proxy.add("reset_response", method="GET", path="/blobs/" + largest, after_bytes=1_500_000)
    proxy.add("status", method="GET", path="/blobs/" + largest, status=503, times=-1)
    failed = run(ansible, dict(args, retries=0))
    assert failed["failed"] is True and "run again to resume" in failed["msg"], failed
    assert "\n" not in failed["msg"] and "Traceback" not in failed["msg"]
    partial = os.path.join(layout, "blobs", "sha256", "." + largest[7:] + ".partial")
    kept = os.path.getsize(partial)
    assert 0 < kept < blobs[largest]
    # The reset was answered at once by a Range request from the bytes kept (which the registry failed).
    assert blob_ranges(proxy, largest) == [None, "bytes=%d-%d" % (kept, blobs[largest] - 1)], proxy.requests
    assert not OciLayout(layout).refs()  # no name was set

    # The next run continues from the kept bytes (blobs finished before the failure stay done).
    missing = {digest: size for digest, size in blobs.items() if not OciLayout(layout).has_blob(digest, size)}
    assert largest in missing
    proxy.clear()
    resumed = run(ansible, args)
    assert resumed["changed"] is True, resumed
    assert blob_ranges(proxy, largest) == ["bytes=%d-%d" % (kept, blobs[largest] - 1)], proxy.requests
    assert resumed["blobs"]["bytes"] == sum(missing.values()) - kept
    assert resumed["blobs"]["skipped"] == len(blobs) - len(missing)
    assert layout_blobs_verified(layout) >= {digest[7:] for digest in blobs}
    assert not os.path.exists(partial)

    # Within one run: a reset is retried from where it stopped.
    proxy.clear()
    proxy.add("reset_response", method="GET", path="/blobs/" + largest, after_bytes=1_500_000)
    within = str(tmp_path / "within")
    result = run(ansible, dict(args, destination={"layout": within}))
    assert result["changed"] is True and result["retries"] >= 1, result
    ranges = blob_ranges(proxy, largest)
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-", ranges
    for suffix in ALL_SUFFIXES:
        name = "%s/copy/dev:1.0%s" % (proxy.host, suffix)
        assert layout_raw(within, name) == remote_raw(registry_plain, "copy/dev:1.0" + suffix)
    assert hashlib.sha256(open(OciLayout(within).blob_path(largest), "rb").read()).hexdigest() == largest[7:]


def test_bad_input_is_refused_in_one_line(ansible, image, published, registry_plain, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a layout")
    # A directory another user could plant links in, as a hostile neighbour would.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    cases = {
        "source tag missing": (
            {"source": side(registry_plain, "copy/dev:9.9"), "destination": {"layout": str(tmp_path / "l1")}},
            ["MANIFEST_UNKNOWN", "1.0"],
        ),
        "source layout missing": (
            {
                "source": {"layout": str(tmp_path / "none"), "name": NAME},
                "destination": {"layout": str(tmp_path / "l2")},
            },
            ["is not an OCI image layout"],
        ),
        "source name not in layout": (
            {"source": {"layout": image, "name": NAME + "-nope"}, "destination": {"layout": str(tmp_path / "l3")}},
            ["is not recorded in layout", NAME],
        ),
        "destination layout is a file": (
            {"source": side(registry_plain, "copy/dev:1.0"), "destination": {"layout": str(a_file)}},
            ["destination", "is not a directory"],
        ),
        "no source name": (
            {"source": {"layout": image}, "destination": {"layout": str(tmp_path / "l4")}},
            ["source.name is required"],
        ),
        "no registry host": (
            {"source": {"name": "os/only:1.0"}, "destination": {"layout": str(tmp_path / "l5")}},
            ["source.name", "names no registry host"],
        ),
        "destination layout writable by others": (
            {"source": side(registry_plain, "copy/dev:1.0"), "destination": {"layout": str(shared)}},
            ["may be written by other users", "allow_shared_dest"],
        ),
        "destination digest": (
            {
                "source": side(registry_plain, "copy/dev:1.0"),
                "destination": side(registry_plain, "copy/x@" + published),
            },
            ["names a digest"],
        ),
    }
    tasks = [{"name": label, COPY: args, "ignore_errors": True} for label, (args, _words) in cases.items()]
    playbook = tmp_path / "errors.yml"
    playbook.write_text(
        json.dumps([{"hosts": "localhost", "gather_facts": False, "connection": "local", "tasks": tasks}])
    )
    _rc, document, _stderr = ansible.playbook(str(playbook))
    results = {name: result for name, _host, result in task_results(document)}
    for label, (_args, words) in cases.items():
        result = results[label]
        assert result.get("failed") is True, (label, result)
        message = result["msg"]
        assert "\n" not in message and "Traceback" not in message and not message.startswith("Task failed"), (
            label,
            message,
        )
        for word in words:
            assert word in message, (label, message)
    # Nothing changed: the file is still the file, no destination layout was created.
    assert a_file.read_text() == "not a layout"
    assert not [path for path in tmp_path.iterdir() if path.name.startswith("l")]
    assert not list(shared.iterdir())


def test_a_refused_mount_falls_back_to_upload(ansible, published, registry_plain, fault_proxy):
    proxy = fault_proxy(registry_plain)
    proxy.add("status", method="POST", path="mount=", status=403, times=-1)
    args = {"source": side(proxy, "copy/dev:1.0"), "destination": side(proxy, "copy/refused")}
    result = run(ansible, args)
    assert result["changed"] is True, result
    assert result["blobs"]["mounted"] == 0 and result["blobs"]["copied"] == BLOB_COUNT, result
    assert len([entry for entry in proxy.log if entry[2] == "status"]) == BLOB_COUNT
    for suffix in ALL_SUFFIXES:
        assert remote_raw(registry_plain, "copy/refused:1.0" + suffix) == remote_raw(
            registry_plain, "copy/dev:1.0" + suffix
        )


def test_push_mounts_from_the_repository_of_name_on_the_same_registry(ansible, registry_plain, tmp_path):
    name = registry_plain.host + "/copy/named:1.0"
    layout = build(ansible, tmp_path, name=name)
    first = ansible.module(PUSH, dict(registry_plain.registry_args, layout=layout, name=name))
    assert first["changed"] is True and first["blobs"]["uploaded"] == BLOB_COUNT, first
    stable = ansible.module(
        PUSH,
        dict(registry_plain.registry_args, layout=layout, name=name, destination=registry_plain.host + "/copy/stable"),
    )
    assert stable["changed"] is True, stable
    assert stable["blobs"] == {"uploaded": 0, "bytes_uploaded": 0, "skipped": 0, "mounted": BLOB_COUNT}
    assert isinstance(stable["elapsed"], float) and stable["bytes_per_second"] == 0
    assert remote_raw(registry_plain, "copy/stable:1.0") == remote_raw(registry_plain, "copy/named:1.0")

    # overwrite=false on push: the tag points at this image already, so nothing moves and nothing fails.
    again = ansible.module(
        PUSH,
        dict(
            registry_plain.registry_args,
            layout=layout,
            name=name,
            destination=registry_plain.host + "/copy/stable",
            overwrite=False,
        ),
    )
    assert again["changed"] is False and again.get("failed") is not True, again
    other = build(ansible, tmp_path / "other", name=name, seed=b"other")
    refused = ansible.module(
        PUSH,
        dict(
            registry_plain.registry_args,
            layout=other,
            name=name,
            destination=registry_plain.host + "/copy/stable",
            overwrite=False,
        ),
    )
    assert refused["failed"] is True and first["digest"] in refused["msg"] and "overwrite" in refused["msg"], refused
    assert remote_digest(registry_plain, "copy/stable", "1.0") == first["digest"]


def test_token_registry_to_basic_registry(ansible, image, registry_token, registry_tls):
    pushed = ansible.module(
        PUSH, dict(registry_token.registry_args, layout=image, name=NAME, destination=registry_token.host + "/copy/t")
    )
    assert pushed["changed"] is True, pushed
    args = {"source": side(registry_token, "copy/t:1.0"), "destination": side(registry_tls, "copy/from-token")}
    would = run(ansible, args, check=True)
    assert would["changed"] is True and remote_digest(registry_tls, "copy/from-token", "1.0") is None, would
    copied = run(ansible, args)
    assert copied["changed"] is True and copied["digest"] == pushed["digest"], copied
    assert copied["blobs"]["copied"] == BLOB_COUNT and copied["blobs"]["bytes"] == sum(reachable_blobs(image).values())
    for suffix in ALL_SUFFIXES:
        assert remote_raw(registry_tls, "copy/from-token:1.0" + suffix) == remote_raw(
            registry_token, "copy/t:1.0" + suffix
        )
    assert run(ansible, args)["changed"] is False
