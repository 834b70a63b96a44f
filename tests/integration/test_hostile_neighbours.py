"""Hostile neighbours: users who can write to dest, a layout or a state directory, and what they plant there.

The modules run as root on boot servers and hypervisors. Each test plants
the attack in real directories (symlinks, hard links, forged records,
crafted layouts), runs the modules through ansible, and checks with
independent tools that nothing was written where it must not be and that
the run ended in correct behaviour or one clean line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest
from helpers.images import write_raw_document, write_upstream_image
from helpers.tasks import run_tasks

from ansible_collections.ironcore.image.plugins.module_utils._model import OCI_INDEX, OCI_MANIFEST

FETCH = "ironcore.image.ironcore_image_fetch"
BUILD = "ironcore.image.ironcore_image_build"
INFO = "ironcore.image.ironcore_image_info"
IMAGE = "registry.example.com/os/neighbours:1.0"
NOBODY = 65534
STATE = ".ironcore-fetch.state.json"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    layout = str(tmp_path_factory.mktemp("neighbours") / "layout")
    return layout, write_upstream_image(layout, IMAGE, architectures=("amd64",))


def fetch_args(layout: str, dest, **extra) -> dict:
    args = {"layout": layout, "name": IMAGE, "platform": "baremetal", "architecture": "amd64", "dest": str(dest)}
    args.update(extra)
    return args


def sha256sum(path) -> str:
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True).stdout
    return "sha256:" + out.split()[0]


def partial_name(filename: str, digest: str) -> str:
    """The predictable name a partial file of `filename` holding blob `digest` gets."""
    return ".ironcore-fetch.%s.%s.partial" % (filename, digest.split(":", 1)[1][:16])


def one_line_failure(result: dict, *fragments: str) -> None:
    assert result.get("failed") is True, result
    assert "\n" not in result["msg"] and "Traceback" not in result["msg"], result["msg"]
    for fragment in fragments:
        assert fragment in result["msg"], result["msg"]


def delivered(written, roles=("initramfs", "kernel", "rootfs")) -> dict[str, bytes]:
    return {role: written.files[("amd64", role)] for role in roles}


def regular_files(dest) -> dict[str, bytes]:
    return {
        name: (dest / name).read_bytes()
        for name in sorted(os.listdir(dest))
        if (dest / name).is_file() and not (dest / name).is_symlink()
    }


# ---- 1. links planted where the fetch writes ---------------------------------------------------


def test_links_planted_under_the_old_bookkeeping_names_are_removed_not_followed(ansible, image, tmp_path):
    """Earlier versions wrote dest/.ironcore-fetch.* by path: a symlink there once made root write anywhere."""
    layout, written = image
    dest = tmp_path / "boot"
    dest.mkdir()
    victims = tmp_path / "victims"
    victims.mkdir()
    (victims / "passwd").write_bytes(b"root:x:0:0\n")
    os.chmod(victims / "passwd", 0o644)
    rootfs = written.blobs[("amd64", "rootfs")]
    os.symlink(victims / "passwd", dest / partial_name("rootfs", rootfs))
    os.symlink(victims / "nologin", dest / ".ironcore-fetch.lock")
    os.symlink(victims / "passwd", dest / STATE)

    (result,) = run_tasks(ansible, str(tmp_path), [(FETCH, fetch_args(layout, dest))])

    assert result["changed"] is True, result
    assert (victims / "passwd").read_bytes() == b"root:x:0:0\n"
    assert os.stat(victims / "passwd").st_mode & 0o777 == 0o644
    assert sorted(os.listdir(victims)) == ["passwd"]
    assert sorted(os.listdir(dest)) == [".ironcore", "initramfs", "kernel", "rootfs"]
    assert regular_files(dest) == delivered(written)


@pytest.mark.parametrize("plant", ["symlink", "hard link"])
def test_partial_planted_in_a_shared_state_dir_is_refused(ansible, image, tmp_path, plant):
    """Even where sharing is allowed, a partial file that is a link is never written through."""
    layout, written = image
    shared = tmp_path / "shared-state"
    shared.mkdir()
    os.chmod(shared, 0o777)
    victim = tmp_path / "shadow"
    victim.write_bytes(b"secret hashes")
    os.chmod(victim, 0o640)
    name = partial_name("rootfs", written.blobs[("amd64", "rootfs")])
    if plant == "symlink":
        os.symlink(victim, shared / name)
    else:
        os.link(victim, shared / name)
    dest = tmp_path / "boot"
    args = fetch_args(layout, dest, state_dir=str(shared), allow_shared_dest=True, layers=["rootfs"])

    (result,) = run_tasks(ansible, str(tmp_path), [(FETCH, args)])

    one_line_failure(result, "rootfs", name, "refusing")
    assert victim.read_bytes() == b"secret hashes"
    assert os.stat(victim).st_mode & 0o777 == 0o640
    assert not (dest / "rootfs").exists()


def test_state_directory_swapped_for_a_symlink_is_refused(ansible, image, tmp_path):
    layout, _written = image
    dest = tmp_path / "boot"
    dest.mkdir()
    os.chmod(dest, 0o1777)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, dest / ".ironcore")

    (result,) = run_tasks(ansible, str(tmp_path), [(FETCH, fetch_args(layout, dest))])

    one_line_failure(result, ".ironcore is a symbolic link")
    assert os.listdir(elsewhere) == []
    assert sorted(os.listdir(dest)) == [".ironcore"]


def test_delivered_file_name_planted_as_a_link_is_replaced(ansible, image, tmp_path):
    """In a sticky shared dest (allowed), a link at a final name is replaced by the file, its target untouched."""
    layout, written = image
    dest = tmp_path / "boot"
    dest.mkdir()
    os.chmod(dest, 0o1777)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    os.symlink(victim, dest / "kernel")

    (result,) = run_tasks(ansible, str(tmp_path), [(FETCH, fetch_args(layout, dest))])

    assert result["changed"] is True, result
    assert victim.read_bytes() == b"keep me"
    assert not (dest / "kernel").is_symlink()
    assert regular_files(dest) == delivered(written)


# ---- directories other users can write to -------------------------------------------------------


@pytest.mark.parametrize("shared", ["mode 0777", "mode 0775", "owned by nobody"])
def test_shared_dest_is_refused_unless_allowed(ansible, image, tmp_path, shared):
    layout, written = image
    dest = tmp_path / "boot"
    dest.mkdir()
    if shared == "owned by nobody":
        os.chown(dest, NOBODY, NOBODY)
    else:
        os.chmod(dest, int(shared.split()[1], 8))

    refused, allowed, again = run_tasks(
        ansible,
        str(tmp_path),
        [
            (FETCH, fetch_args(layout, dest)),
            (FETCH, fetch_args(layout, dest, allow_shared_dest=True)),
            (FETCH, fetch_args(layout, dest, allow_shared_dest=True)),
        ],
    )

    one_line_failure(refused, "dest %s may be written by other users" % dest, "allow_shared_dest")
    assert allowed["changed"] is True and again["changed"] is False, (allowed, again)
    assert regular_files(dest) == delivered(written)


def test_sticky_world_writable_dest_is_accepted(ansible, image, tmp_path):
    layout, written = image
    dest = tmp_path / "boot"
    dest.mkdir()
    os.chmod(dest, 0o1777)
    (result,) = run_tasks(ansible, str(tmp_path), [(FETCH, fetch_args(layout, dest))])
    assert result["changed"] is True, result
    assert regular_files(dest) == delivered(written)


def test_shared_layout_is_refused_by_fetch_and_build(ansible, tmp_path):
    layout = tmp_path / "layout"
    written = write_upstream_image(str(layout), IMAGE, architectures=("amd64",))
    os.chmod(layout, 0o777)
    before = sorted(os.listdir(layout))
    rootfs = tmp_path / "rootfs.img"
    rootfs.write_bytes(b"new rootfs " * 100)
    build = {
        "layout": str(layout),
        "name": "registry.example.com/os/other:1",
        "artifacts": [{"architecture": "amd64", "rootfs": str(rootfs)}],
        "platforms": ["virtualization"],
    }
    dest = tmp_path / "boot"
    fetched, built, built_allowed = run_tasks(
        ansible,
        str(tmp_path),
        [(FETCH, fetch_args(str(layout), dest)), (BUILD, build), (BUILD, dict(build, allow_shared_dest=True))],
    )
    one_line_failure(fetched, "layout %s may be written by other users" % layout)
    one_line_failure(built, "layout %s may be written by other users" % layout)
    assert not dest.exists()
    assert built_allowed["changed"] is True, built_allowed
    assert set(before) <= set(os.listdir(layout))
    assert written.digest in (layout / "index.json").read_text()


# ---- the state record -----------------------------------------------------------------------------


def forge_record(record, path) -> None:
    """Claim in the state record that `path`, as it is now, holds the blob it had."""
    document = json.loads(record.read_bytes())
    status = os.stat(path)
    identity = [status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns]
    document["files"][os.path.basename(path)]["identity"] = identity
    with open(record, "r+") as stream:
        stream.truncate()
        stream.write(json.dumps(document))


@pytest.mark.parametrize("forgery", ["owned by nobody", "group-writable", "symlink"])
def test_forged_state_record_only_makes_the_fetch_hash_more(ansible, image, tmp_path, forgery):
    """A record that says a tampered file is current is trusted only when it is plainly ours."""
    layout, written = image
    args = fetch_args(layout, tmp_path / "boot", layers=["rootfs"])
    control = fetch_args(layout, tmp_path / "control", layers=["rootfs"])
    first = run_tasks(ansible, str(tmp_path), [(FETCH, args), (FETCH, control)])
    assert all(result["changed"] for result in first), first
    for dest in (tmp_path / "boot", tmp_path / "control"):
        with open(dest / "rootfs", "r+b") as stream:
            stream.write(b"EVIL")
        forge_record(dest / ".ironcore" / STATE, dest / "rootfs")
    record = tmp_path / "boot" / ".ironcore" / STATE
    if forgery == "owned by nobody":
        os.chown(record, NOBODY, NOBODY)
    elif forgery == "group-writable":
        os.chmod(record, 0o660)
    else:
        os.rename(record, tmp_path / "planted.json")
        os.symlink(tmp_path / "planted.json", record)

    forged, trusted = run_tasks(ansible, str(tmp_path), [(FETCH, args), (FETCH, control)])

    # The control proves the forgery would work if the record were trusted.
    assert trusted["changed"] is False and (tmp_path / "control" / "rootfs").read_bytes().startswith(b"EVIL")
    assert forged["changed"] is True, forged
    assert sha256sum(tmp_path / "boot" / "rootfs") == written.blobs[("amd64", "rootfs")]


def test_state_record_of_an_earlier_version_in_dest_is_not_trusted(ansible, image, tmp_path):
    """Version 1 records sat in dest and had no ctime: the file is hashed again, and the old record removed."""
    layout, written = image
    dest = tmp_path / "boot"
    (first,) = run_tasks(ansible, str(tmp_path), [(FETCH, fetch_args(layout, dest, layers=["rootfs"]))])
    assert first["changed"] is True
    shutil.rmtree(dest / ".ironcore")
    with open(dest / "rootfs", "r+b") as stream:
        stream.write(b"EVIL")
    status = os.stat(dest / "rootfs")
    old = {
        "version": 1,
        "files": {
            "rootfs": {
                "digest": written.blobs[("amd64", "rootfs")],
                "content_digest": written.blobs[("amd64", "rootfs")],
                "identity": [status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns],
            }
        },
    }
    (dest / STATE).write_text(json.dumps(old))
    (dest / ".ironcore-fetch.lock").write_bytes(b"")
    (dest / partial_name("rootfs", "sha256:" + "0" * 64)).write_bytes(b"stale")

    (again,) = run_tasks(ansible, str(tmp_path), [(FETCH, fetch_args(layout, dest, layers=["rootfs"]))])

    assert again["changed"] is True, again
    assert sha256sum(dest / "rootfs") == written.blobs[("amd64", "rootfs")]
    assert sorted(os.listdir(dest)) == [".ironcore", "rootfs"]


# ---- 5. state out of the served directory --------------------------------------------------------


def test_dest_holds_only_the_delivered_files_and_the_private_state_dir(ansible, image, tmp_path):
    layout, written = image
    dest = tmp_path / "boot"
    first, second = run_tasks(ansible, str(tmp_path), [(FETCH, fetch_args(layout, dest))] * 2)
    assert first["changed"] is True and second["changed"] is False, (first, second)
    assert sorted(os.listdir(dest)) == [".ironcore", "initramfs", "kernel", "rootfs"]
    assert os.stat(dest / ".ironcore").st_mode & 0o777 == 0o700
    assert sorted(os.listdir(dest / ".ironcore")) == [".ironcore-fetch.lock", STATE, "progress.json"]
    assert regular_files(dest) == delivered(written)


def test_state_dir_outside_dest(ansible, image, tmp_path):
    layout, written = image
    dest = tmp_path / "boot"
    state = tmp_path / "var" / "fetch-state"
    args = fetch_args(layout, dest, state_dir=str(state))
    first, second, into_dest = run_tasks(
        ansible, str(tmp_path), [(FETCH, args), (FETCH, args), (FETCH, dict(args, state_dir=str(dest)))]
    )
    assert first["changed"] is True and second["changed"] is False, (first, second)
    assert sorted(os.listdir(dest)) == ["initramfs", "kernel", "rootfs"]
    assert sorted(os.listdir(state)) == [".ironcore-fetch.lock", STATE, "progress.json"]
    assert os.stat(state).st_mode & 0o777 == 0o700
    one_line_failure(into_dest, "state_dir must not be dest itself")
    assert regular_files(dest) == delivered(written)


def test_state_dir_on_another_filesystem_keeps_partials_on_dests(ansible, image, tmp_path):
    """The final rename cannot cross filesystems: partials stay in dest/.ironcore, the record goes to state_dir."""
    layout, written = image
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the test directory")
    state = tempfile.mkdtemp(prefix="ironcore-state-", dir="/dev/shm")
    try:
        dest = tmp_path / "boot"
        args = fetch_args(layout, dest, state_dir=state)
        first, second = run_tasks(ansible, str(tmp_path), [(FETCH, args)] * 2)
        assert first["changed"] is True and second["changed"] is False, (first, second)
        assert sorted(os.listdir(state)) == [".ironcore-fetch.lock", STATE, "progress.json"]
        assert sorted(os.listdir(dest)) == [".ironcore", "initramfs", "kernel", "rootfs"]
        assert os.listdir(dest / ".ironcore") == []
        assert regular_files(dest) == delivered(written)
    finally:
        shutil.rmtree(state)


# ---- 2. the build digest cache --------------------------------------------------------------------


def skopeo_layers(layout, name: str) -> list[str]:
    """Layer digests of the one manifest `name` names: the index as skopeo reads it, the manifest by sha256sum."""
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "oci:%s:%s" % (layout, name)], check=True, capture_output=True
    ).stdout
    (entry,) = json.loads(raw)["manifests"]
    manifest = layout / "blobs" / "sha256" / entry["digest"].split(":", 1)[1]
    assert sha256sum(manifest) == entry["digest"]
    return [layer["digest"] for layer in json.loads(manifest.read_bytes())["layers"]]


def test_in_place_rewrite_with_mtime_restored_is_rebuilt(ansible, tmp_path):
    """cp -p / rsync --inplace -t: same inode, size and mtime, other bytes; the ctime gives it away."""
    layout = tmp_path / "layout"
    rootfs = tmp_path / "rootfs.img"
    rootfs.write_bytes(b"A" * 65536)
    args = {
        "layout": str(layout),
        "name": IMAGE,
        "artifacts": [{"architecture": "amd64", "rootfs": str(rootfs)}],
        "platforms": ["virtualization"],
        "platform_tags": False,
    }
    (first,) = run_tasks(ansible, str(tmp_path), [(BUILD, args)])
    assert first["changed"] is True
    status = os.stat(rootfs)
    with open(rootfs, "r+b") as stream:
        stream.write(b"B" * 65536)
    os.utime(rootfs, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert (os.stat(rootfs).st_ino, os.stat(rootfs).st_mtime_ns) == (status.st_ino, status.st_mtime_ns)

    second, third = run_tasks(ansible, str(tmp_path), [(BUILD, args), (BUILD, args)])

    assert second["changed"] is True and second["digest"] != first["digest"], (first, second)
    assert third["changed"] is False and third["digest"] == second["digest"]
    assert skopeo_layers(layout, IMAGE) == [sha256sum(rootfs)]


@pytest.mark.parametrize("forgery", ["ours (control)", "owned by nobody", "group-writable", "symlink"])
def test_forged_digest_cache_is_ignored(ansible, tmp_path, forgery):
    """A cache entry claiming the artifact is another blob of the layout is trusted only when the cache is ours."""
    layout = tmp_path / "layout"
    rootfs, kernel = tmp_path / "rootfs.img", tmp_path / "kernel"
    rootfs.write_bytes(b"the real rootfs " * 1000)
    kernel.write_bytes(b"the kernel " * 1000)
    args = {
        "layout": str(layout),
        "name": IMAGE,
        "artifacts": [
            {"architecture": "amd64", "kernel": str(kernel), "initramfs": str(kernel), "rootfs": str(rootfs)}
        ],
        "platforms": ["baremetal"],
        "platform_tags": False,
    }
    (first,) = run_tasks(ansible, str(tmp_path), [(BUILD, args)])
    assert first["changed"] is True
    cache_path = layout / "ironcore-digest-cache.json"
    cache = json.loads(cache_path.read_bytes())
    rootfs_key = next(key for key in cache if key.startswith(os.path.realpath(rootfs) + "|"))
    kernel_key = next(key for key in cache if key.startswith(os.path.realpath(kernel) + "|"))
    cache[rootfs_key].update(digest=cache[kernel_key]["digest"], size=cache[kernel_key]["size"])
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps(cache))
    os.unlink(cache_path)
    if forgery == "symlink":
        os.symlink(planted, cache_path)
    else:
        shutil.copy(planted, cache_path)
        if forgery == "owned by nobody":
            os.chown(cache_path, NOBODY, NOBODY)
        elif forgery == "group-writable":
            os.chmod(cache_path, 0o664)

    (rebuilt,) = run_tasks(ansible, str(tmp_path), [(BUILD, args)])

    if forgery == "ours (control)":
        # The cache is trusted when it is ours alone: the forgery would work, which is what the others must stop.
        assert rebuilt["digest"] != first["digest"], (first, rebuilt)
        return
    assert rebuilt["digest"] == first["digest"], (first, rebuilt)
    assert skopeo_layers(layout, IMAGE)[-1] == sha256sum(rootfs)


def test_layout_lock_planted_as_a_symlink_is_refused(ansible, tmp_path):
    layout = tmp_path / "layout"
    write_upstream_image(str(layout), IMAGE, architectures=("amd64",))
    os.unlink(layout / ".ironcore.lock")
    os.symlink(tmp_path / "nologin", layout / ".ironcore.lock")
    rootfs = tmp_path / "rootfs.img"
    rootfs.write_bytes(b"rootfs " * 100)
    args = {
        "layout": str(layout),
        "name": "registry.example.com/os/other:1",
        "artifacts": [{"architecture": "amd64", "rootfs": str(rootfs)}],
        "platforms": ["virtualization"],
    }
    (result,) = run_tasks(ansible, str(tmp_path), [(BUILD, args)])
    one_line_failure(result, ".ironcore.lock is a symbolic link")
    assert not os.path.lexists(tmp_path / "nologin")


# ---- 3. unbounded and hostile documents in a layout ----------------------------------------------


def test_manifest_blob_linked_to_dev_zero_fails_in_one_line(ansible, tmp_path):
    layout = tmp_path / "layout"
    document = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
    digest = write_raw_document(str(layout), "registry.example.com/os/zero:1", document)
    blob = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    os.unlink(blob)
    os.symlink("/dev/zero", blob)
    args = {"layout": str(layout), "name": "registry.example.com/os/zero:1"}
    fetched, described = run_tasks(
        ansible,
        str(tmp_path),
        [(FETCH, dict(args, platform="baremetal", architecture="amd64", dest=str(tmp_path / "boot"))), (INFO, args)],
    )
    for result in (fetched, described):
        one_line_failure(result, "is not a regular file")


def test_deeply_nested_documents_fail_in_one_line(ansible, tmp_path):
    layout = tmp_path / "layout"
    nested = b"[" * 200000 + b"]" * 200000
    write_raw_document(str(layout), "registry.example.com/os/deep:1", b'{"a":' + nested + b"}")
    args = {"layout": str(layout), "name": "registry.example.com/os/deep:1"}
    index_layout = tmp_path / "deep-index"
    write_upstream_image(str(index_layout), IMAGE, architectures=("amd64",))
    (index_layout / "index.json").write_bytes(nested)
    fetch_extra = {"platform": "baremetal", "architecture": "amd64", "dest": str(tmp_path / "boot")}
    results = run_tasks(
        ansible,
        str(tmp_path),
        [
            (FETCH, dict(args, **fetch_extra)),
            (INFO, args),
            (FETCH, dict(fetch_extra, layout=str(index_layout), name=IMAGE)),
        ],
    )
    for result in results:
        one_line_failure(result, "nested too deeply")
    assert not (tmp_path / "boot").exists() or os.listdir(tmp_path / "boot") == [".ironcore"]


def test_index_json_over_the_cap_is_refused(ansible, tmp_path):
    layout = tmp_path / "layout"
    write_upstream_image(str(layout), IMAGE, architectures=("amd64",))
    index = json.loads((layout / "index.json").read_bytes())
    index["padding"] = "x" * (4 * 1024 * 1024)
    (layout / "index.json").write_text(json.dumps(index))
    (result,) = run_tasks(ansible, str(tmp_path), [(INFO, {"layout": str(layout), "name": IMAGE})])
    one_line_failure(result, "index.json is larger than")


def test_index_with_too_many_entries_is_refused(ansible, tmp_path):
    layout = tmp_path / "layout"
    written = write_upstream_image(str(layout), IMAGE, architectures=("amd64",))
    manifest = written.manifests["amd64"]
    size = os.path.getsize(layout / "blobs" / "sha256" / manifest.split(":", 1)[1])
    entry = {"mediaType": OCI_MANIFEST, "digest": manifest, "size": size}
    many = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry] * 1025}).encode()
    write_raw_document(str(layout), "registry.example.com/os/many:1", many, OCI_INDEX)
    enough = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry] * 1024}).encode()
    write_raw_document(str(layout), "registry.example.com/os/enough:1", enough, OCI_INDEX)
    too_many, at_the_cap = run_tasks(
        ansible,
        str(tmp_path),
        [
            (INFO, {"layout": str(layout), "name": "registry.example.com/os/many:1"}),
            (INFO, {"layout": str(layout), "name": "registry.example.com/os/enough:1"}),
        ],
    )
    one_line_failure(too_many, "lists 1025 manifests, more than the 1024")
    assert at_the_cap.get("failed") is not True and len(at_the_cap["manifests"]) == 1024, at_the_cap.get("msg")
