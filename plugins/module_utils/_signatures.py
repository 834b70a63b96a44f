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

import contextlib
import os
import tempfile
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils import _bundle, _provenance, _sbom
from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError, load_json
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._identity import SignedIdentity
from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json, sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    ARCHITECTURES,
    MAX_DOCUMENT_SIZE,
    OCI_LAYER_TAR_GZIP,
    OCI_MANIFEST,
    PLATFORMS,
    ImageReference,
    InvalidReference,
    descriptors,
    layer_role,
    platform_refs,
)
from ansible_collections.ironcore.image.plugins.module_utils._referrers import (
    Referrer,
    ReferrerBlob,
    attach_referrer,
    list_referrers,
    read_referrer,
)
from ansible_collections.ironcore.image.plugins.module_utils._sign import (
    DEFAULT_IDENTITY,
    FINGERPRINT_ANNOTATION,
    SIGNATURE_ANNOTATION,
    SIMPLESIGNING_MEDIA_TYPE,
    SignatureError,
    SignedPayload,
    check_signed,
    fingerprint,
    load_private_key,
    load_public_key,
    parse_payload,
    payload_for,
    sign,
    signature_tag,
    verifying_key,
)
from ansible_collections.ironcore.image.plugins.module_utils._store import (
    ImageSource,
    LayoutStore,
    RegistryStore,
    StoreError,
    download_blob,
)
from ansible_collections.ironcore.image.plugins.module_utils._walk import (
    Document,
    WalkError,
    check_descriptor,
    parse_document,
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
# ironcore_image_sign's signature_format: which formats it writes.
SIGNATURE_FORMATS = ("legacy", "bundle", "both")


@dataclass
class SignResult:
    digest: str
    fingerprint: str
    signed: list[str] = field(default_factory=list)
    signatures: dict[str, str] = field(default_factory=dict)
    # digest -> the bundle referrer's digest (None in check mode when it would be new).
    bundles: dict[str, str | None] = field(default_factory=dict)
    provenance: dict[str, t.Any] | None = None
    sbom: dict[str, t.Any] | None = None

    @property
    def changed(self) -> bool:
        return bool(self.signed) or any(part and part["changed"] for part in (self.provenance, self.sbom))


# ---- where signatures live ------------------------------------------------------


def signature_name(store: ImageSource, ref: ImageReference, digest: str) -> str:
    """What the store calls the `.sig` of `digest`: the tag in a registry, the full reference in a layout."""
    tag = signature_tag(digest)
    return store.name_for_tag(ref, tag)


def read_signatures(store: ImageSource, ref: ImageReference, digest: str) -> list[SignedPayload] | None:
    """The signed payloads of `digest`, or None when it has no `.sig` at all."""
    manifest = _signature_manifest(store, ref, digest)
    if manifest is None:
        return None
    return [_read_entry(store, layer) for layer in manifest.get("layers", [])]


def _signature_manifest(store: ImageSource, ref: ImageReference, digest: str) -> dict[str, t.Any] | None:
    name = signature_name(store, ref, digest)
    descriptor = store.current_name(name)
    if descriptor is None:
        return None
    try:
        sig_digest, size = check_descriptor(descriptor, "the descriptor of %s" % name)
        manifest = parse_document(store.read_document(sig_digest, size), descriptor, store.describe()).body
    except WalkError as exc:
        raise SignatureError("%s@%s has a malformed signature: %s" % (ref.name, digest, exc)) from exc
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list) or len(layers) > MAX_SIGNERS:
        raise SignatureError(
            "%s@%s has a malformed signature: %s is not a signature manifest" % (ref.name, digest, name)
        )
    return manifest


def _read_entry(store: ImageSource, layer: t.Any) -> SignedPayload:
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


def _names_digest(entry: SignedPayload, digest: str) -> bool:
    """Whether a read `.sig` entry is a signed simple-signing payload that names `digest` (not yet verified)."""
    if not entry.data or not isinstance(entry.signature, str) or not entry.signature:
        return False
    try:
        _repository, named = parse_payload(entry.data)
    except SignatureError:
        return False
    return named == digest


