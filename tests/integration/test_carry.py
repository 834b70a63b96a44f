"""Push and copy carry an image's `.sig` signatures and referrers, through the real ansible CLI.

The image is built, signed by ironcore_image_sign and given referrers in a
layout, then pushed and copied between real registries and layouts. skopeo
reads the `.sig` and tag-schema documents where they arrive, openssl verifies
the signatures from the registry's own storage, and fetch with signature_keys
delivers from the copies.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from helpers.images import build_ours
from helpers.registry import blob_data_path
from helpers.signing import inspect_raw, make_key, openssl_verifies, remote, sig_tag

from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._model import OCI_INDEX
from ansible_collections.ironcore.image.plugins.module_utils._referrers import (
    ReferrerBlob,
    attach_referrer,
    referrers_tag,
)
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore

SIGN = "ironcore.image.ironcore_image_sign"
PUSH = "ironcore.image.ironcore_image_push"
COPY = "ironcore.image.ironcore_image_copy"
FETCH = "ironcore.image.ironcore_image_fetch"
SIGNATURE = "dev.cosignproject.cosign/signature"
BLOCK_INDEX = "application/vnd.ironcore.image.blockindex.v1"
IN_TOTO = "application/vnd.in-toto+json"
# The combined index and its four platform manifests are signed.
SIGNED = 5

pytestmark = pytest.mark.integration


def registry_blob(registry, digest: str) -> bytes:
    """A blob from the registry's own storage (not through the collection)."""
    with open(blob_data_path(registry.storage, digest), "rb") as stream:
        return stream.read()


def layout_blob(layout: str, digest: str) -> bytes:
    with open(os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as stream:
        return stream.read()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("carry-keys")
    return {label: make_key(directory, label) for label in ("first", "second", "third")}


@pytest.fixture(scope="module")
def signed(ansible, registry_plain, keys, tmp_path_factory):
    """A layout with the image recorded as <registry_plain>/carry/push:1.0, signed, with two referrers."""
    root = tmp_path_factory.mktemp("carry-source")
    layout = str(root / "layout")
    name = "%s/carry/push:1.0" % registry_plain.host
    os.makedirs(str(root / "in"))
    build_ours(layout, name, root / "in", tag="carry")
    result = ansible.module(SIGN, {"layout": layout, "name": name, "key": keys["first"]["sec1"]})
    assert result["changed"] is True and len(result["signed"]) == SIGNED, result
    store = LayoutStore(layout)
    index = {key: store.resolve(name)[key] for key in ("mediaType", "digest", "size")}
    manifest = json.loads(OciLayout(layout).read_document(index["digest"]))["manifests"][0]
    subject = {key: manifest[key] for key in ("mediaType", "digest", "size")}
    attached = {
        "index": attach_referrer(store, index, IN_TOTO, [ReferrerBlob("application/json", data=b'{"about":"1.0"}')])[1],
        "manifest": attach_referrer(
            store, subject, BLOCK_INDEX, [ReferrerBlob("application/octet-stream", data=os.urandom(5000))]
        )[1],
    }
    return {
        "layout": layout,
        "name": name,
        "digests": [
            index["digest"],
            *(entry["digest"] for entry in json.loads(layout_blob(layout, index["digest"]))["manifests"]),
        ],
        "index": index,
        "manifest": subject,
        "referrers": attached,
        "root": root,
    }


def assert_carried(registry, repository: str, signed, keys, workdir, signers=("first",)) -> None:
    """At the registry: every digest's `.sig` verifies with openssl, and both tag-schema indexes list their referrer."""
    for digest in signed["digests"]:
        manifest = json.loads(remote(registry, "%s:%s" % (repository, sig_tag(digest))))
        layers = manifest["layers"]
        assert len(layers) == len(signers)
        for layer, signer in zip(layers, signers):
            payload = registry_blob(registry, layer["digest"])
            assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == digest
            assert openssl_verifies(workdir, keys[signer]["pub"], payload, layer["annotations"][SIGNATURE])
    for kind, artifact_type in (("index", IN_TOTO), ("manifest", BLOCK_INDEX)):
        listing = json.loads(remote(registry, "%s:%s" % (repository, referrers_tag(signed[kind]["digest"]))))
        assert listing["mediaType"] == OCI_INDEX
        assert [(e["digest"], e["artifactType"]) for e in listing["manifests"]] == [
            (signed["referrers"][kind], artifact_type)
        ]
        referrer = json.loads(remote(registry, "%s@%s" % (repository, signed["referrers"][kind])))
        assert referrer["subject"] == signed[kind]
        for layer in referrer["layers"]:
            assert registry_blob(registry, layer["digest"]) == layout_blob(signed["layout"], layer["digest"])


def fetch(ansible, registry_args, name: str, dest, keys, **extra) -> dict:
    args = dict(
        registry_args,
        name=name,
        dest=str(dest),
        platform="baremetal",
        architecture="amd64",
        signature_keys=[keys["first"]["pub"]],
        **extra,
    )
    return ansible.module(FETCH, args)


def test_push_carries_signatures_and_referrers(ansible, registry_plain, signed, keys, tmp_path):
    args = dict(registry_plain.registry_args, layout=signed["layout"], name=signed["name"])
    checked = ansible.module(PUSH, args, check=True)
    assert checked["changed"] is True and checked["signatures"] == SIGNED and checked["referrers"] == 2
    listed = subprocess.run(
        ["skopeo", "list-tags", *registry_plain.skopeo_flags(), "docker://%s/carry/push" % registry_plain.host],
        capture_output=True,
        check=False,
    )
    assert listed.returncode != 0  # check mode wrote nothing: the repository does not exist

    pushed = ansible.module(PUSH, args)
    assert pushed["changed"] is True and pushed["signatures"] == SIGNED and pushed["referrers"] == 2, pushed
    assert pushed["digest"] == signed["index"]["digest"]
    assert_carried(registry_plain, "carry/push", signed, keys, tmp_path)
    # The image's own documents are the layout's bytes.
    assert remote(registry_plain, "carry/push:1.0") == layout_blob(signed["layout"], signed["index"]["digest"])

    # Fetch trusts what was pushed: the signatures travelled with the image.
    fetched = fetch(ansible, registry_plain.registry_args, signed["name"], tmp_path / "dest", keys)
    assert fetched.get("failed") is not True, fetched
    assert set(fetched["signatures"].values()) == {keys["first"]["fingerprint"]}

    again = ansible.module(PUSH, args)
    assert again["changed"] is False and again["signatures"] == 0 and again["referrers"] == 0, again
    assert again["blobs"]["uploaded"] == 0

    # Turned off, an unsigned copy elsewhere: no .sig there, fetch with keys refuses it.
    bare = ansible.module(
        PUSH, dict(args, destination="%s/carry/bare:1.0" % registry_plain.host, carry_referrers=False)
    )
    assert bare["changed"] is True and bare["signatures"] == 0 and bare["referrers"] == 0
    proc = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            *registry_plain.skopeo_flags(),
            "docker://%s/carry/bare:%s" % (registry_plain.host, sig_tag(signed["index"]["digest"])),
        ],
        capture_output=True,
        check=False,
    )
    assert proc.returncode != 0


