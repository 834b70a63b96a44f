# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The one copy routine: an image from any store to any store, digests preserved.

`plan_copy` resolves the names at the source and walks the image once
(`_walk.py`) before anything is written. `copy` then compares the names at
the destination; when none would move, nothing more is asked. Otherwise:
blobs, `concurrency` at a time and largest first, each skipped when the
destination has it, mounted when the destination registry has it in another
repository (the source's own repository first when both are on one
registry), else copied; then every document as its exact bytes, children
first; then what travels with the image (below); then the names, the main
name last. A failure anywhere leaves every name where it was; check mode
asks the same questions and writes nothing.

What travels with the image, for every index and manifest it reaches: the
cosign signatures (`sha256-<hex>.sig`) and the referrers (`_referrers.py`),
with their blobs, referrers of referrers too. Each is sent only when the
destination lacks it, after the image's own blobs and documents and before
its names, so whoever sees a name also sees its signatures. A destination
`.sig` with signers the source lacks keeps them: the source's are appended.
Only signers that can verify for the digest travel (simple-signing payloads
naming it), and never more than a verifier reads (MAX_SIGNERS).
"""

from __future__ import annotations

import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import canonical_json, sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import OCI_MANIFEST
from ansible_collections.ironcore.image.plugins.module_utils._progress import ProgressRecorder
from ansible_collections.ironcore.image.plugins.module_utils._referrers import (
    Referrer,
    Store,
    attach_manifest,
    list_referrers,
)
from ansible_collections.ironcore.image.plugins.module_utils._sign import SIGNATURE_ANNOTATION
from ansible_collections.ironcore.image.plugins.module_utils._signatures import (
    MAX_SIGNERS,
    OCI_CONFIG,
    names_this_digest,
    signature_config,
    verifiable_from_mirror,
)
from ansible_collections.ironcore.image.plugins.module_utils._store import ImageDestination, ImageSource
from ansible_collections.ironcore.image.plugins.module_utils._transfer import run_parallel
from ansible_collections.ironcore.image.plugins.module_utils._upload import ByteCounter
from ansible_collections.ironcore.image.plugins.module_utils._walk import (
    Document,
    Graph,
    WalkError,
    check_descriptor,
    parse_document,
    walk,
)


class CopyError(ImageError):
    """The copy cannot be done as asked; one line, nothing changed by it."""


@dataclass(frozen=True)
class NamedRoot:
    """A destination name, the descriptor to record for it, and the document it points at."""

    name: str
    descriptor: t.Mapping[str, t.Any]
    document: Document


@dataclass(frozen=True)
class SignatureNames:
    """What each side calls the `.sig` of a digest: a tag in a registry, a full reference in a layout."""

    source: t.Callable[[str], str]
    destination: t.Callable[[str], str]


@dataclass(frozen=True)
class Attachment:
    """A signature or referrer of `subject`: its document, and the graph (documents, blobs) it reaches."""

    subject: str
    document: Document
    graph: Graph
    # A `.sig`: (source name, destination name); a referrer: its entry in the subject's list.
    signature_names: tuple[str, str] | None = None
    referrer: Referrer | None = None
    # Small blobs that are not the source's (a merged `.sig`'s config), stored from memory.
    extra: t.Mapping[str, bytes] = field(default_factory=dict)


@dataclass
class CopyPlan:
    """Everything a copy moves, read from the source before anything is written; the main name last."""

    roots: list[NamedRoot]
    graph: Graph
    attachments: list[Attachment] = field(default_factory=list)
    # Referrers a mirror listed that cannot be verified on their own: not carried (see plan_attachments).
    left_out: list[dict[str, str]] = field(default_factory=list)

    @property
    def main(self) -> NamedRoot:
        return self.roots[-1]


@dataclass
class BlobCounts:
    copied: int = 0
    bytes: int = 0
    skipped: int = 0
    mounted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"copied": self.copied, "bytes": self.bytes, "skipped": self.skipped, "mounted": self.mounted}


@dataclass
class CopyResult:
    digest: str
    # Destination names that moved (or would), in the order they were set; the main name last.
    moved: list[str]
    before: dict[str, str | None]
    after: dict[str, str]
    blobs: BlobCounts
    elapsed: float = 0.0
    documents: int = 0
    names: list[str] = field(default_factory=list)
    # Signatures and referrers sent (or that would be), by the digest of their document.
    signatures: list[str] = field(default_factory=list)
    referrers: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.moved or self.signatures or self.referrers)

    @property
    def bytes_per_second(self) -> int:
        return int(self.blobs.bytes / self.elapsed) if self.elapsed > 0 else 0


# ---- planning -----------------------------------------------------------------


def plan_copy(source: ImageSource, names: t.Sequence[tuple[str, str]], carry: SignatureNames | None = None) -> CopyPlan:
    """Resolve (source name, destination name) pairs, the main pair last, and walk what they reach.

    With `carry`, also the signatures and referrers of every document reached.
    """
    resolved = [(destination, source.resolve(name)) for name, destination in names]
    graph = walk(source.read_document, [descriptor for _name, descriptor in resolved], source.describe())
    for digest, size in graph.blobs.items():
        source.check_blob(digest, size)
    roots = [
        NamedRoot(name, _recorded(descriptor), graph.by_digest[str(descriptor["digest"])])
        for name, descriptor in resolved
    ]
    plan = CopyPlan(roots=roots, graph=graph)
    if carry is not None:
        plan.attachments = plan_attachments(source, graph, carry, plan.left_out)
    return plan


def plan_attachments(
    source: ImageSource, graph: Graph, names: SignatureNames, left_out: list[dict[str, str]] | None = None
) -> list[Attachment]:
    """The signatures and referrers of every document of `graph`, and of every referrer found, each walked.

    Referrers that a mirror listed (the origin could not answer) are carried
    only when they can be verified on their own (a signed provenance of this
    digest); the others go to `left_out`, so that a mirror cannot have a
    copy publish an SBOM or a block index it made up. `.sig` signatures name
    their digest and are verified against keys by whoever uses them.
    """
    found: list[Attachment] = []
    pending = [document.digest for document in graph.documents]
    seen: set[str] = set()
    while pending:
        digest = pending.pop(0)
        if digest in seen:
            continue
        seen.add(digest)
        signature_name = names.source(digest)
        descriptor = source.current_name(signature_name)
        if descriptor is not None:
            document, reached = _walk_one(source, _recorded(descriptor))
            found.append(Attachment(digest, document, reached, (signature_name, names.destination(digest))))
        for referrer in list_referrers(source, digest):
            mirror = source.listed_by_mirror(digest)
            if mirror is not None and not verifiable_from_mirror(source, digest, referrer):
                if left_out is not None:
                    left_out.append(
                        {
                            "subject": digest,
                            "digest": referrer.digest,
                            "artifact_type": referrer.artifact_type,
                            "mirror": mirror,
                        }
                    )
                continue
            document, reached = _walk_one(source, referrer.descriptor)
            found.append(Attachment(digest, document, reached, referrer=referrer))
            pending.append(referrer.digest)
    return found


def _walk_one(source: ImageSource, descriptor: t.Mapping[str, t.Any]) -> tuple[Document, Graph]:
    reached = walk(source.read_document, [descriptor], source.describe())
    for digest, size in reached.blobs.items():
        source.check_blob(digest, size)
    return reached.by_digest[str(descriptor["digest"])], reached


def _recorded(descriptor: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """What a destination records for a name: the source's descriptor, without its own name."""
    return {key: value for key, value in descriptor.items() if key in ("mediaType", "digest", "size", "annotations")}


