"""ironcore_image_tag, _remove, _prune and info's listing, driven through the real ansible CLI.

What a layout holds is read back with skopeo (inspect, and copy to a dir: directory,
whose files are exactly the blobs a name reaches) and sha256sum, never with the
collection's own reader.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import json
import os
import subprocess
import threading
import time
import typing as t

import pytest
from helpers.images import build_ours, content, write_upstream_image
from helpers.signing import make_key
from helpers.tasks import run_tasks

from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._referrers import ReferrerBlob, attach_referrer
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore

TAG = "ironcore.image.ironcore_image_tag"
REMOVE = "ironcore.image.ironcore_image_remove"
PRUNE = "ironcore.image.ironcore_image_prune"
INFO = "ironcore.image.ironcore_image_info"
BUILD = "ironcore.image.ironcore_image_build"
SIGN = "ironcore.image.ironcore_image_sign"
UPSTREAM = "registry.example.com/os/upstream:1.0"
NAME = "registry.example.com/os/gardenlinux:1.0"
PLATFORM_SUFFIXES = [
    "baremetal",
    "baremetal-amd64",
    "baremetal-arm64",
    "virtualization",
    "virtualization-amd64",
    "virtualization-arm64",
    # The os-images names a build records beside them (platform_tag_aliases).
    "metal",
    "metal-amd64",
    "metal-arm64",
    "kvm",
    "kvm-amd64",
    "kvm-arm64",
]
REF_NAME = "org.opencontainers.image.ref.name"

pytestmark = pytest.mark.integration


# ---- reading a layout back, independently -----------------------------------


def index_names(layout: str) -> dict[str, str]:
    with open(os.path.join(layout, "index.json"), "rb") as stream:
        index = json.load(stream)
    return {entry["annotations"][REF_NAME]: entry["digest"] for entry in index["manifests"]}


def skopeo_raw(layout: str, name: str) -> bytes:
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "oci:%s:%s" % (layout, name)], check=True, capture_output=True
    ).stdout


def skopeo_reached(layout: str, name: str, workdir: str) -> set[str]:
    """The digests skopeo copies for a name: the top document, child manifests, configs, layers."""
    target = os.path.join(workdir, "copy-%s" % hashlib.sha256(name.encode()).hexdigest()[:16])
    proc = subprocess.run(
        ["skopeo", "copy", "--all", "--preserve-digests", "--quiet", "oci:%s:%s" % (layout, name), "dir:" + target],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, (name, proc.stderr)
    reached = set()
    for entry in os.listdir(target):
        if entry == "manifest.json":
            with open(os.path.join(target, entry), "rb") as stream:
                reached.add("sha256:" + hashlib.sha256(stream.read()).hexdigest())
        elif entry != "version":
            reached.add("sha256:" + entry.split(".", 1)[0])
    subprocess.run(["rm", "-rf", target], check=True)
    return reached


def stored_blobs(layout: str) -> set[str]:
    directory = os.path.join(layout, "blobs", "sha256")
    return {"sha256:" + entry for entry in os.listdir(directory) if not entry.startswith(".")}


def sha256sum(paths: list[str]) -> dict[str, str]:
    """path -> sha256:<hex>, as sha256sum prints it."""
    if not paths:
        return {}
    out = subprocess.run(["sha256sum", *paths], check=True, capture_output=True, text=True).stdout
    return {line.split("  ", 1)[1]: "sha256:" + line.split("  ", 1)[0] for line in out.splitlines()}


def assert_every_name_complete(layout: str, workdir: str) -> set[str]:
    """Each recorded name copies in full, and every blob it reaches is there with its digest."""
    reached: set[str] = set()
    for name in index_names(layout):
        skopeo_raw(layout, name)
        reached |= skopeo_reached(layout, name, workdir)
    paths = {os.path.join(layout, "blobs", "sha256", digest[7:]): digest for digest in reached}
    missing = [digest for path, digest in paths.items() if not os.path.exists(path)]
    assert not missing, missing
    sums = sha256sum(sorted(paths))
    assert all(sums[path] == digest for path, digest in paths.items())
    return reached


def snapshot(path: str) -> dict[str, bytes]:
    found = {}
    for root, _directories, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as stream:
                found[os.path.relpath(full, path)] = stream.read()
    return found


def make_old(layout: str, seconds: int = 7200) -> None:
    """Blobs written long ago, so that the grace period does not protect them."""
    then = time.time() - seconds
    for digest in stored_blobs(layout):
        os.utime(os.path.join(layout, "blobs", "sha256", digest[7:]), (then, then))


@pytest.fixture
def layout(tmp_path):
    path = str(tmp_path / "layout")
    build_ours(path, NAME, tmp_path)
    return path


# ---- tag ---------------------------------------------------------------------


def test_tag_adds_names_and_their_platform_names(ansible, layout, tmp_path):
    before = snapshot(layout)
    args = {"layout": layout, "name": NAME, "tags": ["1.1", "mirror.example.com/os/gl:stable"]}
    checked = ansible.module(TAG, args, check=True, diff=True)
    assert snapshot(layout) == before
    tagged, again = run_tasks(ansible, str(tmp_path), [(TAG, args, {"diff": True}), (TAG, args)])
    new = ["registry.example.com/os/gardenlinux:1.1", "mirror.example.com/os/gl:stable"]
    expected = sorted(new + ["%s-%s" % (name, suffix) for name in new for suffix in PLATFORM_SUFFIXES])
    assert checked["changed"] is True and checked["names"] == expected
    assert tagged["changed"] is True and tagged["names"] == expected
    assert tagged["diff"]["before"] == dict.fromkeys(expected)
    assert again["changed"] is False and again["names"] == []
    assert tagged["digest"] == index_names(layout)[NAME]
    # Each new name holds the very bytes of its counterpart, and no blob was written.
    for name in new:
        assert skopeo_raw(layout, name) == skopeo_raw(layout, NAME)
        for suffix in PLATFORM_SUFFIXES:
            assert skopeo_raw(layout, "%s-%s" % (name, suffix)) == skopeo_raw(layout, "%s-%s" % (NAME, suffix))
    assert stored_blobs(layout) == {"sha256:" + path.rsplit("/", 1)[1] for path in before if path.startswith("blobs")}


def test_tag_follows_what_the_layout_has_not_a_fixed_list(ansible, layout, tmp_path):
    names = index_names(layout)
    # A name of the layout's own for the per-platform index, a manifest name dropped, another image beside it.
    with open(os.path.join(layout, "index.json"), "rb") as stream:
        index = json.load(stream)
    alias = dict(next(e for e in index["manifests"] if e["annotations"][REF_NAME] == NAME + "-baremetal"))
    alias["annotations"] = {REF_NAME: NAME + "-pxe"}
    index["manifests"] = [e for e in index["manifests"] if e["annotations"][REF_NAME] != NAME + "-virtualization-arm64"]
    index["manifests"].append(alias)
    with open(os.path.join(layout, "index.json"), "w") as stream:
        json.dump(index, stream)
    write_upstream_image(layout, NAME + "-rc1", tag="rc1")
    result = ansible.module(TAG, {"layout": layout, "name": NAME, "tags": ["2.0"]})
    suffixes = [s for s in PLATFORM_SUFFIXES if s != "virtualization-arm64"] + ["pxe"]
    base = "registry.example.com/os/gardenlinux:2.0"
    assert result["names"] == sorted([base] + ["%s-%s" % (base, s) for s in suffixes])
    assert index_names(layout)[base + "-pxe"] == names[NAME + "-baremetal"]

    plain = ansible.module(TAG, {"layout": layout, "name": NAME, "tags": ["3.0"], "platform_tags": False})
    assert plain["names"] == ["registry.example.com/os/gardenlinux:3.0"]


def test_tag_refuses_to_move_a_name_unless_forced(ansible, layout, tmp_path):
    other = write_upstream_image(layout, "registry.example.com/os/gardenlinux:1.1", tag="other")
    before = snapshot(layout)
    args = {"layout": layout, "name": NAME, "tags": ["1.1"]}
    refused = ansible.module(TAG, args)
    assert refused["failed"] is True
    assert "registry.example.com/os/gardenlinux:1.1 already points at %s" % other.digest in refused["msg"]
    assert "force" in refused["msg"] and "\n" not in refused["msg"]
    assert snapshot(layout) == before
    moved = ansible.module(TAG, dict(args, force=True), diff=True)
    assert moved["changed"] is True
    assert moved["diff"]["before"]["registry.example.com/os/gardenlinux:1.1"] == other.digest
    assert index_names(layout)["registry.example.com/os/gardenlinux:1.1"] == index_names(layout)[NAME]


# ---- remove --------------------------------------------------------------------


def test_remove_names_with_their_platform_names_and_keep_blobs(ansible, layout, tmp_path):
    write_upstream_image(layout, "registry.example.com/os/upstream:1.0")
    ansible.module(TAG, {"layout": layout, "name": NAME, "tags": ["1.1"]})
    blobs = stored_blobs(layout)
    digest = index_names(layout)[NAME]
    args = {"layout": layout, "names": [NAME, "registry.example.com/os/not-there:1"]}
    before = snapshot(layout)
    checked = ansible.module(REMOVE, args, check=True)
    assert snapshot(layout) == before
    removed, again, other = run_tasks(
        ansible,
        str(tmp_path),
        [
            (REMOVE, args, {"diff": True}),
            (REMOVE, args),
            (REMOVE, {"layout": layout, "names": ["registry.example.com/os/gardenlinux:1.1"], "platform_tags": False}),
        ],
    )
    gone = sorted([NAME] + ["%s-%s" % (NAME, suffix) for suffix in PLATFORM_SUFFIXES])
    assert checked["changed"] is True and checked["removed"] == gone
    assert removed["changed"] is True and removed["removed"] == gone
    assert removed["diff"]["before"][NAME] == digest and removed["diff"]["after"] == {}
    assert again["changed"] is False and again["removed"] == []
    assert other["removed"] == ["registry.example.com/os/gardenlinux:1.1"]
    names = index_names(layout)
    assert sorted(names) == sorted(
        ["registry.example.com/os/upstream:1.0"]
        + ["registry.example.com/os/gardenlinux:1.1-%s" % suffix for suffix in PLATFORM_SUFFIXES]
    )
    assert stored_blobs(layout) == blobs


def test_removing_a_name_that_is_not_there_warns_and_changes_nothing(ansible, layout):
    ansible.module(TAG, {"layout": layout, "name": NAME, "tags": ["1.1"]})
    before = snapshot(layout)
    missing = "registry.example.com/os/gardenlinux:1.0-typo"
    result = ansible.module(REMOVE, {"layout": layout, "names": [missing]})
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is False and result["removed"] == []
    assert result["warnings"] == ["names: %s is not in the layout %s; nothing removed for it" % (missing, layout)]
    assert snapshot(layout) == before
    # A name that is there is removed without a warning, beside one that is not.
    mixed = ansible.module(REMOVE, {"layout": layout, "names": ["registry.example.com/os/gardenlinux:1.1", missing]})
    assert mixed["changed"] is True and "registry.example.com/os/gardenlinux:1.1" in mixed["removed"]
    assert [line.split(" is not in ")[0] for line in mixed["warnings"]] == ["names: " + missing]


# ---- prune ---------------------------------------------------------------------


def test_prune_frees_exactly_the_unreachable_blobs(ansible, tmp_path):
    layout = str(tmp_path / "layout")
    build_ours(layout, NAME, tmp_path)
    build_ours(layout, "registry.example.com/os/gardenlinux:2.0", tmp_path, tag="two")
    write_upstream_image(layout, "registry.example.com/os/upstream:1.0", layer_format="tar+gzip")
    ansible.module(REMOVE, {"layout": layout, "names": [NAME]})
    make_old(layout)
    # A blob written just now that no name reaches: the grace period keeps it.
    fresh = (
        subprocess.run(["sha256sum"], input=b"written a moment ago", capture_output=True, check=True)
        .stdout.split()[0]
        .decode()
    )
    with open(os.path.join(layout, "blobs", "sha256", fresh), "wb") as stream:
        stream.write(b"written a moment ago")

    kept = set()
    for name in index_names(layout):
        kept |= skopeo_reached(layout, name, str(tmp_path))
    unreachable = stored_blobs(layout) - kept - {"sha256:" + fresh}
    assert unreachable  # the removed image had blobs of its own
    sizes = {d: os.path.getsize(os.path.join(layout, "blobs", "sha256", d[7:])) for d in unreachable}

    checked = ansible.module(PRUNE, {"layout": layout}, check=True, diff=True)
    assert checked["changed"] is True and set(checked["digests"]) == unreachable
    assert checked["bytes_freed"] == sum(sizes.values()) and checked["blobs_kept_young"] == 1
    assert stored_blobs(layout) == kept | unreachable | {"sha256:" + fresh}

    pruned = ansible.module(PRUNE, {"layout": layout})
    assert pruned["changed"] is True and pruned["blobs_removed"] == len(unreachable)
    assert set(pruned["digests"]) == unreachable and pruned["bytes_freed"] == sum(sizes.values())
    assert stored_blobs(layout) == kept | {"sha256:" + fresh}
    assert assert_every_name_complete(layout, str(tmp_path)) == kept

    again = ansible.module(PRUNE, {"layout": layout})
    assert again["changed"] is False and again["blobs_removed"] == 0 and again["blobs_kept_young"] == 1
    assert ansible.module(PRUNE, {"layout": layout, "grace_period": 0})["digests"] == ["sha256:" + fresh]


def test_prune_refuses_when_a_name_reaches_a_missing_document(ansible, layout, tmp_path):
    ansible.module(REMOVE, {"layout": layout, "names": [NAME], "platform_tags": False})
    manifest = index_names(layout)[NAME + "-virtualization-amd64"]
    os.unlink(os.path.join(layout, "blobs", "sha256", manifest[7:]))
    before = snapshot(layout)
    result = ansible.module(PRUNE, {"layout": layout, "grace_period": 0})
    assert result["failed"] is True and "\n" not in result["msg"]
    # The first name (in index order) that reaches the lost manifest.
    assert result["msg"].startswith((NAME + "-virtualization", NAME + "-kvm"))
    assert manifest in result["msg"] and "nothing was pruned" in result["msg"]
    assert snapshot(layout) == before


def lock_waiters(lock_paths: t.Sequence[str], count: int, seconds: float = 300) -> list[str]:
    """Once `count` processes wait for a flock on these files, which file each waits for.

    /proc/locks lists a waiter after '->', with the device:inode of the file it waits for.
    """
    inodes = {":%d" % os.stat(path).st_ino: path for path in lock_paths if os.path.exists(path)}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with open("/proc/locks") as stream:
            waiting = [
                path
                for fields in (line.split() for line in stream)
                if "->" in fields
                for inode, path in inodes.items()
                if fields[fields.index("->") + 5].endswith(inode)
            ]
        if len(waiting) >= count:
            return waiting
        time.sleep(0.05)
    raise AssertionError("fewer than %d processes started waiting for %s" % (count, lock_paths))


def test_prune_waits_for_a_build_that_reuses_old_unnamed_blobs(ansible, tmp_path):
    """The window the grace period cannot cover: a build finds old blobs stored and names them later."""
    layout = str(tmp_path / "layout")
    artifacts = []
    for arch in ("amd64",):
        item = {"architecture": arch}
        for role in ("kernel", "initramfs", "rootfs"):
            path = tmp_path / ("%s-%s" % (arch, role))
            path.write_bytes(content(arch, role, 200000, "reuse"))
            item[role] = str(path)
        artifacts.append(item)
    build = {"layout": layout, "name": NAME, "artifacts": artifacts}
    assert ansible.module(BUILD, build)["changed"] is True
    ansible.module(REMOVE, {"layout": layout, "names": [NAME]})
    write_upstream_image(layout, "registry.example.com/os/garbage:1", tag="garbage")
    ansible.module(REMOVE, {"layout": layout, "names": ["registry.example.com/os/garbage:1"]})
    make_old(layout)
    garbage_and_image = stored_blobs(layout)

    results: dict[str, dict] = {}
    index_lock = os.path.join(layout, ".ironcore.lock")
    with open(index_lock, "a+b") as held:
        # The rebuild stores nothing new (every blob is there) and then waits here to record its names.
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        builder = threading.Thread(target=lambda: results.update(build=ansible.module(BUILD, build)))
        builder.start()
        lock_waiters([index_lock], 1)
        pruner = threading.Thread(
            target=lambda: results.update(prune=ansible.module(PRUNE, {"layout": layout, "grace_period": 0}))
        )
        pruner.start()
        # The prune waits too, and for the blob lock the build holds: once it got past that lock it could
        # win this index lock before the build and take the blobs the build is about to name.
        blobs_lock = os.path.join(layout, ".ironcore.blobs.lock")
        waiting = lock_waiters([index_lock, blobs_lock], 2)
        assert sorted(waiting) == sorted([index_lock, blobs_lock]), waiting
        # Still all there while both wait.
        assert stored_blobs(layout) == garbage_and_image
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    builder.join()
    pruner.join()
    assert results["build"]["changed"] is True, results["build"]
    assert results["prune"].get("failed") is not True, results["prune"]
    image = assert_every_name_complete(layout, str(tmp_path))
    assert stored_blobs(layout) == image
    assert set(results["prune"]["digests"]) == garbage_and_image - image


def _artifacts(tmp_path, label: str) -> list[dict]:
    item = {"architecture": "amd64"}
    for role in ("kernel", "initramfs", "rootfs"):
        path = tmp_path / ("%s-%s" % (label, role))
        path.write_bytes(content("amd64", role, 300000, label))
        item[role] = str(path)
    return [item]


def test_builds_and_prunes_running_together_keep_every_name_complete(ansible, tmp_path):
    layout = str(tmp_path / "layout")
    previous: list[str] = []
    for round_number in range(3):
        if previous:
            ansible.module(REMOVE, {"layout": layout, "names": previous})
        jobs = []
        for number in range(3):
            label = "r%d-b%d" % (round_number, number)
            name = "registry.example.com/os/concurrent:%s" % label
            jobs.append((BUILD, {"layout": layout, "name": name, "artifacts": _artifacts(tmp_path, label)}))
        # Prunes start once the layout exists; they rely on the lock alone (grace_period 0).
        if round_number:
            jobs[1:1] = [(PRUNE, {"layout": layout, "grace_period": 0})] * 2
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(lambda job: ansible.module(*job), jobs))
        assert not any(result.get("failed") for result in results), [r.get("msg") for r in results]
        previous = [args["name"] for module, args in jobs if module == BUILD]
        recorded = index_names(layout)
        assert set(previous) <= set(recorded)
        assert_every_name_complete(layout, str(tmp_path))
    final = ansible.module(PRUNE, {"layout": layout, "grace_period": 0})
    assert stored_blobs(layout) == assert_every_name_complete(layout, str(tmp_path)), final


# ---- info: listing a layout ---------------------------------------------------------


def test_info_lists_every_name_with_platforms_and_size(ansible, tmp_path):
    layout = str(tmp_path / "layout")
    build_ours(layout, NAME, tmp_path)
    upstream = write_upstream_image(layout, "registry.example.com/os/upstream:1.0", architectures=("arm64",))
    listing = ansible.module(INFO, {"layout": layout})
    assert listing["changed"] is False
    images = {image["name"]: image for image in listing["images"]}
    assert sorted(images) == sorted(index_names(layout))
    pairs = [(p["platform"], p["architecture"]) for p in images[NAME]["platforms"]]
    assert pairs == [
        ("baremetal", "amd64"),
        ("virtualization", "amd64"),
        ("baremetal", "arm64"),
        ("virtualization", "arm64"),
    ]
    assert images[NAME + "-virtualization"]["platforms"] == [
        {"platform": "virtualization", "architecture": "amd64"},
        {"platform": "virtualization", "architecture": "arm64"},
    ]
    assert images[NAME + "-baremetal-arm64"]["platforms"] == [{"platform": "baremetal", "architecture": "arm64"}]
    assert [
        (p["platform"], p["architecture"]) for p in images["registry.example.com/os/upstream:1.0"]["platforms"]
    ] == [
        ("baremetal", "arm64"),
        ("virtualization", "arm64"),
    ]
    assert images["registry.example.com/os/upstream:1.0"]["digest"] == upstream.digest
    for name, image in images.items():
        # Each blob once, as the files skopeo copies for the name.
        reached = skopeo_reached(layout, name, str(tmp_path))
        expected = sum(os.path.getsize(os.path.join(layout, "blobs", "sha256", d[7:])) for d in reached)
        assert image["size"] == expected, name
        assert image["digest"] == index_names(layout)[name]


# ---- signatures and referrers ----------------------------------------------------------


def signed_and_referred(ansible, layout: str, workdir) -> set[str]:
    """The image signed by ironcore_image_sign and given a referrer; returns the names of both kinds."""
    key = make_key(workdir, "lifecycle")
    signed = ansible.module(SIGN, {"layout": layout, "name": NAME, "key": key["sec1"], "signature_format": "legacy"})
    assert signed["changed"] is True, signed
    store = LayoutStore(layout)
    subject = {key: store.resolve(NAME)[key] for key in ("mediaType", "digest", "size")}
    blob = ReferrerBlob("application/json", data=b'{"statement": "about 1.0"}')
    assert attach_referrer(store, subject, "application/vnd.in-toto+json", [blob])[0] is True
    attachments = {name for name in index_names(layout) if name.endswith(".sig") or name.startswith("sha256-")}
    # The combined index, the two platform indexes its platform tags name and its four manifests are signed;
    # the index has the referrer.
    assert len(attachments) == len(signed["signed"]) + 1 == 8
    return attachments


def test_signatures_and_referrers_go_with_the_last_name_of_their_image(ansible, tmp_path):
    layout = str(tmp_path / "layout")
    build_ours(layout, NAME, tmp_path)
    write_upstream_image(layout, UPSTREAM)
    ansible.module(TAG, {"layout": layout, "name": NAME, "tags": ["1.1"]})
    attachments = signed_and_referred(ansible, layout, tmp_path)
    make_old(layout)

    # While the image is named, a prune keeps its signatures, its referrers and everything they reach.
    before = snapshot(layout)
    kept = ansible.module(PRUNE, {"layout": layout, "grace_period": 0})
    assert kept["changed"] is False and kept["names_removed"] == [] and kept["blobs_removed"] == 0
    assert snapshot(layout) == before

    # 1.1 still names the same image: its signatures and referrers stay.
    first = ansible.module(REMOVE, {"layout": layout, "names": [NAME]})
    assert not attachments & set(first["removed"])
    assert attachments <= set(index_names(layout))

    # The last name goes: they go with it, and then a prune frees every blob of the image.
    checked = ansible.module(
        REMOVE, {"layout": layout, "names": ["registry.example.com/os/gardenlinux:1.1"]}, check=True
    )
    assert attachments <= set(checked["removed"]) and attachments <= set(index_names(layout))
    last = ansible.module(REMOVE, {"layout": layout, "names": ["registry.example.com/os/gardenlinux:1.1"]})
    assert attachments <= set(last["removed"])
    assert sorted(index_names(layout)) == [UPSTREAM]
    pruned = ansible.module(PRUNE, {"layout": layout, "grace_period": 0})
    assert pruned["changed"] is True and pruned["names_removed"] == []
    assert stored_blobs(layout) == skopeo_reached(layout, UPSTREAM, str(tmp_path))


def test_prune_drops_signatures_and_referrers_no_name_reaches(ansible, tmp_path):
    """Left behind by an older release's remove: dropped by prune, with the blobs only they reached."""
    layout = str(tmp_path / "layout")
    build_ours(layout, NAME, tmp_path)
    write_upstream_image(layout, UPSTREAM)
    attachments = signed_and_referred(ansible, layout, tmp_path)
    store = OciLayout(layout)
    with store.locked():
        store.drop_refs(set(index_names(layout)) - attachments - {UPSTREAM})

    # Written just now: the grace period keeps them (a copy may be about to name their image).
    young = ansible.module(PRUNE, {"layout": layout})
    assert young["names_removed"] == [] and set(index_names(layout)) == attachments | {UPSTREAM}

    make_old(layout)
    before = snapshot(layout)
    checked = ansible.module(PRUNE, {"layout": layout, "grace_period": 0}, check=True, diff=True)
    assert checked["changed"] is True and checked["names_removed"] == sorted(attachments)
    assert snapshot(layout) == before
    pruned = ansible.module(PRUNE, {"layout": layout, "grace_period": 0})
    assert pruned["changed"] is True and pruned["names_removed"] == sorted(attachments)
    assert sorted(index_names(layout)) == [UPSTREAM]
    assert stored_blobs(layout) == skopeo_reached(layout, UPSTREAM, str(tmp_path))
    assert ansible.module(PRUNE, {"layout": layout, "grace_period": 0})["changed"] is False


