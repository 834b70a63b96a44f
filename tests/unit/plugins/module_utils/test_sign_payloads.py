"""The verdict of _sign.check_signed for each way a signature can fail, and the payload it signs."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.ironcore.image.plugins.module_utils import _sign as sign

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
REPOSITORY = "registry.example.com/os/signed"


@pytest.fixture
def key():
    return ec.generate_private_key(ec.SECP256R1())


def signed(key, repository=REPOSITORY, digest=DIGEST, claim=True):
    payload = sign.payload_for(repository, digest)
    return sign.SignedPayload(payload, sign.sign(key, payload), sign.fingerprint(key) if claim else None)


def test_payload_names_exactly_the_repository_and_digest():
    body = json.loads(sign.payload_for(REPOSITORY, DIGEST))
    assert body["critical"] == {
        "identity": {"docker-reference": REPOSITORY},
        "image": {"docker-manifest-digest": DIGEST},
        "type": "cosign container image signature",
    }
    assert sign.parse_payload(sign.payload_for(REPOSITORY, DIGEST)) == (REPOSITORY, DIGEST)


def test_signature_tag():
    assert sign.signature_tag(DIGEST) == "sha256-" + "a" * 64 + ".sig"


def test_a_valid_signature_gives_the_fingerprint(key):
    assert sign.check_signed(DIGEST, REPOSITORY, [signed(key)], [key.public_key()]) == sign.fingerprint(key)


def test_another_key_in_the_list_still_verifies(key):
    other = ec.generate_private_key(ec.SECP256R1())
    keys = [other.public_key(), key.public_key()]
    assert sign.check_signed(DIGEST, REPOSITORY, [signed(other, digest=OTHER), signed(key)], keys)


@pytest.mark.parametrize(
    "entries, reason",
    [
        (None, "is unsigned"),
        ([], "is unsigned"),
    ],
)
def test_unsigned(key, entries, reason):
    with pytest.raises(sign.SignatureError, match=reason):
        sign.check_signed(DIGEST, REPOSITORY, entries, [key.public_key()])


def test_unknown_key_names_its_fingerprint(key):
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(sign.SignatureError, match="unknown key \\(%s\\)" % sign.fingerprint(stranger)):
        sign.check_signed(DIGEST, REPOSITORY, [signed(stranger)], [key.public_key()])


def test_signature_for_another_digest(key):
    with pytest.raises(sign.SignatureError, match="another digest \\(%s\\)" % OTHER):
        sign.check_signed(DIGEST, REPOSITORY, [signed(key, digest=OTHER)], [key.public_key()])


def test_payload_for_another_repository(key):
    with pytest.raises(sign.SignatureError, match="another repository \\(elsewhere/os\\)"):
        sign.check_signed(DIGEST, REPOSITORY, [signed(key, repository="elsewhere/os")], [key.public_key()])


def test_an_edited_payload_is_malformed(key):
    entry = signed(key)
    edited = sign.SignedPayload(entry.data.replace(b"a" * 64, b"c" * 64), entry.signature, entry.claimed_fingerprint)
    with pytest.raises(sign.SignatureError, match=r"malformed signature: .*does not match its payload"):
        sign.check_signed(DIGEST, REPOSITORY, [edited], [key.public_key()])


@pytest.mark.parametrize("signature", [None, "", "not base64!"])
def test_a_broken_annotation_is_malformed(key, signature):
    entry = sign.SignedPayload(sign.payload_for(REPOSITORY, DIGEST), signature)
    with pytest.raises(sign.SignatureError, match="malformed signature"):
        sign.check_signed(DIGEST, REPOSITORY, [entry], [key.public_key()])


def test_a_signed_payload_that_is_not_simple_signing_is_malformed(key):
    entry = sign.SignedPayload(b"{}", sign.sign(key, b"{}"))
    with pytest.raises(sign.SignatureError, match="malformed signature: the payload is not"):
        sign.check_signed(DIGEST, REPOSITORY, [entry], [key.public_key()])


def test_public_keys_load_inline_or_from_a_file_and_must_be_p256(key, tmp_path):
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert sign.fingerprint(sign.load_public_key(pem.decode())) == sign.fingerprint(key)
    (tmp_path / "pub.pem").write_bytes(pem)
    assert sign.fingerprint(sign.load_public_key(str(tmp_path / "pub.pem"))) == sign.fingerprint(key)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    text = p384.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(sign.SignatureError, match="not an EC P-256 key"):
        sign.load_public_key(text)


def test_a_cosign_encrypted_key_is_refused_in_one_line(tmp_path):
    path = tmp_path / "cosign.key"
    path.write_text(
        "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
        "eyJrZGYiOnt9fQ==\n"
        "-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    )
    with pytest.raises(sign.SignatureError) as caught:
        sign.load_private_key(str(path), "secret")
    message = str(caught.value)
    assert "cosign encrypted key" in message and "openssl" in message and "\n" not in message
