# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Provenance: an in-toto Statement v1 with a SLSA provenance v1 predicate, in a DSSE envelope.

The statement's subject is the image's combined index; its resolved
dependencies are the artifacts the manifests carry (title, digest), its
parameters what the manifests and configs record of the build (platforms,
architectures, command lines, index annotations) and the collection's
version. The envelope is signed over DSSE's pre-authentication encoding
(PAE) with the image's signing key, the signature ASN.1 DER and base64, as
cosign writes it. Pure: the documents come in as parsed JSON, the
envelope goes out as bytes; `_signatures.py` moves them.
"""

from __future__ import annotations

import base64
import binascii
import json
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    ARCHITECTURE_ANNOTATION,
    PLATFORM_ANNOTATION,
    SHA256_DIGEST_RE,
    TITLE_ANNOTATION,
    UKI_SIGNER_ANNOTATION,
    descriptors,
)
from ansible_collections.ironcore.image.plugins.module_utils._sign import (
    SignatureError,
    fingerprint,
    sign,
    verifying_key,
)

# Kept equal to galaxy.yml's version by a unit test: a module cannot read galaxy.yml where it runs.
COLLECTION_NAME = "ironcore.image"
COLLECTION_VERSION = "0.2.0"

PAYLOAD_TYPE = "application/vnd.in-toto+json"
PROVENANCE_ARTIFACT_TYPE = PAYLOAD_TYPE
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
# What require_provenance accepts unless the user lists others: a vulnerability scan or any other
# statement the same key signed says nothing about how the image was built.
DEFAULT_PREDICATE_TYPES = (PREDICATE_TYPE,)
BUILD_TYPE = "https://github.com/ironcore-dev/ironcore-image/ansible/build/v1"
BUILDER_ID = "https://galaxy.ansible.com/ui/repo/published/ironcore/image/"
# An envelope is a few KiB (one dependency per artifact); anything far larger is not one we read.
MAX_ENVELOPE_SIZE = 1024 * 1024


class ProvenanceError(SignatureError):
    """An image's provenance is missing or does not satisfy the policy; one line."""


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: "DSSEv1" SP len(type) SP type SP len(body) SP body.

    The lengths are the byte counts in ASCII decimal; the type is UTF-8.
    """
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


# ---- the statement ------------------------------------------------------------------


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def _annotations(document: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    value = document.get("annotations")
    return dict(value) if isinstance(value, dict) else {}


def _dependencies(manifests: t.Mapping[str, t.Mapping[str, t.Any]]) -> list[dict[str, t.Any]]:
    """One resolved dependency per artifact (architecture, title, digest), with the platforms that carry it."""
    found: dict[tuple[str, str, str], dict[str, t.Any]] = {}
    for document in manifests.values():
        annotations = _annotations(document)
        architecture = str(annotations.get(ARCHITECTURE_ANNOTATION) or "")
        platform = annotations.get(PLATFORM_ANNOTATION)
        for layer in descriptors(document.get("layers")):
            digest = str(layer.get("digest"))
            if not SHA256_DIGEST_RE.match(digest):
                continue
            title = str(_annotations(layer).get(TITLE_ANNOTATION) or digest)
            entry = found.setdefault(
                (architecture, title, digest),
                {
                    "name": title,
                    "digest": {"sha256": _hex(digest)},
                    "mediaType": str(layer.get("mediaType")),
                    "annotations": {"architecture": architecture, "platforms": []},
                },
            )
            signer = _annotations(layer).get(UKI_SIGNER_ANNOTATION)
            if isinstance(signer, str):
                # The certificate whose key signed the UKI for Secure Boot: what firmware must trust.
                entry["annotations"]["secure_boot_signer"] = signer
            if isinstance(platform, str) and platform not in entry["annotations"]["platforms"]:
                entry["annotations"]["platforms"].append(platform)
    return [found[key] for key in sorted(found)]


def _parameters(
    index: t.Mapping[str, t.Any],
    manifests: t.Mapping[str, t.Mapping[str, t.Any]],
    configs: t.Mapping[str, t.Mapping[str, t.Any]],
) -> dict[str, t.Any]:
    """What the image records of the options it was built with."""
    platforms: set[str] = set()
    architectures: set[str] = set()
    cmdlines: dict[str, t.Any] = {}
    layer_media_types: set[str] = set()
    for digest, document in manifests.items():
        annotations = _annotations(document)
        architecture = str(annotations.get(ARCHITECTURE_ANNOTATION) or "")
        if isinstance(annotations.get(PLATFORM_ANNOTATION), str):
            platforms.add(annotations[PLATFORM_ANNOTATION])
        if architecture:
            architectures.add(architecture)
        config = configs.get(digest) or {}
        if isinstance(config.get("commandLine"), str):
            cmdlines[architecture] = config["commandLine"]
        layer_media_types.update(str(layer.get("mediaType")) for layer in descriptors(document.get("layers")))
    return {
        "platforms": sorted(platforms),
        "architectures": sorted(architectures),
        "cmdline": cmdlines,
        "layer_media_types": sorted(layer_media_types),
        "annotations": _annotations(index),
    }


def statement(
    repository: str,
    index_digest: str,
    index: t.Mapping[str, t.Any],
    manifests: t.Mapping[str, t.Mapping[str, t.Any]],
    configs: t.Mapping[str, t.Mapping[str, t.Any]],
) -> bytes:
    """The in-toto statement of an image, as canonical JSON: the same image gives the same bytes.

    `manifests` maps each platform manifest's digest to the parsed manifest,
    `configs` each manifest's digest to its parsed config.
    """
    version = {COLLECTION_NAME: COLLECTION_VERSION}
    return canonical_json(
        {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": repository, "digest": {"sha256": _hex(index_digest)}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": _parameters(index, manifests, configs),
                    "internalParameters": {"collection": COLLECTION_NAME, "version": COLLECTION_VERSION},
                    "resolvedDependencies": _dependencies(manifests),
                },
                "runDetails": {
                    "builder": {"id": BUILDER_ID, "version": version},
                    "metadata": {},
                },
            },
        }
    )


# ---- the envelope -------------------------------------------------------------------


def envelope_document(key: t.Any, body: bytes) -> dict[str, t.Any]:
    """The DSSE envelope of `body` as JSON data, signed by `key` over the PAE; keyid is the key's fingerprint.

    A Sigstore bundle (`_bundle.py`) embeds this same document as its `dsseEnvelope`.
    """
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode("ascii"),
        "signatures": [{"keyid": fingerprint(key), "sig": sign(key, pae(PAYLOAD_TYPE, body))}],
    }


def envelope(key: t.Any, body: bytes) -> bytes:
    """The DSSE envelope of `body` as the bytes a provenance referrer carries."""
    return canonical_json(envelope_document(key, body))


@dataclass(frozen=True)
class OpenedEnvelope:
    """An envelope's payload bytes and its signatures [(keyid, sig)], not yet trusted."""

    payload: bytes
    signatures: list[tuple[t.Any, t.Any]]


