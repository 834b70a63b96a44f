"""Push and copy carry an image's `.sig` signatures and referrers, through the real ansible CLI.

The image is built, signed by ironcore_image_sign and given referrers in a
layout, then pushed and copied between real registries and layouts. skopeo
reads the `.sig` and tag-schema documents where they arrive, openssl verifies
the signatures from the registry's own storage, and fetch with signature_keys
delivers from the copies.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest
from helpers.images import build_ours
from helpers.registry import blob_data_path
from helpers.signing import (
    http_put_blob,
    http_put_manifest,
    inspect_raw,
    make_key,
    openssl_verifies,
    remote,
    sig_tag,
)

from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._model import OCI_INDEX
from ansible_collections.ironcore.image.plugins.module_utils._referrers import (
    ReferrerBlob,
    attach_referrer,
    referrers_tag,
)
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore

SIGN = "ironcore.image.ironcore_image_sign"
# The `.sig` format alone: the counts of referrers carried here are those the tests attach themselves.
LEGACY = {"signature_format": "legacy"}
PUSH = "ironcore.image.ironcore_image_push"
COPY = "ironcore.image.ironcore_image_copy"
FETCH = "ironcore.image.ironcore_image_fetch"
SIGNATURE = "dev.cosignproject.cosign/signature"
BLOCK_INDEX = "application/vnd.ironcore.image.blockindex.v1"
IN_TOTO = "application/vnd.in-toto+json"
# The combined index, the two platform indexes its platform tags name and its four manifests are signed.
SIGNED = 7

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
    result = ansible.module(SIGN, {"layout": layout, "name": name, "key": keys["first"]["sec1"], **LEGACY})
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
    at_registry = ansible.module(
        SIGN, dict(registry_plain.registry_args, name=remote_name, key=keys["second"]["sec1"], **LEGACY)
    )
    assert at_registry["changed"] is True
    # The source has nothing the destination lacks: nothing to do.
    unchanged = ansible.module(PUSH, dict(args, destination=remote_name))
    assert unchanged["changed"] is False and unchanged["signatures"] == 0, unchanged

    layout = str(tmp_path / "layout")
    subprocess.run(["cp", "-a", signed["layout"], layout], check=True)
    assert ansible.module(SIGN, {"layout": layout, "name": signed["name"], "key": keys["third"]["sec1"], **LEGACY})[
        "changed"
    ]
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


# ---- junk in a `.sig` ------------------------------------------------------------------

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
# What a verifier reads of one `.sig` (more layers, and the signature is "malformed").
MAX_SIGNERS = 64


def junk_layers(registry, repository: str, count: int) -> list[dict]:
    """Layers that can never verify for anything: random bytes, payloads for another digest, non-JSON payloads."""
    layers = []
    for number in range(count):
        kind = number % 3
        if kind == 0:
            data, media_type = os.urandom(200), "application/octet-stream"
        elif kind == 1:
            body = {
                "critical": {
                    "identity": {"docker-reference": "elsewhere/%d" % number},
                    "image": {"docker-manifest-digest": "sha256:" + "%064x" % number},
                    "type": "cosign container image signature",
                },
                "optional": None,
            }
            data, media_type = json.dumps(body).encode(), SIMPLESIGNING
        else:
            data, media_type = b"not a payload %d" % number, SIMPLESIGNING
        layers.append(
            {
                "mediaType": media_type,
                "digest": http_put_blob(registry, repository, data),
                "size": len(data),
                "annotations": {SIGNATURE: base64.b64encode(os.urandom(70)).decode()},
            }
        )
    return layers


def put_sig(registry, repository: str, digest: str, layers: list[dict], like: dict) -> None:
    """The `.sig` of `digest` in `repository`, replaced through the distribution API with these layers."""
    manifest = dict(like, layers=layers)
    http_put_manifest(registry, repository, sig_tag(digest), json.dumps(manifest).encode())


def sig_layers(registry, repository: str, digest: str) -> list[dict]:
    return json.loads(remote(registry, "%s:%s" % (repository, sig_tag(digest))))["layers"]


def fetch_verified_by(ansible, registry, name: str, dest, key: dict) -> dict:
    args = dict(
        registry.registry_args,
        name=name,
        dest=str(dest),
        platform="baremetal",
        architecture="amd64",
        signature_keys=[key["pub"]],
    )
    return ansible.module(FETCH, args)


def test_junk_in_a_source_sig_neither_travels_nor_breaks_the_destination(
    ansible, registry_plain, signed, keys, tmp_path
):
    host, index = registry_plain.host, signed["index"]["digest"]
    source, destination = "%s/carry/junksrc:1.0" % host, "%s/carry/junkdst:1.0" % host
    push = dict(registry_plain.registry_args, layout=signed["layout"], name=signed["name"])
    assert ansible.module(PUSH, dict(push, destination=source))["signatures"] == SIGNED
    assert ansible.module(PUSH, dict(push, destination=destination, carry_referrers=False))["changed"] is True
    own = ansible.module(SIGN, dict(registry_plain.registry_args, name=destination, key=keys["second"]["sec1"]))
    assert own["changed"] is True, own
    [own_layer] = sig_layers(registry_plain, "carry/junkdst", index)

    # A writer to the source repository fills the index's `.sig` up to the verifier's limit with junk.
    original = json.loads(remote(registry_plain, "carry/junksrc:%s" % sig_tag(index)))
    [first_layer] = original["layers"]
    junk = junk_layers(registry_plain, "carry/junksrc", MAX_SIGNERS - 1)
    put_sig(registry_plain, "carry/junksrc", index, [first_layer, *junk], original)

    # The promote: the destination keeps its own signer, gains the source's, and none of the junk.
    copy = {
        "source": dict(registry_plain.registry_args, name=source),
        "destination": dict(registry_plain.registry_args, name=destination),
    }
    copied = ansible.module(COPY, copy)
    assert copied.get("failed") is not True, copied
    assert copied["signatures"] == SIGNED, copied
    layers = sig_layers(registry_plain, "carry/junkdst", index)
    assert [layer["digest"] for layer in layers] == [own_layer["digest"], first_layer["digest"]]
    for layer, signer in zip(layers, ("second", "first")):
        payload = registry_blob(registry_plain, layer["digest"])
        assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == index
        assert openssl_verifies(tmp_path, keys[signer]["pub"], payload, layer["annotations"][SIGNATURE])
    # The destination's own signature still verifies there.
    fetched = fetch_verified_by(ansible, registry_plain, destination, tmp_path / "dest", keys["second"])
    assert fetched.get("failed") is not True, fetched
    assert set(fetched["signatures"].values()) == {keys["second"]["fingerprint"]}
    again = ansible.module(COPY, copy)
    assert again["changed"] is False and again["signatures"] == 0, again

    # Into a repository without a `.sig`: only the signer that can verify travels.
    fresh = dict(registry_plain.registry_args, name="%s/carry/junkfresh:1.0" % host)
    assert ansible.module(COPY, dict(copy, destination=fresh))["signatures"] == SIGNED
    assert [layer["digest"] for layer in sig_layers(registry_plain, "carry/junkfresh", index)] == [
        first_layer["digest"]
    ]


def test_signing_drops_junk_rather_than_pass_the_limit(ansible, registry_plain, signed, keys, tmp_path):
    host, index = registry_plain.host, signed["index"]["digest"]
    name = "%s/carry/junksign:1.0" % host
    push = dict(registry_plain.registry_args, layout=signed["layout"], name=signed["name"], destination=name)
    assert ansible.module(PUSH, push)["signatures"] == SIGNED
    original = json.loads(remote(registry_plain, "carry/junksign:%s" % sig_tag(index)))
    [first_layer] = original["layers"]
    put_sig(
        registry_plain,
        "carry/junksign",
        index,
        [first_layer, *junk_layers(registry_plain, "carry/junksign", MAX_SIGNERS - 1)],
        original,
    )

    signed_here = ansible.module(SIGN, dict(registry_plain.registry_args, name=name, key=keys["second"]["sec1"]))
    assert signed_here["changed"] is True, signed_here
    layers = sig_layers(registry_plain, "carry/junksign", index)
    assert len(layers) == 2 and layers[0]["digest"] == first_layer["digest"]
    fetched = fetch_verified_by(ansible, registry_plain, name, tmp_path / "dest", keys["second"])
    assert fetched.get("failed") is not True, fetched