def names_this_digest(store: ImageSource, layer: t.Any, digest: str) -> bool:
    """Whether a `.sig` layer is worth keeping in a merge or an append: a simple-signing payload naming `digest`.

    Anything else (another media type, a payload for another digest, bytes
    that do not match the descriptor) can never verify for `digest`, and
    only takes one of the MAX_SIGNERS places a verifier reads.
    """
    return isinstance(layer, dict) and _names_digest(_read_entry(store, layer), digest)


def _read_small_blob(store: ImageSource, digest: str, size: int) -> bytes | None:
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
    # Junk a writer put into the `.sig` is dropped, so that it cannot push the new signature past what a verifier reads.
    layers = (
        [layer for layer, entry in zip(manifest["layers"], entries) if _names_digest(entry, digest)] if manifest else []
    )
    if len(layers) >= MAX_SIGNERS:
        raise SignatureError(
            "%s@%s already has %d signatures, the most a verifier reads; remove its %s to sign it again"
            % (ref.name, digest, len(layers), signature_name(store, ref, digest))
        )
    if check_mode:
        return True
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
    store.put_small_blob(payload)
    store.put_small_blob(config)
    signed = Document(sha256_digest(document), OCI_MANIFEST, document, False)
    store.set_name(signature_name(store, ref, digest), signed.descriptor, signed)
    return True


def attach_bundle(
    store: Store, ref: ImageReference, subject: t.Mapping[str, t.Any], key: t.Any, check_mode: bool
) -> tuple[bool, str | None]:
    """Attach a Sigstore bundle signing `subject` as its referrer; (changed, referrer digest).

    Unchanged when a bundle referrer already verifies with this key for this
    repository and digest: a new bundle's signature differs each time.
    """
    digest = str(subject["digest"])
    public = key.public_key()
    for referrer in list_referrers(store, digest, _bundle.BUNDLE_MEDIA_TYPE):
        if _bundle.signed_for(_first_layer(store, referrer, _bundle.MAX_BUNDLE_SIZE), public, ref.name, digest):
            return False, referrer.digest
    blob = ReferrerBlob(_bundle.BUNDLE_MEDIA_TYPE, data=_bundle.make_bundle(key, ref.name, digest))
    changed, referrer_digest = attach_referrer(
        store, subject, _bundle.BUNDLE_MEDIA_TYPE, [blob], _bundle.REFERRER_ANNOTATIONS, check_mode
    )
    return changed, None if check_mode and changed else referrer_digest


def sign_image(
    store: Store,
    name: str,
    key_path: str,
    passphrase: str | None,
    check_mode: bool,
    provenance: bool = False,
    sbom: bool = False,
    signature_format: str = "both",
) -> SignResult:
    """Sign the digest `name` resolves to and every index and manifest it reaches; attach provenance and SBOM."""
    if signature_format not in SIGNATURE_FORMATS:
        raise SignatureError("signature_format: %r is none of %s" % (signature_format, ", ".join(SIGNATURE_FORMATS)))
    # From the first blob stored (or found stored) to the last name: a prune waits.
    with store.writing(check_mode):
        return _sign_image(store, name, key_path, passphrase, check_mode, provenance, sbom, signature_format)