def blob_order(blobs: t.Mapping[str, int]) -> list[tuple[str, int]]:
    """Largest first, so the big rootfs does not start last and finish alone; ties by digest."""
    return sorted(blobs.items(), key=lambda item: (-item[1], item[0]))


def moved_names(plan: CopyPlan, current: t.Mapping[str, str | None]) -> list[str]:
    """The destination names that do not point at their document yet, in plan order."""
    return [root.name for root in plan.roots if current.get(root.name) != root.document.digest]


def refuse_moves(plan: CopyPlan, current: t.Mapping[str, str | None], where: str) -> None:
    """overwrite=false: a name that points at another digest stays, and the copy is refused.

    The main name is told first: it is the one the user named.
    """
    for root in [plan.main, *plan.roots[:-1]]:
        now = current.get(root.name)
        if now is not None and now != root.document.digest:
            raise CopyError(
                "%s in %s points at %s now, not at %s; refusing to move it (overwrite=false); set overwrite=true"
                " to move it, or copy to another name" % (root.name, where, now, root.document.digest),
                option="overwrite",
            )


def documents_to_put(plan: CopyPlan) -> list[Document]:
    """Every document children first, except the main name's own: setting the main name stores it.

    Until the main name is set, nothing that names the new image by its main name exists.
    """
    main = plan.main.document.digest
    return [document for document in plan.graph.documents if document.digest != main]


