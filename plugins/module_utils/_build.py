# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Assemble an IronCore OS image into an OCI layout.

Everything is checked before the first byte is written, so bad input leaves
the layout exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils import _uki
from ansible_collections.ironcore.image.plugins.module_utils._blockindex import (
    ARTIFACT_TYPE,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_HASH,
    DEFAULT_HASH_LENGTH,
    LAYER_ANNOTATION,
    MAX_HEADER_SIZE,
    MEDIA_TYPE,
    BlockHasher,
    BlockIndexError,
    Header,
    block_hash_function,
    check_block_size,
    decode_header,
    wants_index,
)
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import (
    ChunkHook,
    HashingWriter,
    file_identity,
    hash_file,
    iter_chunks,
)
from ansible_collections.ironcore.image.plugins.module_utils._layout import (
    LayoutError,
    OciLayout,
    digest_of_file,
)
from ansible_collections.ironcore.image.plugins.module_utils._manifest import (
    InvalidDocument,
    UnsafeCommandLine,
    build_index,
    build_manifest,
    check_command_line,
    config_document,
    descriptor,
    descriptor_for,
    manifest_title,
    platform_entry,
)
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    CONFIG_MEDIA_TYPE,
    OCI_INDEX,
    OCI_MANIFEST,
    PLATFORMS,
    PROFILES,
    ROLES,
    SHA256_DIGEST_RE,
    TITLE_ANNOTATION,
    ImageReference,
    InvalidReference,
    canonical_architecture,
    canonical_platform,
    layer_media_type,
    platform_refs,
    platform_tag_words,
)

if t.TYPE_CHECKING:
    from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore


class BuildError(ImageError):
    """Bad input or an unusable layout; the message names the field."""


UKI_AUTO = "auto"


@dataclass
class ArtifactSet:
    architecture: str
    files: dict[str, str]
    cmdline: str | None
    position: int
    # uki: auto: the build assembles the UKI from the kernel, initramfs and cmdline.
    uki_auto: bool = False
    uki_stub: str | None = None
    os_release: str | None = None


def _referrers() -> t.Any:
    """The referrers API, imported only by a build that indexes a layer.

    Through the image stores it loads the registry client, which a build of
    small layers (or with block_index: false) has no use for.
    """
    from ansible_collections.ironcore.image.plugins.module_utils import _referrers as referrers

    return referrers


def _layout_store(layout: OciLayout) -> LayoutStore:
    return t.cast("LayoutStore", _referrers().LayoutStore(layout.path))


@dataclass(frozen=True)
class IndexReferrer:
    """A block index to attach to one platform manifest (its subject) as a referrer."""

    subject: dict[str, t.Any]
    layer_digest: str
    path: str

    def attach(self, store: LayoutStore) -> bool:
        """Store the index blob and the referrer manifest, list it for the subject; False when it already was."""
        layer = {LAYER_ANNOTATION: self.layer_digest}
        referrers = _referrers()
        blob = referrers.ReferrerBlob(MEDIA_TYPE, path=self.path, annotations=layer)
        changed, _digest = referrers.attach_referrer(store, self.subject, ARTIFACT_TYPE, [blob], annotations=layer)
        return bool(changed)


@dataclass
class BuildPlan:
    """What the build will record, computed before anything is written."""

    ref: ImageReference
    layout: OciLayout
    blobs: dict[str, bytes] = field(default_factory=dict)
    # Block indexes not yet attached: referrers beside the image, never part of its documents.
    index_referrers: list[IndexReferrer] = field(default_factory=list)
    # What holds the files index_referrers point at (a _BlockIndexes), kept alive as long as the plan.
    index_files: t.Any = field(default=None, repr=False)
    manifests: list[dict[str, t.Any]] = field(default_factory=list)
    refs: dict[str, dict[str, t.Any]] = field(default_factory=dict)
    index: dict[str, t.Any] = field(default_factory=dict)
    # Digest -> size of every blob the combined index reaches (manifests, configs, layers), each once.
    reached: dict[str, int] = field(default_factory=dict)
    # The directory the UKIs of uki: auto are assembled in (a TemporaryDirectory), kept as long as the plan.
    uki_scratch: t.Any = field(default=None, repr=False)

    @property
    def image_size(self) -> int:
        """The image's bytes, as info's layout listing counts them: the combined index and all it reaches, each once."""
        return int(self.index["size"]) + sum(
            size for digest, size in self.reached.items() if digest != self.index["digest"]
        )


