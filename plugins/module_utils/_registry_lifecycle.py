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

import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError, RegistryError
from ansible_collections.ironcore.image.plugins.module_utils._model import TAG_RE, ImageReference, InvalidReference
from ansible_collections.ironcore.image.plugins.module_utils._releases import (
    Listing,
    Release,
    choose_releases,
    leaves,
    list_all_tags,
    read_listing,
    repository_store,
    subject_of,
    walk_cached,
)
from ansible_collections.ironcore.image.plugins.module_utils._store import RegistryStore
from ansible_collections.ironcore.image.plugins.module_utils._walk import Document, Graph

DELETION_DISABLED = "deletion is disabled on this registry: set REGISTRY_STORAGE_DELETE_ENABLED=true"


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


def _tag_of(name: str, option: str = "names") -> tuple[str, str]:
    try:
        ref = ImageReference.parse(name)
    except InvalidReference as exc:
        raise RegistryLifecycleError("%s: %s" % (option, exc)) from exc
    if not ref.registry:
        raise RegistryLifecycleError(
            "%s: %s names no registry host; write it as host[:port]/repository:tag (or give layout)" % (option, name)
        )
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


def prune_registry(params: t.Mapping[str, t.Any], check_mode: bool) -> dict[str, t.Any]:
    """ironcore_image_prune with `name` a repository: keep the newest `keep` releases and `keep_tags`."""
    store = repository_store(params)
    listing = _listing(store)
    kept, going = choose_releases(store, listing.releases, params)
    done = remove_releases(store, listing, going, check_mode)
    return dict(
        done,
        releases_removed=[{"tags": r.tags, "digest": r.digest} for r in going],
        releases_kept=[{"tags": r.tags, "digest": r.digest} for r in kept],
    )


# ---- tag ----------------------------------------------------------------------------


def _new_tag(text: t.Any, repository: str, where: str) -> str:
    """A new tag in `repository`: a bare tag, or a reference into the same repository (no blob moves)."""
    if not isinstance(text, str) or not text:
        raise RegistryLifecycleError("%s must be a tag or an image reference, got %r" % (where, text))
    if TAG_RE.match(text):
        return text
    try:
        ref = ImageReference.parse(text)
    except InvalidReference as exc:
        raise RegistryLifecycleError("%s: neither a tag nor a valid reference: %s" % (where, exc)) from exc
    if ref.digest:
        raise RegistryLifecycleError("%s: %s names a digest; a name needs a tag" % (where, text))
    if ref.name != repository:
        raise RegistryLifecycleError(
            "%s: %s is not in %s; a tag on a registry stays in the repository of name "
            "(use ironcore_image_copy to put the image into another one)" % (where, text, repository)
        )
    return str(ref.tag)


def _platform_tags(store: RegistryStore, tag: str, digest: str, graph: Graph) -> dict[str, Document]:
    """suffix -> document of every `<tag>-<suffix>` tag that holds a part of the image `tag` holds.

    The registry's grouping rule (`_releases.group_releases`): a tag belongs to the image when
    every manifest it reaches is one of the image's, so aliases follow and `1.0-rc1` never does.
    """
    found: dict[str, Document] = {}
    image = leaves(graph)
    walker = walk_cached(store, {})
    for other in list_all_tags(store):
        if not other.startswith(tag + "-") or other == tag + "-" or subject_of(other) is not None:
            continue
        descriptor = store.current_name(other)
        if descriptor is None:
            continue
        other_digest = str(descriptor["digest"])
        part = graph.by_digest.get(other_digest)
        if part is None:
            candidate = walker([descriptor])
            part = candidate.by_digest[other_digest] if leaves(candidate) <= image else None
        if part is not None and other_digest != digest:
            found[other[len(tag) + 1 :]] = part
    return found


def _source_image(store: RegistryStore, reference: str, name: str) -> tuple[dict[str, t.Any], Graph]:
    descriptor = store.current_name(reference)
    if descriptor is None:
        raise RegistryLifecycleError("name: %s is not in the registry; push it first" % name)
    try:
        return descriptor, walk_cached(store, {})([descriptor])
    except DocumentError as exc:
        raise RegistryLifecycleError("reading %s failed: %s" % (name, exc)) from exc


def plan_registry_tag(store: RegistryStore, params: t.Mapping[str, t.Any]) -> tuple[str, dict[str, Document]]:
    """(digest of name, new tag -> the document it gets), every refusal before anything is written."""
    repository, reference = _tag_of(params["name"], "name")
    descriptor, graph = _source_image(store, reference, params["name"])
    digest = str(descriptor["digest"])
    platforms: dict[str, Document] = {}
    if params["platform_tags"] and not reference.startswith("sha256:"):
        try:
            platforms = _platform_tags(store, reference, digest, graph)
        except DocumentError as exc:
            raise RegistryLifecycleError("reading the platform tags of %s failed: %s" % (params["name"], exc)) from exc
    wanted: dict[str, Document] = {}
    for position, text in enumerate(params["tags"] or []):
        where = "tags[%d]" % position
        tag = _new_tag(text, repository, where)
        for new, document in [(tag, graph.by_digest[digest])] + [
            ("%s-%s" % (tag, suffix), part) for suffix, part in sorted(platforms.items())
        ]:
            if not TAG_RE.match(new):
                raise RegistryLifecycleError("%s: the platform tag %s would be no valid tag (too long?)" % (where, new))
            earlier = wanted.get(new)
            if earlier is not None and earlier.digest != document.digest:
                raise RegistryLifecycleError(
                    "%s: %s would point at both %s and %s; drop one of the tags"
                    % (where, new, earlier.digest, document.digest)
                )
            wanted[new] = document
    return digest, wanted


def tag_registry(params: t.Mapping[str, t.Any], check_mode: bool) -> dict[str, t.Any]:
    """ironcore_image_tag without a layout: the manifests of name put under new tags of its repository."""
    if not params["tags"]:
        raise RegistryLifecycleError("tags must list at least one new name")
    repository, reference = _tag_of(params["name"], "name")
    store = repository_store(dict(params, name=repository))
    digest, wanted = plan_registry_tag(store, params)
    before: dict[str, str | None] = {}
    for tag, document in list(wanted.items()):
        current = store.current_name(tag)
        if current is None:
            before[tag] = None
        elif current["digest"] == document.digest:
            del wanted[tag]
        elif not params["force"]:
            raise RegistryLifecycleError(
                "tags: %s:%s already points at %s, not at %s; set force=true (or overwrite=true) to move it"
                % (repository, tag, current["digest"], document.digest)
            )
        else:
            before[tag] = str(current["digest"])
    if not check_mode:
        # Manifests before the indexes that list them, the name itself last: a reader never meets a tag
        # whose children are missing (the documents exist already; this keeps the order push uses).
        for tag in sorted(wanted, key=lambda tag: (wanted[tag].is_index, wanted[tag].digest == digest, tag)):
            store.set_name(tag, wanted[tag].descriptor, wanted[tag])
    names = sorted("%s:%s" % (repository, tag) for tag in wanted)
    return {
        "changed": bool(wanted),
        "name": "%s%s%s" % (repository, "@" if reference.startswith("sha256:") else ":", reference),
        "digest": digest,
        "names": names,
        "diff": {
            "before": {"%s:%s" % (repository, tag): before[tag] for tag in sorted(wanted)},
            "after": {"%s:%s" % (repository, tag): wanted[tag].digest for tag in sorted(wanted)},
        },
    }
