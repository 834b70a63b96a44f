# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Signature documents in an image store: read, write and check `sha256-<hex>.sig`.

`ironcore_image_sign` signs every index and manifest an image reaches;
fetch checks the digests it delivers before a blob byte is written. Both go
through the copy engine's stores (`_store.py`), so a layout and a registry
repository are handled alike, and the graph through `_walk.py`. The
payloads, keys and the verdict are `_sign.py`'s.
"""

from __future__ import annotations

import io
import json
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json, sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    OCI_MANIFEST,
    ImageReference,
    InvalidReference,
)
from ansible_collections.ironcore.image.plugins.module_utils._sign import (
    FINGERPRINT_ANNOTATION,
    SIGNATURE_ANNOTATION,
    SIMPLESIGNING_MEDIA_TYPE,
    SignatureError,
    SignedPayload,
    check_signed,
    fingerprint,
    load_private_key,
    load_public_key,
    payload_for,
    sign,
    signature_tag,
    verifying_key,
)
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore, RegistryStore
from ansible_collections.ironcore.image.plugins.module_utils._walk import (
    Document,
    WalkError,
    check_descriptor,
    check_document,
    walk,
)

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
# A payload is a few hundred bytes; anything much larger is not one.
MAX_PAYLOAD_SIZE = 64 * 1024
# A `.sig` manifest with more signers than this is not one we read.
MAX_SIGNERS = 64
# go-containerregistry's zero time, which cosign's signature configs carry.
ZERO_TIME = "0001-01-01T00:00:00Z"

Store = t.Union[LayoutStore, RegistryStore]


@dataclass
class SignResult:
    digest: str
    fingerprint: str
    signed: list[str] = field(default_factory=list)
    signatures: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.signed)


# ---- where signatures live ------------------------------------------------------


def signature_name(store: Store, ref: ImageReference, digest: str) -> str:
    """What the store calls the `.sig` of `digest`: the tag in a registry, the full reference in a layout."""
    tag = signature_tag(digest)
    return str(ref.with_tag(tag)) if isinstance(store, LayoutStore) else tag


def read_signatures(store: Store, ref: ImageReference, digest: str) -> list[SignedPayload] | None:
    """The signed payloads of `digest`, or None when it has no `.sig` at all."""
    manifest = _signature_manifest(store, ref, digest)
    if manifest is None:
        return None
    return [_read_entry(store, layer) for layer in manifest.get("layers", [])]


def _signature_manifest(store: Store, ref: ImageReference, digest: str) -> dict[str, t.Any] | None:
    name = signature_name(store, ref, digest)
    descriptor = store.current_name(name)
    if descriptor is None:
        return None
    try:
        sig_digest, size = check_descriptor(descriptor, "the descriptor of %s" % name)
        data = check_document(store.read_document(sig_digest, size), sig_digest, size, store.describe())
        manifest = json.loads(data)
    except (WalkError, ValueError) as exc:
        raise SignatureError("%s@%s has a malformed signature: %s" % (ref.name, digest, exc)) from exc
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list) or len(layers) > MAX_SIGNERS:
        raise SignatureError(
            "%s@%s has a malformed signature: %s is not a signature manifest" % (ref.name, digest, name)
        )
    return t.cast(t.Dict[str, t.Any], manifest)


def _read_entry(store: Store, layer: t.Any) -> SignedPayload:
    """One layer: its payload read in full (it is tiny) and checked against its digest; never trusted yet."""
    try:
        blob_digest, size = check_descriptor(layer, "a layer of a signature manifest")
    except WalkError:
        # Counted as malformed by the verdict: no signature to check.
        return SignedPayload(b"", None)
    annotations = layer.get("annotations") if isinstance(layer.get("annotations"), dict) else {}
    signature, claimed = annotations.get(SIGNATURE_ANNOTATION), annotations.get(FINGERPRINT_ANNOTATION)
    if layer.get("mediaType") != SIMPLESIGNING_MEDIA_TYPE or size > MAX_PAYLOAD_SIZE:
        return SignedPayload(b"", None, claimed)
    data = _read_small_blob(store, blob_digest, size)
    if data is None:
        return SignedPayload(b"", None, claimed)
    return SignedPayload(data, signature, claimed)


def _read_small_blob(store: Store, digest: str, size: int) -> bytes | None:
    """The blob's bytes when they are what its descriptor says, else None."""
    stream = store.open_blob(digest, 0)
    data = bytearray()
    try:
        for chunk in stream.iter_chunks(MAX_PAYLOAD_SIZE):
            data += chunk
            if len(data) > size:
                return None
    finally:
        stream.close()
    if len(data) != size or sha256_digest(bytes(data)) != digest:
        return None
    return bytes(data)


# ---- signing --------------------------------------------------------------------


def signature_config(payload_digests: t.Sequence[str]) -> bytes:
    """The image config cosign gives a signature manifest: empty, with one diff_id per layer."""
    return canonical_json(
        {
            "architecture": "",
            "config": {},
            "created": ZERO_TIME,
            "history": [{"created": ZERO_TIME}] * len(payload_digests),
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": list(payload_digests)},
        }
    )


