from __future__ import annotations

import fcntl
import multiprocessing
import os

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _lifecycle as lifecycle
from ansible_collections.ironcore.image.plugins.module_utils._io import write_bytes_atomic
from ansible_collections.ironcore.image.plugins.module_utils._layout import (
    BLOBS_LOCK_FILE,
    BlobWalk,
    LayoutError,
    OciLayout,
)
from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json, descriptor_for
from ansible_collections.ironcore.image.plugins.module_utils._model import OCI_INDEX, OCI_MANIFEST

LAYER = "application/vnd.ironcore.image.rootfs"


def _layer(layout: OciLayout, data: bytes) -> dict:
    layout.put_bytes(data)
    return descriptor_for(LAYER, data)


def _manifest(layout: OciLayout, *layers: bytes, subject: dict | None = None) -> dict:
    config = canonical_json({})
    layout.put_bytes(config)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor_for("application/vnd.ironcore.image.config.v1+json", config),
        "layers": [_layer(layout, data) for data in layers],
    }
    if subject:
        document["subject"] = subject
    data = canonical_json(document)
    layout.put_bytes(data)
    return descriptor_for(OCI_MANIFEST, data)


def _index(layout: OciLayout, *entries: dict) -> dict:
    data = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)})
    layout.put_bytes(data)
    return descriptor_for(OCI_INDEX, data)


@pytest.fixture
def layout(tmp_path) -> OciLayout:
    store = OciLayout(str(tmp_path / "l"))
    store.ensure()
    return store


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("r.io/os/x:1.0", ("r.io/os/x", "1.0")),
        ("localhost:5000/x:1-baremetal", ("localhost:5000/x", "1-baremetal")),
        ("1.0", ("", "1.0")),
        ("r.io/os/x", None),
        ("r.io/os/x@sha256:" + "a" * 64, None),
        ("Not A/Name", None),
    ],
)
def test_split_name(name, split):
    assert lifecycle.split_name(name) == split


def test_new_name_bare_tag_stays_in_the_repository_anything_else_is_a_reference():
    assert lifecycle.new_name("1.1", "r.io/os/x", "tags[0]") == ("r.io/os/x", "1.1")
    assert lifecycle.new_name("other.io/y", "r.io/os/x", "tags[0]") == ("other.io/y", "latest")
    assert lifecycle.new_name("y:2", "r.io/os/x", "tags[0]") == ("y", "2")
    with pytest.raises(lifecycle.LifecycleError, match=r"^tags\[3\]: neither a tag nor a valid reference"):
        lifecycle.new_name("Bad Tag!", "r.io/os/x", "tags[3]")
    with pytest.raises(lifecycle.LifecycleError, match="names a digest"):
        lifecycle.new_name("r.io/x@sha256:" + "b" * 64, "r.io/os/x", "tags[0]")
    with pytest.raises(lifecycle.LifecycleError, match="give a full reference"):
        lifecycle.new_name("1.1", None, "tags[0]")


def test_platform_names_are_recognised_by_what_they_hold(layout):
    amd = _manifest(layout, b"amd rootfs")
    arm = _manifest(layout, b"arm rootfs")
    combined = _index(
        layout,
        dict(amd, platform={"os": "linux", "architecture": "amd64", "variant": "virtualization"}),
        dict(arm, platform={"os": "linux", "architecture": "arm64", "variant": "virtualization"}),
    )
    per_platform = _index(
        layout,
        dict(amd, platform={"os": "linux", "architecture": "amd64"}),
        dict(arm, platform={"os": "linux", "architecture": "arm64"}),
    )
    other = _manifest(layout, b"another image")
    # Another build with part of the same manifests, but a combined index of its own (variants).
    subset = _index(layout, dict(amd, platform={"os": "linux", "architecture": "amd64", "variant": "virtualization"}))
    layout.set_refs(
        {
            "r.io/x:1": combined,
            "r.io/x:1-virtualization": per_platform,
            "r.io/x:1-kvm": per_platform,
            "r.io/x:1-virtualization-amd64": amd,
            "r.io/x:1-rc1": other,
            "r.io/x:1-same": combined,
            "r.io/x:1-subset": subset,
            "r.io/y:1-virtualization": per_platform,
            "r.io/x:10-virtualization": per_platform,
        }
    )
    found = lifecycle.platform_names(BlobWalk(layout), layout.refs(), "r.io/x:1")
    assert found == {
        "virtualization": "r.io/x:1-virtualization",
        "kvm": "r.io/x:1-kvm",
        "virtualization-amd64": "r.io/x:1-virtualization-amd64",
    }
    # A plain manifest has no parts, so no platform names.
    assert lifecycle.platform_names(BlobWalk(layout), layout.refs(), "r.io/x:1-virtualization-amd64") == {}


def test_tag_plan_refuses_one_name_for_two_digests(layout):
    amd = _manifest(layout, b"amd rootfs")
    combined = _index(layout, dict(amd, platform={"os": "linux", "architecture": "amd64", "variant": "baremetal"}))
    per_platform = _index(layout, dict(amd, platform={"os": "linux", "architecture": "amd64"}))
    layout.set_refs({"r.io/x:1": combined, "r.io/x:1-baremetal": per_platform})
    params = {"name": "r.io/x:1", "tags": ["2", "2-baremetal"], "platform_tags": True, "force": False}
    with pytest.raises(lifecycle.LifecycleError, match=r"r\.io/x:2-baremetal would point at both"):
        lifecycle.plan_tag(layout, params)