def _sign_image(
    store: Store,
    name: str,
    key_path: str,
    passphrase: str | None,
    check_mode: bool,
    provenance: bool,
    sbom: bool,
    signature_format: str,
) -> SignResult:
    ref = _parse(name)
    key = load_private_key(key_path, passphrase)
    root = store.resolve(store.name_to_resolve(ref, name))
    graph = walk(store.read_document, [root], store.describe())
    result = SignResult(digest=str(root["digest"]), fingerprint=fingerprint(key))
    # The platform indexes (`<tag>-metal`, ...) first, then children first as the walk returns them; the image's
    # own digest last.
    for document in [*platform_indexes(store, ref, graph), *graph.documents]:
        changed = False
        if signature_format in ("legacy", "both"):
            changed = sign_digest(store, ref, document.digest, key, check_mode)
            result.signatures[document.digest] = signature_tag(document.digest)
        if signature_format in ("bundle", "both"):
            attached, result.bundles[document.digest] = attach_bundle(store, ref, document.descriptor, key, check_mode)
            changed = attached or changed
        if changed:
            result.signed.append(document.digest)
    if provenance or sbom:
        documents = image_documents(store, root, graph)
        # In check mode a referrer that would be new has no digest yet (an envelope's signature differs each time).
        if provenance:
            changed, digest = attach_provenance(store, ref, documents, key, check_mode)
            referrer = None if check_mode and changed else digest
            result.provenance = {"changed": changed, "referrer": referrer, "keyid": result.fingerprint}
        if sbom:
            changed, digest, count, read = attach_sbom(store, ref, documents, check_mode)
            referrer = None if check_mode and changed else digest
            result.sbom = {"changed": changed, "referrer": referrer, "packages": count, "rootfs": read}
    return result


def open_store(params: t.Mapping[str, t.Any], on_retry: t.Callable[[str], None] | None = None) -> Store:
    """The layout, or the registry repository of `name`, the module's options point at."""
    if params.get("layout"):
        store = LayoutStore(params["layout"], bool(params.get("allow_shared_dest")))
        store.require()
        store.refuse_shared()
        return store
    return open_registry_store(params, on_retry)


def open_registry_store(
    params: t.Mapping[str, t.Any], on_retry: t.Callable[[str], None] | None = None
) -> RegistryStore:
    """The registry repository of `name`, through the module's registry options."""
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


def read_bundles(store: ImageSource, digest: str) -> list[bytes]:
    """The Sigstore bundles attached to `digest` as referrers (at most MAX_SIGNERS), not yet trusted."""
    return _referrer_blobs(store, digest, _bundle.BUNDLE_MEDIA_TYPE, _bundle.MAX_BUNDLE_SIZE)


def _bundles_of(store: ImageSource, digest: str) -> t.Callable[[], list[bytes]]:
    return lambda: read_bundles(store, digest)


def check_digest(
    digest: str,
    repository: str,
    entries: t.Sequence[SignedPayload] | None,
    read_more: t.Callable[[], t.Sequence[bytes]],
    keys: t.Sequence[t.Any],
    identity: SignedIdentity = DEFAULT_IDENTITY,
    tag: str | None = None,
) -> tuple[str, str]:
    """(fingerprint, "legacy" or "bundle") of the signature that verifies `digest`, or SignatureError saying why not.

    Either format is enough; `read_more()` gives the bundles, read only when
    the legacy format does not verify. When both are there and neither
    verifies, the legacy format's reason is reported, as before bundles existed.
    """
    try:
        return check_signed(digest, repository, entries, keys, identity, tag), "legacy"
    except SignatureError as legacy:
        bundles = read_more()
        if not bundles:
            if entries:
                raise
            raise SignatureError(
                "%s@%s is unsigned: there is no signature %s and no Sigstore bundle referrer; sign it with"
                " ironcore_image_sign" % (repository, digest, signature_tag(digest))
            ) from legacy
        try:
            return _bundle.check_bundles(digest, repository, bundles, keys, identity, tag), "bundle"
        except SignatureError:
            if entries:
                raise legacy from None
            raise


def verify_digests(
    store: ImageSource,
    ref: ImageReference,
    digests: t.Iterable[str],
    keys: t.Sequence[t.Any],
    identity: SignedIdentity = DEFAULT_IDENTITY,
) -> dict[str, tuple[str, str]]:
    """{digest: (fingerprint of the key that verified it, format)}; SignatureError at the first that fails."""
    verified: dict[str, tuple[str, str]] = {}
    for digest in digests:
        if digest in verified:
            continue
        entries = read_signatures(store, ref, digest)
        verified[digest] = check_digest(
            digest, ref.name, entries, _bundles_of(store, digest), keys, identity, _fetched_tag(ref)
        )
    return verified


def _fetched_tag(ref: ImageReference) -> str | None:
    """The tag an image is fetched by, None when by digest (what matchRepoDigestOrExact compares)."""
    return None if ref.digest else ref.tag


