# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Referrers of a subject in an image store: attach, list and read them.

A referrer is an OCI image manifest with an `artifactType`, the empty config
and a `subject` descriptor naming the manifest or index it is about (a block
index, a provenance, an SBOM). A registry with the referrers API indexes it
by itself when the manifest is pushed (it answers with `OCI-Subject`). A
registry without it (distribution 2.8 answers 404), and every layout, get the
referrers tag schema instead: the name `sha256-<hex of the subject>` points
at an image index listing the referrer descriptors. That index is updated
read-modify-write; in a layout under the layout's lock, in a registry (where
nothing can be locked) by re-reading it after the write and trying again when
a concurrent writer dropped our entry.

The stores are the copy engine's (`_store.py`), every document is checked by
`_walk.py`'s checks, and HTTP goes through `_client.py`.
"""

from __future__ import annotations

import re
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError, load_json
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import canonical_json, hash_file, sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    MAX_DOCUMENT_SIZE,
    MAX_INDEX_ENTRIES,
    OCI_INDEX,
    OCI_MANIFEST,
    SHA256_DIGEST_RE,
)
from ansible_collections.ironcore.image.plugins.module_utils._store import ImageSource, LayoutStore, RegistryStore
from ansible_collections.ironcore.image.plugins.module_utils._walk import (
    Document,
    WalkError,
    check_descriptor,
    check_document,
    parse_document,
)

EMPTY_CONFIG_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
# The OCI empty descriptor's blob: digest sha256:44136fa3...a, size 2.
EMPTY_CONFIG = b"{}"
# A referrer manifest lists a handful of layers; more than this is not one we write or read.
MAX_REFERRER_LAYERS = 256
Store = t.Union[LayoutStore, RegistryStore]


class ReferrersError(ImageError):
    """Referrers cannot be attached or read: a malformed index or manifest, or a registry refusal; one line."""


@dataclass(frozen=True)
class ReferrerBlob:
    """One layer of a referrer manifest: small bytes in memory, or a file streamed from the local host."""

    media_type: str
    data: bytes | None = None
    path: str | None = None
    annotations: t.Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Referrer:
    """One entry of a subject's referrers list (an OCI descriptor)."""

    digest: str
    size: int
    media_type: str
    artifact_type: str
    annotations: t.Mapping[str, str]

    @property
    def descriptor(self) -> dict[str, t.Any]:
        """The descriptor as the tag-schema index lists it."""
        entry: dict[str, t.Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            entry["artifactType"] = self.artifact_type
        if self.annotations:
            entry["annotations"] = dict(self.annotations)
        return entry


# What referrers_tag() names: sha256-<hex of the subject>.
REFERRERS_TAG_RE = re.compile(r"sha256-[0-9a-f]{64}")


def referrers_tag(subject_digest: str) -> str:
    """The tag-schema name of a subject's referrers index: sha256-<hex>."""
    if not isinstance(subject_digest, str) or not SHA256_DIGEST_RE.match(subject_digest):
        raise ReferrersError("the subject %r is no sha256 digest; referrers need sha256:<64 hex>" % (subject_digest,))
    return subject_digest.replace(":", "-", 1)


# ---- pure parts: the documents --------------------------------------------------


def empty_descriptor() -> dict[str, t.Any]:
    return {"mediaType": EMPTY_CONFIG_MEDIA_TYPE, "digest": sha256_digest(EMPTY_CONFIG), "size": len(EMPTY_CONFIG)}


def subject_descriptor(subject: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """{mediaType, digest, size} of the subject, refused when any is missing or invalid."""
    try:
        digest, size = check_descriptor(subject, "the subject")
    except WalkError as exc:
        raise ReferrersError(str(exc)) from exc
    media_type = subject.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise ReferrersError("the subject %s has no mediaType; give the descriptor {mediaType, digest, size}" % digest)
    return {"mediaType": media_type, "digest": digest, "size": size}


def referrer_manifest(
    subject: t.Mapping[str, t.Any],
    artifact_type: str,
    layers: t.Sequence[t.Mapping[str, t.Any]],
    annotations: t.Mapping[str, str] | None = None,
) -> bytes:
    """The exact bytes of an artifact manifest: artifactType, the empty config, the layers, the subject."""
    if not isinstance(artifact_type, str) or "/" not in artifact_type:
        raise ReferrersError("artifact_type %r is no media type (type/subtype)" % (artifact_type,))
    if len(layers) > MAX_REFERRER_LAYERS:
        raise ReferrersError("a referrer may have at most %d layers, got %d" % (MAX_REFERRER_LAYERS, len(layers)))
    body: dict[str, t.Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty_descriptor(),
        # The OCI spec: an artifact without content of its own still lists one layer, the empty one.
        "layers": [dict(layer) for layer in layers] or [empty_descriptor()],
        "subject": subject_descriptor(subject),
    }
    if annotations:
        body["annotations"] = _string_map(annotations, "annotations")
    data = canonical_json(body)
    if len(data) > MAX_DOCUMENT_SIZE:
        raise ReferrersError("the referrer manifest would be larger than 4 MiB; give fewer or smaller annotations")
    return data


def referrer_of(manifest: bytes, artifact_type: str, annotations: t.Mapping[str, str] | None) -> Referrer:
    return Referrer(
        digest=sha256_digest(manifest),
        size=len(manifest),
        media_type=OCI_MANIFEST,
        artifact_type=artifact_type,
        annotations=dict(annotations or {}),
    )


def referrers_index(entries: t.Sequence[Referrer]) -> bytes:
    """The tag-schema index listing these referrers, in their order."""
    if len(entries) > MAX_INDEX_ENTRIES:
        raise ReferrersError(
            "a subject may have at most %d referrers in the tag schema; this one would have %d"
            % (MAX_INDEX_ENTRIES, len(entries))
        )
    return canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [r.descriptor for r in entries]})


