"""The one document parser: cap, size, digest, depth, index or manifest, and the one descriptor validator."""

from __future__ import annotations

import json

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _blockindex, _provenance, _sign
from ansible_collections.ironcore.image.plugins.module_utils._document import (
    MAX_DOCUMENT_DEPTH,
    DocumentError,
    check_descriptor,
    is_index,
    load_json,
    parse_document,
)
from ansible_collections.ironcore.image.plugins.module_utils._errors import parse_error_body
from ansible_collections.ironcore.image.plugins.module_utils._io import sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    DOCKER_MANIFEST_LIST,
    MAX_DOCUMENT_SIZE,
    OCI_INDEX,
    OCI_MANIFEST,
)

DIGEST = "sha256:" + "a" * 64


def described(data: bytes, **extra: object) -> dict:
    return {"digest": sha256_digest(data), "size": len(data), **extra}


def refused(data: bytes, descriptor: dict, fragment: str) -> None:
    with pytest.raises(DocumentError) as error:
        parse_document(data, descriptor, "test")
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_manifest_is_parsed_and_classified():
    data = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
    document = parse_document(data, described(data), "test")
    assert (document.digest, document.media_type, document.data) == (sha256_digest(data), OCI_MANIFEST, data)
    assert document.is_index is False and document.body["layers"] == []
    assert document.descriptor == {"mediaType": OCI_MANIFEST, "digest": sha256_digest(data), "size": len(data)}


def test_the_descriptor_media_type_is_kept_and_the_body_is_read_without_one():
    data = json.dumps({"manifests": []}).encode()
    assert parse_document(data, described(data, mediaType=OCI_INDEX), "test").media_type == OCI_INDEX
    bare = parse_document(data, described(data), "test")
    assert bare.media_type == "" and bare.is_index is True


def test_the_cap_comes_first():
    data = b" " * (MAX_DOCUMENT_SIZE + 1)
    refused(data, described(data), "more than 4 MiB")


def test_the_declared_size_must_match():
    data = b'{"layers": []}'
    refused(data, dict(described(data), size=len(data) + 1), "but its descriptor says %d" % (len(data) + 1))


def test_the_digest_must_match():
    data = b'{"layers": []}'
    refused(data, dict(described(data), digest=DIGEST), "does not match its digest")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"not json", "is not JSON"),
        (b"[1, 2]", "is not a JSON object"),
        (b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested too deeply"),
        # Parsable, but deeper than any manifest: later recursive readers would overflow on it.
        (b'{"a":' + b"[" * MAX_DOCUMENT_DEPTH + b"]" * MAX_DOCUMENT_DEPTH + b"}", "nested more than"),
    ],
)
def test_what_is_not_a_plain_json_object_is_refused_in_one_line(data, fragment):
    refused(data, described(data), fragment)


def test_the_depth_guard_keeps_what_a_document_needs():
    data = b'{"a":' + b"[" * (MAX_DOCUMENT_DEPTH - 1) + b"]" * (MAX_DOCUMENT_DEPTH - 1) + b"}"
    assert load_json(data, "test")["a"]


@pytest.mark.parametrize(
    ("body", "media_type", "index"),
    [
        # The document's own mediaType first ...
        ({"mediaType": OCI_MANIFEST, "manifests": []}, OCI_INDEX, False),
        ({"mediaType": OCI_INDEX, "layers": []}, OCI_MANIFEST, True),
        # ... then the descriptor's ...
        ({"layers": []}, DOCKER_MANIFEST_LIST, True),
        ({"manifests": []}, OCI_MANIFEST, False),
        # ... then the shape; what is neither is read as a manifest.
        ({"manifests": []}, None, True),
        ({"layers": []}, None, False),
        ({"manifests": "not a list"}, None, False),
    ],
)
def test_index_or_manifest_by_one_rule(body, media_type, index):
    assert is_index(body, media_type) is index
    data = json.dumps(body).encode()
    descriptor = described(data, **({"mediaType": media_type} if media_type else {}))
    assert parse_document(data, descriptor, "test").is_index is index


@pytest.mark.parametrize(
    ("descriptor", "fragment"),
    [
        ("not a mapping", "is not a descriptor object"),
        ({"size": 1}, "no valid sha256 digest"),
        ({"digest": "sha512:" + "a" * 128, "size": 1}, "no valid sha256 digest"),
        ({"digest": DIGEST + "\n", "size": 1}, "no valid sha256 digest"),
        ({"digest": DIGEST}, "no valid size"),
        ({"digest": DIGEST, "size": -1}, "no valid size"),
        ({"digest": DIGEST, "size": True}, "no valid size"),
        ({"digest": DIGEST, "size": "12"}, "no valid size"),
        ({"digest": DIGEST, "size": 1.5}, "no valid size"),
    ],
)
def test_the_one_descriptor_validator_refuses_never_repairs(descriptor, fragment):
    with pytest.raises(DocumentError, match=fragment):
        check_descriptor(descriptor, "a descriptor")


def test_parse_document_checks_its_descriptor_first():
    with pytest.raises(DocumentError, match="no valid size"):
        parse_document(b"{}", {"digest": sha256_digest(b"{}")}, "test")


def test_the_one_descriptor_validator_hands_back_digest_and_size():
    assert check_descriptor({"digest": DIGEST, "size": 0}, "a descriptor") == (DIGEST, 0)


DEEP = b"[" * 200_000 + b"]" * 200_000


@pytest.mark.parametrize(
    ("read", "error"),
    [
        (lambda: _sign.parse_payload(DEEP), _sign.SignatureError),
        (lambda: _provenance.open_envelope(DEEP), _provenance.ProvenanceError),
        (lambda: _provenance.subject_digests(DEEP), _provenance.ProvenanceError),
        (lambda: _blockindex.decode_header(DEEP), _blockindex.BlockIndexError),
    ],
)
def test_other_readers_of_untrusted_json_refuse_deep_nesting_as_their_own_error(read, error):
    with pytest.raises(error):
        read()


def test_a_deeply_nested_registry_error_body_is_no_error_detail():
    assert parse_error_body(DEEP) == []