def open_envelope(data: bytes) -> OpenedEnvelope:
    """The parts of a DSSE envelope; ProvenanceError ("malformed envelope") when it is not one."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProvenanceError("malformed envelope: not DSSE JSON with payloadType, payload and signatures") from exc
    return envelope_parts(document)


def envelope_parts(document: t.Any) -> OpenedEnvelope:
    """The parts of a parsed DSSE envelope (a provenance's, or a Sigstore bundle's `dsseEnvelope`)."""
    try:
        payload_type = document["payloadType"]
        payload = base64.b64decode(document["payload"], validate=True)
        signatures = document["signatures"]
    except (ValueError, TypeError, KeyError, binascii.Error, RecursionError) as exc:
        raise ProvenanceError("malformed envelope: not DSSE JSON with payloadType, payload and signatures") from exc
    if payload_type != PAYLOAD_TYPE:
        raise ProvenanceError("malformed envelope: payloadType is %r, not %s" % (str(payload_type)[:80], PAYLOAD_TYPE))
    if not isinstance(signatures, list) or not signatures or not all(isinstance(s, dict) for s in signatures):
        raise ProvenanceError("malformed envelope: it holds no signatures")
    return OpenedEnvelope(payload, [(entry.get("keyid"), entry.get("sig")) for entry in signatures])


def subject_digests(body: bytes) -> tuple[list[str], str]:
    """(sha256 digests of the subjects, predicate type) of an in-toto statement; ProvenanceError if it is not one."""
    subjects, predicate_type = statement_subjects(body)
    return [digest for _name, digest in subjects], predicate_type


def statement_subjects(body: bytes) -> tuple[list[tuple[str, str]], str]:
    """([(name, sha256 digest)] of the subjects, predicate type) of an in-toto statement."""
    try:
        document = json.loads(body)
        kind, predicate_type, subjects = document["_type"], document["predicateType"], document["subject"]
        named = [(str(subject.get("name")), "sha256:" + str(subject["digest"]["sha256"])) for subject in subjects]
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise ProvenanceError("malformed envelope: its payload is not an in-toto statement") from exc
    if kind != STATEMENT_TYPE:
        raise ProvenanceError("malformed envelope: its payload is a %r, not an in-toto Statement v1" % str(kind)[:80])
    return named, str(predicate_type)


@dataclass
class Refusals:
    """Why the envelopes read so far verified nothing, kept to report the most telling reason."""

    changed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)


def envelope_signer(opened: OpenedEnvelope, keys: t.Sequence[t.Any], refusals: Refusals) -> t.Any | None:
    """The key in `keys` whose signature over the envelope's PAE verifies, else None (and why, in `refusals`)."""
    trusted = {fingerprint(key) for key in keys}
    for keyid, sig in opened.signatures:
        try:
            key = verifying_key(keys, pae(PAYLOAD_TYPE, opened.payload), sig)
        except SignatureError:
            refusals.malformed.append("malformed envelope: a signature is not base64")
            continue
        if key is not None:
            return key
        if keyid in trusted:
            # A trusted key's signature that no longer matches: the payload was edited.
            refusals.changed.append(str(keyid))
        else:
            refusals.unknown.append(str(keyid)[:71] if isinstance(keyid, str) and keyid else "no keyid")
    return None