def _check_artifact_file(where: str, path: t.Any) -> str:
    if not isinstance(path, str) or not path:
        raise BuildError("%s must be a path, got %r" % (where, path))
    try:
        status = os.stat(path)
    except FileNotFoundError as exc:
        raise BuildError("%s: file %s does not exist" % (where, path)) from exc
    except OSError as exc:
        raise BuildError("%s: cannot read %s (%s)" % (where, path, exc.strerror)) from exc
    if stat.S_ISDIR(status.st_mode):
        raise BuildError("%s: %s is a directory, not a regular file" % (where, path))
    if not stat.S_ISREG(status.st_mode):
        raise BuildError("%s: %s is not a regular file (device, socket or pipe)" % (where, path))
    if not os.access(path, os.R_OK):
        raise BuildError("%s: %s is not readable" % (where, path))
    if status.st_size == 0:
        # No kernel, initramfs or disk is empty: a 0-byte file is a build step that failed or has not run yet.
        raise BuildError("%s: %s is empty (0 bytes); give the artifact the build produced" % (where, path))
    return path


def parse_artifacts(artifacts: t.Any, platforms: t.Sequence[str]) -> list[ArtifactSet]:
    """Check the artifact list against the platforms; first problem wins."""
    if not artifacts:
        raise BuildError("artifacts must list at least one architecture")
    result: list[ArtifactSet] = []
    for position, item in enumerate(artifacts):
        where = "artifacts[%d]" % position
        # x86_64 and aarch64 are the kernel's names for amd64 and arm64: the image records the OCI names.
        arch = canonical_architecture(item.get("architecture")) or item.get("architecture")
        if any(existing.architecture == arch for existing in result):
            raise BuildError("%s.architecture: %s is listed twice; give each architecture once" % (where, arch))
        uki_auto = item.get("uki") == UKI_AUTO
        files = {
            role: _check_artifact_file("%s.%s" % (where, role), item[role])
            for role in ROLES
            if item.get(role) and not (role == "uki" and uki_auto)
        }
        # Only baremetal manifests carry a UKI: a virtualization-only build ignores uki: auto.
        if uki_auto and "baremetal" in platforms and not all(role in files for role in ("kernel", "initramfs")):
            raise BuildError(
                "%s.uki: auto needs the kernel and initramfs of %s, which the artifacts lack" % (where, arch)
            )
        for platform in platforms:
            missing = [role for role in PROFILES[platform].required if role not in files]
            if missing:
                raise BuildError(
                    "%s: platform %s needs %s for %s, which the artifacts lack"
                    % (where, platform, " and ".join(missing), arch)
                )
            live_root = PROFILES[platform].live_root
            if live_root and not any(role in files for role in live_root):
                raise BuildError(
                    "%s: platform %s needs a root for %s: give a %s, which the artifacts lack"
                    % (where, platform, arch, " or a ".join(live_root))
                )
        result.append(
            ArtifactSet(
                arch,
                files,
                _command_line(where, item.get("cmdline")),
                position,
                uki_auto=uki_auto,
                uki_stub=_optional_file(where, "uki_stub", item.get("uki_stub")),
                os_release=_optional_file(where, "os_release", item.get("os_release")),
            )
        )
    return result


def _optional_file(where: str, key: str, path: t.Any) -> str | None:
    return _check_artifact_file("%s.%s" % (where, key), path) if path else None


def _command_line(where: str, cmdline: str | None) -> str | None:
    if not cmdline:
        return None
    try:
        return check_command_line(cmdline) or None
    except UnsafeCommandLine as exc:
        raise BuildError("%s.cmdline: %s; remove it from the command line" % (where, exc)) from exc


def _ordered_platforms(platforms: t.Sequence[str]) -> list[str]:
    return [platform for platform in PLATFORMS if platform in platforms]