def parse_referrers(data: bytes, where: str) -> list[Referrer]:
    """The entries of a referrers index (tag schema or API answer), each checked; one-line errors."""
    try:
        body = load_json(data, "the referrers index %s" % where)
    except DocumentError as exc:
        raise ReferrersError(str(exc)) from exc
    manifests = body.get("manifests", [])
    if not isinstance(manifests, list):
        raise ReferrersError("the referrers index %s has a manifests that is not a list" % where)
    if len(manifests) > MAX_INDEX_ENTRIES:
        raise ReferrersError(
            "the referrers index %s lists %d entries, more than %d; refusing it"
            % (where, len(manifests), MAX_INDEX_ENTRIES)
        )
    referrers = []
    for position, entry in enumerate(manifests):
        what = "entry %d of the referrers index %s" % (position, where)
        try:
            digest, size = check_descriptor(entry, what)
        except WalkError as exc:
            raise ReferrersError(str(exc)) from exc
        media_type = entry.get("mediaType", OCI_MANIFEST)
        artifact_type = entry.get("artifactType", "")
        if not isinstance(media_type, str) or not isinstance(artifact_type, str):
            raise ReferrersError("%s has a mediaType or artifactType that is not a string" % what)
        annotations = entry.get("annotations") or {}
        referrers.append(Referrer(digest, size, media_type, artifact_type, _string_map(annotations, what)))
    return referrers


def merged(entries: t.Sequence[Referrer], new: Referrer) -> list[Referrer]:
    """The list with `new` in it once, at the end when it was not there before."""
    return [entry for entry in entries if entry.digest != new.digest] + [new]


