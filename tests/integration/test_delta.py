"""Delta fetch against a real registry: release B rebuilt from release A's file plus range GETs.

The images are real ext4 file systems made with mke2fs -d from a small tree;
B is the tree with files edited, added and removed, rebuilt from scratch.
Block indexes are attached as referrers from the test process, so that the
faults can attach wrong ones. Every result is read back with cmp.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from dataclasses import dataclass

import pytest
from helpers.counting import ByteCountingProxy
from helpers.images import skopeo_push
from helpers.inventory import local_host, outcomes, provision_slug, write_inventory
from helpers.layout_server import LayoutServer
from helpers.referrers_registry import ReferrersRegistry
from helpers.registry import blob_data_path, free_port

from ansible_collections.ironcore.image.plugins.module_utils._blockindex import (
    ARTIFACT_TYPE,
    LAYER_ANNOTATION,
    MEDIA_TYPE,
    BlockHasher,
    BlockIndex,
)
from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient
from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json, descriptor_for
from ansible_collections.ironcore.image.plugins.module_utils._model import CONFIG_MEDIA_TYPE, OCI_INDEX, OCI_MANIFEST
from ansible_collections.ironcore.image.plugins.module_utils._referrers import ReferrerBlob, attach_referrer
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import registry_options
from ansible_collections.ironcore.image.plugins.module_utils._store import RegistryStore

MODULE = "ironcore.image.ironcore_image_fetch"
PROVISION = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "playbooks", "provision.yml"
)
ROOTFS = "application/vnd.ironcore.image.rootfs"
IMAGE_MIB = 64
REPOSITORY = "delta/os"

pytestmark = pytest.mark.integration


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def same_bytes(left: str, right: str) -> bool:
    return subprocess.run(["cmp", "--quiet", left, right], check=False).returncode == 0


def write_tree(root: str, rng: random.Random, files: int = 120) -> None:
    for number in range(files):
        directory = os.path.join(root, "d%02d" % (number % 12))
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "f%03d" % number), "wb") as out:
            out.write(rng.randbytes(rng.randint(4096, 300_000)))


def update_tree(root: str, rng: random.Random) -> None:
    """What a package update does: small edits with an insertion, files removed, files added."""
    names = sorted(os.path.join(d, n) for d, _s, ns in os.walk(root) for n in ns)
    for path in names[:10]:
        with open(path, "rb") as stream:
            data = stream.read()
        middle = len(data) // 2
        with open(path, "wb") as out:
            out.write(data[:middle] + b"inserted by the update" + data[middle + 100 :])
    for path in names[10:15]:
        os.unlink(path)
    with open(os.path.join(root, "d00", "new-package.bin"), "wb") as out:
        out.write(rng.randbytes(1024 * 1024))


def make_ext4(tree: str, image: str) -> None:
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", tree, image, "%dM" % IMAGE_MIB],
        check=True,
        capture_output=True,
    )


@dataclass
class Pushed:
    name: str
    manifest: dict
    layer_digest: str
    layer_size: int
    path: str


def push_rootfs(registry, layout_dir: str, tag: str, rootfs: str, note: str, boot: bool = False) -> Pushed:
    """An image whose raw rootfs layer is `rootfs` (with `boot`, also a small kernel and initramfs, so that it
    serves both platforms); `note` makes its manifest its own."""
    layout = OciLayout(layout_dir)
    layout.ensure()
    config = canonical_json({"commandLine": "console=ttyS0 %s" % note})
    layout.put_bytes(config)
    with open(rootfs, "rb") as stream:
        blob = stream.read()
    layout.put_bytes(blob)
    layer = descriptor_for(ROOTFS, blob)
    layers = [layer]
    for role in ("initramfs", "kernel") if boot else ():
        data = ("%s of %s\n" % (role, note)).encode() * 100
        layout.put_bytes(data)
        layers.append(descriptor_for("application/vnd.ironcore.image." + role, data))
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor_for(CONFIG_MEDIA_TYPE, config),
            "layers": layers,
        }
    )
    layout.put_bytes(manifest)
    manifest_descriptor = descriptor_for(OCI_MANIFEST, manifest)
    entry = dict(manifest_descriptor, platform={"architecture": "amd64", "os": "linux"})
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
    layout.put_bytes(index)
    with layout.locked():
        layout.set_refs({tag: descriptor_for(OCI_INDEX, index)})
    name = "%s/%s:%s" % (registry.host, REPOSITORY, tag)
    skopeo_push(layout_dir, tag, name, registry.skopeo_flags("dest-"), registry.env)
    return Pushed(name, manifest_descriptor, layer["digest"], layer["size"], rootfs)


def index_of(path: str) -> BlockIndex:
    hasher = BlockHasher()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.finish(sha256_file(path))


def attach_index(registry, pushed: Pushed, data: bytes) -> None:
    store = RegistryStore(RegistryClient(registry.host, registry_options(registry.registry_args)), REPOSITORY)
    annotations = {LAYER_ANNOTATION: pushed.layer_digest}
    attach_referrer(
        store,
        {k: pushed.manifest[k] for k in ("mediaType", "digest", "size")},
        ARTIFACT_TYPE,
        [ReferrerBlob(MEDIA_TYPE, data=data, annotations=annotations)],
        annotations,
    )


@pytest.fixture(scope="module")
def releases(tmp_path_factory, registry_plain):
    """Rootfs files of release A and B (ext4), and B pushed under several tags, each its own manifest."""
    work = tmp_path_factory.mktemp("delta-releases")
    rng = random.Random(13)
    tree = str(work / "tree")
    write_tree(tree, rng)
    image_a, image_b = str(work / "a.ext4"), str(work / "b.ext4")
    make_ext4(tree, image_a)
    update_tree(tree, rng)
    make_ext4(tree, image_b)
    layout = str(work / "layout")
    return {
        "a": push_rootfs(registry_plain, layout, "a", image_a, "a"),
        "b": push_rootfs(registry_plain, layout, "b", image_b, "b"),
        "work": work,
        "layout": layout,
    }


def fetch(ansible, registry, name: str, dest: str, check: bool = False, **extra) -> dict:
    args = dict(registry.registry_args, name=name, platform="virtualization", architecture="amd64", dest=dest)
    args.update(extra)
    return ansible.module(MODULE, args, check=check)


def dest_with_release_a(tmp_path, releases) -> str:
    """A dest that holds release A's rootfs as a file the fetch has no record of."""
    dest = tmp_path / "dest"
    dest.mkdir()
    shutil.copyfile(releases["a"].path, dest / "rootfs")
    return str(dest)