class _BlobDigests:
    """Digests of artifact files, from the cache when the file is unchanged."""

    def __init__(self, layout: OciLayout):
        self.layout = layout
        self.cache = layout.load_digest_cache() if layout.exists() else {}
        self.cache_dirty = False
        # True once a layer blob was (or, in check mode, would be) added to the store.
        self.blobs_added = False

    @staticmethod
    def key(path: str, packed_as: str | None) -> str:
        return "%s|%s" % (os.path.realpath(path), packed_as or "raw")

    def cached(self, path: str, packed_as: str | None) -> tuple[str, int] | None:
        """A remembered digest, trusted only while the file's identity (ctime included) is unchanged."""
        entry = self.cache.get(self.key(path, packed_as))
        if not isinstance(entry, dict) or entry.get("identity") != file_identity(path):
            return None
        digest, size = entry.get("digest"), entry.get("size")
        if not isinstance(digest, str) or not isinstance(size, int) or not SHA256_DIGEST_RE.fullmatch(digest):
            return None
        if not self.layout.has_blob(digest, size):
            return None
        return digest, size

    def remember(self, path: str, packed_as: str | None, digest: str, size: int, identity: list[int]) -> None:
        self.cache[self.key(path, packed_as)] = {"identity": identity, "digest": digest, "size": size}
        self.cache_dirty = True

    def digest(
        self, path: str, packed_as: str | None, store: bool, on_chunk: ChunkHook | None = None, cache: bool = True
    ) -> tuple[str, int]:
        """The blob's digest and size; `on_chunk` sees its bytes only when the file is read (no cache hit).

        With cache=False (a file this run made, such as an assembled UKI) nothing is looked up or remembered.
        """
        hit = self.cached(path, packed_as) if cache else None
        if hit:
            return hit
        identity = file_identity(path)
        if store:
            digest, size, written = self.layout.import_file(path, packed_as, on_chunk)
        else:
            digest, size = digest_of_file(path, packed_as, on_chunk)
            written = not self.layout.has_blob(digest, size)
        self.blobs_added = self.blobs_added or written
        # Only trust the result if the file did not change while being read.
        if cache and file_identity(path) == identity:
            self.remember(path, packed_as, digest, size, identity)
        return digest, size


@dataclass(frozen=True)
class _StoredIndex:
    """An encoded block index in a file: a scratch file of this run, or a blob the layout holds."""

    path: str
    digest: str
    size: int


