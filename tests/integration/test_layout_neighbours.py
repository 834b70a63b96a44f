"""Layouts that another user owns part of, and writers that a prune must wait for.

The lifecycle modules run as root on build hosts. A local user (`nobody`)
who owns a layout, or its `blobs` directory, plants links there that point
at another content store; each test runs the modules through ansible against
real files and checks that nothing outside the layout was deleted or written,
and that every refusal is one line naming the path and the option.

A copy or a sign into a layout holds the layout's shared blob lock from its
first blob to its last name, as a build does, so that a prune running
meanwhile cannot delete an old blob the writer found already stored.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
import typing as t

import pytest
from helpers.images import skopeo_push, write_raw_document, write_upstream_image
from helpers.signing import make_key
from helpers.tasks import run_tasks

from ansible_collections.ironcore.image.plugins.module_utils._layout import BLOBS_LOCK_FILE, OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json, descriptor_for
from ansible_collections.ironcore.image.plugins.module_utils._model import CONFIG_MEDIA_TYPE, OCI_MANIFEST

BUILD = "ironcore.image.ironcore_image_build"
COPY = "ironcore.image.ironcore_image_copy"
PRUNE = "ironcore.image.ironcore_image_prune"
REMOVE = "ironcore.image.ironcore_image_remove"
SIGN = "ironcore.image.ironcore_image_sign"
TAG = "ironcore.image.ironcore_image_tag"
IMAGE = "registry.example.com/os/neighbours:1.0"
LAYER = "application/vnd.ironcore.image."
NOBODY = 65534
# Older than the prune's default grace period (one hour).
OLD = 2 * 3600
# How long a test waits for a process to get where it is looked for; only a failed test waits this long.
PATIENCE = 300.0

pytestmark = pytest.mark.integration


def one_line_failure(result: dict, *fragments: str) -> None:
    assert result.get("failed") is True, result
    assert "\n" not in result["msg"] and "Traceback" not in result["msg"], result["msg"]
    for fragment in fragments:
        assert fragment in result["msg"], result["msg"]


def sha256_hex(data: bytes) -> str:
    return subprocess.run(["sha256sum"], input=data, capture_output=True, check=True).stdout.decode().split()[0]


def content_store(directory) -> dict[str, bytes]:
    """Files named by the digest of their bytes, aged, the way containerd and docker name theirs."""
    directory.mkdir(parents=True)
    files = {}
    for number in range(3):
        data = b"another store's blob %d\n" % number
        name = sha256_hex(data)
        (directory / name).write_bytes(data)
        os.utime(directory / name, (time.time() - OLD,) * 2)
        files[name] = data
    return files


def listing(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def chown_tree(path, uid: int) -> None:
    """Give `path` and everything below it to `uid` (links themselves, not what they point at)."""
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, uid)
    os.lchown(path, uid, uid)


def age_blobs(layout) -> None:
    directory = layout / "blobs" / "sha256"
    for name in os.listdir(directory):
        os.utime(directory / name, (time.time() - OLD,) * 2)


# ---- links at blobs and blobs/sha256 --------------------------------------------------------------


@pytest.mark.parametrize("linked", ["blobs", "blobs/sha256"])
def test_prune_does_not_follow_a_linked_blobs_directory(ansible, tmp_path, linked):
    """nobody's layout has no names; its blobs point at root's store. Root's prune must delete nothing there."""
    store = tmp_path / "store"
    victims = content_store(store / "sha256")
    layout = tmp_path / "layout"
    OciLayout(str(layout)).ensure()
    if linked == "blobs":
        shutil.rmtree(layout / "blobs")
        os.symlink(store, layout / "blobs")
    else:
        os.rmdir(layout / "blobs" / "sha256")
        os.symlink(store / "sha256", layout / "blobs" / "sha256")
    chown_tree(layout, NOBODY)

    default, allowed, checked = run_tasks(
        ansible,
        str(tmp_path),
        [
            (PRUNE, {"layout": str(layout)}),
            (PRUNE, {"layout": str(layout), "allow_shared_dest": True, "grace_period": 0}),
            (PRUNE, {"layout": str(layout), "allow_shared_dest": True}, {"check_mode": True}),
        ],
    )

    for result in (default, allowed, checked):
        one_line_failure(result, "%s is a symbolic link" % (layout / linked), "allow_shared_dest")
    assert listing(store / "sha256") == victims