# ---- bad input -------------------------------------------------------------------------


def test_bad_input_is_one_line_and_changes_nothing(ansible, layout, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data").write_text("keep me")
    missing = str(tmp_path / "missing")
    before = snapshot(layout)
    cases = [
        (
            (TAG, {"layout": layout, "name": NAME, "tags": ["Not A/Tag"]}),
            "tags[0]: neither a tag nor a valid reference",
        ),
        (
            (TAG, {"layout": layout, "name": NAME, "tags": ["ok", "r.io/x@sha256:" + "a" * 64]}),
            "tags[1]: r.io/x@sha256:",
        ),
        ((TAG, {"layout": layout, "name": NAME, "tags": []}), "tags must list at least one new name"),
        ((TAG, {"layout": layout, "name": NAME + "-nope", "tags": ["x"]}), "is not recorded in layout"),
        ((TAG, {"layout": str(a_file), "name": NAME, "tags": ["x"]}), "exists and is not a directory"),
        ((REMOVE, {"layout": missing, "names": [NAME]}), "layout: %s does not exist" % missing),
        ((REMOVE, {"layout": str(a_file), "names": [NAME]}), "exists and is not a directory"),
        ((PRUNE, {"layout": str(foreign)}), "is not an OCI image layout (no oci-layout file)"),
        ((PRUNE, {"layout": missing}), "layout: %s does not exist" % missing),
        ((PRUNE, {"layout": str(a_file)}), "exists and is not a directory"),
        ((PRUNE, {"layout": layout, "grace_period": -1}), "grace_period must be 0 or more seconds"),
        ((INFO, {"layout": str(a_file)}), "exists and is not a directory"),
        ((INFO, {"layout": missing}), "does not exist"),
        ((INFO, {"layout": str(foreign)}), "is not an OCI image layout"),
        ((INFO, {"layout": layout, "platform": "baremetal"}), "name"),
    ]
    results = run_tasks(ansible, str(tmp_path), [case for case, _message in cases])
    for (case, message), result in zip(cases, results):
        assert result.get("failed") is True, (case, result)
        assert message in result["msg"], (message, result["msg"])
        assert "\n" not in result["msg"] and "Traceback" not in result["msg"]
    assert snapshot(layout) == before
    assert a_file.read_text() == "keep me" and os.listdir(foreign) == ["data"] and not os.path.exists(missing)


# ---- retention on a layout (keep, keep_tags, order) ----------------------------------------


def test_prune_keep_on_a_layout_drops_old_releases_with_their_attachments(ansible, tmp_path):
    """Three releases of one repository and another repository's image: keep 1 (and lts-*) per repository."""
    layout = str(tmp_path / "layout")
    for version in ("1.0", "1.1", "1.2"):
        build_ours(layout, NAME.replace("1.0", version), tmp_path, tag="keep" + version)
    write_upstream_image(layout, UPSTREAM)
    ansible.module(TAG, {"layout": layout, "name": NAME.replace("1.0", "1.1"), "tags": ["lts-1"]})
    attachments = signed_and_referred(ansible, layout, tmp_path)
    make_old(layout)
    names = index_names(layout)
    old = sorted(name for name in names if name.startswith(NAME) and not name.endswith(tuple(attachments)))
    args = {"layout": layout, "grace_period": 0, "keep": 1, "keep_tags": ["lts-*"]}
    before = snapshot(layout)

    checked = ansible.module(PRUNE, args, check=True, diff=True)

    assert checked["changed"] is True, checked
    assert checked["releases_removed"] == [{"tags": old, "digest": names[NAME]}]
    assert {r["digest"] for r in checked["releases_kept"]} == {
        names[NAME.replace("1.0", "1.1")],
        names[NAME.replace("1.0", "1.2")],
        names[UPSTREAM],
    }
    assert checked["removed"] == old and checked["names_removed"] == sorted(attachments)
    # With name, only that repository's releases count: the upstream image is its only one, and stays.
    upstream = ansible.module(PRUNE, dict(args, name=UPSTREAM.rsplit(":", 1)[0], keep=0, keep_tags=[]), check=True)
    assert [r["digest"] for r in upstream["releases_removed"]] == [names[UPSTREAM]], upstream
    assert upstream["releases_kept"] == [] and upstream["removed"] == [UPSTREAM]
    assert snapshot(layout) == before

    pruned = ansible.module(PRUNE, args)

    assert pruned["changed"] is True, pruned
    for key in ("releases_removed", "releases_kept", "removed", "names_removed", "manifests_deleted", "digests"):
        assert pruned[key] == checked[key], key
    assert names[NAME] in pruned["manifests_deleted"]
    left = index_names(layout)
    assert not set(old) & set(left) and not attachments & set(left)
    assert "registry.example.com/os/gardenlinux:lts-1-baremetal-amd64" in left and UPSTREAM in left
    # Every name left copies in full, and nothing but what they reach is stored.
    assert stored_blobs(layout) == assert_every_name_complete(layout, str(tmp_path))
    assert ansible.module(PRUNE, args)["changed"] is False
