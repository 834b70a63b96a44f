"""The copy engine carries signatures and referrers: a layout-to-layout copy on real files (no network)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers.images import build_ours

from ansible_collections.ironcore.image.plugins.module_utils import _copy as engine
from ansible_collections.ironcore.image.plugins.module_utils._model import ImageReference
from ansible_collections.ironcore.image.plugins.module_utils._referrers import (
    ReferrerBlob,
    attach_referrer,
    list_referrers,
)
from ansible_collections.ironcore.image.plugins.module_utils._sign import signature_tag
from ansible_collections.ironcore.image.plugins.module_utils._signatures import read_signatures, sign_image
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore

NAME = "registry.example.com/os/unit:1.0"
REF = ImageReference.parse(NAME)
NAMES = engine.SignatureNames(
    source=lambda digest: str(REF.with_tag(signature_tag(digest))),
    destination=lambda digest: str(REF.with_tag(signature_tag(digest))),
)


def key_file(directory, label: str) -> str:
    path = str(directory / (label + ".pem"))
    key = ec.generate_private_key(ec.SECP256R1())
    with open(path, "wb") as stream:
        stream.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


@pytest.fixture
def source(tmp_path):
    layout = str(tmp_path / "source")
    build_ours(layout, NAME, tmp_path)
    store = LayoutStore(layout)
    sign_image(store, NAME, key_file(tmp_path, "first"), None, False, signature_format="legacy")
    index = {key: store.resolve(NAME)[key] for key in ("mediaType", "digest", "size")}
    changed, referrer = attach_referrer(store, index, "application/x-about", [ReferrerBlob("text/plain", data=b"hi")])
    assert changed
    # A referrer of the referrer: it travels too.
    about = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": referrer, "size": 0}
    about["size"] = len(store.read_document(referrer, 0))
    attach_referrer(store, about, "application/x-about-about", [ReferrerBlob("text/plain", data=b"ho")])
    return store


def copy(source: LayoutStore, destination: LayoutStore, check_mode: bool = False) -> engine.CopyResult:
    plan = engine.plan_copy(source, [(NAME, NAME)], NAMES)
    return engine.copy(source, destination, plan, check_mode=check_mode)


def test_signatures_and_referrers_travel_and_a_second_copy_sends_nothing(source, tmp_path):
    plan = engine.plan_copy(source, [(NAME, NAME)], NAMES)
    # The combined index and four manifests are signed; two referrers (one about the other).
    assert sum(1 for a in plan.attachments if a.signature_names) == 5
    assert sum(1 for a in plan.attachments if a.referrer) == 2
    assert engine.plan_copy(source, [(NAME, NAME)]).attachments == []

    destination = LayoutStore(str(tmp_path / "destination"))
    checked = copy(source, destination, check_mode=True)
    assert checked.changed and len(checked.signatures) == 5 and len(checked.referrers) == 2
    assert not destination.layout.exists()

    done = copy(source, destination)
    assert done.changed and len(done.signatures) == 5 and len(done.referrers) == 2
    digest = done.digest
    assert read_signatures(destination, REF, digest) == read_signatures(source, REF, digest)
    [referrer] = list_referrers(destination, digest)
    assert list_referrers(destination, digest) == list_referrers(source, digest)
    assert [r.artifact_type for r in list_referrers(destination, referrer.digest)] == ["application/x-about-about"]

    again = copy(source, destination)
    assert not again.changed and again.signatures == [] and again.referrers == [] and again.blobs.copied == 0


def test_a_destination_signer_is_kept_and_the_source_signer_appended(source, tmp_path):
    destination = LayoutStore(str(tmp_path / "destination"))
    engine.copy(source, destination, engine.plan_copy(source, [(NAME, NAME)]))
    sign_image(destination, NAME, key_file(tmp_path, "second"), None, False, signature_format="legacy")
    digest = destination.resolve(NAME)["digest"]
    theirs = read_signatures(destination, REF, digest)
    ours = read_signatures(source, REF, digest)
    assert theirs and ours and theirs != ours

    merged = copy(source, destination)
    assert len(merged.signatures) == 5 and not merged.moved
    found = read_signatures(destination, REF, digest)
    assert found == [*theirs, *ours]
    # The merged `.sig` is a complete manifest: its config lists one diff_id per signer.
    sig = destination.current_name(NAMES.destination(digest))
    assert sig is not None
    manifest = json.loads(destination.read_document(sig["digest"], sig["size"]))
    config = json.loads(destination.read_document(manifest["config"]["digest"], manifest["config"]["size"]))
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]
    assert not copy(source, destination).changed


class ListedByAMirror(LayoutStore):
    """A source whose referrers a mirror listed (the origin could not answer), as _mirrors.MirroredSource says."""

    def listed_by_mirror(self, subject_digest: str) -> str | None:
        return "http://mirror.example"


def test_from_a_mirror_only_signatures_and_signed_provenance_travel(source, tmp_path):
    sign_image(source, NAME, key_file(tmp_path, "second"), None, False, provenance=True, signature_format="legacy")
    index = source.resolve(NAME)["digest"]
    [provenance] = list_referrers(source, index, "application/vnd.in-toto+json")
    [about] = list_referrers(source, index, "application/x-about")
    # A statement about this very digest, in an envelope without signatures: nothing anyone could verify.
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "predicateType": "https://slsa.dev/provenance/v1",
        "subject": [{"name": "os/unit", "digest": {"sha256": index.split(":", 1)[1]}}],
    }
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    unsigned = json.dumps({"payloadType": "application/vnd.in-toto+json", "payload": payload, "signatures": []})
    subject = {key: source.resolve(NAME)[key] for key in ("mediaType", "digest", "size")}
    blob = ReferrerBlob("application/vnd.dsse.envelope.v1+json", data=unsigned.encode())
    _changed, bare = attach_referrer(source, subject, "application/vnd.in-toto+json", [blob])

    mirrored = ListedByAMirror(source.layout.path)
    plan = engine.plan_copy(mirrored, [(NAME, NAME)], NAMES)
    assert sum(1 for a in plan.attachments if a.signature_names) == 5
    assert [a.referrer.digest for a in plan.attachments if a.referrer] == [provenance.digest]
    assert sorted(entry["digest"] for entry in plan.left_out) == sorted([about.digest, bare])
    assert {entry["mirror"] for entry in plan.left_out} == {"http://mirror.example"}
    # The origin's own listing carries them all.
    assert len([a for a in engine.plan_copy(source, [(NAME, NAME)], NAMES).attachments if a.referrer]) == 4