def test_prune_refuses_a_blobs_directory_another_user_owns(ansible, tmp_path):
    """A root-owned layout whose blobs/sha256 nobody owns: refused unless allowed, and then only garbage goes."""
    layout = tmp_path / "layout"
    written = write_upstream_image(str(layout), IMAGE, architectures=("amd64",))
    garbage = OciLayout(str(layout)).put_bytes(b"garbage nobody named")[0]
    age_blobs(layout)
    sha256 = layout / "blobs" / "sha256"
    os.chown(sha256, NOBODY, NOBODY)
    before = listing(sha256)

    refused, allowed = run_tasks(
        ansible,
        str(tmp_path),
        [(PRUNE, {"layout": str(layout)}), (PRUNE, {"layout": str(layout), "allow_shared_dest": True})],
    )

    one_line_failure(refused, "layout %s may be written by other users (it is owned by uid %d)" % (sha256, NOBODY))
    one_line_failure(refused, "allow_shared_dest")
    assert allowed.get("failed") is not True, allowed
    assert allowed["digests"] == [garbage], allowed
    assert listing(sha256) == {name: data for name, data in before.items() if "sha256:" + name != garbage}
    assert written.digest in (layout / "index.json").read_text()


@pytest.mark.parametrize("planted", ["blobs owned by nobody", "blobs/sha256 owned by nobody", "blobs a link"])
def test_build_and_copy_refuse_a_blobs_directory_another_user_chose(ansible, tmp_path, planted):
    """Root's layout, nobody's blobs: nothing root writes may land in a directory nobody controls."""
    source = tmp_path / "source"
    write_upstream_image(str(source), IMAGE, architectures=("amd64",))
    elsewhere = tmp_path / "nobodys-store"
    elsewhere.mkdir()
    os.chown(elsewhere, NOBODY, NOBODY)
    layouts = {}
    for module in (BUILD, COPY):
        layout = tmp_path / module.rsplit("_", 1)[1]
        OciLayout(str(layout)).ensure()
        if planted == "blobs a link":
            shutil.rmtree(layout / "blobs")
            os.symlink(elsewhere, layout / "blobs")
        else:
            os.chown(layout / planted.split()[0], NOBODY, NOBODY)
        layouts[module] = layout
    rootfs = tmp_path / "rootfs.img"
    rootfs.write_bytes(b"a rootfs " * 100)
    build = {
        "layout": str(layouts[BUILD]),
        "name": "registry.example.com/os/built:1",
        "artifacts": [{"architecture": "amd64", "rootfs": str(rootfs)}],
        "platforms": ["virtualization"],
    }
    copy = {
        "source": {"layout": str(source), "name": IMAGE},
        "destination": {"layout": str(layouts[COPY]), "name": IMAGE},
    }
    tasks: list[tuple[t.Any, ...]] = [(BUILD, build), (COPY, copy)]
    # Allowing a shared directory never allows a link.
    if planted == "blobs a link":
        tasks += [(BUILD, dict(build, allow_shared_dest=True)), (COPY, dict(copy, allow_shared_dest=True))]
    results = run_tasks(ansible, str(tmp_path), tasks)

    expected = "is a symbolic link" if planted == "blobs a link" else "may be written by other users"
    for (module, _args, *_keywords), result in zip(tasks, results):
        where = layouts[module] / planted.split()[0]
        label = "destination.layout" if module == COPY else "layout"
        one_line_failure(result, "%s %s %s" % (label, where, expected), "allow_shared_dest")
        assert json.loads((layouts[module] / "index.json").read_bytes())["manifests"] == []
    assert os.listdir(elsewhere) == []
    if planted != "blobs a link":
        for layout in layouts.values():
            assert os.listdir(layout / "blobs" / "sha256") == []


