"""Referrer manifests and tag-schema indexes: their exact shape, and the refusals of malformed ones."""

from __future__ import annotations

import hashlib
import json

import pytest

from ansible_collections.ironcore.image.plugins.module_utils._io import canonical_json
from ansible_collections.ironcore.image.plugins.module_utils._model import MAX_INDEX_ENTRIES, OCI_INDEX, OCI_MANIFEST
from ansible_collections.ironcore.image.plugins.module_utils._referrers import (
    EMPTY_CONFIG,
    EMPTY_CONFIG_MEDIA_TYPE,
    Referrer,
    ReferrersError,
    merged,
    parse_referrers,
    referrer_manifest,
    referrer_of,
    referrers_index,
    referrers_tag,
)

SUBJECT = {
    "mediaType": OCI_INDEX,
    "digest": "sha256:" + "ab" * 32,
    "size": 1234,
    "annotations": {"not": "copied"},
    "platform": {"os": "linux"},
}


def referrer(number: int, artifact_type: str = "application/x-test") -> Referrer:
    return Referrer("sha256:%064x" % number, 100 + number, OCI_MANIFEST, artifact_type, {})


def test_the_empty_config_is_the_oci_empty_descriptor():
    assert hashlib.sha256(EMPTY_CONFIG).hexdigest() == (
        "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )
    assert EMPTY_CONFIG_MEDIA_TYPE == "application/vnd.oci.empty.v1+json"


def test_referrers_tag():
    assert referrers_tag("sha256:" + "0f" * 32) == "sha256-" + "0f" * 32
    for bad in ("sha512:" + "0" * 128, "sha256:ABC", "latest", None):
        with pytest.raises(ReferrersError):
            referrers_tag(bad)


def test_manifest_shape():
    layer = {"mediaType": "application/json", "digest": "sha256:" + "cd" * 32, "size": 9}
    data = referrer_manifest(SUBJECT, "application/vnd.in-toto+json", [layer], {"created": "now"})
    body = json.loads(data)
    assert data == canonical_json(body)
    assert body == {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.in-toto+json",
        "config": {
            "mediaType": EMPTY_CONFIG_MEDIA_TYPE,
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2,
        },
        "layers": [layer],
        # Only what identifies the subject.
        "subject": {"mediaType": OCI_INDEX, "digest": SUBJECT["digest"], "size": 1234},
        "annotations": {"created": "now"},
    }
    described = referrer_of(data, "application/vnd.in-toto+json", {"created": "now"})
    assert described.digest == "sha256:" + hashlib.sha256(data).hexdigest() and described.size == len(data)
    assert described.descriptor["artifactType"] == "application/vnd.in-toto+json"


def test_an_artifact_without_blobs_lists_the_empty_layer():
    body = json.loads(referrer_manifest(SUBJECT, "application/x-marker", []))
    assert body["layers"] == [body["config"]]
    assert "annotations" not in body


@pytest.mark.parametrize(
    "subject, artifact_type",
    [
        ({"digest": SUBJECT["digest"], "size": 1}, "application/x"),  # no mediaType
        ({"mediaType": OCI_INDEX, "digest": "sha256:12", "size": 1}, "application/x"),
        ({"mediaType": OCI_INDEX, "digest": SUBJECT["digest"], "size": -1}, "application/x"),
        (SUBJECT, "not-a-media-type"),
    ],
)
def test_bad_subject_or_type_is_refused(subject, artifact_type):
    with pytest.raises(ReferrersError):
        referrer_manifest(subject, artifact_type, [])


def test_index_round_trip_and_merge():
    first, second = referrer(1, "application/a"), referrer(2, "application/b")
    entries = merged(merged([], first), second)
    assert merged(entries, first) == [second, first]
    data = referrers_index(entries)
    assert json.loads(data)["mediaType"] == OCI_INDEX
    assert parse_referrers(data, "test") == entries


def test_index_with_annotations_round_trips():
    entry = Referrer("sha256:" + "1" * 64, 5, OCI_MANIFEST, "application/a", {"k": "v"})
    assert parse_referrers(referrers_index([entry]), "test") == [entry]


def test_index_entry_cap():
    with pytest.raises(ReferrersError, match="at most 1024"):
        referrers_index([referrer(n) for n in range(MAX_INDEX_ENTRIES + 1)])


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not json", "is not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"manifests": {}}', "not a list"),
        (b'{"manifests": [{"size": 3}]}', "no valid sha256 digest"),
        (b'{"manifests": [{"digest": "sha256:%s", "size": "3"}]}' % (b"a" * 64), "no valid size"),
        (b'{"manifests": [{"digest": "sha256:%s", "size": 3, "artifactType": 7}]}' % (b"a" * 64), "not a string"),
        (b'{"manifests": [{"digest": "sha256:%s", "size": 3, "annotations": {"a": 1}}]}' % (b"a" * 64), "strings"),
        (b'{"manifests": [' + b",".join([b"{}"] * 1025) + b"]}", "more than 1024"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ],
)
def test_malformed_indexes_are_one_line_errors(data, message):
    with pytest.raises(ReferrersError, match=message) as caught:
        parse_referrers(data, "sha256-x in test")
    assert "\n" not in str(caught.value)