def mount_candidates(source: ImageSource, destination: ImageDestination, mount_from: t.Sequence[str]) -> list[str]:
    """Repositories of the destination registry to mount from: the source's own first when it is there."""
    if destination.registry is None:
        return []
    candidates: list[str] = []
    if source.registry is not None and source.registry == destination.registry and source.repository:
        candidates.append(source.repository)
    for repository in mount_from:
        if repository not in candidates:
            candidates.append(repository)
    return [repository for repository in candidates if repository != destination.repository]


# ---- copying ------------------------------------------------------------------


class _ProgressCounter(ByteCounter):
    """The copier's byte counter for one blob: adds to the shared count and to the blob's progress.

    A retried upload sends some bytes twice; its progress stops at the blob's size.
    """

    def __init__(self, shared: ByteCounter, recorder: ProgressRecorder, digest: str, size: int):
        super().__init__()
        self._shared = shared
        self._recorder = recorder
        self._digest = digest
        self._left = size

    def add(self, count: int) -> None:
        self._shared.add(count)
        with self._lock:
            counted = min(count, self._left)
            self._left -= counted
        if counted:
            self._recorder.advance(self._digest, counted)


class _BlobCopier:
    def __init__(
        self,
        source: ImageSource,
        destination: ImageDestination,
        candidates: t.Sequence[str],
        check_mode: bool,
        retries: int,
        progress: ProgressRecorder | None = None,
    ):
        self.source = source
        self.destination = destination
        self.candidates = candidates
        self.check_mode = check_mode
        self.retries = retries
        self.counter = ByteCounter()
        self.progress = None if check_mode else progress

    def missing(self, item: tuple[str, int]) -> bool:
        digest, size = item
        return not self.destination.has_blob(digest, size)

    def transfer(self, item: tuple[str, int], missing: bool = True) -> str:
        """One blob: 'skipped', 'mounted' or 'copied' (in check mode: what would happen)."""
        digest, size = item
        if not missing:
            return "skipped"
        for repository in self.candidates:
            if not self.destination.can_mount(digest, size, repository):
                continue
            if self.check_mode or self.destination.mount_blob(digest, repository):
                if self.progress is not None:
                    # No byte of it moves.
                    self.progress.start(digest, 0)
                return "mounted"
            # Refused: upload instead (into the session the refusal may have opened).
            break
        if not self.check_mode:
            counter = self.counter
            if self.progress is not None:
                self.progress.start(digest, size)
                counter = _ProgressCounter(self.counter, self.progress, digest, size)
            self.destination.put_blob(self.source, digest, size, counter, self.retries)
        return "copied"

    def run(self, blobs: t.Mapping[str, int], concurrency: int) -> BlobCounts:
        """Copy `blobs`; the counts are this run's alone, so that the runs of one copy can be added up."""
        items = blob_order(blobs)
        # The counter is the copier's, shared by its runs: this run's bytes are what it adds.
        sent_before = self.counter.value
        # What the destination lacks is asked first, so that the progress record's total is known from the start.
        missing = run_parallel(concurrency, self.missing, items)
        if self.progress is not None:
            for (digest, size), absent in zip(items, missing):
                if absent:
                    self.progress.start(digest, size)
        outcomes = run_parallel(concurrency, lambda pair: self.transfer(*pair), list(zip(items, missing)))
        counts = BlobCounts()
        for (_digest, size), outcome in zip(items, outcomes):
            setattr(counts, outcome, getattr(counts, outcome) + 1)
            if outcome == "copied" and self.check_mode:
                counts.bytes += size
        if not self.check_mode:
            counts.bytes = self.counter.value - sent_before
        return counts


