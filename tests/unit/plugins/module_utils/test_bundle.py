"""_bundle: the Sigstore bundle v0.3 sign writes, and the verdict for each way one can fail."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.ironcore.image.plugins.module_utils import _bundle as bundle
from ansible_collections.ironcore.image.plugins.module_utils import _provenance as provenance
from ansible_collections.ironcore.image.plugins.module_utils._sign import SignatureError, fingerprint

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
REPOSITORY = "registry.example.com/os/signed"


@pytest.fixture
def key():
    return ec.generate_private_key(ec.SECP256R1())


def edited(data: bytes, change) -> bytes:
    document = json.loads(data)
    change(document)
    return json.dumps(document).encode()


def test_the_bundle_is_keyed_v03_dsse_around_the_cosign_sign_statement(key):
    document = json.loads(bundle.make_bundle(key, REPOSITORY, DIGEST))
    assert document["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert document["verificationMaterial"] == {"publicKey": {"hint": bundle.key_hint(key)}, "tlogEntries": []}
    envelope = document["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement == {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": REPOSITORY, "digest": {"sha256": "a" * 64}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }
    assert [entry["keyid"] for entry in envelope["signatures"]] == [fingerprint(key)]


def test_a_valid_bundle_gives_the_fingerprint(key):
    data = bundle.make_bundle(key, REPOSITORY, DIGEST)
    assert bundle.check_bundles(DIGEST, REPOSITORY, [data], [key.public_key()]) == fingerprint(key)
    assert bundle.signed_for(data, key.public_key(), REPOSITORY, DIGEST)
    assert not bundle.signed_for(data, key.public_key(), REPOSITORY, OTHER)


def _payload_byte_changed(document):
    payload = bytearray(base64.b64decode(document["dsseEnvelope"]["payload"]))
    payload[payload.index(b"a")] = ord("b")
    document["dsseEnvelope"]["payload"] = base64.b64encode(bytes(payload)).decode()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda key, other: bundle.make_bundle(key, REPOSITORY, OTHER), "for another digest"),
        (lambda key, other: bundle.make_bundle(key, "registry.example.com/os/else", DIGEST), "another repository"),
        (lambda key, other: bundle.make_bundle(other, REPOSITORY, DIGEST), "signed by an unknown key"),
        (lambda key, other: edited(bundle.make_bundle(key, REPOSITORY, DIGEST), _payload_byte_changed), "was changed"),
        (
            lambda key, other: edited(
                bundle.make_bundle(key, REPOSITORY, DIGEST), lambda d: d.update(mediaType="application/json")
            ),
            "malformed Sigstore bundle",
        ),
        (lambda key, other: b"not json", "malformed Sigstore bundle"),
    ],
)
def test_refused(key, make, reason):
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SignatureError, match=reason):
        bundle.check_bundles(DIGEST, REPOSITORY, [make(key, other)], [key.public_key()])


def test_another_predicate_type_is_refused(key):
    body = json.loads(bundle.sign_statement(REPOSITORY, DIGEST))
    body["predicateType"] = "https://slsa.dev/provenance/v1"
    envelope = provenance.envelope_document(key, json.dumps(body).encode())
    data = json.dumps({"mediaType": bundle.BUNDLE_MEDIA_TYPE, "dsseEnvelope": envelope}).encode()
    with pytest.raises(SignatureError, match="predicate type is https://slsa"):
        bundle.check_bundles(DIGEST, REPOSITORY, [data], [key.public_key()])


def test_a_good_bundle_among_bad_ones_verifies(key):
    bad = bundle.make_bundle(key, REPOSITORY, OTHER)
    good = bundle.make_bundle(key, REPOSITORY, DIGEST)
    assert bundle.check_bundles(DIGEST, REPOSITORY, [bad, b"{}", good], [key.public_key()]) == fingerprint(key)