def fault_image(registry, releases, tag: str, index: bytes | None) -> Pushed:
    pushed = push_rootfs(registry, releases["layout"], tag, releases["b"].path, tag)
    if index is not None:
        attach_index(registry, pushed, index)
    return pushed


def test_release_b_is_built_from_release_a_and_the_changed_blocks(ansible, registry_plain, releases, tmp_path):
    a, b = releases["a"], releases["b"]
    attach_index(registry_plain, a, index_of(a.path).encode())
    attach_index(registry_plain, b, index_of(b.path).encode())
    dest = str(tmp_path / "dest")
    first = fetch(ansible, registry_plain, a.name, dest)
    assert first["changed"] is True, first
    # No seed yet: the ext4 image's zero blocks stay holes, only the others are fetched.
    sparse = first["files"]["rootfs"]["delta"]
    assert sparse["used"] is True and sparse["seed_bytes"] == 0, sparse
    assert sparse["fetched_bytes"] + sparse["zero_bytes"] == a.layer_size, sparse
    second = fetch(ansible, registry_plain, b.name, dest)
    assert second["changed"] is True, second
    delta = second["files"]["rootfs"]["delta"]
    assert delta["used"] is True, delta
    assert same_bytes(os.path.join(dest, "rootfs"), b.path)
    # Only what changed came over the wire, in few requests.
    assert delta["fetched_bytes"] < 0.3 * b.layer_size, delta
    assert second["bytes_downloaded"] == delta["fetched_bytes"]
    assert 0 < delta["requests"] < 200
    assert delta["seed_bytes"] > 3 * delta["fetched_bytes"], delta
    # The zero blocks are holes: the file takes less room than its size.
    assert os.stat(os.path.join(dest, "rootfs")).st_blocks * 512 < b.layer_size
    again = fetch(ansible, registry_plain, b.name, dest)
    assert again["changed"] is False
    assert again["bytes_downloaded"] == 0
    # delta: never downloads the whole blob even with a seed at hand.
    (tmp_path / "never").mkdir()
    other = dest_with_release_a(tmp_path / "never", releases)
    never = fetch(ansible, registry_plain, b.name, other, delta="never")
    assert never["files"]["rootfs"]["delta"] == {"used": False, "reason": "delta: never"}
    assert never["bytes_downloaded"] == b.layer_size
    assert same_bytes(os.path.join(other, "rootfs"), b.path)