def copy(
    source: ImageSource,
    destination: ImageDestination,
    plan: CopyPlan,
    *,
    concurrency: int = 4,
    retries: int = 4,
    check_mode: bool = False,
    overwrite: bool = True,
    mount_from: t.Sequence[str] = (),
    progress: ProgressRecorder | None = None,
) -> CopyResult:
    """Copy what `plan` names from `source` to `destination`; see the module docstring for the order.

    `progress` (outside check mode) counts the bytes of each blob sent, by digest, in phase "copy";
    phase "commit" is the documents and names after them.
    """
    started = time.monotonic()
    names = [root.name for root in plan.roots]

    def current(name: str) -> str | None:
        found = destination.current_name(name)
        return str(found["digest"]) if found else None

    before = dict(zip(names, run_parallel(concurrency, current, names)))
    if not overwrite:
        refuse_moves(plan, before, destination.describe())
    moved = moved_names(plan, before)
    counts = BlobCounts(skipped=len(plan.graph.blobs))
    documents = 0
    carried = missing_attachments(source, destination, plan.attachments)
    if moved or carried:
        if not check_mode:
            destination.prepare()
        candidates = mount_candidates(source, destination, mount_from)
        copier = _BlobCopier(source, destination, candidates, check_mode, retries, progress)
        if copier.progress is not None:
            copier.progress.set_phase("copy")
        if moved:
            counts = copier.run(plan.graph.blobs, concurrency)
            if copier.progress is not None:
                copier.progress.set_phase("commit")
            if not check_mode:
                for document in documents_to_put(plan):
                    destination.put_document(document)
                    documents += 1
        # Before the names: whoever sees a name sees its signatures and referrers.
        if carried:
            counts = _added(counts, copier.run(_attachment_blobs(carried, plan.graph.blobs), concurrency))
            for attachment in carried:
                documents += _carry(source, destination, attachment, check_mode)
        if not check_mode:
            for root in plan.roots:
                if root.name in moved:
                    destination.set_name(root.name, root.descriptor, root.document)
    return CopyResult(
        digest=plan.main.document.digest,
        moved=moved,
        before={name: before[name] for name in moved},
        after={root.name: root.document.digest for root in plan.roots if root.name in moved},
        blobs=counts,
        elapsed=time.monotonic() - started,
        documents=documents,
        names=names,
        signatures=[a.document.digest for a in carried if a.signature_names is not None],
        referrers=[a.document.digest for a in carried if a.referrer is not None],
    )


# ---- signatures and referrers -------------------------------------------------------


def _added(first: BlobCounts, second: BlobCounts) -> BlobCounts:
    return BlobCounts(
        copied=first.copied + second.copied,
        bytes=first.bytes + second.bytes,
        skipped=first.skipped + second.skipped,
        mounted=first.mounted + second.mounted,
    )


def _attachment_blobs(attachments: t.Sequence[Attachment], already: t.Mapping[str, int]) -> dict[str, int]:
    """The blobs of the attachments that the image's own blobs do not already include."""
    blobs: dict[str, int] = {}
    for attachment in attachments:
        for digest, size in attachment.graph.blobs.items():
            if digest not in already:
                blobs[digest] = size
    return blobs


def missing_attachments(
    source: ImageSource, destination: ImageDestination, attachments: t.Sequence[Attachment]
) -> list[Attachment]:
    """The attachments the destination lacks: a `.sig` it does not have all the signers of, an unlisted referrer.

    A `.sig` is carried as the signers worth carrying (see `_signature_to_carry`), merged after the
    destination's own when it has a `.sig` already.
    """
    store = t.cast(Store, destination)
    listed: dict[str, set[str]] = {}
    missing: list[Attachment] = []
    for attachment in attachments:
        names, referrer = attachment.signature_names, attachment.referrer
        if names is not None:
            current = destination.current_name(names[1])
            if current is None or current.get("digest") != attachment.document.digest:
                carried = _signature_to_carry(t.cast(Store, source), store, current, attachment)
                if carried is not None:
                    missing.append(carried)
        elif referrer is not None:
            if attachment.subject not in listed:
                listed[attachment.subject] = {entry.digest for entry in list_referrers(store, attachment.subject)}
            if referrer.digest not in listed[attachment.subject]:
                missing.append(attachment)
    return missing


