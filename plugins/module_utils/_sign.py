# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Signatures in cosign's legacy format: payloads, keys, signing and the verdict.

A signed digest has a `sha256-<hex>.sig` manifest whose layers are
simple-signing payloads; each layer's annotation holds the base64 of an
ASN.1 DER ECDSA P-256/SHA-256 signature over the payload's exact bytes.
The cryptography is `cryptography`'s, never our own. Pure: no files but the
key files it is handed, no registries; `_signatures.py` moves the documents.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._identity import SignedIdentity
from ansible_collections.ironcore.image.plugins.module_utils._io import read_bounded
from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json, sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import SHA256_DIGEST_RE

# cryptography is imported where a key is used, not here: a fetch without signature_keys (and
# every module that imports this one only for its names) never pays for loading it. A missing
# library is reported by the module's require(module, "cryptography") before any key is used.

SIMPLESIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
SIGNATURE_TAG_SUFFIX = ".sig"
# Beside the signature, the fingerprint of the key that made it: an ECDSA signature names no key, and
# "signed by an unknown key" is only useful when it says which one. Claimed, never trusted.
FINGERPRINT_ANNOTATION = "io.ironcore.image.signature.key-fingerprint"


class SignatureError(ImageError):
    """A key cannot be used, or an image's signatures do not satisfy the policy; one line."""


def signature_tag(digest: str) -> str:
    """The tag cosign's legacy format keeps the signatures of `digest` under: sha256-<hex>.sig."""
    return digest.replace(":", "-", 1) + SIGNATURE_TAG_SUFFIX


def payload_for(repository: str, digest: str) -> bytes:
    """The simple-signing payload naming exactly this repository and digest."""
    return canonical_json(
        {
            "critical": {
                "identity": {"docker-reference": repository},
                "image": {"docker-manifest-digest": digest},
                "type": SIGNATURE_TYPE,
            },
            "optional": None,
        }
    )


def parse_payload(data: bytes) -> tuple[str, str]:
    """(repository, digest) a payload names; SignatureError when it is not a simple-signing payload."""
    try:
        body = json.loads(data)
        critical = body["critical"]
        repository = critical["identity"]["docker-reference"]
        digest = critical["image"]["docker-manifest-digest"]
        kind = critical["type"]
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise SignatureError("the payload is not a simple-signing document") from exc
    if kind != SIGNATURE_TYPE or not isinstance(repository, str) or not isinstance(digest, str):
        raise SignatureError("the payload is not a cosign container image signature")
    if not SHA256_DIGEST_RE.match(digest):
        raise SignatureError("the payload names no valid sha256 digest")
    return repository, digest


# ---- keys -----------------------------------------------------------------------


# A PEM key file is a few hundred bytes; anything far larger is not one.
KEY_FILE_LIMIT = 64 * 1024


def load_private_key(path: str, passphrase: str | None = None) -> t.Any:
    """An EC P-256 private key from a PEM file (PKCS#8 or SEC1, optionally encrypted)."""
    try:
        data = read_bounded(path, KEY_FILE_LIMIT)
    except (OSError, ValueError) as exc:
        raise SignatureError("key %s cannot be read: %s; give a PEM private key file" % (path, exc)) from exc
    if (
        b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----" in data
        or b"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----" in data
    ):
        # scrypt plus NaCl secretbox: the latter needs PyNaCl, which this collection does not depend on.
        raise SignatureError(
            "key %s is a cosign encrypted key (scrypt and NaCl secretbox), which is not read; give the same key as a"
            " PKCS#8 or SEC1 PEM file, or make one with openssl ecparam -name prime256v1 -genkey and load it into"
            " cosign with cosign import-key-pair (see docs/signing.md)" % path
        )
    if b"-----BEGIN PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        # The easy mix-up (cosign.pub for cosign.key): say so, rather than "not a private key".
        raise SignatureError(
            "key %s is a public key; sign needs the private key it belongs to (PEM BEGIN PRIVATE KEY or BEGIN EC"
            " PRIVATE KEY), and the public key goes to signature_keys of fetch, info and the provision role" % path
        )
    secret = passphrase.encode() if passphrase else None
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(data, password=secret)
    except TypeError as exc:
        hint = "set key_passphrase" if secret is None else "it is not encrypted: leave key_passphrase out"
        raise SignatureError("key %s cannot be loaded: %s" % (path, hint)) from exc
    except ValueError as exc:
        raise SignatureError(
            "key %s cannot be loaded: not an unencrypted or correctly decrypted PEM private key"
            " (a wrong key_passphrase?)" % path
        ) from exc
    _require_p256(key, "key %s" % path)
    return key