def test_a_new_signer_at_the_source_is_appended_at_the_destination(ansible, registry_plain, signed, keys, tmp_path):
    """The destination's own signers stay; the source's new ones are added."""
    args = dict(registry_plain.registry_args, layout=signed["layout"], name=signed["name"])
    ansible.module(PUSH, dict(args, destination="%s/carry/merge:1.0" % registry_plain.host))
    remote_name = "%s/carry/merge:1.0" % registry_plain.host
    at_registry = ansible.module(SIGN, dict(registry_plain.registry_args, name=remote_name, key=keys["second"]["sec1"]))
    assert at_registry["changed"] is True
    # The source has nothing the destination lacks: nothing to do.
    unchanged = ansible.module(PUSH, dict(args, destination=remote_name))
    assert unchanged["changed"] is False and unchanged["signatures"] == 0, unchanged

    layout = str(tmp_path / "layout")
    subprocess.run(["cp", "-a", signed["layout"], layout], check=True)
    assert ansible.module(SIGN, {"layout": layout, "name": signed["name"], "key": keys["third"]["sec1"]})["changed"]
    merged = ansible.module(PUSH, dict(args, layout=layout, destination=remote_name))
    assert merged["changed"] is True and merged["signatures"] == SIGNED and merged["referrers"] == 0, merged
    # Signed for carry/push, so the payloads name that repository: only openssl's verdict is asked here.
    assert_carried(registry_plain, "carry/merge", signed, keys, tmp_path, signers=("first", "second", "third"))
    assert ansible.module(PUSH, dict(args, layout=layout, destination=remote_name))["changed"] is False


def test_copy_carries_them_between_registries_and_into_a_layout(
    ansible, registry_plain, registry_tls, signed, keys, tmp_path
):
    ansible.module(PUSH, dict(registry_plain.registry_args, layout=signed["layout"], name=signed["name"]))
    source = dict(registry_plain.registry_args, name=signed["name"])

    # registry -> registry, with its own credentials and CA.
    destination = dict(registry_tls.registry_args, name="%s/carry/copied:1.0" % registry_tls.host)
    copied = ansible.module(COPY, {"source": source, "destination": destination})
    assert copied["changed"] is True and copied["signatures"] == SIGNED and copied["referrers"] == 2, copied
    assert_carried(registry_tls, "carry/copied", signed, keys, tmp_path)
    again = ansible.module(COPY, {"source": source, "destination": destination})
    assert again["changed"] is False and again["signatures"] == 0 and again["referrers"] == 0, again

    # registry -> layout: the same names a signed layout has; fetch trusts the layout's copy.
    pulled = str(tmp_path / "pulled")
    into = {"source": source, "destination": {"layout": pulled}}
    checked = ansible.module(COPY, into, check=True)
    assert checked["changed"] is True and checked["signatures"] == SIGNED and not os.path.exists(pulled)
    copied = ansible.module(COPY, into)
    assert copied["changed"] is True and copied["signatures"] == SIGNED and copied["referrers"] == 2, copied
    names = set(OciLayout(pulled).refs())
    repository = signed["name"].rsplit(":", 1)[0]
    assert {"%s:%s" % (repository, sig_tag(digest)) for digest in signed["digests"]} <= names
    for kind in ("index", "manifest"):
        tag = referrers_tag(signed[kind]["digest"])
        listing = json.loads(inspect_raw("oci:%s:%s" % (pulled, tag)))
        assert [entry["digest"] for entry in listing["manifests"]] == [signed["referrers"][kind]]
    fetched = fetch(ansible, {}, signed["name"], tmp_path / "dest", keys, layout=pulled)
    assert fetched.get("failed") is not True, fetched
    assert ansible.module(COPY, into)["changed"] is False

    # layout -> registry with copy too (as push does).
    back = {
        "source": {"name": signed["name"], "layout": pulled},
        "destination": dict(destination, name="%s/carry/back:1.0" % registry_tls.host),
    }
    returned = ansible.module(COPY, back)
    assert returned["changed"] is True and returned["signatures"] == SIGNED and returned["referrers"] == 2, returned
    assert_carried(registry_tls, "carry/back", signed, keys, tmp_path)