def _signers(manifest: t.Mapping[str, t.Any]) -> list[t.Mapping[str, t.Any]]:
    layers = manifest.get("layers")
    return [layer for layer in layers if isinstance(layer, dict)] if isinstance(layers, list) else []


def _signer_key(layer: t.Mapping[str, t.Any]) -> tuple[str, str]:
    annotations = layer.get("annotations") if isinstance(layer.get("annotations"), dict) else {}
    return str(layer.get("digest")), str((annotations or {}).get(SIGNATURE_ANNOTATION))


def _existing_signers(
    store: Store, current: t.Mapping[str, t.Any], attachment: Attachment
) -> list[t.Mapping[str, t.Any]]:
    """The layers of the destination's `.sig`; CopyError when it cannot be read."""
    digest = str(current.get("digest"))
    try:
        digest, size = check_descriptor(current, "the descriptor of a signature")
        return _signers(parse_document(store.read_document(digest, size), current, store.describe()).body)
    except WalkError as exc:
        raise CopyError(
            "the signature %s in %s is unreadable (%s); remove it or copy with carry_referrers=false"
            % (attachment.signature_names[1] if attachment.signature_names else digest, store.describe(), exc)
        ) from exc


def _signature_to_carry(
    source: Store, store: Store, current: t.Mapping[str, t.Any] | None, attachment: Attachment
) -> Attachment | None:
    """The `.sig` to send for `attachment`, or None when the destination has every signer worth sending.

    Worth sending is a simple-signing payload that names the subject: other
    layers can never verify for it, and a writer who fills a source's `.sig`
    with them must not push the destination's own signatures past the
    MAX_SIGNERS a verifier reads. The destination's signers come first (its
    junk dropped too), the source's new ones after them, up to that limit.
    The source's `.sig` is sent as its exact bytes when all of it is worth
    sending and the destination has none.
    """
    existing = _existing_signers(store, current, attachment) if current is not None else []
    have = {_signer_key(layer) for layer in existing}
    offered = _signers(attachment.document.body)
    added: dict[tuple[str, str], t.Mapping[str, t.Any]] = {}
    for layer in offered:
        key = _signer_key(layer)
        if key not in have and key not in added and names_this_digest(source, layer, attachment.subject):
            added[key] = layer
    if not added:
        return None
    if current is None and len(added) == len(offered) <= MAX_SIGNERS:
        return attachment
    kept = [layer for layer in existing if names_this_digest(store, layer, attachment.subject)]
    layers = [dict(layer) for layer in kept + list(added.values())[: max(MAX_SIGNERS - len(kept), 0)]]
    if len(layers) == len(kept):
        return None
    config = signature_config([str(layer["digest"]) for layer in layers])
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": layers,
    }
    document = canonical_json(body)
    graph = Graph(blobs={str(layer["digest"]): int(layer["size"]) for layer in layers[len(kept) :]})
    merged = Document(sha256_digest(document), OCI_MANIFEST, document, False)
    graph.by_digest[merged.digest] = merged
    graph.documents.append(merged)
    # The new config is not the source's: it is stored from memory when the merge is carried.
    return Attachment(attachment.subject, merged, graph, attachment.signature_names, extra={"config": config})


def _carry(source: ImageSource, destination: ImageDestination, attachment: Attachment, check_mode: bool) -> int:
    """Store one attachment's documents (its blobs are there) and name or list it; the documents stored."""
    if check_mode:
        return 0
    store = t.cast(Store, destination)
    for data in attachment.extra.values():
        store.put_small_blob(data)
    documents = [document for document in attachment.graph.documents if document.digest != attachment.document.digest]
    for document in documents:
        destination.put_document(document)
    if attachment.signature_names is not None:
        destination.set_name(attachment.signature_names[1], attachment.document.descriptor, attachment.document)
    elif attachment.referrer is not None:
        attach_manifest(store, attachment.subject, attachment.referrer, attachment.document.data, lambda: None)
    return len(documents) + 1
