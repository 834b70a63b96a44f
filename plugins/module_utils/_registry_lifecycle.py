# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Remove releases from a registry repository, and keep the newest N: remove and prune on registries.

A release goes as a whole (its name, platform tags and aliases, see
`_releases`): its manifests that no remaining tag reaches are deleted by
digest (distribution deletes manifests by digest only, and a manifest's
tags with it), roots first so that no tag is left pointing at a missing
child, then its `.sig` manifests, its referrers-tag-schema indexes and its
referrers. A manifest a kept tag reaches is never deleted. Before each
deletion the tags are listed again: a tag that appeared since the listing
(a push during a prune) protects everything it reaches.
"""

from __future__ import annotations

import fnmatch
import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError, RegistryError
from ansible_collections.ironcore.image.plugins.module_utils._model import ImageReference, InvalidReference
from ansible_collections.ironcore.image.plugins.module_utils._releases import (
    Listing,
    Release,
    created_of,
    list_all_tags,
    read_listing,
    repository_store,
    subject_of,
    version_key,
    walk_cached,
)
from ansible_collections.ironcore.image.plugins.module_utils._store import RegistryStore

DELETION_DISABLED = "deletion is disabled on this registry: set REGISTRY_STORAGE_DELETE_ENABLED=true"
ORDERS = ("semver", "created", "tag")


class RegistryLifecycleError(ImageError):
    """A release cannot be removed from a registry; one line."""


# ---- what goes ----------------------------------------------------------------------


def _protected(store: RegistryStore, listing: Listing, going: t.Sequence[Release]) -> set[str]:
    """Every digest a tag that stays reaches: kept releases, their attachments, and any other tag."""
    going_tags = {tag for release in going for tag in (*release.tags, *release.attachment_tags)}
    protected: set[str] = set()
    for release in listing.releases:
        if all(release is not other for other in going):
            protected |= release.documents | set(release.attachment_tags.values()) | set(release.referrers)
    for tag, digest in listing.tags.items():
        if tag not in going_tags:
            protected.add(digest)
    return protected


def deletion_order(going: t.Sequence[Release], protected: set[str]) -> list[str]:
    """The digests to delete: roots before their children, attachments after what they are attached to."""
    order: list[str] = []
    for release in going:
        order.append(release.digest)
        order.extend(release.members)
        for graph in (release.graph, *release.members.values()):
            # Post-order reversed: each index before the documents it lists.
            order.extend(document.digest for document in reversed(graph.documents))
    for release in going:
        order.extend(release.attachment_tags.values())
        order.extend(release.referrers)
    return [digest for digest in dict.fromkeys(order) if digest not in protected]


# ---- deleting -----------------------------------------------------------------------


def delete_manifest(store: RegistryStore, digest: str) -> bool:
    """DELETE a manifest by digest; False when it was already gone. Disabled deletion fails in one line."""
    client, repository = store.client, str(store.repository)
    what = "deleting manifest %s from %s" % (digest, store.describe())
    try:
        response = client.request(
            "DELETE",
            client.url(repository, "manifests", digest),
            what=what,
            repository=repository,
            actions=("pull", "push", "delete"),
            ok=(200, 202, 404),
        )
    except RegistryError as exc:
        if exc.status == 405 or exc.code == "UNSUPPORTED":
            raise RegistryLifecycleError("%s failed: %s" % (what, DELETION_DISABLED)) from exc
        raise
    return response.status_code != 404


class _Guard:
    """Re-reads the tags before each deletion: a tag that is new since the listing protects what it reaches."""

    def __init__(self, store: RegistryStore, listing: Listing, protected: set[str]):
        self.store = store
        self.known = dict(listing.tags)
        self.protected = protected
        self.walk = walk_cached(store, {})

    def allows(self, digest: str) -> bool:
        for tag in list_all_tags(self.store):
            if tag in self.known:
                continue
            found = self.store.current_name(tag)
            if found is None:
                continue
            self.known[tag] = str(found["digest"])
            self.protected.add(str(found["digest"]))
            if subject_of(tag) is None:
                self.protected |= set(self.walk([found]).by_digest)
            else:
                # A new signature or referrers index of a digest keeps that digest too.
                self.protected.add(str(subject_of(tag)))
        return digest not in self.protected


def remove_releases(
    store: RegistryStore, listing: Listing, going: t.Sequence[Release], check_mode: bool
) -> dict[str, t.Any]:
    """Delete the releases `going` from the listing's repository; what went, or would go in check mode."""
    protected = _protected(store, listing, going)
    planned = deletion_order(going, protected)
    deleted: list[str] = []
    if not check_mode:
        guard = _Guard(store, listing, protected)
        for digest in planned:
            if guard.allows(digest) and delete_manifest(store, digest):
                deleted.append(digest)
    gone = planned if check_mode else deleted
    tags = sorted(tag for tag, digest in listing.tags.items() if digest in gone)
    return {
        "changed": bool(gone),
        "removed": tags,
        "manifests_deleted": gone,
        "diff": {"before": {tag: listing.tags[tag] for tag in tags}, "after": {}},
    }