class _BlockIndexes:
    """The block index of every raw rootfs, squashfs and iso layer of 64 MiB or more, each made once.

    The index is fed the chunks the layer is hashed (and copied) with, so it
    costs no read of its own; an index already attached to a platform manifest
    is reused as it is. With block_size None (block_index: false) no layer wants one.

    The hashes (4 MiB per GiB of layer) go to a scratch file as they are made
    and the index is encoded into another, so memory stays flat whatever the
    layer's size. Scratch files are in the system's temporary directory, not
    the layout (check mode writes nothing there), and vanish when closed.
    """

    def __init__(self, layout: OciLayout, block_size: int | None, hash_name: str = DEFAULT_HASH):
        self.layout = layout
        self.enabled = block_size is not None
        self.block_size = block_size or DEFAULT_BLOCK_SIZE
        self.hash_name = hash_name
        self._made: dict[str, _StoredIndex] = {}
        self._scratch: list[t.Any] = []

    def hasher(self, role: str, path: str, packed: bool) -> BlockHasher | None:
        """A hasher to feed while `path` is read, when its layer will want an index."""
        if not self.enabled or not wants_index(role, os.path.getsize(path), not packed):
            return None
        return self._new_hasher()

    def _new_hasher(self) -> BlockHasher:
        return BlockHasher(self.block_size, spill=self._scratch_file(tempfile.TemporaryFile), hash_name=self.hash_name)

    def _scratch_file(self, make: t.Callable[..., t.Any]) -> t.Any:
        scratch = make(prefix=".ironcore-blockindex-")
        self._scratch.append(scratch)
        return scratch

    def _encoded(self, hasher: BlockHasher, digest: str) -> _StoredIndex:
        out = self._scratch_file(tempfile.NamedTemporaryFile)
        sink = HashingWriter(out)
        hasher.write_index(digest, sink)
        out.flush()
        return _StoredIndex(out.name, sink.counter.digest, sink.counter.size)

    def close(self) -> None:
        """Remove the scratch files (the index blobs are in the layout by now, or were never to be)."""
        for scratch in self._scratch:
            scratch.close()
        self._scratch.clear()

    def wanted(self, role: str, layer: t.Mapping[str, t.Any], packed: bool) -> bool:
        return self.enabled and wants_index(role, layer["size"], not packed)

    def fed(self, hasher: BlockHasher | None, digest: str, size: int) -> None:
        """Keep the index of a layer that was just read whole through `hasher`."""
        if hasher is not None and hasher.size == size and digest not in self._made:
            self._made[digest] = self._encoded(hasher, digest)

    def for_manifest(
        self, subject: dict[str, t.Any], layer: t.Mapping[str, t.Any], plan: BuildPlan
    ) -> dict[str, t.Any]:
        """The result entry of the layer's index in this manifest; an index not yet attached joins the plan."""
        attached = self._attached(subject["digest"], layer)
        if attached is not None:
            return attached
        digest = layer["digest"]
        if digest not in self._made:
            # A layer not read this run (its digest came from the cache) may already have an index in
            # the layout, attached to another manifest (another image of the same files): reuse it
            # rather than read the whole layer again.
            self._made[digest] = self._attached_elsewhere(layer) or self.index(digest, layer["size"])
        stored = self._made[digest]
        plan.index_referrers.append(IndexReferrer(subject, digest, stored.path))
        return {"digest": stored.digest, "size": stored.size, "block_size": self.block_size, "hash": self.hash_name}

    def _attached(self, subject_digest: str, layer: t.Mapping[str, t.Any]) -> dict[str, t.Any] | None:
        """The result entry of an index of this layer, at this block size and hash, already attached to the manifest."""
        referrers, store = _referrers(), _layout_store(self.layout)
        for referrer in referrers.list_referrers(store, subject_digest, ARTIFACT_TYPE):
            if referrer.annotations.get(LAYER_ANNOTATION) != layer["digest"]:
                continue
            for blob in referrers.read_referrer(store, referrer).get("layers", []):
                header = self._stored_header(blob)
                if (
                    header is not None
                    and header.layer_digest == layer["digest"]
                    and header.layer_size == layer["size"]
                    and header.block_size == self.block_size
                    and header.hash == self.hash_name
                ):
                    return {
                        "digest": blob["digest"],
                        "size": blob["size"],
                        "block_size": header.block_size,
                        "hash": header.hash,
                    }
        return None

    def _attached_elsewhere(self, layer: t.Mapping[str, t.Any]) -> _StoredIndex | None:
        """An index of this layer, at this block size and hash, that the layout holds for any manifest; None if none."""
        for name in self.layout.refs():
            if not _referrers().REFERRERS_TAG_RE.fullmatch(name):
                continue
            entry = self._attached("sha256:" + name[len("sha256-") :], layer)
            if entry is None:
                continue
            # The layout's own blob, checked all the same: it becomes part of this image.
            path = self.layout.blob_path(entry["digest"])
            if hash_file(path) == (entry["digest"], entry["size"]):
                return _StoredIndex(path, entry["digest"], entry["size"])
        return None

    def _stored_header(self, blob: t.Any) -> Header | None:
        """The header of an index blob the layout holds whole; None for anything else."""
        if not isinstance(blob, dict) or blob.get("mediaType") != MEDIA_TYPE:
            return None
        digest, size = blob.get("digest"), blob.get("size")
        if not isinstance(digest, str) or not SHA256_DIGEST_RE.fullmatch(digest) or not isinstance(size, int):
            return None
        if not self.layout.has_blob(digest, size):
            return None
        with self.layout.open_blob(digest) as stream:
            line = stream.read(MAX_HEADER_SIZE).split(b"\n", 1)[0]
        try:
            header = decode_header(line)
        except BlockIndexError:
            return None
        return header if header.encoded_size() == size else None

    def index(self, digest: str, size: int) -> _StoredIndex:
        """The layer's index: made while it was read, else (a digest cache hit) with one read of its blob."""
        if digest not in self._made:
            # Only a layout without the index attached gets here (built before the index existed, or with
            # block_index: false, or another block size): the layer was not read this run, so read it once.
            hasher = self._new_hasher()
            with self.layout.open_blob(digest) as stream:
                for chunk in iter_chunks(stream):
                    hasher.update(chunk)
            if hasher.size != size:
                raise LayoutError(
                    "blob %s in layout %s has %d bytes, not %d" % (digest, self.layout.path, hasher.size, size)
                )
            self._made[digest] = self._encoded(hasher, digest)
        return self._made[digest]