def _string_map(value: t.Any, what: str) -> dict[str, str]:
    if not isinstance(value, t.Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ReferrersError("%s: annotations must map strings to strings" % what)
    return dict(value)


def _filtered(referrers: t.Iterable[Referrer], artifact_type: str | None) -> list[Referrer]:
    return [entry for entry in referrers if artifact_type is None or entry.artifact_type == artifact_type]


# ---- the blobs of a referrer ----------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    blob: ReferrerBlob
    digest: str
    size: int

    @property
    def descriptor(self) -> dict[str, t.Any]:
        entry: dict[str, t.Any] = {"mediaType": self.blob.media_type, "digest": self.digest, "size": self.size}
        if self.blob.annotations:
            entry["annotations"] = _string_map(self.blob.annotations, "a referrer blob")
        return entry


def _measure(blob: ReferrerBlob) -> _Layer:
    """Digest and size of a blob; a file is hashed streaming, never read whole."""
    if (blob.data is None) == (blob.path is None):
        raise ReferrersError("a referrer blob needs exactly one of data and path")
    if not isinstance(blob.media_type, str) or "/" not in blob.media_type:
        raise ReferrersError("a referrer blob's media_type %r is no media type" % (blob.media_type,))
    if blob.data is not None:
        return _Layer(blob, sha256_digest(blob.data), len(blob.data))
    try:
        digest, size = hash_file(str(blob.path))
    except OSError as exc:
        raise ReferrersError("referrer blob %s cannot be read: %s" % (blob.path, exc.strerror or exc)) from exc
    return _Layer(blob, digest, size)


def _put_blob(store: Store, layer: _Layer) -> None:
    blob = layer.blob
    if blob.data is not None:
        store.put_small_blob(blob.data)
    else:
        store.put_file_blob(str(blob.path), layer.digest, layer.size)


# ---- listing ----------------------------------------------------------------


def list_referrers(store: ImageSource, subject_digest: str, artifact_type: str | None = None) -> list[Referrer]:
    """The referrers of a subject (of one artifact type, when given); [] when it has none."""
    referrers, _by_api = _listing(store, subject_digest, artifact_type)
    return _filtered(referrers, artifact_type)


def _listing(store: ImageSource, subject_digest: str, artifact_type: str | None = None) -> tuple[list[Referrer], bool]:
    """(referrers, whether the store's referrers API answered) of a subject: the API first, the tag schema otherwise.

    The one way every caller lists referrers, through any store: a layout, a
    registry, or a registry behind mirrors (_mirrors.MirroredSource, which asks
    the origin first and its mirrors when the origin cannot answer).
    """
    where = "of %s in %s" % (subject_digest, store.describe())
    answered = store.referrers_api(subject_digest, artifact_type)
    if answered is not None:
        return parse_referrers(answered, where), True
    current = _tag_schema(store, referrers_tag(subject_digest))
    return (current[1] if current else []), False


def _tag_schema(store: ImageSource, tag: str) -> tuple[dict[str, t.Any], list[Referrer]] | None:
    """(descriptor, entries) of the tag-schema index `tag`, or None when there is none."""
    where = "%s in %s" % (tag, store.describe())
    descriptor = store.attachment_name(tag)
    if descriptor is None:
        return None
    try:
        digest, size = check_descriptor(descriptor, "the descriptor of %s" % where)
        data = check_document(store.read_document(digest, size), digest, size, store.describe())
    except WalkError as exc:
        raise ReferrersError("the referrers index %s is unusable: %s" % (where, exc)) from exc
    return descriptor, parse_referrers(data, where)


def read_referrer(store: ImageSource, referrer: Referrer) -> dict[str, t.Any]:
    """The referrer's manifest, checked against its digest, size and the 4 MiB cap."""
    try:
        digest, size = check_descriptor(referrer.descriptor, "a referrer")
        body = parse_document(store.read_document(digest, size), referrer.descriptor, store.describe()).body
    except WalkError as exc:
        raise ReferrersError(str(exc)) from exc
    if not isinstance(body.get("layers", []), list):
        raise ReferrersError("referrer %s in %s is not a manifest" % (referrer.digest, store.describe()))
    if len(body.get("layers", [])) > MAX_REFERRER_LAYERS:
        raise ReferrersError(
            "referrer %s in %s has more than %d layers" % (referrer.digest, store.describe(), MAX_REFERRER_LAYERS)
        )
    return body


# ---- attaching ----------------------------------------------------------------


def attach_referrer(
    store: Store,
    subject: t.Mapping[str, t.Any],
    artifact_type: str,
    blobs: t.Sequence[ReferrerBlob],
    annotations: t.Mapping[str, str] | None = None,
    check_mode: bool = False,
) -> tuple[bool, str]:
    """Attach an artifact manifest about `subject` as its referrer; (changed, manifest digest).

    The manifest has `artifactType`, the empty config, `blobs` as its layers
    and `subject` = {mediaType, digest, size} of the given descriptor. The same
    content attached again changes nothing (changed False, nothing written).
    """
    layers = [_measure(blob) for blob in blobs]
    manifest = referrer_manifest(subject, artifact_type, [layer.descriptor for layer in layers], annotations)
    referrer = referrer_of(manifest, artifact_type, annotations)
    subject_digest = str(subject["digest"])
    changed = attach_manifest(store, subject_digest, referrer, manifest, lambda: _put_blobs(store, layers), check_mode)
    return changed, referrer.digest


def _put_blobs(store: Store, layers: t.Sequence[_Layer]) -> None:
    config = _Layer(ReferrerBlob(EMPTY_CONFIG_MEDIA_TYPE, data=EMPTY_CONFIG), *_digest_size(EMPTY_CONFIG))
    for layer in [config, *layers]:
        _put_blob(store, layer)


def _digest_size(data: bytes) -> tuple[str, int]:
    return sha256_digest(data), len(data)


def attach_manifest(
    store: Store,
    subject_digest: str,
    referrer: Referrer,
    manifest: bytes,
    put_blobs: t.Callable[[], None],
    check_mode: bool = False,
) -> bool:
    """Store a referrer manifest whose blobs `put_blobs()` stores, and list it for its subject; False when it was.

    Shared by attach_referrer() and the copy engine, which carries referrers
    from one store to another with their exact bytes.
    """
    tag = referrers_tag(subject_digest)
    # A layout's blob lock first (a prune waits until the name is recorded), then its index lock in update_name().
    with store.writing(check_mode):
        listed, by_api = _listing(store, subject_digest)
        if any(entry.digest == referrer.digest for entry in listed):
            return False
        if check_mode:
            return True
        put_blobs()
        if store.put_referrer(referrer.digest, manifest) or by_api:
            # The registry lists it by itself.
            return True
        store.update_name(tag, lambda: _index_with(store, tag, referrer))
    return True


def _index_with(store: Store, tag: str, referrer: Referrer) -> Document | None:
    """The tag-schema index `tag` with `referrer` added; None when it lists it already."""
    current = _tag_schema(store, tag)
    if _lists(current, referrer):
        return None
    data = referrers_index(merged(current[1] if current else [], referrer))
    return Document(sha256_digest(data), OCI_INDEX, data, True)


def _lists(tag_schema: tuple[dict[str, t.Any], list[Referrer]] | None, referrer: Referrer) -> bool:
    """Whether a tag-schema index (as _tag_schema() reads it; None when there is none) lists `referrer`."""
    return tag_schema is not None and any(entry.digest == referrer.digest for entry in tag_schema[1])