def test_seeds_given_elsewhere_are_used_and_bad_ones_skipped_with_a_warning(
    ansible, registry_plain, releases, tmp_path
):
    b = fault_image(registry_plain, releases, "seeds", index_of(releases["b"].path).encode())
    dest = str(tmp_path / "dest")
    seeds = [str(tmp_path), str(tmp_path / "missing"), releases["a"].path]
    result = fetch(ansible, registry_plain, b.name, dest, seeds=seeds)
    assert result["files"]["rootfs"]["delta"]["used"] is True, result
    assert same_bytes(os.path.join(dest, "rootfs"), b.path)
    warnings = " ".join(result.get("warnings", []))
    assert "is a directory" in warnings and "does not exist" in warnings
    # The seed was read whole to hash it, once: a second delta with it reads its cache entry instead.
    assert result["files"]["rootfs"]["delta"]["seed_hashed_bytes"] == os.path.getsize(releases["a"].path)
    entry = seed_cache_of(dest, releases["a"].path)
    before = os.stat(entry)
    os.unlink(os.path.join(dest, "rootfs"))
    again = fetch(ansible, registry_plain, b.name, dest, seeds=[releases["a"].path])
    assert again["files"]["rootfs"]["delta"]["used"] is True, again
    assert again["files"]["rootfs"]["delta"]["seed_hashed_bytes"] == 0, again
    assert same_bytes(os.path.join(dest, "rootfs"), b.path)
    # The seed's entry is the one the first run wrote: neither rewritten nor replaced.
    after = os.stat(entry)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def seed_cache_of(dest: str, seed: str) -> str:
    """The path of the seed hash cache entry under dest that records `seed` (its header names the seed)."""
    for directory, _dirs, files in os.walk(dest):
        for name in files:
            if name.startswith(".ironcore-fetch.seed."):
                with open(os.path.join(directory, name), "rb") as stream:
                    if json.loads(stream.readline()).get("path") == os.path.abspath(seed):
                        return os.path.join(directory, name)
    raise AssertionError("no seed cache entry under %s records %s" % (dest, seed))


def seed_caches(dest: str) -> dict[str, int]:
    """{name: size} of every seed hash cache the fetch keeps under dest (in its state directory)."""
    found = {}
    for directory, _dirs, files in os.walk(dest):
        for name in files:
            if name.startswith(".ironcore-fetch.seed."):
                found[name] = os.path.getsize(os.path.join(directory, name))
    return found


