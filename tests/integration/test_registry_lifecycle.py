"""The image lifecycle on registries (issue 24): info lists releases, remove and prune delete them.

Driven through the real ansible CLI against docker-registry (distribution 2.8) and the
referrers-API test registry; what is left is read back with skopeo and the registry's own
tags list, never with the collection's reader.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import subprocess
import urllib.request

import pytest
from helpers.images import build_ours
from helpers.inventory import local_host, write_inventory
from helpers.registry import start_registry
from helpers.signing import http_put_manifest, make_key, sig_tag

from ansible_collections.ironcore.image.plugins.module_utils._referrers import ReferrerBlob, attach_referrer
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore

PUSH = "ironcore.image.ironcore_image_push"
SIGN = "ironcore.image.ironcore_image_sign"
INFO = "ironcore.image.ironcore_image_info"
REMOVE = "ironcore.image.ironcore_image_remove"
PRUNE = "ironcore.image.ironcore_image_prune"
TAG = "ironcore.image.ironcore_image_tag"
NAME = "registry.example.com/os/gardenlinux:1.0"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSIONS = ("1.0", "1.1", "1.2")

pytestmark = pytest.mark.integration


def registry_tags(registry, repository: str) -> list[str]:
    """Every tag, read with plain HTTP (n=1000: the registry's own answer, no pagination here)."""
    url = "http://%s/v2/%s/tags/list?n=1000" % (registry.host, repository)
    with urllib.request.urlopen(url) as answer:
        return sorted(json.load(answer).get("tags") or [])


def raw(registry, reference: str) -> bytes:
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", *registry.skopeo_flags(), "docker://%s/%s" % (registry.host, reference)],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def publish(ansible, registry, root, repository: str, key: dict, versions=VERSIONS) -> dict[str, str]:
    """Tiny releases pushed as <repository>:<version> with platform tags and aliases, each signed; version -> digest."""
    digests = {}
    for version in versions:
        layout = os.path.join(str(root), "layout-" + version)
        workdir = os.path.join(str(root), "in-" + version)
        os.makedirs(workdir, exist_ok=True)
        build_ours(layout, NAME, workdir, tag="%s-%s" % (repository.replace("/", "-"), version))
        reference = "%s/%s:%s" % (registry.host, repository, version)
        pushed = ansible.module(PUSH, dict(registry.registry_args, layout=layout, name=NAME, destination=reference))
        assert pushed["changed"] is True, pushed
        signed = ansible.module(SIGN, dict(registry.registry_args, name=reference, key=key["key"]))
        assert signed.get("failed") is not True, signed
        digests[version] = pushed["digest"]
    return digests


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return make_key(tmp_path_factory.mktemp("lifecycle-keys"), "release")


def test_info_lists_the_releases_of_a_repository_grouped_newest_first(ansible, registry_plain, key, tmp_path):
    digests = publish(ansible, registry_plain, tmp_path, "lifecycle/list", key)
    tags = registry_tags(registry_plain, "lifecycle/list")
    # Each release: its name, 12 platform tags and aliases, and .sig tags: many more tags than releases.
    assert len(tags) > 30

    listed = ansible.module(
        INFO,
        dict(registry_plain.registry_args, name="%s/lifecycle/list" % registry_plain.host, signature_keys=[key["pub"]]),
    )

    assert listed.get("failed") is not True, listed
    releases = listed["releases"]
    assert [release["digest"] for release in releases] == [digests[v] for v in reversed(VERSIONS)]
    grouped = set()
    for version, release in zip(reversed(VERSIONS), releases):
        assert version in release["tags"]
        assert "%s-baremetal-amd64" % version in release["tags"]
        assert "%s-kvm" % version in release["tags"]
        assert release["platforms"] == ["baremetal", "virtualization"]
        assert release["architectures"] == ["amd64", "arm64"]
        assert release["size"] > 0 and release["size_human"]
        assert release["signed"] is True and len(release["signers"]) == 1
        grouped |= set(release["tags"])
    # Every tag is a release's own or an attachment of one: none stands as a release of its own.
    assert {tag for tag in tags if not tag.startswith("sha256-")} == grouped
    assert all(sig_tag(digests[v]) in tags for v in VERSIONS)


def test_info_groups_many_aliases_into_one_release(ansible, registry_plain, key, tmp_path):
    """150 aliases of one index are one release (distribution 2.8 does not paginate the tags list: the
    pagination itself is tested against a paging server in tests/unit/plugins/module_utils/test_releases.py)."""
    digests = publish(ansible, registry_plain, tmp_path, "lifecycle/pages", key, versions=("2.0",))
    index = raw(registry_plain, "lifecycle/pages:2.0")
    media_type = json.loads(index)["mediaType"]
    aliases = ["alias-%03d" % n for n in range(150)]
    for alias in aliases:
        http_put_manifest(registry_plain, "lifecycle/pages", alias, index, media_type)
    assert len(registry_tags(registry_plain, "lifecycle/pages")) > 150

    listed = ansible.module(INFO, dict(registry_plain.registry_args, name="%s/lifecycle/pages" % registry_plain.host))

    [release] = listed["releases"]
    assert release["digest"] == digests["2.0"]
    assert set(aliases) <= set(release["tags"])


def skopeo_copy_all(registry, reference: str, target: str) -> None:
    proc = subprocess.run(
        [
            "skopeo",
            "copy",
            "--all",
            "--quiet",
            *registry.skopeo_flags("src-"),
            "docker://%s/%s" % (registry.host, reference),
            "dir:" + target,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, (reference, proc.stderr)


ACCEPT = ", ".join(
    "application/vnd.%s" % kind
    for kind in (
        "oci.image.index.v1+json",
        "oci.image.manifest.v1+json",
        "docker.distribution.manifest.list.v2+json",
        "docker.distribution.manifest.v2+json",
    )
)


def snapshot(registry, repository: str) -> dict[str, bytes]:
    """tag -> the exact bytes the registry serves for it (plain HTTP GETs: a skopeo per tag is slow here)."""
    snapshot = {}
    for tag in registry_tags(registry, repository):
        url = "http://%s/v2/%s/manifests/%s" % (registry.host, repository, tag)
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": ACCEPT})) as answer:
            snapshot[tag] = answer.read()
    return snapshot


def skopeo_snapshot(registry, repository: str) -> dict[str, bytes]:
    """tag -> the exact bytes `skopeo inspect --raw` reads for it."""
    return {tag: raw(registry, "%s:%s" % (repository, tag)) for tag in registry_tags(registry, repository)}


def listing(ansible, registry, repository: str, key: dict | None = None) -> list[dict]:
    """info's releases; with `key`, each one's signature is verified by the collection against it."""
    keys = {"signature_keys": [key["pub"]]} if key else {}
    listed = ansible.module(INFO, dict(registry.registry_args, name="%s/%s" % (registry.host, repository), **keys))
    assert listed.get("failed") is not True, listed
    if key:
        assert all(r["signed"] is True and r["signers"] for r in listed["releases"]), [
            (r["tags"][0], r["signed"], r["signers"]) for r in listed["releases"]
        ]
    return listed["releases"]


@pytest.mark.parametrize("fixture", ["registry_plain", "registry_referrers"])
def test_prune_keeps_the_newest_releases_check_mode_first(ansible, key, tmp_path, request, fixture):
    registry = request.getfixturevalue(fixture)
    repository = "lifecycle/prune"
    digests = publish(ansible, registry, tmp_path, repository, key, versions=("1.0", "1.1", "1.2", "1.3"))
    releases = listing(ansible, registry, repository)
    old = [r for r in releases if r["digest"] in (digests["1.0"], digests["1.1"])]
    args = dict(registry.registry_args, name="%s/%s" % (registry.host, repository), keep=2)
    before = snapshot(registry, repository)

    dry = ansible.module(PRUNE, args, check=True, diff=True)

    assert dry["changed"] is True, dry
    assert [r["digest"] for r in dry["releases_removed"]] == [digests["1.1"], digests["1.0"]]
    assert [r["digest"] for r in dry["releases_kept"]] == [digests["1.3"], digests["1.2"]]
    assert set(dry["removed"]) == {tag for r in old for tag in r["tags"]} | {
        tag for tag in before if tag.startswith("sha256-") and tag not in _attachments_of_kept(before, releases, old)
    }
    assert snapshot(registry, repository) == before

    pruned = ansible.module(PRUNE, args, diff=True)

    assert pruned["changed"] is True, pruned
    assert pruned["manifests_deleted"] == dry["manifests_deleted"]
    after = snapshot(registry, repository)
    assert set(after) == set(before) - set(dry["removed"])
    # What stays is byte-identical, complete (skopeo copies every platform) and signed.
    assert all(after[tag] == before[tag] for tag in after)
    for tag in after:
        if not tag.startswith("sha256-"):
            skopeo_copy_all(registry, "%s:%s" % (repository, tag), str(tmp_path / ("copy-" + tag)))
    # Every release left is signed, and its signature verifies against the release key.
    assert [r["digest"] for r in listing(ansible, registry, repository, key)] == [digests["1.3"], digests["1.2"]]
    # No signature or referrers tag of a removed release remains.
    removed_digests = set(pruned["manifests_deleted"])
    assert not [tag for tag in after if tag.startswith("sha256-") and "sha256:" + tag[7:71] in removed_digests]
    again = ansible.module(PRUNE, args)
    assert again["changed"] is False, again


def _attachments_of_kept(before: dict[str, bytes], releases: list[dict], old: list[dict]) -> set[str]:
    """The sha256-* tags whose subject is not a document of an old release: they stay."""
    old_tags = {tag for r in old for tag in r["tags"]}
    return {tag for tag in before if tag.startswith("sha256-")} - {
        tag for tag in before if tag.startswith("sha256-") and _subject_in_old(before, tag, old_tags)
    }


def _subject_in_old(before: dict[str, bytes], tag: str, old_tags: set[str]) -> bool:
    subject = "sha256:" + tag[7:71]
    documents = set()
    for name in old_tags:
        documents.add("sha256:" + hashlib.sha256(before[name]).hexdigest())
        body = json.loads(before[name])
        documents |= {entry["digest"] for entry in body.get("manifests", [])}
    return subject in documents


def test_remove_of_one_release_leaves_the_others_byte_identical(ansible, registry_plain, key, tmp_path):
    repository = "lifecycle/remove"
    digests = publish(ansible, registry_plain, tmp_path, repository, key)
    before = skopeo_snapshot(registry_plain, repository)
    args = dict(registry_plain.registry_args, names=["%s/%s:1.1" % (registry_plain.host, repository)])

    dry = ansible.module(REMOVE, args, check=True, diff=True)
    assert dry["changed"] is True and digests["1.1"] in dry["manifests_deleted"], dry
    assert snapshot(registry_plain, repository) == before

    removed = ansible.module(REMOVE, args, diff=True)

    assert removed["manifests_deleted"] == dry["manifests_deleted"]
    after = skopeo_snapshot(registry_plain, repository)
    assert all(after[tag] == before[tag] for tag in after)
    gone = set(before) - set(after)
    assert {"1.1", "1.1-baremetal", "1.1-kvm-arm64", sig_tag(digests["1.1"])} <= gone
    assert not {tag for tag in gone if tag.startswith(("1.0", "1.2"))}
    assert [r["digest"] for r in listing(ansible, registry_plain, repository)] == [digests["1.2"], digests["1.0"]]


@pytest.fixture(scope="module")
def registry_no_delete(tmp_path_factory):
    registry = start_registry("nodelete", str(tmp_path_factory.mktemp("registry-nodelete")), delete=False)
    try:
        yield registry
    finally:
        registry.stop()


def test_remove_where_deletion_is_disabled_fails_in_one_line(ansible, registry_no_delete, key, tmp_path):
    publish(ansible, registry_no_delete, tmp_path, "lifecycle/nodelete", key, versions=("1.0",))
    before = snapshot(registry_no_delete, "lifecycle/nodelete")
    failed = ansible.module(
        REMOVE, dict(registry_no_delete.registry_args, names=["%s/lifecycle/nodelete:1.0" % registry_no_delete.host])
    )
    assert failed.get("failed") is True, failed
    assert "\n" not in failed["msg"]
    assert "deletion is disabled on this registry: set REGISTRY_STORAGE_DELETE_ENABLED=true" in failed["msg"]
    assert snapshot(registry_no_delete, "lifecycle/nodelete") == before


def test_remove_never_deletes_what_a_kept_tag_reaches(ansible, registry_plain, key, tmp_path):
    """`mix` lists a manifest of 1.0 and one of 1.1 (a release of its own): removing 1.0 keeps the shared one."""
    repository = "lifecycle/shared"
    publish(ansible, registry_plain, tmp_path, repository, key, versions=("1.0", "1.1"))
    first, second = (json.loads(raw(registry_plain, "%s:%s" % (repository, v))) for v in ("1.0", "1.1"))
    mix = dict(first, manifests=[first["manifests"][0], second["manifests"][0]])
    mixed = json.dumps(mix).encode()
    http_put_manifest(registry_plain, repository, "mix", mixed, mix["mediaType"])

    names = ["%s/%s:1.0" % (registry_plain.host, repository)]
    removed = ansible.module(REMOVE, dict(registry_plain.registry_args, names=names))

    assert removed["changed"] is True, removed
    assert first["manifests"][0]["digest"] not in removed["manifests_deleted"]
    tags = registry_tags(registry_plain, repository)
    assert "mix" in tags and "1.0" not in tags and "1.1" in tags
    assert raw(registry_plain, "%s:mix" % repository) == mixed
    skopeo_copy_all(registry_plain, "%s:mix" % repository, str(tmp_path / "mix"))


def stored_blob_count(registry) -> int:
    """Files under the registry's own blob store: a tag must not add any layer or config."""
    blobs = os.path.join(registry.storage, "docker", "registry", "v2", "blobs")
    return sum(1 for _root, _dirs, files in os.walk(blobs) for name in files if name == "data")


def test_tag_on_a_registry_puts_the_same_manifests_under_new_tags(ansible, registry_plain, key, tmp_path):
    repository = "lifecycle/tag"
    publish(ansible, registry_plain, tmp_path, repository, key, versions=("1.0", "1.1"))
    base = "%s/%s" % (registry_plain.host, repository)
    release = "1.0"
    platform = [tag[len(release) :] for tag in registry_tags(registry_plain, repository) if tag.startswith("1.0-")]
    assert "-baremetal-amd64" in platform and "-kvm" in platform
    blobs = stored_blob_count(registry_plain)
    args = dict(registry_plain.registry_args, name="%s:1.0" % base, tags=["stable", "%s:weekly" % base])
    before = snapshot(registry_plain, repository)

    checked = ansible.module(TAG, args, check=True, diff=True)

    assert checked["changed"] is True, checked
    wanted = sorted("%s:%s%s" % (repository, tag, suffix) for tag in ("stable", "weekly") for suffix in ["", *platform])
    assert checked["names"] == ["%s/%s" % (registry_plain.host, name) for name in wanted]
    assert snapshot(registry_plain, repository) == before

    tagged = ansible.module(TAG, args, diff=True)

    assert tagged["changed"] is True and tagged["names"] == checked["names"], tagged
    assert tagged["digest"] == checked["digest"]
    # skopeo reads the very bytes of 1.0 (and of each platform tag) under every new name; no blob moved.
    for new in ("stable", "weekly"):
        for suffix in ["", *platform]:
            assert raw(registry_plain, "%s:%s%s" % (repository, new, suffix)) == before[release + suffix], suffix
    assert stored_blob_count(registry_plain) == blobs
    skopeo_copy_all(registry_plain, "%s:stable" % repository, str(tmp_path / "stable"))
    assert ansible.module(TAG, args)["changed"] is False

    # overwrite: false refuses to move stable to 1.1, in one line, before writing anything.
    moved = dict(args, name="%s:1.1" % base, tags=["stable"], overwrite=False)
    middle = snapshot(registry_plain, repository)
    refused = ansible.module(TAG, moved)
    assert refused.get("failed") is True, refused
    assert "\n" not in refused["msg"] and "stable" in refused["msg"] and "already points at" in refused["msg"]
    assert snapshot(registry_plain, repository) == middle
    forced = ansible.module(TAG, dict(moved, overwrite=True))
    assert forced["changed"] is True, forced
    assert raw(registry_plain, "%s:stable-baremetal" % repository) == middle["1.1-baremetal"]


def skopeo_copy_name(registry, layout: str, name: str, repository: str, tag: str) -> None:
    proc = subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--preserve-digests",
            *registry.skopeo_flags("dest-"),
            "oci:%s:%s" % (layout, name),
            "docker://%s/%s:%s" % (registry.host, repository, tag),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, (name, proc.stderr)


def prepared_release(ansible, root, name: str, key: dict) -> tuple[str, str]:
    """A tiny release built, signed (for its registry name) and given a referrer in its own layout, as a push
    carries all three; (layout, digest of the referrer)."""
    version = name.rsplit(":", 1)[1]
    layout = os.path.join(str(root), "layout-" + version)
    workdir = os.path.join(str(root), "in-" + version)
    os.makedirs(workdir, exist_ok=True)
    build_ours(layout, name, workdir, tag="race-" + version)
    signed = ansible.module(SIGN, {"layout": layout, "name": name, "key": key["key"]})
    assert signed["changed"] is True, signed
    store = LayoutStore(layout)
    subject = {field: store.resolve(name)[field] for field in ("mediaType", "digest", "size")}
    blob = ReferrerBlob("application/json", data=('{"release": "%s"}' % version).encode())
    changed, referrer = attach_referrer(store, subject, "application/vnd.in-toto+json", [blob])
    assert changed is True
    return layout, referrer


def test_a_push_during_a_prune_loses_nothing_of_the_new_release(ansible, registry_plain, key, tmp_path):
    """Three rounds: a new release pushed while prunes (keep 1) run; it stays whole, signed and referred to."""
    repository = "lifecycle/race"
    base = "%s/%s" % (registry_plain.host, repository)
    publish(ansible, registry_plain, tmp_path, repository, key, versions=("1.0",))
    prune = dict(registry_plain.registry_args, name=base, keep=1)
    previous = "1.0"
    for round_number in range(3):
        version = "2.%d" % round_number
        name = "%s:%s" % (base, version)
        layout, referrer = prepared_release(ansible, tmp_path, name, key)
        push = dict(registry_plain.registry_args, layout=layout, name=name)
        if round_number == 0:
            # First, deterministically, the moment between a push's per-architecture tags and the rest.
            parts = [version + "-baremetal-amd64", version + "-virtualization-arm64"]
            for part in parts:
                skopeo_copy_name(registry_plain, layout, "%s-%s" % (name, part[len(version) + 1 :]), repository, part)
            midway = ansible.module(PRUNE, prune)
            assert midway.get("failed") is not True, midway
            assert [sorted(parts)] == [r["tags"] for r in midway["releases_kept"]], midway
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pushing = pool.submit(ansible.module, PUSH, push)
            prunes = [ansible.module(PRUNE, prune)]
            while not pushing.done():
                prunes.append(ansible.module(PRUNE, prune))
        pushed = pushing.result()
        assert pushed.get("failed") is not True and pushed["changed"] is True, pushed
        assert all(result.get("failed") is not True for result in prunes), prunes
        settled = ansible.module(PRUNE, prune)
        assert settled.get("failed") is not True, settled

        tags = registry_tags(registry_plain, repository)
        digest = pushed["digest"]
        assert {version, version + "-baremetal-amd64", version + "-kvm", sig_tag(digest)} <= set(tags), tags
        # The referrer went out under the tag schema (docker-registry has no referrers API), and is still there.
        assert "sha256-" + digest[7:] in tags
        assert referrer in raw(registry_plain, "%s:sha256-%s" % (repository, digest[7:])).decode()
        assert not [tag for tag in tags if tag == previous or tag.startswith(previous + "-")], tags
        skopeo_copy_all(registry_plain, "%s:%s" % (repository, version), str(tmp_path / ("copy-" + version)))
        previous = version
    [left] = listing(ansible, registry_plain, repository, key)
    assert left["digest"] == pushed["digest"]


def skopeo_tags(registry, repository: str) -> list[str]:
    proc = subprocess.run(
        ["skopeo", "list-tags", *registry.skopeo_flags(), "docker://%s/%s" % (registry.host, repository)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return sorted(json.loads(proc.stdout)["Tags"])


def test_prune_and_remove_on_the_token_registry(ansible, registry_token, key, tmp_path):
    """The token set-up: the module asks for pull,push,delete in the repository scope, and gets it."""
    repository = "lifecycle/token"
    digests = publish(ansible, registry_token, tmp_path, repository, key, versions=("1.0", "1.1", "1.2"))
    base = "%s/%s" % (registry_token.host, repository)
    before = {tag: raw(registry_token, "%s:%s" % (repository, tag)) for tag in skopeo_tags(registry_token, repository)}
    args = dict(registry_token.registry_args, name=base, keep=2)

    pruned = ansible.module(PRUNE, args)

    assert pruned.get("failed") is not True and pruned["changed"] is True, pruned
    assert [r["digest"] for r in pruned["releases_removed"]] == [digests["1.0"]]
    removed = ansible.module(REMOVE, dict(registry_token.registry_args, names=["%s:1.1" % base]))
    assert removed.get("failed") is not True and digests["1.1"] in removed["manifests_deleted"], removed
    scopes = {scope for request in registry_token.token_server.requests for scope in request["scopes"]}
    assert "repository:%s:pull,push,delete" % repository in scopes
    after = skopeo_tags(registry_token, repository)
    assert after and all(tag.startswith(("1.2", "sha256-")) for tag in after), after
    assert all(raw(registry_token, "%s:%s" % (repository, tag)) == before[tag] for tag in after)
    assert [r["digest"] for r in listing(ansible, registry_token, repository, key)] == [digests["1.2"]]


def test_build_role_keeps_releases_and_the_clean_up_playbook_prunes(ansible, registry_plain, key, tmp_path):
    """build_keep_releases after the role's push; then playbooks/prune.yml as the weekly AWX job runs it."""
    repository = "lifecycle/role"
    digests = publish(ansible, registry_plain, tmp_path, repository, key, versions=("1.0", "1.1"))
    artifact = {"architecture": "amd64"}
    for role in ("kernel", "initramfs", "rootfs"):
        path = tmp_path / ("role-" + role)
        path.write_bytes(role.encode() * 300)
        artifact[role] = str(path)
    base = "%s/%s" % (registry_plain.host, repository)
    builder = local_host(
        build_name=base + ":1.2",
        build_layout=str(tmp_path / "role-layout"),
        build_artifacts=[artifact],
        build_push=True,
        build_registry_plain_http=True,
        build_keep_releases=2,
    )
    inventory = write_inventory(str(tmp_path / "hosts.yml"), {"build_hosts": {"builder": builder}})

    rc, _document, stderr = ansible.playbook(os.path.join(REPO, "playbooks", "build.yml"), inventory=inventory)

    assert rc == 0, stderr
    newest = "sha256:" + hashlib.sha256(raw(registry_plain, repository + ":1.2")).hexdigest()
    assert [r["digest"] for r in listing(ansible, registry_plain, repository)] == [newest, digests["1.1"]]

    # The clean-up job: keep 0, but 1.2 is pinned through a survey's text area (one pattern per line).
    rc, _document, stderr = ansible.playbook(
        os.path.join(REPO, "playbooks", "prune.yml"),
        inventory=inventory,
        extra_vars={"prune_repository": base, "prune_keep": "0", "prune_keep_tags": "stable\n1.2-kvm\n"},
    )

    assert rc == 0, stderr
    assert [r["digest"] for r in listing(ansible, registry_plain, repository)] == [newest]
    assert not [tag for tag in registry_tags(registry_plain, repository) if tag.startswith("1.1")]