def load_public_key(text: str) -> t.Any:
    """An EC P-256 public key from PEM text, or from the path of a PEM file."""
    if "-----BEGIN" in text:
        data, what = text.encode(), "a PEM public key given inline"
    else:
        try:
            data, what = read_bounded(text, KEY_FILE_LIMIT), "public key %s" % text
        except (OSError, ValueError) as exc:
            raise SignatureError("signature key %s cannot be read: %s" % (text, exc)) from exc
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SignatureError("%s is not a PEM public key (BEGIN PUBLIC KEY)" % what) from exc
    _require_p256(key, what)
    return key


def _require_p256(key: t.Any, what: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise SignatureError("%s is not an EC P-256 key; make one with openssl ecparam -name prime256v1 -genkey" % what)


def fingerprint(key: t.Any) -> str:
    """SHA256:<hex> of the public key's DER SubjectPublicKeyInfo (what `openssl pkey -pubout -outform DER` prints)."""
    from cryptography.hazmat.primitives import serialization

    public = key.public_key() if hasattr(key, "public_key") else key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


# ---- signing and verifying -----------------------------------------------------


def sign(key: t.Any, data: bytes) -> str:
    """base64 of the ASN.1 DER ECDSA-P256/SHA-256 signature over `data`."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode("ascii")


def verifying_key(keys: t.Sequence[t.Any], data: bytes, signature: str) -> t.Any | None:
    """The first key whose signature `signature` (base64 DER) is over `data`, else None."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    der = decode_signature(signature)
    for key in keys:
        try:
            key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return key
    return None


def decode_signature(signature: t.Any) -> bytes:
    if not isinstance(signature, str) or not signature:
        raise SignatureError("the signature annotation is missing")
    try:
        return base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("the signature annotation is not base64") from exc


@dataclass(frozen=True)
class SignedPayload:
    """One layer of a `.sig` manifest: the payload's bytes and the signature annotation."""

    data: bytes
    signature: t.Any
    claimed_fingerprint: t.Any = None


DEFAULT_IDENTITY = SignedIdentity()


def check_signed(
    digest: str,
    repository: str,
    entries: t.Sequence[SignedPayload] | None,
    keys: t.Sequence[t.Any],
    identity: SignedIdentity = DEFAULT_IDENTITY,
    tag: str | None = None,
) -> str:
    """The fingerprint of the key that signed `digest` for `repository`, or SignatureError saying why none did.

    `entries` is None when the digest has no `.sig` at all. Of all the ways
    a signature can fail, the one reported is the most telling: a valid
    signature by a trusted key over the wrong digest or repository says
    more than a signature by an unknown key. The repository a payload names
    must satisfy `identity` for the image in `repository` fetched by `tag`
    (None: by digest).
    """
    where = "%s@%s" % (repository, digest)
    if not entries:
        raise SignatureError(
            "%s is unsigned: there is no signature %s; sign it with ironcore_image_sign"
            % (where, signature_tag(digest))
        )
    trusted = {fingerprint(key) for key in keys}
    unknown: list[str] = []
    wrong_digest: list[str] = []
    wrong_repository: list[str] = []
    malformed: list[str] = []
    for entry in entries:
        try:
            key = verifying_key(keys, entry.data, entry.signature)
        except SignatureError as exc:
            malformed.append(str(exc))
            continue
        if key is None:
            if entry.claimed_fingerprint in trusted:
                # A trusted key's signature that no longer matches its payload: something was edited.
                malformed.append("the signature by %s does not match its payload (edited?)" % entry.claimed_fingerprint)
            else:
                unknown.append(_signer_hint(entry))
            continue
        try:
            named_repository, named_digest = parse_payload(entry.data)
        except SignatureError as exc:
            malformed.append(str(exc))
            continue
        if named_digest != digest:
            wrong_digest.append(named_digest)
        elif not identity.accepts(repository, tag, named_repository):
            wrong_repository.append(named_repository)
        else:
            return fingerprint(key)
    if wrong_digest:
        raise SignatureError(
            "%s has a signature for another digest (%s); the tag or its .sig was moved: refusing it"
            % (where, ", ".join(sorted(set(wrong_digest))))
        )
    if wrong_repository:
        raise SignatureError(
            "%s has a signature whose payload is for another repository (%s), where %s; refusing it"
            % (where, ", ".join(sorted(set(wrong_repository))), identity.describe(repository))
        )
    if unknown:
        raise SignatureError(
            "%s is signed, but by an unknown key (%s); add its public key to signature_keys if you trust it"
            % (where, ", ".join(sorted(set(unknown))))
        )
    raise SignatureError("%s has a malformed signature: %s" % (where, malformed[0]))


def _signer_hint(entry: SignedPayload) -> str:
    """What identifies an unknown signature: the fingerprint its writer recorded, else its payload's digest."""
    if isinstance(entry.claimed_fingerprint, str) and entry.claimed_fingerprint.startswith("SHA256:"):
        return entry.claimed_fingerprint[:71]
    return "no fingerprint recorded, payload %s" % sha256_digest(entry.data)