def _block_size(params: t.Mapping[str, t.Any]) -> int | None:
    if not params.get("block_index", True):
        return None
    block_size = params.get("block_index_block_size")
    try:
        return check_block_size(DEFAULT_BLOCK_SIZE if block_size is None else block_size)
    except BlockIndexError as exc:
        raise BuildError("block_index_block_size: %s" % exc, option="block_index_block_size") from exc


def _block_hash(params: t.Mapping[str, t.Any], enabled: bool) -> str:
    """The block index's hash; refused up front when this host cannot compute it (xxhash missing)."""
    name = params.get("block_index_hash") or DEFAULT_HASH
    if enabled:
        try:
            block_hash_function(name, DEFAULT_HASH_LENGTH)
        except BlockIndexError as exc:
            raise BuildError("block_index_hash: %s" % exc, option="block_index_hash") from exc
    return str(name)


def _refuse_shared_layout(layout: OciLayout, allow_shared: bool) -> None:
    """Someone else who can write to the layout, its blobs or blobs/sha256 could plant links where we write."""
    try:
        layout.refuse_shared(allow_shared)
    except LayoutError as exc:
        raise BuildError(str(exc)) from exc


def plan_build(
    params: t.Mapping[str, t.Any], store: bool, in_flight: contextlib.ExitStack | None = None
) -> tuple[BuildPlan, _BlobDigests]:
    """Validate, hash (and with store=True import) the artifacts, assemble every document.

    With store=True and in_flight given, the layout's blob lock is entered on
    it before the first blob is looked at: the caller keeps it until the
    names are recorded, so a prune cannot take a blob in between.
    """
    try:
        ref = ImageReference.parse(params["name"])
    except InvalidReference as exc:
        raise BuildError("name: %s" % exc) from exc
    if ref.digest:
        raise BuildError("name: %s names a digest; give a tag (or none for latest)" % params["name"])
    for key, value in (params.get("annotations") or {}).items():
        if not isinstance(value, str):
            raise BuildError("annotations.%s must be a string, got %s" % (key, type(value).__name__))
    layout = OciLayout(params["layout"])
    try:
        layout.check_usable()
    except LayoutError as exc:
        raise BuildError("layout: %s" % exc) from exc
    allow_shared = bool(params.get("allow_shared_dest"))
    _refuse_shared_layout(layout, allow_shared)
    unknown = [platform for platform in params["platforms"] if canonical_platform(platform) is None]
    if unknown:
        raise BuildError("platforms: unknown platform %s; expected %s" % (unknown[0], ", ".join(PLATFORMS)))
    platforms = _ordered_platforms([name for name in map(canonical_platform, params["platforms"]) if name])
    if not platforms:
        raise BuildError("platforms must name at least one of %s" % ", ".join(PLATFORMS))
    block_size = _block_size(params)
    artifacts = parse_artifacts(params["artifacts"], platforms)
    aliases = bool(params.get("platform_tag_aliases", True))
    try:
        extra_names = (
            platform_refs(ref, platforms, [a.architecture for a in artifacts], aliases)
            if params["platform_tags"]
            else {}
        )
    except InvalidReference as exc:
        raise BuildError("name: platform tags of %s would be invalid: %s" % (ref, exc)) from exc

    if store:
        layout.ensure()
        _refuse_shared_layout(layout, allow_shared)
        if in_flight is not None:
            in_flight.enter_context(layout.adding_blobs())
    digests = _BlobDigests(layout)
    indexes = _BlockIndexes(layout, block_size, _block_hash(params, block_size is not None))
    plan = BuildPlan(ref=ref, layout=layout, index_files=indexes)
    if in_flight is not None:
        # The referrers to attach point at the scratch files: removed once the build is done with them.
        in_flight.callback(indexes.close)
    signers = _prepare_ukis(params, artifacts, platforms, plan, digests)
    if in_flight is not None and plan.uki_scratch is not None:
        in_flight.callback(plan.uki_scratch.cleanup)
    packed = params["layer_format"] == "tar+gzip"
    combined: list[dict[str, t.Any]] = []
    by_platform: dict[str, list[dict[str, t.Any]]] = {platform: [] for platform in platforms}
    for artifact in artifacts:
        config = config_document(artifact.cmdline)
        plan.blobs[descriptor_for(CONFIG_MEDIA_TYPE, config)["digest"]] = config
        layers: dict[str, dict[str, t.Any]] = {}
        indexed: set[str] = set()
        for role, path in artifact.files.items():
            if not any(role in PROFILES[platform].roles for platform in platforms):
                continue
            hasher = indexes.hasher(role, path, packed)
            made_here = role == "uki" and artifact.uki_auto
            digest, size = digests.digest(
                path, role if packed else None, store, hasher.update if hasher else None, cache=not made_here
            )
            indexes.fed(hasher, digest, size)
            annotations = {TITLE_ANNOTATION: role}
            if role == "uki" and signers.get(artifact.architecture):
                annotations[_uki.SIGNER_ANNOTATION] = str(signers[artifact.architecture])
            layers[role] = descriptor(
                layer_media_type(role, params["layer_format"]), digest, size, annotations=annotations
            )
            if indexes.wanted(role, layers[role], packed):
                indexed.add(digest)
        for platform in platforms:
            profile = PROFILES[platform]
            manifest_layers = [layers[role] for role in profile.roles if role in layers]
            manifest = build_manifest(
                platform,
                artifact.architecture,
                manifest_title(ref.repository, platform, artifact.architecture),
                descriptor_for(CONFIG_MEDIA_TYPE, config),
                manifest_layers,
            )
            manifest_desc = descriptor_for(OCI_MANIFEST, manifest)
            plan.blobs[manifest_desc["digest"]] = manifest
            config_desc = descriptor_for(CONFIG_MEDIA_TYPE, config)
            for reached in (manifest_desc, config_desc, *manifest_layers):
                plan.reached[str(reached["digest"])] = int(reached["size"])
            block_indexes = {
                layer["digest"]: indexes.for_manifest(manifest_desc, layer, plan)
                for layer in manifest_layers
                if layer["digest"] in indexed
            }
            plan.manifests.append(
                {
                    "platform": platform,
                    "architecture": artifact.architecture,
                    "digest": manifest_desc["digest"],
                    "size": manifest_desc["size"],
                    "layers": [_layer_summary(layer, block_indexes.get(layer["digest"])) for layer in manifest_layers],
                }
            )
            combined.append(platform_entry(manifest_desc, artifact.architecture, platform))
            by_platform[platform].append(platform_entry(manifest_desc, artifact.architecture, None))
            if params["platform_tags"]:
                for word in platform_tag_words(platform, aliases):
                    plan.refs[str(extra_names["%s/%s" % (word, artifact.architecture)])] = manifest_desc

    index = build_index(combined, params.get("annotations"))
    plan.blobs[descriptor_for(OCI_INDEX, index)["digest"]] = index
    plan.index = descriptor_for(OCI_INDEX, index)
    plan.refs[str(ref)] = plan.index
    if params["platform_tags"]:
        for platform in platforms:
            platform_index = build_index(by_platform[platform])
            platform_desc = descriptor_for(OCI_INDEX, platform_index)
            plan.blobs[platform_desc["digest"]] = platform_index
            for word in platform_tag_words(platform, aliases):
                plan.refs[str(extra_names[word])] = platform_desc
    return plan, digests