@pytest.mark.parametrize("fault", ["wrong_hashes", "other_size", "truncated", "small_blocks", "long_hashes"])
def test_a_bad_index_costs_a_full_fetch_never_a_wrong_byte(ansible, registry_plain, releases, tmp_path, fault):
    b_path = releases["b"].path
    good = index_of(b_path)
    if fault in ("small_blocks", "long_hashes"):
        # Valid, but finer than the build writes: 512-byte blocks, or 32-byte hashes. Either would make the
        # node's plan and seed cache grow past the layer's share (a seed cache of 1/32 of the seed).
        hasher = BlockHasher(512) if fault == "small_blocks" else BlockHasher(4096, 32, hash_name="sha256")
        with open(b_path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                hasher.update(chunk)
        index = hasher.finish(good.header.layer_digest).encode()
    elif fault == "wrong_hashes":
        # Claims every block of B is where release A has it: assembly would produce A.
        lying = index_of(releases["a"].path)
        index = BlockIndex(good.header, lying.hashes, lying.zeros).encode()
    elif fault == "other_size":
        with open(b_path, "rb") as stream:
            longer = BlockHasher()
            longer.update(stream.read() + bytes(4096))
        index = longer.finish(good.header.layer_digest).encode()
    else:
        index = good.encode()[: -(good.blocks * 4)]
    pushed = fault_image(registry_plain, releases, fault.replace("_", "-"), index)
    dest = dest_with_release_a(tmp_path, releases)
    result = fetch(ansible, registry_plain, pushed.name, dest)
    assert result["changed"] is True, result
    delta = result["files"]["rootfs"]["delta"]
    assert delta["used"] is False
    expected = {
        "wrong_hashes": "abandoned",
        "other_size": "not this layer",
        "truncated": "disagrees with its header",
        "small_blocks": "the block index has 512-byte blocks; a delta uses blocks of 4096 bytes",
        "long_hashes": "the block index has 32-byte hashes; a delta uses the build's 16-byte ones",
    }[fault]
    assert expected in delta["reason"], delta
    assert same_bytes(os.path.join(dest, "rootfs"), b_path)
    assert sha256_file(os.path.join(dest, "rootfs")) == pushed.layer_digest
    # What the index made the node keep on disk: never more than a 256th of the seed (A) or the file (B).
    largest = max(os.path.getsize(releases["a"].path), os.path.getsize(b_path))
    assert all(size <= largest // 256 + 4096 for size in seed_caches(dest).values()), seed_caches(dest)


def v1_index_by_hand(path: str, layer_digest: str) -> bytes:
    """A block index as releases before format v2 wrote it, made here without the collection's code: its header,
    the first 16 bytes of the sha256 of every 4 KiB block, and the map of all-zero blocks."""
    size = os.path.getsize(path)
    blocks = -(-size // 4096)
    header = {
        "blockSize": 4096,
        "blocks": blocks,
        "hash": "sha256",
        "hashLength": 16,
        "layer": {"digest": layer_digest, "size": size},
        "mediaType": MEDIA_TYPE,
        "version": 1,
    }
    hashes, zeros = bytearray(), bytearray(-(-blocks // 8))
    with open(path, "rb") as stream:
        for number, block in enumerate(iter(lambda: stream.read(4096), b"")):
            hashes += hashlib.sha256(block).digest()[:16]
            if not any(block):
                zeros[number // 8] |= 1 << (number % 8)
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n" + bytes(hashes) + bytes(zeros)


def test_a_delta_works_from_v1_and_v2_indexes_and_each_keeps_its_own_seed_cache(
    ansible, registry_plain, releases, tmp_path
):
    a, b = releases["a"], releases["b"]
    v1_a = push_rootfs(registry_plain, releases["layout"], "v1-a", a.path, "v1-a")
    attach_index(registry_plain, v1_a, v1_index_by_hand(a.path, a.layer_digest))
    v2_b = fault_image(registry_plain, releases, "v2-b", index_of(b.path).encode())
    dest = str(tmp_path / "dest")
    first = fetch(ansible, registry_plain, v1_a.name, dest)
    # No seed: a sparse fetch, with the v1 index as with a v2 one.
    sparse = first["files"]["rootfs"]["delta"]
    assert sparse["used"] is True and sparse["seed_bytes"] == 0 and sparse["zero_bytes"] > 0, first
    assert same_bytes(os.path.join(dest, "rootfs"), a.path)
    # The delivered file's cache entry came from the v1 index: sha256 hashes.
    (v1_cache,) = list(seed_caches(dest))
    assert ".sha256." in v1_cache, v1_cache
    # A v2 index: the sha256 entry of the seed is not read as xxh3-128 hashes; the seed is hashed again.
    second = fetch(ansible, registry_plain, v2_b.name, dest)
    delta = second["files"]["rootfs"]["delta"]
    assert delta["used"] is True and delta["seed_bytes"] > 3 * delta["fetched_bytes"], delta
    assert same_bytes(os.path.join(dest, "rootfs"), b.path)
    assert {name.split(".")[4] for name in seed_caches(dest)} == {"sha256", "xxh3-128"}, seed_caches(dest)
    # And back with the v1 index, release B's xxh3-128 entry in the cache: a delta all the same.
    third = fetch(ansible, registry_plain, v1_a.name, dest)
    delta = third["files"]["rootfs"]["delta"]
    assert third["changed"] is True and delta["used"] is True, third
    assert delta["fetched_bytes"] < 0.3 * a.layer_size, delta
    assert same_bytes(os.path.join(dest, "rootfs"), a.path)


def test_no_index_is_a_full_fetch(ansible, registry_plain, releases, tmp_path):
    pushed = fault_image(registry_plain, releases, "no-index", None)
    dest = dest_with_release_a(tmp_path, releases)
    result = fetch(ansible, registry_plain, pushed.name, dest)
    assert result["files"]["rootfs"]["delta"] == {
        "used": False,
        "reason": "the image has no block index for this layer",
    }
    assert same_bytes(os.path.join(dest, "rootfs"), pushed.path)


def test_connections_reset_between_ranges_do_not_stop_the_delta(
    ansible, registry_plain, fault_proxy, releases, tmp_path
):
    pushed = fault_image(registry_plain, releases, "resets", index_of(releases["b"].path).encode())
    proxy = fault_proxy(registry_plain)
    blob_path = "/blobs/%s" % pushed.layer_digest
    proxy.add("reset_response", method="GET", path=blob_path, after_bytes=20_000, times=3, skip=1)
    dest = dest_with_release_a(tmp_path, releases)
    name = pushed.name.replace(registry_plain.host, proxy.host)
    result = fetch(ansible, proxy, name, dest, retries=3)
    assert result["changed"] is True, result
    delta = result["files"]["rootfs"]["delta"]
    assert delta["used"] is True, delta
    assert same_bytes(os.path.join(dest, "rootfs"), pushed.path)
    ranges = [headers.get("range", "") for method, path, headers in proxy.requests if blob_path in path]
    # Every blob request is a single range, never the whole blob.
    assert ranges and all(r.startswith("bytes=") and "," not in r and not r.endswith("-") for r in ranges)
    assert sum(1 for _m, path, action in proxy.log if blob_path in path and action == "reset_response") == 3


def test_a_range_answered_with_the_whole_blob_means_a_full_fetch(
    ansible, registry_plain, fault_proxy, releases, tmp_path
):
    pushed = fault_image(registry_plain, releases, "no-range", index_of(releases["b"].path).encode())
    proxy = fault_proxy(registry_plain)
    proxy.add("drop_header", method="GET", path="/blobs/%s" % pushed.layer_digest, header="Range", times=-1)
    dest = dest_with_release_a(tmp_path, releases)
    result = fetch(ansible, proxy, pushed.name.replace(registry_plain.host, proxy.host), dest)
    assert result["changed"] is True, result
    delta = result["files"]["rootfs"]["delta"]
    assert delta["used"] is False and "whole blob" in delta["reason"], delta
    assert same_bytes(os.path.join(dest, "rootfs"), pushed.path)


@pytest.mark.parametrize("mirror", ["honours_ranges", "answers_200"])
def test_delta_ranges_through_a_mirror_cost_little_more_than_the_plan(
    ansible, registry_plain, releases, tmp_path, mirror
):
    pushed = fault_image(
        registry_plain, releases, "via-" + mirror.replace("_", "-"), index_of(releases["b"].path).encode()
    )
    servers = []
    if mirror == "honours_ranges":
        # docker-registry itself, as a registry mirror of the same repository.
        counted = ByteCountingProxy(registry_plain.host)
        entry = {"url": "http://%s" % counted.host}
    else:
        # A static layout server that answers every Range on the layer with 200 and the whole blob.
        servers.append(LayoutServer(releases["layout"], str(tmp_path / "requests.jsonl"), "--ignore-range"))
        counted = ByteCountingProxy("127.0.0.1:%d" % servers[0].port)
        entry = {"url": "http://%s" % counted.host, "type": "layout"}
    origin = ByteCountingProxy(registry_plain.host)
    dest = dest_with_release_a(tmp_path, releases)
    try:
        name = pushed.name.replace(registry_plain.host, origin.host)
        result = fetch(ansible, registry_plain, name, dest, mirrors=[entry])
    finally:
        for server in (counted, origin, *servers):
            server.stop()
    assert result["changed"] is True, result
    delta = result["files"]["rootfs"]["delta"]
    assert delta["used"] is True, delta
    assert same_bytes(os.path.join(dest, "rootfs"), pushed.path)
    plan = delta["fetched_bytes"]
    errors = [error for error in result.get("mirror_errors", []) if error["digest"] == pushed.layer_digest]
    if mirror == "honours_ranges":
        # Every source's bytes (documents and the block index included) against the ranges the plan needed:
        # an open-ended range, cut on our side, costs many times that.
        assert counted.sent_back + origin.sent_back <= 1.5 * plan, (counted.sent_back, origin.sent_back, delta)
        assert counted.sent_back > plan and errors == [], (counted.sent_back, errors)
        return
    # The mirror is asked for one range, answers with the whole blob and is dropped at once (what sat in the
    # sockets is its cost); the other ranges are not sent to it, each read up to the byte wanted.
    layer_hex = pushed.layer_digest.split(":", 1)[1]
    asked = [entry["headers"].get("range") for entry in servers[0].requests() if layer_hex in entry["path"]]
    assert len(asked) == 1 and asked[0].startswith("bytes="), asked
    assert counted.sent_back < pushed.layer_size / 4, counted.sent_back
    assert len(errors) == 1 and "whole blob" in errors[0]["reason"], errors
    # The ranges came from the origin, bounded.
    assert origin.sent_back <= 1.5 * plan, (origin.sent_back, delta)


def test_the_provision_role_updates_a_hypervisor_and_a_boot_server_from_a_to_b(
    ansible, registry_plain, releases, tmp_path
):
    layout = str(tmp_path / "layout")
    a = push_rootfs(registry_plain, layout, "role-a", releases["a"].path, "role-a", boot=True)
    b = push_rootfs(registry_plain, layout, "role-b", releases["b"].path, "role-b", boot=True)
    attach_index(registry_plain, a, index_of(a.path).encode())
    attach_index(registry_plain, b, index_of(b.path).encode())
    common = {"provision_registry_plain_http": True, "provision_cache_dir": str(tmp_path / "cache")}
    hosts = {
        "hypervisors": {"hv": local_host(provision_pool_dir=str(tmp_path / "pool"), **common)},
        "baremetal": {
            "boot": local_host(
                provision_boot_dir=str(tmp_path / "boot"), provision_boot_url="http://pxe.example.com/boot", **common
            )
        },
    }

    def provision(name: str) -> dict:
        inventory = write_inventory(str(tmp_path / "hosts.yml"), hosts, {"provision_name": name})
        rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
        assert rc == 0, (outcomes(document)["failed"], stderr[-2000:])
        fetched = {}
        for kind in ("changed", "ok"):
            for task, host, result in outcomes(document)[kind]:
                if task == "Fetch the image's files":
                    fetched[host] = result["files"]["rootfs"]
        return fetched

    provision(a.name)
    fetched = provision(b.name)
    slug = provision_slug(b.name)
    delivered = {"hv": tmp_path / "pool" / (slug + ".raw"), "boot": tmp_path / "boot" / slug / "rootfs"}
    for host, path in delivered.items():
        delta = fetched[host]["delta"]
        assert delta["used"] is True, (host, delta)
        assert delta["fetched_bytes"] < 0.3 * b.layer_size, (host, delta)
        assert same_bytes(str(path), b.path), host
    # Release A is still kept (provision_keep_versions: 2), and was the seed.
    kept = str(tmp_path / "pool" / (provision_slug(a.name) + ".raw"))
    assert same_bytes(kept, a.path)
    # Both raw disks are sparse: A's first delivery (no seed) fetched no zero block, and B's zeros are holes.
    for disk in (kept, str(delivered["hv"])):
        assert os.stat(disk).st_blocks * 512 < 0.6 * os.path.getsize(disk), disk
    # Neither node read release A to hash it: the hypervisor's cache entry is in the pool's state directory,
    # the boot server's beside A in A's own directory, where the fetch that delivered A left it.
    for host in delivered:
        assert fetched[host]["delta"]["seed_hashed_bytes"] == 0, (host, fetched[host]["delta"])


@pytest.mark.parametrize("fixture", ["registry_plain", "registry_referrers"])
def test_images_built_and_pushed_by_the_collection_carry_the_index_the_delta_uses(
    ansible, request, fixture, releases, tmp_path
):
    """The way a new user gets there: ironcore_image_build writes the index, ironcore_image_push carries it.

    To a registry with the referrers API too (no referrers tag there), and read through a mirror with the
    origin down: the index is listed at the mirror then.
    """
    registry = request.getfixturevalue(fixture)
    names, digests = {}, {}
    for release in ("a", "b"):
        layout = str(tmp_path / ("layout-" + release))
        name = "registry.example.com/os/built:%s" % release
        built = ansible.module(
            "ironcore.image.ironcore_image_build",
            {
                "layout": layout,
                "name": name,
                "artifacts": [{"rootfs": releases[release].path, "architecture": "amd64", "cmdline": "console=ttyS0"}],
                "platforms": ["virtualization"],
            },
        )
        assert built["changed"] is True, built
        names[release] = "%s/delta/built:%s" % (registry.host, release)
        pushed = ansible.module(
            "ironcore.image.ironcore_image_push",
            dict(registry.registry_args, layout=layout, name=name, destination=names[release]),
        )
        assert pushed["changed"] is True, pushed
        digests[release] = pushed["digest"]
    dest = str(tmp_path / "dest")
    first = fetch(ansible, registry, names["a"], dest)
    sparse = first["files"]["rootfs"]["delta"]
    assert sparse["used"] is True and sparse["seed_bytes"] == 0 and sparse["zero_bytes"] > 0, first
    second = fetch(ansible, registry, names["b"], dest)
    delta = second["files"]["rootfs"]["delta"]
    assert delta["used"] is True, delta
    assert delta["fetched_bytes"] < 0.3 * releases["b"].layer_size, delta
    assert same_bytes(os.path.join(dest, "rootfs"), releases["b"].path)
    if isinstance(registry, ReferrersRegistry):
        assert not [tag for tag in tags_of(registry, "delta/built") if tag.startswith("sha256-")]

    # Through a mirror (here the same registry under its own address) while the origin is down.
    (tmp_path / "mirrored").mkdir()
    seeded = dest_with_release_a(tmp_path / "mirrored", releases)
    dead = "127.0.0.1:%d/delta/built@%s" % (free_port(), digests["b"])
    mirrors = [{"url": "http://%s" % registry.host, "repository": "delta/built"}]
    mirrored = fetch(ansible, registry, dead, seeded, mirrors=mirrors)
    assert mirrored.get("failed") is not True, mirrored.get("msg")
    delta = mirrored["files"]["rootfs"]["delta"]
    assert delta["used"] is True, delta
    assert mirrored["bytes_from_origin"] == 0
    assert same_bytes(os.path.join(seeded, "rootfs"), releases["b"].path)


def tags_of(registry, repository: str) -> list[str]:
    proc = subprocess.run(
        ["skopeo", "list-tags", *registry.skopeo_flags(), "docker://%s/%s" % (registry.host, repository)],
        capture_output=True,
        check=True,
    )
    return list(json.loads(proc.stdout)["Tags"])


def write_mostly_zeros(path: str) -> int:
    """A raw disk just above the size that gets a block index: zeros, but for 40 scattered blocks, a 1 MiB run and
    a short tail. Written sparse itself; returns its non-zero bytes."""
    rng = random.Random(27)
    size = IMAGE_MIB * 1024 * 1024 + 4096 + 3
    written = 0
    with open(path, "wb") as out:
        out.truncate(size)
        for number in sorted(rng.sample(range(1, IMAGE_MIB * 256), 40)):
            out.seek(number * 4096)
            written += out.write(rng.randbytes(4096))
        out.seek(20 * 1024 * 1024)
        written += out.write(rng.randbytes(1024 * 1024))
        out.seek(size - 3)
        written += out.write(b"end")
    return written


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("block_hash", ["xxh3-128", "sha256"])
def test_a_first_fetch_with_no_seed_sends_only_the_non_zero_blocks_and_writes_holes(
    ansible, registry_plain, fault_proxy, tmp_path, block_hash
):
    """Built and pushed by the collection, with a v2 (xxh3-128) or a v1 (sha256) index, and fetched with no seed:
    the registry serves the non-zero blocks, and the file is sparse and equals the layer."""
    image = str(tmp_path / "disk.raw")
    non_zero = write_mostly_zeros(image)
    layout = str(tmp_path / "layout")
    name = "registry.example.com/os/sparse:1"
    built = ansible.module(
        "ironcore.image.ironcore_image_build",
        {
            "layout": layout,
            "name": name,
            "artifacts": [{"rootfs": image, "architecture": "amd64", "cmdline": "console=ttyS0"}],
            "platforms": ["virtualization"],
            "block_index_hash": block_hash,
        },
    )
    (layer,) = [layer for layer in built["manifests"][0]["layers"] if layer["title"] == "rootfs"]
    assert layer["block_index"]["hash"] == block_hash, layer
    destination = "%s/delta/sparse-%s:1" % (registry_plain.host, block_hash.replace("-", ""))
    pushed = ansible.module(
        "ironcore.image.ironcore_image_push",
        dict(registry_plain.registry_args, layout=layout, name=name, destination=destination),
    )
    assert pushed["changed"] is True, pushed
    counted = ByteCountingProxy(registry_plain.host)
    dest = str(tmp_path / "dest")
    try:
        result = fetch(ansible, registry_plain, destination.replace(registry_plain.host, counted.host), dest)
    finally:
        counted.stop()
    assert result["changed"] is True, result
    size = os.path.getsize(image)
    delta = result["files"]["rootfs"]["delta"]
    assert delta["used"] is True and delta["seed_bytes"] == 0, delta
    # The non-zero blocks, with the zeros of the gaps (up to 64 KiB) between close ones; the rest are holes.
    assert non_zero <= delta["fetched_bytes"] <= non_zero + 40 * 64 * 1024, delta
    assert delta["zero_bytes"] == size - delta["fetched_bytes"], delta
    assert result["bytes_downloaded"] == delta["fetched_bytes"]
    # Independently: all the registry sent (documents and the block index included).
    assert counted.sent_back < delta["fetched_bytes"] + 512 * 1024, (counted.sent_back, delta)
    delivered = os.path.join(dest, "rootfs")
    # Only the non-zero blocks take room: not even the zeros fetched in the gaps were written.
    assert allocated(delivered) < non_zero + 256 * 1024 < size // 20, allocated(delivered)
    assert os.path.getsize(delivered) == size
    assert same_bytes(delivered, blob_data_path(registry_plain.storage, layer["digest"]))
    if block_hash == "sha256":
        # A registry or proxy that ignores Range: the whole blob, as for a delta.
        proxy = fault_proxy(registry_plain)
        proxy.add("drop_header", method="GET", path="/blobs/%s" % layer["digest"], header="Range", times=-1)
        whole = str(tmp_path / "whole")
        ignored = fetch(ansible, proxy, destination.replace(registry_plain.host, proxy.host), whole)
        delta = ignored["files"]["rootfs"]["delta"]
        assert delta["used"] is False and "whole blob" in delta["reason"], delta
        assert same_bytes(os.path.join(whole, "rootfs"), image)
        return
    # Check mode writes nothing, and says nothing was downloaded; a second run changes nothing.
    fresh = str(tmp_path / "fresh")
    checked = fetch(ansible, registry_plain, destination, fresh, check=True)
    assert checked["changed"] is True and checked["bytes_downloaded"] == 0, checked
    assert not os.path.exists(fresh)
    again = fetch(ansible, registry_plain, destination, dest)
    assert again["changed"] is False and again["bytes_downloaded"] == 0, again
