"""_provenance: the DSSE PAE, the in-toto statement an image gives, and the verdict on envelopes."""

from __future__ import annotations

import base64
import json
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.ironcore.image.plugins.module_utils import _provenance as provenance
from ansible_collections.ironcore.image.plugins.module_utils._sign import fingerprint

INDEX = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64
KERNEL = "sha256:" + "a" * 64
ROOTFS = "sha256:" + "b" * 64
REPOSITORY = "registry.example.com/os/signed"


def manifest(platform: str, architecture: str, layers: list[tuple[str, str]]) -> dict:
    return {
        "schemaVersion": 2,
        "annotations": {"architecture": architecture, "io.ironcore.image.platform": platform, "variant": "metal"},
        "layers": [
            {
                "mediaType": "application/vnd.ironcore.image." + title,
                "digest": digest,
                "size": 1,
                "annotations": {"org.opencontainers.image.title": title},
            }
            for title, digest in layers
        ],
    }


MANIFESTS = {
    "sha256:" + "3" * 64: manifest("baremetal", "amd64", [("kernel", KERNEL), ("rootfs", ROOTFS)]),
    "sha256:" + "4" * 64: manifest("virtualization", "amd64", [("kernel", KERNEL), ("rootfs", ROOTFS)]),
}
CONFIGS = {"sha256:" + "3" * 64: {"commandLine": "console=ttyS0"}}
INDEX_DOCUMENT = {"annotations": {"org.opencontainers.image.version": "1.0"}}


@pytest.fixture
def key():
    return ec.generate_private_key(ec.SECP256R1())


def body(digest: str = INDEX) -> bytes:
    return provenance.statement(REPOSITORY, digest, INDEX_DOCUMENT, MANIFESTS, CONFIGS)


def test_pae_is_the_dsse_spec_encoding():
    # The DSSE protocol's own example: type and body lengths in ASCII decimal, separated by single spaces.
    encoded = provenance.pae("http://example.com/HelloWorld", b"hello world")
    assert encoded == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert provenance.pae("", b"") == b"DSSEv1 0  0 "
    # Lengths are bytes, not characters.
    assert provenance.pae("t\u00e9", b"\xff") == b"DSSEv1 3 t\xc3\xa9 1 \xff"


def test_statement_names_the_index_the_artifacts_and_the_build():
    document = json.loads(body())
    assert document["_type"] == "https://in-toto.io/Statement/v1"
    assert document["predicateType"] == "https://slsa.dev/provenance/v1"
    assert document["subject"] == [{"name": REPOSITORY, "digest": {"sha256": "1" * 64}}]
    definition = document["predicate"]["buildDefinition"]
    # One dependency per artifact, with both platforms that carry it.
    assert [(d["name"], d["digest"]["sha256"]) for d in definition["resolvedDependencies"]] == [
        ("kernel", "a" * 64),
        ("rootfs", "b" * 64),
    ]
    assert definition["resolvedDependencies"][0]["annotations"] == {
        "architecture": "amd64",
        "platforms": ["baremetal", "virtualization"],
    }
    assert definition["externalParameters"]["platforms"] == ["baremetal", "virtualization"]
    assert definition["externalParameters"]["architectures"] == ["amd64"]
    assert definition["externalParameters"]["cmdline"] == {"amd64": "console=ttyS0"}
    assert definition["externalParameters"]["annotations"] == INDEX_DOCUMENT["annotations"]
    assert definition["internalParameters"]["version"] == provenance.COLLECTION_VERSION
    # The same image gives the same bytes: attaching again can tell it changed nothing.
    assert body() == body()


