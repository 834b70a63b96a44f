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
first; then the names, the main name last. A failure anywhere leaves every
name where it was; check mode asks the same questions and writes nothing.
"""

from __future__ import annotations

import concurrent.futures
import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._store import ImageDestination, ImageSource
from ansible_collections.ironcore.image.plugins.module_utils._upload import ByteCounter
from ansible_collections.ironcore.image.plugins.module_utils._walk import Document, Graph, walk


class CopyError(ImageError):
    """The copy cannot be done as asked; one line, nothing changed by it."""


@dataclass(frozen=True)
class NamedRoot:
    """A destination name, the descriptor to record for it, and the document it points at."""

    name: str
    descriptor: t.Mapping[str, t.Any]
    document: Document


@dataclass
class CopyPlan:
    """Everything a copy moves, read from the source before anything is written; the main name last."""

    roots: list[NamedRoot]
    graph: Graph

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

    @property
    def changed(self) -> bool:
        return bool(self.moved)

    @property
    def bytes_per_second(self) -> int:
        return int(self.blobs.bytes / self.elapsed) if self.elapsed > 0 else 0


# ---- planning -----------------------------------------------------------------


def plan_copy(source: ImageSource, names: t.Sequence[tuple[str, str]]) -> CopyPlan:
    """Resolve (source name, destination name) pairs, the main pair last, and walk what they reach."""
    resolved = [(destination, source.resolve(name)) for name, destination in names]
    graph = walk(source.read_document, [descriptor for _name, descriptor in resolved], source.describe())
    for digest, size in graph.blobs.items():
        source.check_blob(digest, size)
    roots = [
        NamedRoot(name, _recorded(descriptor), graph.by_digest[str(descriptor["digest"])])
        for name, descriptor in resolved
    ]
    return CopyPlan(roots=roots, graph=graph)


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


def parallel(concurrency: int, function: t.Callable[[t.Any], t.Any], items: t.Sequence[t.Any]) -> list[t.Any]:
    """function over items with `concurrency` threads; the first error stops what has not started."""
    if concurrency <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
        futures = [pool.submit(function, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


class _BlobCopier:
    def __init__(
        self,
        source: ImageSource,
        destination: ImageDestination,
        candidates: t.Sequence[str],
        check_mode: bool,
        retries: int,
    ):
        self.source = source
        self.destination = destination
        self.candidates = candidates
        self.check_mode = check_mode
        self.retries = retries
        self.counter = ByteCounter()

    def transfer(self, item: tuple[str, int]) -> str:
        """One blob: 'skipped', 'mounted' or 'copied' (in check mode: what would happen)."""
        digest, size = item
        if self.destination.has_blob(digest, size):
            return "skipped"
        for repository in self.candidates:
            if not self.destination.can_mount(digest, size, repository):
                continue
            if self.check_mode or self.destination.mount_blob(digest, repository):
                return "mounted"
            # Refused: upload instead (into the session the refusal may have opened).
            break
        if not self.check_mode:
            self.destination.put_blob(self.source, digest, size, self.counter, self.retries)
        return "copied"

    def run(self, blobs: t.Mapping[str, int], concurrency: int) -> BlobCounts:
        items = blob_order(blobs)
        outcomes = parallel(concurrency, self.transfer, items)
        counts = BlobCounts()
        for (_digest, size), outcome in zip(items, outcomes):
            setattr(counts, outcome, getattr(counts, outcome) + 1)
            if outcome == "copied" and self.check_mode:
                counts.bytes += size
        if not self.check_mode:
            counts.bytes = self.counter.value
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
) -> CopyResult:
    """Copy what `plan` names from `source` to `destination`; see the module docstring for the order."""
    started = time.monotonic()
    names = [root.name for root in plan.roots]

    def current(name: str) -> str | None:
        found = destination.current_name(name)
        return str(found["digest"]) if found else None

    before = dict(zip(names, parallel(concurrency, current, names)))
    if not overwrite:
        refuse_moves(plan, before, destination.describe())
    moved = moved_names(plan, before)
    counts = BlobCounts(skipped=len(plan.graph.blobs))
    documents = 0
    if moved:
        if not check_mode:
            destination.prepare()
        candidates = mount_candidates(source, destination, mount_from)
        counts = _BlobCopier(source, destination, candidates, check_mode, retries).run(plan.graph.blobs, concurrency)
        if not check_mode:
            for document in documents_to_put(plan):
                destination.put_document(document)
                documents += 1
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
    )