# ---- the shared-directory refusal in tag, remove, prune and sign -----------------------------------


def test_tag_remove_prune_and_sign_refuse_a_layout_another_user_owns(ansible, tmp_path):
    layout = tmp_path / "layout"
    write_upstream_image(str(layout), IMAGE, architectures=("amd64",))
    os.chown(layout, NOBODY, NOBODY)
    key = make_key(tmp_path, "signer")
    index_before = (layout / "index.json").read_bytes()
    blobs_before = listing(layout / "blobs" / "sha256")
    tasks: list[tuple[t.Any, ...]] = [
        (TAG, {"layout": str(layout), "name": IMAGE, "tags": ["2.0"]}),
        (REMOVE, {"layout": str(layout), "names": [IMAGE]}),
        (PRUNE, {"layout": str(layout), "grace_period": 0}),
        (SIGN, {"layout": str(layout), "name": IMAGE, "key": key["key"]}),
    ]

    refused = run_tasks(ansible, str(tmp_path), tasks)

    for result in refused:
        one_line_failure(result, "layout %s may be written by other users (it is owned by uid %d)" % (layout, NOBODY))
        one_line_failure(result, "allow_shared_dest")
    assert (layout / "index.json").read_bytes() == index_before
    assert listing(layout / "blobs" / "sha256") == blobs_before

    tagged, signed, removed, pruned = run_tasks(
        ansible,
        str(tmp_path),
        [
            (TAG, dict(tasks[0][1], allow_shared_dest=True)),
            (SIGN, dict(tasks[3][1], allow_shared_dest=True)),
            (
                REMOVE,
                dict(tasks[1][1], names=[IMAGE, "registry.example.com/os/neighbours:2.0"], allow_shared_dest=True),
            ),
            (PRUNE, dict(tasks[2][1], allow_shared_dest=True)),
        ],
    )
    assert all(result["changed"] for result in (tagged, signed, removed, pruned)), (tagged, signed, removed, pruned)
    assert json.loads((layout / "index.json").read_bytes())["manifests"] == []


# ---- a prune waits for writers that rely on blobs already stored ------------------------------------