def verify_before_delivery(
    store: ImageSource, ref: ImageReference, params: t.Mapping[str, t.Any], image_digest: str, manifest_digest: str
) -> dict[str, t.Any]:
    """Fetch's check, before any blob byte is written: {"signatures", "provenance"} or a one-line failure.

    Without `signature_keys`, and with require_signature and require_provenance not true, nothing is checked.
    """
    keys_given = params.get("signature_keys") or []
    required = params.get("require_signature")
    if required is None:
        required = bool(keys_given)
    with_provenance = bool(params.get("require_provenance"))
    if not required and not with_provenance:
        return {"signatures": {}, "signature_formats": {}, "provenance": None}
    if not keys_given:
        option = "require_signature" if required else "require_provenance"
        raise SignatureError("%s is true but signature_keys is empty; give the public keys to trust" % option)
    predicate_types = list(params.get("provenance_predicate_types") or _provenance.DEFAULT_PREDICATE_TYPES)
    keys = [load_public_key(text) for text in keys_given]
    identity = SignedIdentity.from_params(params.get("signature_identity"))
    verified: dict[str, tuple[str, str]] = {}
    provenance = None
    try:
        if required:
            verified = verify_digests(store, ref, [image_digest, manifest_digest], keys, identity)
        if with_provenance:
            provenance = verify_provenance(store, ref, image_digest, keys, predicate_types)
    except SignatureError as exc:
        raise SignatureError("%s; nothing was fetched" % exc) from exc
    except ImageError as exc:
        raise SignatureError("reading the signatures of %s failed: %s; nothing was fetched" % (ref, exc)) from exc
    return {
        "signatures": {digest: signer for digest, (signer, _format) in verified.items()},
        "signature_formats": {digest: kind for digest, (_signer, kind) in verified.items()},
        "provenance": provenance,
    }


# ---- provenance and SBOM referrers ------------------------------------------------


def _blob_json(store: ImageSource, descriptor: t.Mapping[str, t.Any], limit: int = MAX_DOCUMENT_SIZE) -> t.Any:
    """A small JSON blob (a config), checked against its descriptor; None when it is not one."""
    try:
        digest, size = check_descriptor(descriptor, "a config")
    except WalkError:
        return None
    if size > limit:
        return None
    data = _read_small_blob(store, digest, size)
    try:
        return load_json(data, "config %s" % digest) if data is not None else None
    except DocumentError:
        return None


@dataclass
class ImageDocuments:
    """What a provenance or SBOM is made from: the subject and its parsed manifests and configs."""

    subject: dict[str, t.Any]
    index: dict[str, t.Any]
    manifests: dict[str, dict[str, t.Any]]
    configs: dict[str, dict[str, t.Any]]


def image_documents(store: Store, root: t.Mapping[str, t.Any], graph: t.Any) -> ImageDocuments:
    subject = {key: root[key] for key in ("mediaType", "digest", "size")}
    index: dict[str, t.Any] = {}
    manifests: dict[str, dict[str, t.Any]] = {}
    configs: dict[str, dict[str, t.Any]] = {}
    for document in graph.documents:
        parsed = document.body
        if document.digest == root["digest"] and document.is_index:
            index = parsed
        if document.is_index:
            continue
        manifests[document.digest] = parsed
        config = _blob_json(store, parsed.get("config") or {})
        if isinstance(config, dict):
            configs[document.digest] = config
    return ImageDocuments(subject, index, manifests, configs)


def _first_layer(store: ImageSource, referrer: t.Any, limit: int) -> bytes:
    """The bytes of a referrer's first layer, checked against its descriptor; b"" when there are none to trust."""
    manifest = read_referrer(store, referrer)
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list) or not layers:
        return b""
    try:
        digest, size = check_descriptor(layers[0], "the layer of a referrer")
    except WalkError:
        return b""
    if size > limit:
        return b""
    return _read_small_blob(store, digest, size) or b""