def _signing_key(params: t.Mapping[str, t.Any]) -> _uki.SigningKey | None:
    key, cert = params.get("uki_sign_key"), params.get("uki_sign_cert")
    if key and not cert:
        raise BuildError("uki_sign_key needs uki_sign_cert, the PEM certificate firmware checks the UKI against")
    if params.get("uki_require_signature") and not cert:
        raise BuildError("uki_require_signature needs uki_sign_cert, the certificate every UKI must be signed by")
    return _uki.SigningKey(key, cert, params.get("uki_sign_key_passphrase")) if key and cert else None


def _prepare_ukis(
    params: t.Mapping[str, t.Any],
    artifacts: t.Sequence[ArtifactSet],
    platforms: t.Sequence[str],
    plan: BuildPlan,
    digests: _BlobDigests,
) -> dict[str, str | None]:
    """Assemble (and sign) every uki: auto, check every UKI when a signature is required.

    Returns the signing certificate's fingerprint per architecture whose UKI
    is known to carry its signature (signed here, or checked with sbverify).
    """
    if "baremetal" not in platforms:
        return {}
    signing = _signing_key(params)
    require = bool(params.get("uki_require_signature"))
    signers: dict[str, str | None] = {}
    for artifact in artifacts:
        where = "artifacts[%d].uki" % artifact.position
        if artifact.uki_auto:
            if require and signing is None:
                raise BuildError(
                    "%s: auto would make an unsigned UKI, which uki_require_signature refuses: give uki_sign_key"
                    % where
                )
            artifact.files["uki"] = _assemble_uki(artifact, plan, signing, digests)
        if "uki" not in artifact.files:
            continue
        cert = params.get("uki_sign_cert")
        if require and cert:
            refusal = _uki.verify(artifact.files["uki"], cert)
            if refusal:
                raise BuildError(
                    "%s: %s is not signed by uki_sign_cert %s (sbverify: %s); sign it with that certificate's key"
                    % (where, artifact.files["uki"], cert, refusal)
                )
        if (artifact.uki_auto and signing) or require:
            signers[artifact.architecture] = _uki.cert_fingerprint(str(cert))
    return signers