def waiting_for_lock(path) -> bool:
    """Whether some process waits in flock() for the file at path (a `->` line of /proc/locks)."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return False
    with open("/proc/locks") as stream:
        return any("->" in line and line.split()[-3].endswith(":%d" % inode) for line in stream)


def wait_until(condition: t.Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("gave up waiting: %s" % what)
        time.sleep(0.1)


def write_image(path, name: str, layers: t.Mapping[str, bytes]) -> tuple[str, list[str]]:
    """A one-manifest image of these raw layers; (manifest digest, digests of its config and layers)."""
    layout = OciLayout(str(path))
    layout.ensure()
    config = canonical_json({"commandLine": "console=ttyS0"})
    layout.put_bytes(config)
    descriptors = []
    for role, data in layers.items():
        layout.put_bytes(data)
        descriptors.append(descriptor_for(LAYER + role, data))
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor_for(CONFIG_MEDIA_TYPE, config),
            "layers": descriptors,
        }
    )
    digest = write_raw_document(str(path), name, manifest)
    return digest, [descriptor_for(CONFIG_MEDIA_TYPE, config)["digest"], *(d["digest"] for d in descriptors)]


def complete_by_skopeo(layout, name: str, workdir) -> None:
    """skopeo reads every blob the name reaches and checks its digest."""
    target = os.path.join(str(workdir), "read-back")
    shutil.rmtree(target, ignore_errors=True)
    proc = subprocess.run(
        ["skopeo", "copy", "--quiet", "oci:%s:%s" % (layout, name), "dir:" + target],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_prune_during_a_copy_keeps_the_old_blobs_the_copy_relies_on(ansible, registry_plain, fault_proxy, tmp_path):
    """The copy skips old, unnamed kernel and initramfs blobs as already there; a prune meanwhile must wait.

    One blob at a time, largest first: the new rootfs (the smallest blob) is
    held back by the proxy, so the copy is mid-flight, past its "already
    there" answers, when the prune starts.
    """
    kernel, initramfs = b"kernel " * 40000, b"initramfs " * 30000
    dest = tmp_path / "dest"
    old_manifest, _old_blobs = write_image(
        dest, "registry.example.com/os/old:1", {"kernel": kernel, "initramfs": initramfs, "rootfs": b"o"}
    )
    layout = OciLayout(str(dest))
    with layout.locked():
        layout.drop_refs(["registry.example.com/os/old:1"])
    age_blobs(dest)
    source = tmp_path / "source"
    layers = {"kernel": kernel, "initramfs": initramfs, "rootfs": b"new"}
    _digest, new_blobs = write_image(source, "new", layers)
    skopeo_push(str(source), "new", "%s/layoutsec/new:1" % registry_plain.host, registry_plain.skopeo_flags("dest-"))
    proxy = fault_proxy(registry_plain)
    rootfs = "sha256:" + sha256_hex(b"new")
    release = threading.Event()
    hold = proxy.add("pause_response", method="GET", path="/blobs/" + rootfs, after_bytes=1, release=release)
    copy = {
        "source": dict(proxy.registry_args, name="%s/layoutsec/new:1" % proxy.host),
        "destination": {"layout": str(dest), "name": "registry.example.com/os/new:1"},
        "concurrency": 1,
    }

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        try:
            copying = pool.submit(ansible.module, COPY, copy)
            wait_until(lambda: hold.hits > 0 or copying.done(), "the copy to ask for the rootfs")
            assert not copying.done(), copying.result()
            pruning = pool.submit(ansible.module, PRUNE, {"layout": str(dest)})
            wait_until(
                lambda: pruning.done() or waiting_for_lock(dest / BLOBS_LOCK_FILE), "the prune to run or to wait"
            )
        finally:
            release.set()
        copied, pruned = copying.result(), pruning.result()

    assert copied["changed"] is True and copied["blobs"]["skipped"] == 3, copied
    assert pruned.get("failed") is not True, pruned
    assert not set(pruned["digests"]) & set(new_blobs), pruned
    for digest in new_blobs:
        assert layout.has_blob(digest), digest
    complete_by_skopeo(dest, "registry.example.com/os/new:1", tmp_path)
    # What the old name alone reached went, once the copy had named what it relies on.
    assert sorted(pruned["digests"]) == sorted([old_manifest, "sha256:" + sha256_hex(b"o")]), pruned


@pytest.mark.parametrize("writer", ["sign", "copy"])
def test_a_writer_into_a_layout_waits_for_a_running_prune(ansible, tmp_path, writer):
    """The test holds the blob lock as a prune does; sign and copy must wait before they touch a blob."""
    layout = tmp_path / "layout"
    write_upstream_image(str(layout), IMAGE, architectures=("amd64",))
    source = tmp_path / "source"
    write_upstream_image(str(source), "registry.example.com/os/other:1.0", architectures=("amd64",), tag="other")
    if writer == "sign":
        args = {"layout": str(layout), "name": IMAGE, "key": make_key(tmp_path, "signer")["key"]}
    else:
        args = {
            "source": {"layout": str(source), "name": "registry.example.com/os/other:1.0"},
            "destination": {"layout": str(layout), "name": "registry.example.com/os/other:1.0"},
        }
    index_before = (layout / "index.json").read_bytes()
    blobs_before = listing(layout / "blobs" / "sha256")
    lock = os.open(layout / BLOBS_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                running = pool.submit(ansible.module, SIGN if writer == "sign" else COPY, args)
                wait_until(lambda: running.done() or waiting_for_lock(layout / BLOBS_LOCK_FILE), "the writer")
                assert not running.done(), running.result()
                assert (layout / "index.json").read_bytes() == index_before
                assert listing(layout / "blobs" / "sha256") == blobs_before
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
            result = running.result()
    finally:
        os.close(lock)
    assert result["changed"] is True, result