def verifiable_from_mirror(store: t.Any, subject_digest: str, referrer: Referrer) -> bool:
    """Whether a referrer that a mirror listed can be checked on its own: a signed provenance or bundle of this digest.

    What else a mirror lists (an SBOM, a block index, ...) carries no signature
    that whoever receives it could check, so the mirror may have made it up; a
    copy carries such referrers only from the origin. The signatures are
    checked against keys where the provenance is used (fetch's require_provenance).
    """
    if referrer.artifact_type not in (_provenance.PROVENANCE_ARTIFACT_TYPE, _bundle.BUNDLE_MEDIA_TYPE):
        return False
    try:
        subject = read_referrer(store, referrer).get("subject")
        if not isinstance(subject, dict) or subject.get("digest") != subject_digest:
            return False
        if referrer.artifact_type == _bundle.BUNDLE_MEDIA_TYPE:
            opened = _bundle.open_bundle(_first_layer(store, referrer, _bundle.MAX_BUNDLE_SIZE))
        else:
            opened = _provenance.open_envelope(_first_layer(store, referrer, _provenance.MAX_ENVELOPE_SIZE))
        digests, _predicate_type = _provenance.subject_digests(opened.payload)
    except ImageError:
        return False
    signed = all(isinstance(sig, str) and sig for _keyid, sig in opened.signatures)
    return signed and subject_digest in digests


def _referrer_blobs(store: ImageSource, subject_digest: str, artifact_type: str, limit: int) -> list[bytes]:
    """The first layer of each referrer of `artifact_type` (at most MAX_SIGNERS of them)."""
    referrers = list_referrers(store, subject_digest, artifact_type)[:MAX_SIGNERS]
    return [_first_layer(store, referrer, limit) for referrer in referrers]


def attach_provenance(
    store: Store, ref: ImageReference, documents: ImageDocuments, key: t.Any, check_mode: bool
) -> tuple[bool, str | None]:
    """Attach the DSSE provenance of the image; (changed, referrer digest). Unchanged when this key already did."""
    body = _provenance.statement(
        ref.name, documents.subject["digest"], documents.index, documents.manifests, documents.configs
    )
    public = key.public_key()
    for referrer in list_referrers(store, documents.subject["digest"], _provenance.PROVENANCE_ARTIFACT_TYPE):
        if _signed_same(_first_layer(store, referrer, _provenance.MAX_ENVELOPE_SIZE), body, public):
            return False, referrer.digest
    blob = ReferrerBlob(_provenance.PAYLOAD_TYPE, data=_provenance.envelope(key, body))
    return attach_referrer(
        store, documents.subject, _provenance.PROVENANCE_ARTIFACT_TYPE, [blob], check_mode=check_mode
    )


def _signed_same(data: bytes, body: bytes, public: t.Any) -> bool:
    """Whether an envelope carries exactly `body`, signed by `public` (ECDSA signatures differ each time)."""
    try:
        opened = _provenance.open_envelope(data)
    except _provenance.ProvenanceError:
        return False
    if opened.payload != body:
        return False
    for _keyid, sig in opened.signatures:
        try:
            if verifying_key([public], _provenance.pae(_provenance.PAYLOAD_TYPE, body), sig) is not None:
                return True
        except SignatureError:
            continue
    return False


def _rootfs_layers(documents: ImageDocuments) -> list[tuple[str, int]]:
    """(digest, size) of each raw rootfs layer, once each (both platforms share one)."""
    found: dict[str, int] = {}
    for manifest in documents.manifests.values():
        for layer in descriptors(manifest.get("layers")):
            if layer_role(layer) != "rootfs" or layer.get("mediaType") == OCI_LAYER_TAR_GZIP:
                continue
            try:
                digest, size = check_descriptor(layer, "a rootfs layer")
            except WalkError:
                continue
            found.setdefault(digest, size)
    return sorted(found.items())


@contextlib.contextmanager
def _local_copy(store: Store, digest: str, size: int) -> t.Iterator[str]:
    """A path holding the blob: the layout's own file, or the registry's blob received into a temporary file.

    The download stops at the first byte past the descriptor's `size` and is
    checked against the digest before anything reads it.
    """
    local = store.local_blob_path(digest)
    if local is not None:
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="ironcore-sbom-") as directory:
        path = os.path.join(directory, "rootfs")
        try:
            download_blob(store, digest, size, path)
        except StoreError as exc:
            raise SignatureError("reading the rootfs for the SBOM failed: %s" % exc) from exc
        yield path