def test_a_signed_uki_names_its_secure_boot_certificate():
    signed = manifest("baremetal", "amd64", [("kernel", KERNEL), ("uki", OTHER)])
    signed["layers"][1]["annotations"]["io.ironcore.image.uki.signer"] = "sha256:" + "c" * 64
    document = json.loads(provenance.statement(REPOSITORY, INDEX, INDEX_DOCUMENT, {INDEX: signed}, {}))
    found = {d["name"]: d["annotations"] for d in document["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert found["uki"]["secure_boot_signer"] == "sha256:" + "c" * 64
    assert "secure_boot_signer" not in found["kernel"]


def test_collection_version_is_galaxy_yml_version():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..")
    with open(os.path.join(root, "galaxy.yml")) as stream:
        versions = [line.split(":", 1)[1].strip() for line in stream if line.startswith("version:")]
    assert versions == [provenance.COLLECTION_VERSION]


def test_envelope_signature_is_der_ecdsa_over_the_pae(key):
    envelope = json.loads(provenance.envelope(key, body()))
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(envelope["payload"]) == body()
    [signature] = envelope["signatures"]
    assert signature["keyid"] == fingerprint(key)
    signed = provenance.pae("application/vnd.in-toto+json", body())
    key.public_key().verify(base64.b64decode(signature["sig"]), signed, ec.ECDSA(hashes.SHA256()))


def test_a_valid_envelope_verifies(key):
    verified = provenance.check_provenance(INDEX, "img", [provenance.envelope(key, body())], [key.public_key()])
    assert verified.result() == {
        "verified": True,
        "keyid": fingerprint(key),
        "predicate_type": "https://slsa.dev/provenance/v1",
    }


def test_another_key_in_the_list_and_a_stranger_beside_it(key):
    stranger = ec.generate_private_key(ec.SECP256R1())
    envelopes = [provenance.envelope(stranger, body()), provenance.envelope(key, body())]
    keys = [ec.generate_private_key(ec.SECP256R1()).public_key(), key.public_key()]
    assert provenance.check_provenance(INDEX, "img", envelopes, keys).keyid == fingerprint(key)


def refused(envelopes, keys) -> str:
    with pytest.raises(provenance.ProvenanceError) as caught:
        provenance.check_provenance(INDEX, "img@" + INDEX, envelopes, keys)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_no_provenance(key):
    assert "has no provenance" in refused([], [key.public_key()])


def test_unknown_key_names_its_keyid(key):
    stranger = ec.generate_private_key(ec.SECP256R1())
    message = refused([provenance.envelope(stranger, body())], [key.public_key()])
    assert "signed by an unknown key (%s)" % fingerprint(stranger) in message


def test_another_digest(key):
    message = refused([provenance.envelope(key, body(OTHER))], [key.public_key()])
    assert "provenance for another digest (%s)" % OTHER in message


def test_payload_changed_after_signing(key):
    envelope = json.loads(provenance.envelope(key, body()))
    forged = body().replace(b"console=ttyS0", b"console=ttyS1 init=/bin/sh")
    envelope["payload"] = base64.b64encode(forged).decode()
    message = refused([json.dumps(envelope).encode()], [key.public_key()])
    assert "payload was changed" in message and fingerprint(key) in message


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"not json", "not DSSE JSON"),
        (b'{"payloadType": "text/plain", "payload": "", "signatures": [{}]}', "payloadType is 'text/plain'"),
        (b'{"payloadType": "application/vnd.in-toto+json", "payload": "!!", "signatures": []}', "not DSSE JSON"),
        (b'{"payloadType": "application/vnd.in-toto+json", "payload": "", "signatures": []}', "no signatures"),
        (b"", "not DSSE JSON"),
    ],
)
def test_malformed_envelopes(key, data, reason):
    message = refused([data], [key.public_key()])
    assert "malformed envelope" in message and reason in message


def test_a_signed_payload_that_is_no_statement_is_malformed(key):
    not_a_statement = json.dumps({"_type": "https://example.com/other"}).encode()
    envelope = provenance.envelope(key, not_a_statement)
    assert "malformed envelope" in refused([envelope], [key.public_key()])


VULN = "https://in-toto.io/attestation/vuln/v1"


def statement_of_type(predicate_type: str, digest: str = INDEX) -> bytes:
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": REPOSITORY, "digest": {"sha256": digest.split(":")[1]}}],
            "predicateType": predicate_type,
            "predicate": {},
        }
    ).encode()


def test_a_trusted_statement_of_another_predicate_type_is_no_provenance(key):
    message = refused([provenance.envelope(key, statement_of_type(VULN))], [key.public_key()])
    assert "predicate type is %s, not https://slsa.dev/provenance/v1" % VULN in message
    assert "provenance_predicate_types" in message


def test_the_provenance_beside_another_statement_verifies(key):
    envelopes = [provenance.envelope(key, statement_of_type(VULN)), provenance.envelope(key, body())]
    verified = provenance.check_provenance(INDEX, "img", envelopes, [key.public_key()])
    assert verified.predicate_type == "https://slsa.dev/provenance/v1"


def test_predicate_types_the_user_lists(key):
    envelopes = [provenance.envelope(key, statement_of_type(VULN))]
    verified = provenance.check_provenance(INDEX, "img", envelopes, [key.public_key()], [VULN])
    assert verified.predicate_type == VULN
    # Listing another type does not keep the default one.
    with pytest.raises(provenance.ProvenanceError, match="not %s" % VULN):
        provenance.check_provenance(INDEX, "img", [provenance.envelope(key, body())], [key.public_key()], [VULN])


def test_the_most_telling_failure_wins(key):
    stranger = ec.generate_private_key(ec.SECP256R1())
    envelopes = [b"junk", provenance.envelope(stranger, body()), provenance.envelope(key, body(OTHER))]
    assert "another digest" in refused(envelopes, [key.public_key()])


def test_require_provenance_without_keys_is_refused_before_reading_anything():
    from helpers.memory_store import MemoryStore

    from ansible_collections.ironcore.image.plugins.module_utils import _signatures as signatures
    from ansible_collections.ironcore.image.plugins.module_utils._model import ImageReference

    store, ref = MemoryStore(), ImageReference.parse("registry.example/os:1")
    # The refusal comes before anything is read.
    with pytest.raises(signatures.SignatureError) as caught:
        signatures.verify_before_delivery(store, ref, {"require_provenance": True}, INDEX, OTHER)
    assert str(caught.value) == (
        "require_provenance is true but signature_keys is empty; give the public keys to trust"
    )
    # Nothing asked for, nothing checked.
    assert store.reads == []
    assert signatures.verify_before_delivery(store, ref, {}, INDEX, OTHER) == {
        "signatures": {},
        "signature_formats": {},
        "provenance": None,
    }