def _assemble_uki(
    artifact: ArtifactSet, plan: BuildPlan, signing: _uki.SigningKey | None, digests: _BlobDigests
) -> str:
    """The UKI of uki: auto, in the plan's scratch directory (the system's temporary one, never the layout).

    The unsigned assembly is reproducible, an Authenticode signature is not
    (sbsign records the signing time): a rebuild whose unsigned UKI and
    certificate are unchanged takes the signed UKI the layout already holds,
    so an unchanged image keeps its digest.
    """
    where = "artifacts[%d]" % artifact.position
    if plan.uki_scratch is None:
        plan.uki_scratch = tempfile.TemporaryDirectory(prefix=".ironcore-uki-")
    kernel = artifact.files["kernel"]
    release = _uki.kernel_release(kernel)
    if not release:
        raise BuildError(
            "%s.kernel: %s names no kernel release (no Linux version banner); is it a kernel?" % (where, kernel)
        )
    if artifact.os_release:
        with open(artifact.os_release, "rb") as stream:
            osrel = stream.read(_uki.MAX_OS_RELEASE + 1)
        if len(osrel) > _uki.MAX_OS_RELEASE:
            raise BuildError(
                "%s.os_release: %s is larger than %d bytes; give an os-release file"
                % (where, artifact.os_release, _uki.MAX_OS_RELEASE)
            )
    else:
        osrel = _uki.os_release(plan.ref.repository.rsplit("/", 1)[-1], plan.ref.tag or "latest")
    out = os.path.join(plan.uki_scratch.name, "uki-%s.efi" % artifact.architecture)
    unsigned = out + ".unsigned" if signing else out
    try:
        _uki.assemble(
            unsigned,
            artifact.architecture,
            artifact.uki_stub or _uki.default_stub(artifact.architecture),
            kernel,
            artifact.files["initramfs"],
            artifact.cmdline,
            osrel,
            release,
        )
        if signing is None:
            return out
        unsigned_digest, _size = hash_file(unsigned)
        key = "uki-signed|%s|%s" % (unsigned_digest, _uki.cert_fingerprint(signing.cert))
        earlier = digests.cache.get(key)
        if (
            isinstance(earlier, dict)
            and SHA256_DIGEST_RE.fullmatch(str(earlier.get("digest")))
            and isinstance(earlier.get("size"), int)
            and plan.layout.has_blob(str(earlier["digest"]), earlier["size"])
        ):
            return plan.layout.blob_path(str(earlier["digest"]))
        _uki.sign(unsigned, out, signing.key, signing.cert, signing.passphrase)
    except _uki.UkiError as exc:
        raise BuildError("%s.uki: %s" % (where, exc)) from exc
    signed_digest, signed_size = hash_file(out)
    digests.cache[key] = {"digest": signed_digest, "size": signed_size}
    digests.cache_dirty = True
    return out