def image_packages(store: Store, documents: ImageDocuments) -> tuple[list[_sbom.Package], list[str]]:
    """The packages installed in the image's ext4 rootfs layers, and the digests of the rootfs read."""
    packages: list[_sbom.Package] = []
    read: list[str] = []
    for digest, size in _rootfs_layers(documents):
        with _local_copy(store, digest, size) as path:
            if not _sbom.is_ext_filesystem(path):
                continue
            text = _sbom.read_dpkg_status(path)
        read.append(digest)
        if text is not None:
            packages.extend(_sbom.parse_dpkg_status(text))
    return sorted(set(packages)), read


def attach_sbom(
    store: Store, ref: ImageReference, documents: ImageDocuments, check_mode: bool
) -> tuple[bool, str | None, int, list[str]]:
    """Attach the CycloneDX SBOM; (changed, referrer digest, packages listed, rootfs digests read)."""
    packages, read = image_packages(store, documents)
    data = _sbom.document(ref.name, documents.subject["digest"], packages)
    blob = ReferrerBlob(_sbom.SBOM_ARTIFACT_TYPE, data=data)
    changed, digest = attach_referrer(store, documents.subject, _sbom.SBOM_ARTIFACT_TYPE, [blob], check_mode=check_mode)
    return changed, digest, len(packages), read


def verify_provenance(
    store: ImageSource,
    ref: ImageReference,
    digest: str,
    keys: t.Sequence[t.Any],
    predicate_types: t.Sequence[str] = _provenance.DEFAULT_PREDICATE_TYPES,
) -> dict[str, t.Any]:
    """{verified, keyid, predicate_type} of the provenance of `digest`, or ProvenanceError saying why not."""
    envelopes = _referrer_blobs(store, digest, _provenance.PROVENANCE_ARTIFACT_TYPE, _provenance.MAX_ENVELOPE_SIZE)
    where = "%s@%s" % (ref.name, digest)
    return _provenance.check_provenance(digest, where, envelopes, keys, predicate_types).result()


# ---- describing (ironcore_image_info) -------------------------------------------------


def _claimed_signers(entries: t.Sequence[SignedPayload] | None) -> list[str]:
    return sorted(
        {
            str(entry.claimed_fingerprint)[:71]
            for entry in entries or []
            if isinstance(entry.claimed_fingerprint, str) and entry.claimed_fingerprint.startswith("SHA256:")
        }
    )


def _describe_digest(
    store: ImageSource,
    ref: ImageReference,
    digest: str,
    keys: t.Sequence[t.Any],
    identity: SignedIdentity = DEFAULT_IDENTITY,
) -> dict[str, t.Any]:
    """Whether `digest` has a `.sig` or bundles, who signed (as claimed), and with keys which verifies (or why none)."""
    described: dict[str, t.Any] = {
        "signed": False,
        "signers": [],
        "bundles": [],
        "verified_by": None,
        "verified_format": None,
        "reason": None,
    }
    bundles = list_referrers(store, digest, _bundle.BUNDLE_MEDIA_TYPE)
    described["bundles"] = [referrer.digest for referrer in bundles]
    try:
        entries = read_signatures(store, ref, digest)
    except SignatureError as exc:
        return dict(described, signed=True, reason=str(exc))
    described.update(signed=entries is not None or bool(bundles), signers=_claimed_signers(entries))
    if keys:
        try:
            described["verified_by"], described["verified_format"] = check_digest(
                digest, ref.name, entries, _bundles_of(store, digest), keys, identity, _fetched_tag(ref)
            )
        except SignatureError as exc:
            described["reason"] = str(exc)
    return described


