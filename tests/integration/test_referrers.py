"""Referrers of an image in real registries (distribution 2.8: the tag schema) and in a layout, read back by skopeo.

The image is built by the build module and pushed by the push module; the
referrers are attached through `_referrers.py` (no module exposes them on
their own). skopeo reads the tag-schema index and the image's own documents,
which must stay byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import urllib.parse
import urllib.request

import pytest
from helpers.images import build_ours, push_built_image
from helpers.registry import blob_data_path
from helpers.signing import inspect_raw, remote

from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient
from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._model import OCI_INDEX, OCI_MANIFEST
from ansible_collections.ironcore.image.plugins.module_utils._referrers import (
    EMPTY_CONFIG_MEDIA_TYPE,
    ReferrerBlob,
    ReferrersError,
    attach_referrer,
    list_referrers,
    read_referrer,
    referrers_tag,
)
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import registry_options
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore, RegistryStore

NAME = "registry.example.com/os/referred:1.0"
BLOCK_INDEX = "application/vnd.ironcore.image.blockindex.v1"
IN_TOTO = "application/vnd.in-toto+json"

pytestmark = pytest.mark.integration


def image_bytes(fetch, top: str) -> dict[str, bytes]:
    """The exact bytes of the index `top` names and of every manifest it lists, by digest."""
    data = fetch(top)
    found = {"sha256:" + hashlib.sha256(data).hexdigest(): data}
    for entry in json.loads(data)["manifests"]:
        found[entry["digest"]] = fetch(entry["digest"])
    return found


def registry_store(registry, repository: str) -> RegistryStore:
    return RegistryStore(RegistryClient(registry.host, registry_options(registry.registry_args)), repository)


def pushed_image(ansible, registry, root, repository: str) -> tuple[str, dict]:
    """A built image pushed as <repository>:1.0; returns (layout, the descriptor of its index at the registry)."""
    layout, _reference, pushed = push_built_image(ansible, registry, root, NAME, repository)
    data = remote(registry, repository + ":1.0")
    return layout, {"mediaType": OCI_INDEX, "digest": pushed["digest"], "size": len(data)}


def check_two_referrers(store, subject, big_file) -> tuple[str, str]:
    """Attach a block index (a file) and a provenance (bytes); list, filter, read back, re-attach."""
    annotation = {"io.ironcore.image.blockindex.layer": subject["digest"]}
    blobs = [ReferrerBlob("application/vnd.ironcore.image.blockindex.v1+jsonl", path=big_file, annotations=annotation)]
    changed, index_digest = attach_referrer(store, subject, BLOCK_INDEX, blobs)
    assert changed is True
    statement = ReferrerBlob("application/vnd.dsse.envelope.v1+json", data=b'{"payload":"e30="}')
    changed, provenance_digest = attach_referrer(store, subject, IN_TOTO, [statement], {"created-by": "test"})
    assert changed is True and provenance_digest != index_digest

    listed = list_referrers(store, subject["digest"])
    assert [entry.digest for entry in listed] == [index_digest, provenance_digest]
    assert [entry.artifact_type for entry in listed] == [BLOCK_INDEX, IN_TOTO]
    assert listed[1].annotations == {"created-by": "test"}
    assert [entry.digest for entry in list_referrers(store, subject["digest"], IN_TOTO)] == [provenance_digest]
    assert list_referrers(store, subject["digest"], "application/x-none") == []

    manifest = read_referrer(store, listed[0])
    assert manifest["artifactType"] == BLOCK_INDEX
    assert manifest["config"]["mediaType"] == EMPTY_CONFIG_MEDIA_TYPE
    assert manifest["subject"] == subject
    assert manifest["layers"][0]["annotations"] == annotation

    # The same content again: nothing changes, nothing is written (check mode agrees).
    assert attach_referrer(store, subject, BLOCK_INDEX, blobs, check_mode=True) == (False, index_digest)
    assert attach_referrer(store, subject, BLOCK_INDEX, blobs) == (False, index_digest)
    assert len(list_referrers(store, subject["digest"])) == 2
    return index_digest, provenance_digest


@pytest.fixture
def big_file(tmp_path) -> str:
    path = str(tmp_path / "blockindex.jsonl")
    with open(path, "wb") as stream:
        for block in range(3000):
            stream.write(b'{"block":%d,"hash":"%s"}\n' % (block, hashlib.sha256(b"%d" % block).hexdigest().encode()))
    return path


@pytest.mark.parametrize("fixture", ["registry_plain", "registry_tls"])
def test_registry_tag_schema(ansible, request, fixture, tmp_path, big_file):
    registry = request.getfixturevalue(fixture)
    repository = "referrers/%s" % fixture
    _layout, subject = pushed_image(ansible, registry, tmp_path, repository)
    tags_before = sorted(json.loads(skopeo_tags(registry, repository))["Tags"])
    before = image_bytes(lambda ref: remote(registry, "%s%s%s" % (repository, "@" if ":" in ref else ":", ref)), "1.0")
    store = registry_store(registry, repository)

    # A fresh check: check mode writes nothing, not even the tag.
    statement = ReferrerBlob("application/json", data=b"{}")
    changed, _digest = attach_referrer(store, subject, IN_TOTO, [statement], check_mode=True)
    assert changed is True
    assert list_referrers(store, subject["digest"]) == []

    index_digest, provenance_digest = check_two_referrers(store, subject, big_file)

    # skopeo reads the tag-schema index: the two referrer descriptors, with their artifact types.
    tag = referrers_tag(subject["digest"])
    assert tag == "sha256-" + subject["digest"].split(":", 1)[1]
    index = json.loads(remote(registry, "%s:%s" % (repository, tag)))
    assert index["mediaType"] == OCI_INDEX
    assert [(e["digest"], e["artifactType"], e["mediaType"]) for e in index["manifests"]] == [
        (index_digest, BLOCK_INDEX, OCI_MANIFEST),
        (provenance_digest, IN_TOTO, OCI_MANIFEST),
    ]
    # The file blob arrived whole at the registry's own storage.
    with open(big_file, "rb") as stream:
        expected = stream.read()
    manifest = json.loads(remote(registry, "%s@%s" % (repository, index_digest)))
    with open(blob_data_path(registry.storage, manifest["layers"][0]["digest"]), "rb") as stream:
        assert stream.read() == expected

    # The image itself is untouched: same tags (plus the referrers tag), same bytes.
    after = image_bytes(lambda ref: remote(registry, "%s%s%s" % (repository, "@" if ":" in ref else ":", ref)), "1.0")
    assert after == before
    assert sorted(json.loads(skopeo_tags(registry, repository))["Tags"]) == sorted([*tags_before, tag])


def test_registry_referrers_api(ansible, registry_referrers, tmp_path, big_file):
    """A registry with the referrers API lists them itself: our code writes no referrers tag there."""
    registry, repository = registry_referrers, "referrers/api"
    _layout, subject = pushed_image(ansible, registry, tmp_path, repository)
    tags_before = sorted(json.loads(skopeo_tags(registry, repository))["Tags"])
    store = registry_store(registry, repository)
    index_digest, provenance_digest = check_two_referrers(store, subject, big_file)

    # No sha256-<hex> tag: skopeo lists the image's tags only, and cannot inspect the referrers tag.
    tag = referrers_tag(subject["digest"])
    assert sorted(json.loads(skopeo_tags(registry, repository))["Tags"]) == tags_before
    assert not any(name.startswith("sha256-") for name in tags_before)
    proc = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            *registry.skopeo_flags(),
            "docker://%s/%s:%s" % (registry.host, repository, tag),
        ],
        capture_output=True,
        check=False,
    )
    assert proc.returncode != 0
    # The registry's API lists both, and filters by artifact type, saying so.
    url = "http://%s/v2/%s/referrers/%s" % (registry.host, repository, subject["digest"])
    with urllib.request.urlopen(url, timeout=30) as answer:
        listing = json.loads(answer.read())
        assert answer.headers.get("OCI-Filters-Applied") is None
    assert listing["mediaType"] == OCI_INDEX
    assert [(e["digest"], e["artifactType"]) for e in listing["manifests"]] == [
        (index_digest, BLOCK_INDEX),
        (provenance_digest, IN_TOTO),
    ]
    with urllib.request.urlopen(url + "?artifactType=" + urllib.parse.quote(IN_TOTO), timeout=30) as answer:
        assert answer.headers.get("OCI-Filters-Applied") == "artifactType"
        assert [e["digest"] for e in json.loads(answer.read())["manifests"]] == [provenance_digest]


def skopeo_tags(registry, repository: str) -> bytes:
    proc = subprocess.run(
        ["skopeo", "list-tags", *registry.skopeo_flags(), "docker://%s/%s" % (registry.host, repository)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def test_layout_tag_schema(tmp_path, big_file):
    layout = str(tmp_path / "layout")
    os.makedirs(str(tmp_path / "in"))
    build_ours(layout, NAME, tmp_path / "in")
    store = LayoutStore(layout)
    subject = dict(store.resolve(NAME))
    subject = {key: subject[key] for key in ("mediaType", "digest", "size")}
    names_before = sorted(OciLayout(layout).refs())
    before = image_bytes(lambda ref: _layout_bytes(layout, ref), NAME)

    index_digest, provenance_digest = check_two_referrers(store, subject, big_file)

    tag = referrers_tag(subject["digest"])
    index = json.loads(inspect_raw("oci:%s:%s" % (layout, tag)))
    assert [e["digest"] for e in index["manifests"]] == [index_digest, provenance_digest]
    assert sorted(OciLayout(layout).refs()) == sorted([*names_before, tag])
    # skopeo reads the image by its name unchanged, and every manifest of it is the same blob.
    assert inspect_raw("oci:%s:%s" % (layout, NAME)) == before[subject["digest"]]
    assert image_bytes(lambda ref: _layout_bytes(layout, ref), NAME) == before


def _layout_bytes(layout: str, ref: str) -> bytes:
    """A name through skopeo, a digest from the blob file (skopeo's oci: transport takes names only)."""
    if not ref.startswith("sha256:"):
        return inspect_raw("oci:%s:%s" % (layout, ref))
    with open(os.path.join(layout, "blobs", "sha256", ref.split(":", 1)[1]), "rb") as stream:
        return stream.read()


def _attach_many(target: tuple, subject: dict, label: str, count: int, barrier) -> list[str]:
    kind, where, repository = target
    store = LayoutStore(where) if kind == "layout" else RegistryStore(RegistryClient(where[0], where[1]), repository)
    barrier.wait(30)
    digests = []
    for number in range(count):
        blob = ReferrerBlob("application/json", data=json.dumps({"writer": label, "n": number}).encode())
        changed, digest = attach_referrer(store, subject, IN_TOTO, [blob])
        assert changed
        digests.append(digest)
    return digests


def _race(target: tuple, subject: dict, writers: int = 2, count: int = 2) -> list[str]:
    context = multiprocessing.get_context("fork")
    manager = context.Manager()
    barrier = manager.Barrier(writers)
    with context.Pool(writers) as pool:
        jobs = [pool.apply_async(_attach_many, (target, subject, str(n), count, barrier)) for n in range(writers)]
        digests = [digest for job in jobs for digest in job.get(120)]
    manager.shutdown()
    return digests


def test_concurrent_writers_keep_every_entry(ansible, registry_plain, tmp_path):
    """Two processes attach at once, to a registry (re-read after each write) and to a layout (its lock)."""
    _layout, subject = pushed_image(ansible, registry_plain, tmp_path / "remote", "referrers/race")
    options = registry_options(registry_plain.registry_args)
    digests = _race(("registry", (registry_plain.host, options), "referrers/race"), subject)
    listed = list_referrers(registry_store(registry_plain, "referrers/race"), subject["digest"])
    assert sorted(entry.digest for entry in listed) == sorted(digests) and len(digests) == 4

    layout = str(tmp_path / "layout")
    os.makedirs(str(tmp_path / "in"))
    build_ours(layout, NAME, tmp_path / "in")
    local = {key: LayoutStore(layout).resolve(NAME)[key] for key in ("mediaType", "digest", "size")}
    digests = _race(("layout", layout, None), local)
    assert sorted(entry.digest for entry in list_referrers(LayoutStore(layout), local["digest"])) == sorted(digests)


def test_malformed_tag_schema_index_is_one_line(ansible, registry_plain, tmp_path):
    _layout, subject = pushed_image(ansible, registry_plain, tmp_path, "referrers/malformed")
    store = registry_store(registry_plain, "referrers/malformed")
    tag = referrers_tag(subject["digest"])
    # Someone else's index, too long to be read: the registry accepts it (its entries exist).
    manifest = json.loads(remote(registry_plain, "referrers/malformed:1.0"))["manifests"][0]
    entry = {key: manifest[key] for key in ("mediaType", "digest", "size")}
    bad = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry] * 1025}).encode()
    store.client.put_manifest("referrers/malformed", tag, bad, OCI_INDEX)
    with pytest.raises(ReferrersError) as caught:
        list_referrers(store, subject["digest"])
    assert "\n" not in str(caught.value) and "1025 entries, more than 1024" in str(caught.value)
    with pytest.raises(ReferrersError):
        attach_referrer(store, subject, IN_TOTO, [ReferrerBlob("application/json", data=b"{}")])
    # Nothing was changed by the refused attach.
    assert remote(registry_plain, "referrers/malformed:%s" % tag) == bad