@dataclass(frozen=True)
class Verified:
    keyid: str
    predicate_type: str

    def result(self) -> dict[str, t.Any]:
        return {"verified": True, "keyid": self.keyid, "predicate_type": self.predicate_type}


def check_provenance(
    digest: str,
    where: str,
    envelopes: t.Sequence[bytes],
    keys: t.Sequence[t.Any],
    predicate_types: t.Sequence[str] = DEFAULT_PREDICATE_TYPES,
) -> Verified:
    """The provenance of `digest` some key in `keys` signed, or ProvenanceError saying why there is none.

    Only a statement whose predicate type is one of `predicate_types` is a
    provenance: the same key may sign other statements about the image
    (a vulnerability scan), and those say nothing about its build. As for
    signatures, the most telling failure is reported: a trusted key's
    statement of another type, then its envelope for another digest, say
    more than an unknown key's.
    """
    if not envelopes:
        raise ProvenanceError(
            "%s has no provenance (no %s referrer); sign it with ironcore_image_sign provenance=true"
            % (where, PROVENANCE_ARTIFACT_TYPE)
        )
    other_digests: list[str] = []
    other_types: list[str] = []
    refusals = Refusals()
    changed, unknown, malformed = refusals.changed, refusals.unknown, refusals.malformed
    for data in envelopes:
        try:
            opened = open_envelope(data)
        except ProvenanceError as exc:
            malformed.append(str(exc))
            continue
        signed_by = envelope_signer(opened, keys, refusals)
        if signed_by is None:
            continue
        try:
            digests, predicate_type = subject_digests(opened.payload)
        except ProvenanceError as exc:
            malformed.append(str(exc))
            continue
        if digest not in digests:
            other_digests.extend(digests)
            continue
        if predicate_type not in predicate_types:
            other_types.append(predicate_type[:120])
            continue
        return Verified(fingerprint(signed_by), predicate_type)
    if other_types:
        raise ProvenanceError(
            "%s has a trusted statement whose predicate type is %s, not %s; refusing it "
            "(list the types to accept in provenance_predicate_types)"
            % (where, ", ".join(sorted(set(other_types))), " or ".join(predicate_types))
        )
    if other_digests:
        raise ProvenanceError(
            "%s has a provenance for another digest (%s); refusing it" % (where, ", ".join(sorted(set(other_digests))))
        )
    if changed:
        raise ProvenanceError(
            "%s has a provenance whose payload was changed: the signature by %s does not match it; refusing it"
            % (where, ", ".join(sorted(set(changed))))
        )
    if unknown:
        raise ProvenanceError(
            "%s has a provenance signed by an unknown key (%s); add its public key to signature_keys if you trust it"
            % (where, ", ".join(sorted(set(unknown))))
        )
    raise ProvenanceError("%s has a provenance with a %s" % (where, malformed[0]))