# ---- the modules' calls ---------------------------------------------------------------


def _tag_of(name: str) -> tuple[str, str]:
    try:
        ref = ImageReference.parse(name)
    except InvalidReference as exc:
        raise RegistryLifecycleError("names: %s" % exc) from exc
    if not ref.registry:
        raise RegistryLifecycleError("names: %s names no registry host; write it as host[:port]/repository:tag" % name)
    return ref.name, ref.digest or str(ref.tag)


def remove_registry_names(params: t.Mapping[str, t.Any], check_mode: bool) -> dict[str, t.Any]:
    """ironcore_image_remove without a layout: each name's whole release goes from its repository."""
    by_repository: dict[str, list[str]] = {}
    for name in params["names"] or []:
        repository, reference = _tag_of(name)
        by_repository.setdefault(repository, []).append(reference)
    result: dict[str, t.Any] = {"changed": False, "removed": [], "manifests_deleted": [], "diff": {}}
    before: dict[str, str] = {}
    for repository, references in by_repository.items():
        store = repository_store(dict(params, name=repository))
        listing = _listing(store)
        going = [r for r in listing.releases if any(ref in r.tags or ref == r.digest for ref in references)]
        done = remove_releases(store, listing, going, check_mode)
        result["changed"] = result["changed"] or done["changed"]
        result["removed"] += ["%s:%s" % (repository, tag) for tag in done["removed"]]
        result["manifests_deleted"] += done["manifests_deleted"]
        before.update({"%s:%s" % (repository, tag): d for tag, d in done["diff"]["before"].items()})
    result["diff"] = {"before": before, "after": {}}
    return result


def _listing(store: RegistryStore) -> Listing:
    try:
        return read_listing(store)
    except DocumentError as exc:
        raise RegistryLifecycleError("listing the releases of %s failed: %s" % (store.describe(), exc)) from exc


def _newest_key(order: str) -> t.Callable[[tuple[Release, str | None]], t.Any]:
    def key(item: tuple[Release, str | None]) -> t.Any:
        release, created = item
        if order == "created":
            return (created or "", max((version_key(tag) for tag in release.tags), default=()))
        if order == "tag":
            return max(release.tags, default="")
        return max((version_key(tag) for tag in release.tags), default=())

    return key


def split_releases(
    releases: t.Sequence[tuple[Release, str | None]], keep: int, keep_tags: t.Sequence[str], order: str
) -> tuple[list[Release], list[Release]]:
    """(kept, going): releases with a tag matching keep_tags, and the `keep` newest of the others by `order`."""
    pinned = [r for r, _c in releases if any(fnmatch.fnmatchcase(tag, p) for tag in r.tags for p in keep_tags)]
    rest = sorted((item for item in releases if all(item[0] is not p for p in pinned)), key=_newest_key(order))
    rest.reverse()
    kept = pinned + [release for release, _c in rest[:keep]]
    going = [release for release, _c in rest[keep:]]
    return kept, going


def prune_registry(params: t.Mapping[str, t.Any], check_mode: bool) -> dict[str, t.Any]:
    """ironcore_image_prune with `name` a repository: keep the newest `keep` releases and `keep_tags`."""
    order = params.get("order") or "semver"
    keep = params.get("keep")
    if keep is None or keep < 0:
        raise RegistryLifecycleError("keep: give the number of newest releases to keep (0 or more)")
    store = repository_store(params)
    listing = _listing(store)
    dated = [(release, created_of(store, release) if order == "created" else None) for release in listing.releases]
    kept, going = split_releases(dated, keep, params.get("keep_tags") or [], order)
    done = remove_releases(store, listing, going, check_mode)
    return dict(
        done,
        releases_removed=[{"tags": r.tags, "digest": r.digest} for r in going],
        releases_kept=[{"tags": r.tags, "digest": r.digest} for r in kept],
    )