def _describe_referrers(
    store: ImageSource, ref: ImageReference, digest: str, artifact_type: str, keys: t.Sequence[t.Any] | None
) -> dict[str, t.Any]:
    """The referrer manifests of `artifact_type`; for provenance with keys, also the verdict."""
    found = [referrer.digest for referrer in list_referrers(store, digest, artifact_type)]
    described: dict[str, t.Any] = {"referrers": found}
    if keys is not None:
        described.update(verified=None, reason=None)
        if keys and found:
            try:
                described["verified"] = verify_provenance(store, ref, digest, keys)
            except SignatureError as exc:
                described["reason"] = str(exc)
    return described


def _published_names(store: ImageSource, ref: ImageReference, image_digest: str) -> dict[str, dict[str, t.Any]]:
    """{reference text: descriptor} of the name given and the platform names beside it (`<tag>-metal`, ...)."""
    names = {str(ref): {"digest": image_digest}}
    if ref.digest or not ref.tag:
        return names
    for platform_ref in platform_refs(ref, PLATFORMS, ARCHITECTURES, aliases=True).values():
        descriptor = store.current_name(store.name_for_tag(ref, str(platform_ref.tag)))
        if descriptor is not None and isinstance(descriptor.get("digest"), str):
            names[str(platform_ref)] = descriptor
    return names


def platform_indexes(store: ImageSource, ref: ImageReference, graph: t.Any) -> list[Document]:
    """The documents the platform names beside `ref` point at that the image's own walk does not reach.

    A platform index (`1.0-metal`, `1.0-kvm`) is a document of its own,
    not an entry of the combined index, so it is signed (and described) by
    name. Only one whose manifests all belong to the image counts: a
    leftover name from another build is not this image's to sign.
    """
    found: dict[str, Document] = {}
    for descriptor in _published_names(store, ref, str(graph.documents[-1].digest)).values():
        digest = str(descriptor["digest"])
        if digest in graph.by_digest or digest in found:
            continue
        own = walk(store.read_document, [descriptor], store.describe())
        if all(document.digest in graph.by_digest for document in own.documents[:-1]):
            found[digest] = own.documents[-1]
    return list(found.values())


def _is_unsigned(described: t.Mapping[str, t.Any], with_keys: bool) -> bool:
    """With keys, no signature verified; without, there is none at all."""
    return described["verified_by"] is None if with_keys else not described["signed"]


def describe_signatures(
    store: ImageSource,
    ref: ImageReference,
    image_digest: str,
    manifest_digests: t.Sequence[str],
    keys_given: t.Sequence[str],
    identity: SignedIdentity = DEFAULT_IDENTITY,
) -> dict[str, t.Any]:
    """Info's view: {"signatures": {digest: ...}, "unsigned", "provenance", "sbom"}; reports, never refuses.

    Without keys the signers are only those the `.sig` layers claim, unverified.
    `unsigned` lists the published names (the one given and its platform
    names) and the manifests whose digest is unsigned (with keys: carries no
    signature that verifies).
    """
    keys = [load_public_key(text) for text in keys_given]
    try:
        names = {name: str(found["digest"]) for name, found in _published_names(store, ref, image_digest).items()}
        signatures = {
            digest: _describe_digest(store, ref, digest, keys, identity)
            for digest in dict.fromkeys([image_digest, *names.values(), *manifest_digests])
        }
        provenance = _describe_referrers(store, ref, image_digest, _provenance.PROVENANCE_ARTIFACT_TYPE, keys)
        sbom = _describe_referrers(store, ref, image_digest, _sbom.SBOM_ARTIFACT_TYPE, None)
    except ImageError as exc:
        if isinstance(exc, SignatureError):
            raise
        raise SignatureError("reading the signatures of %s failed: %s" % (ref, exc)) from exc
    unsigned = [name for name, digest in names.items() if _is_unsigned(signatures[digest], bool(keys))]
    unsigned += [
        "%s@%s" % (ref.name, digest)
        for digest in dict.fromkeys(manifest_digests)
        if digest not in names.values() and _is_unsigned(signatures[digest], bool(keys))
    ]
    return {"signatures": signatures, "unsigned": unsigned, "provenance": provenance, "sbom": sbom}