def _layer_summary(layer: t.Mapping[str, t.Any], block_index: t.Mapping[str, t.Any] | None) -> dict[str, t.Any]:
    return {
        "title": layer["annotations"][TITLE_ANNOTATION],
        "mediaType": layer["mediaType"],
        "digest": layer["digest"],
        "size": layer["size"],
        "block_index": dict(block_index) if block_index else None,
    }


def _ref_digests(refs: t.Mapping[str, t.Mapping[str, t.Any]], names: t.Iterable[str]) -> dict[str, str | None]:
    return {name: (refs[name]["digest"] if name in refs else None) for name in names}


def _moved_refs(plan: BuildPlan, after: t.Mapping[str, str]) -> tuple[dict[str, str | None], set[str]]:
    """What each name points at now, and which names the build moves."""
    before = _ref_digests(plan.layout.refs() if plan.layout.exists() else {}, after)
    return before, {name for name in after if before[name] != after[name]}


def refuse_moving(before: t.Mapping[str, str | None], after: t.Mapping[str, str], moved: t.Iterable[str]) -> None:
    """With overwrite: false, a name that already points at another digest stays where it is: refuse the build."""
    taken = sorted(name for name in moved if before[name] is not None)
    if taken:
        name = taken[0]
        others = " (and %d more of its names)" % (len(taken) - 1) if len(taken) > 1 else ""
        raise BuildError(
            "name %s already points at %s, not at %s this build makes%s; overwrite: false refuses to move it:"
            " give a new tag, or overwrite: true to move it" % (name, before[name], after[name], others)
        )


def build_image(params: t.Mapping[str, t.Any], check_mode: bool) -> dict[str, t.Any]:
    """Build (or, in check mode, only compute) the image; the module's one call."""
    try:
        with contextlib.ExitStack() as in_flight:
            plan, digests = plan_build(params, store=not check_mode, in_flight=in_flight)
            after = {name: target["digest"] for name, target in plan.refs.items()}
            blobs_missing = [digest for digest in plan.blobs if not plan.layout.has_blob(digest)]
            overwrite = params.get("overwrite", True) is not False
            before, moved = _moved_refs(plan, after)
            if not overwrite:
                # Refused before any document is written; decided again under the lock below.
                refuse_moving(before, after, moved)
            # In check mode, every index not found attached would be attached.
            indexes_attached = bool(plan.index_referrers)
            if not check_mode:
                for data in plan.blobs.values():
                    plan.layout.put_bytes(data)
                # After the manifests they are about, before the names: an image that has a name has its indexes.
                # Still inside in_flight, not under locked(): attaching takes the index lock itself.
                store = _layout_store(plan.layout) if plan.index_referrers else None
                # Every one attached, not only up to the first that changes something.
                attached = [referrer.attach(store) for referrer in plan.index_referrers if store]
                indexes_attached = any(attached)
                # Decided under the lock: a concurrent build may have moved a name meanwhile.
                with plan.layout.locked():
                    before, moved = _moved_refs(plan, after)
                    if not overwrite:
                        refuse_moving(before, after, moved)
                    if moved:
                        plan.layout.set_refs({name: plan.refs[name] for name in sorted(moved)})
        if digests.cache_dirty and not check_mode:
            digests.layout.save_digest_cache(digests.cache)
        changed = bool(moved) or bool(blobs_missing) or digests.blobs_added or indexes_attached
    except (LayoutError, InvalidDocument) as exc:
        raise BuildError(str(exc)) from exc
    except OSError as exc:
        raise BuildError("writing layout %s failed: %s" % (params["layout"], exc)) from exc
    return {
        "changed": changed,
        "name": str(plan.ref),
        "digest": plan.index["digest"],
        "size": plan.image_size,
        "index_size": plan.index["size"],
        "manifests": plan.manifests,
        "refs": sorted(plan.refs),
        "diff": {
            "before": {name: before[name] for name in sorted(moved)},
            "after": {name: after[name] for name in sorted(moved)},
        },
    }