def _blob_descriptor(media_type: str, data: bytes, **extra: t.Any) -> dict[str, t.Any]:
    return dict({"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}, **extra)


def _put_small_blob(store: Store, data: bytes) -> None:
    digest = sha256_digest(data)
    if isinstance(store, LayoutStore):
        store.layout.put_bytes(data)
        return
    if store.has_blob(digest, len(data)):
        return
    # The upload helpers take a body opener; a small in-memory blob is its own file.
    from ansible_collections.ironcore.image.plugins.module_utils._upload import ByteCounter, FileSlice, upload_from

    counter = ByteCounter()
    upload_from(
        store.client,
        str(store.repository),
        digest,
        len(data),
        lambda start, length: FileSlice(io.BytesIO(data), start, length, counter),
    )


def _already_signed(
    manifest: t.Mapping[str, t.Any] | None, entries: list[SignedPayload], key: t.Any, payload: bytes
) -> bool:
    """Signing again with the same key and payload changes nothing (ECDSA signatures differ each time)."""
    if manifest is None:
        return False
    public = key.public_key()
    for entry in entries:
        if entry.data != payload:
            continue
        try:
            if verifying_key([public], entry.data, entry.signature) is not None:
                return True
        except SignatureError:
            continue
    return False


def sign_digest(store: Store, ref: ImageReference, digest: str, key: t.Any, check_mode: bool) -> bool:
    """Append a signature of `digest` by `key` to its `.sig`; False when that key already signed it."""
    payload = payload_for(ref.name, digest)
    manifest = _signature_manifest(store, ref, digest)
    entries = [_read_entry(store, layer) for layer in manifest["layers"]] if manifest else []
    if _already_signed(manifest, entries, key, payload):
        return False
    if check_mode:
        return True
    layers = list(manifest["layers"]) if manifest else []
    annotations = {SIGNATURE_ANNOTATION: sign(key, payload), FINGERPRINT_ANNOTATION: fingerprint(key)}
    layers.append(_blob_descriptor(SIMPLESIGNING_MEDIA_TYPE, payload, annotations=annotations))
    config = signature_config([str(layer["digest"]) for layer in layers])
    document = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _blob_descriptor(OCI_CONFIG, config),
            "layers": layers,
        }
    )
    _put_small_blob(store, payload)
    _put_small_blob(store, config)
    signed = Document(sha256_digest(document), OCI_MANIFEST, document, False)
    store.set_name(signature_name(store, ref, digest), signed.descriptor, signed)
    return True


def sign_image(store: Store, name: str, key_path: str, passphrase: str | None, check_mode: bool) -> SignResult:
    """Sign the digest `name` resolves to and every index and manifest it reaches."""
    ref = _parse(name)
    key = load_private_key(key_path, passphrase)
    root = store.resolve(ref.reference if isinstance(store, RegistryStore) else name)
    graph = walk(store.read_document, [root], store.describe())
    result = SignResult(digest=str(root["digest"]), fingerprint=fingerprint(key))
    # Children first, as the walk returns them; the image's own digest last.
    for document in graph.documents:
        if sign_digest(store, ref, document.digest, key, check_mode):
            result.signed.append(document.digest)
        result.signatures[document.digest] = signature_tag(document.digest)
    return result


def open_store(params: t.Mapping[str, t.Any], on_retry: t.Callable[[str], None] | None = None) -> Store:
    """The layout, or the registry repository of `name`, the module's options point at."""
    if params.get("layout"):
        store = LayoutStore(params["layout"])
        store.require()
        return store
    from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient
    from ansible_collections.ironcore.image.plugins.module_utils._registry_args import (
        InvalidRegistryOptions,
        registry_options,
    )

    ref = _parse(params["name"])
    if not ref.registry:
        raise SignatureError("name: %s names no registry host; write it as host[:port]/repository[:tag]" % ref)
    try:
        options = registry_options(dict(params, concurrency=1))
    except InvalidRegistryOptions as exc:
        raise SignatureError(str(exc)) from exc
    return RegistryStore(RegistryClient(ref.registry, options, on_retry), ref.repository)


def _parse(name: str) -> ImageReference:
    try:
        return ImageReference.parse(name)
    except InvalidReference as exc:
        raise SignatureError("name: %s" % exc) from exc


# ---- verifying --------------------------------------------------------------------


def verify_digests(
    store: Store, ref: ImageReference, digests: t.Iterable[str], keys: t.Sequence[t.Any]
) -> dict[str, str]:
    """{digest: fingerprint of the key that verified it}; SignatureError at the first that fails."""
    verified: dict[str, str] = {}
    for digest in digests:
        if digest not in verified:
            verified[digest] = check_signed(digest, ref.name, read_signatures(store, ref, digest), keys)
    return verified


def _store_of(source: t.Any) -> Store:
    """The store behind a fetch source, sharing its client (and its tokens) or its layout."""
    client = getattr(source, "client", None)
    if client is not None:
        return RegistryStore(client, source.ref.repository)
    return LayoutStore(source.layout.path)


def verify_before_delivery(
    source: t.Any, params: t.Mapping[str, t.Any], image_digest: str, manifest_digest: str
) -> dict[str, t.Any]:
    """Fetch's check, before any blob byte is written: {"signatures": {digest: fingerprint}} or a one-line failure.

    Without `signature_keys`, and with require_signature not true, nothing is checked.
    """
    keys_given = params.get("signature_keys") or []
    required = params.get("require_signature")
    if required is None:
        required = bool(keys_given)
    if not required:
        return {"signatures": {}}
    if not keys_given:
        raise SignatureError("require_signature is true but signature_keys is empty; give the public keys to trust")
    keys = [load_public_key(text) for text in keys_given]
    ref = source.ref
    try:
        verified = verify_digests(_store_of(source), ref, [image_digest, manifest_digest], keys)
    except SignatureError as exc:
        raise SignatureError("%s; nothing was fetched" % exc) from exc
    except ImageError as exc:
        raise SignatureError("reading the signatures of %s failed: %s; nothing was fetched" % (ref, exc)) from exc
    return {"signatures": verified}