def test_walk_counts_each_blob_once_and_follows_subject(layout):
    shared = b"rootfs both platforms share"
    one = _manifest(layout, shared, b"kernel")
    two = _manifest(layout, shared)
    index = _index(layout, one, two)
    signature = _manifest(layout, b"signature", subject=index)
    reached = BlobWalk(layout).reach(signature)
    assert index["digest"] in reached and one["digest"] in reached
    documents = [signature, index, one, two]
    layer_sizes = [len(shared), len(b"kernel"), len(b"signature"), len(canonical_json({}))]
    assert sum(reached.values()) == sum(d["size"] for d in documents) + sum(layer_sizes)
    os.unlink(layout.blob_path(two["digest"]))
    with pytest.raises(LayoutError, match="%s is missing" % two["digest"]):
        BlobWalk(layout).reach(index)


def test_prune_keeps_what_index_json_reaches_and_young_blobs(layout):
    kept = _manifest(layout, b"named")
    gone = _manifest(layout, b"unnamed")
    unnamed_root = _manifest(layout, b"root without a name")
    layout.set_refs({"r.io/x:1": kept})
    index = layout.read_index()
    index["manifests"].append(unnamed_root)
    write_bytes_atomic(layout.index_path, canonical_json(index))
    young = layout.put_bytes(b"just written")[0]
    old = os.path.getmtime(layout.blob_path(young)) - 100
    with layout.blob_directory(allow_shared=False) as directory:
        stored = [digest for digest, _stat in layout.stored_blobs(directory)]
    for digest in stored:
        if digest != young:
            os.utime(layout.blob_path(digest), (old, old))
    now = old + 150
    checked = lifecycle.prune_layout({"layout": layout.path, "grace_period": 60}, check_mode=True, now=now)
    expected = sorted([gone["digest"], descriptor_for(LAYER, b"unnamed")["digest"]])
    assert checked["digests"] == expected and checked["blobs_kept_young"] == 1
    assert all(layout.has_blob(digest) for digest in expected)
    pruned = lifecycle.prune_layout({"layout": layout.path, "grace_period": 60}, check_mode=False, now=now)
    assert pruned["digests"] == expected and pruned["bytes_freed"] == gone["size"] + len(b"unnamed")
    assert not any(layout.has_blob(digest) for digest in expected) and layout.has_blob(young)
    assert lifecycle.prune_layout({"layout": layout.path, "grace_period": 0}, False)["digests"] == [young]


def _try_lock(path: str, operation: int, answer) -> None:
    with open(path, "a+b") as stream:
        try:
            fcntl.flock(stream.fileno(), operation | fcntl.LOCK_NB)
        except BlockingIOError:
            answer.put("blocked")
        else:
            answer.put("got it")


def _other_process(path: str, operation: int) -> str:
    answer: multiprocessing.Queue[str] = multiprocessing.Queue()
    process = multiprocessing.Process(target=_try_lock, args=(path, operation, answer))
    process.start()
    process.join()
    return answer.get()


def test_builds_share_the_blob_lock_and_a_prune_excludes_them(layout):
    path = os.path.join(layout.path, BLOBS_LOCK_FILE)
    with layout.adding_blobs():
        assert _other_process(path, fcntl.LOCK_SH) == "got it"
        assert _other_process(path, fcntl.LOCK_EX) == "blocked"
    with layout.pruning():
        assert _other_process(path, fcntl.LOCK_SH) == "blocked"
    assert _other_process(path, fcntl.LOCK_EX) == "got it"


def test_layout_problems_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "foreign").mkdir()
    for path, message in [
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "file", "exists and is not a directory"),
        (tmp_path / "foreign", "is not an OCI image layout"),
    ]:
        with pytest.raises(lifecycle.LifecycleError, match=message):
            lifecycle.open_layout(str(path))


@pytest.mark.parametrize(
    "name, subject",
    [
        ("sha256-" + "ab" * 32, "sha256:" + "ab" * 32),
        ("r.io:5000/os/x:sha256-" + "ab" * 32 + ".sig", "sha256:" + "ab" * 32),
        ("r.io/os/x:sha256-" + "ab" * 32, "sha256:" + "ab" * 32),
        ("r.io/os/x:sha256-" + "ab" * 31, None),
        ("r.io/os/x:sha256-" + "AB" * 32, None),
        ("r.io/os/x:sha256-" + "ab" * 32 + ".att", None),
        ("r.io/os/x:1.0", None),
        ("sha256", None),
    ],
)
def test_attachment_names(name, subject):
    assert lifecycle.attachment_subject(name) == subject


def test_an_attachment_does_not_keep_its_subject_alive(layout):
    image = _manifest(layout, b"the image")
    referrer = _manifest(layout, b"about the image", subject=image)
    tag_index = _index(layout, referrer)
    layout.set_refs({"r.io/x:1": image, "sha256-" + image["digest"][7:]: tag_index})
    reached, orphans = lifecycle.reachable(layout)
    assert {referrer["digest"], tag_index["digest"], image["digest"]} <= reached and orphans == {}
    reached, orphans = lifecycle.reachable(layout, ignore={"r.io/x:1"})
    assert image["digest"] not in reached and referrer["digest"] not in reached
    assert orphans == {"sha256-" + image["digest"][7:]: image["digest"]}
    # While it may still be on its way to a name, it is kept (but still not its subject).
    reached, orphans = lifecycle.reachable(layout, young=lambda entry: True, ignore={"r.io/x:1"})
    assert referrer["digest"] in reached and image["digest"] not in reached and orphans == {}
