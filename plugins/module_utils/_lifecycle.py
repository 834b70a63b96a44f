# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""An image's life in a layout after the build: more names, fewer names, and freeing blobs.

Names change only under the layout's index lock, and every decision is
taken under it, so concurrent builds, tags and removes see one order of
events. A prune also takes the blob lock exclusively, which waits for
every build that has stored blobs and not yet named them.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._document import is_index
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._layout import BlobWalk, LayoutError, OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    REF_NAME_ANNOTATION,
    TAG_RE,
    ImageReference,
    InvalidReference,
)
from ansible_collections.ironcore.image.plugins.module_utils._releases import (
    Release,
    choose_releases,
    group_releases,
)
from ansible_collections.ironcore.image.plugins.module_utils._select import decide_without_manifest
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore

# Results stay readable: a prune of thousands of blobs lists the first ones only.
MAX_LISTED_DIGESTS = 100
# Names about another digest rather than images of their own: the referrers tag schema (`sha256-<hex>`)
# and cosign's signatures (`sha256-<hex>.sig`), bare or after a repository.
_ATTACHMENT_TAG_RE = re.compile(r"sha256-([0-9a-f]{64})(?:\.sig)?\Z")


class LifecycleError(ImageError):
    """Bad input or an unusable layout; one line that says what to do."""


def open_layout(path: str, allow_shared: bool = False) -> OciLayout:
    """The layout at path, or a one-line reason why there is none or why it is refused (see allow_shared_dest)."""
    layout = OciLayout(path)
    if not os.path.lexists(layout.path):
        raise LifecycleError("layout: %s does not exist" % layout.path)
    if not os.path.isdir(layout.path):
        raise LifecycleError("layout: %s exists and is not a directory" % layout.path)
    if not layout.exists():
        raise LifecycleError("layout: %s is not an OCI image layout (no oci-layout file)" % layout.path)
    try:
        layout.refuse_shared(allow_shared)
    except LayoutError as exc:
        raise _layout_error(exc) from exc
    return layout


# ---- names -----------------------------------------------------------------


def recorded_name(refs: t.Mapping[str, t.Any], text: str) -> str | None:
    """The name as index.json records it: as given, or in its normalised form (`:latest` added)."""
    if text in refs:
        return text
    try:
        normalised = str(ImageReference.parse(text))
    except InvalidReference:
        return None
    return normalised if normalised in refs else None


def split_name(name: str) -> tuple[str, str] | None:
    """(repository, tag) of a recorded name; repository '' for a bare tag (as `skopeo copy oci:DIR:TAG` writes)."""
    if TAG_RE.match(name):
        return "", name
    try:
        ref = ImageReference.parse(name, default_tag=None)
    except InvalidReference:
        return None
    if ref.digest or not ref.tag:
        return None
    return ref.name, ref.tag


def join_name(repository: str, tag: str) -> str:
    return "%s:%s" % (repository, tag) if repository else tag


def _index_entries(walk: BlobWalk, digest: str) -> list[t.Mapping[str, t.Any]] | None:
    """The entries of the index at digest, or None when it is no readable index."""
    try:
        document = walk.document(digest)
    except LayoutError:
        return None
    entries = document.get("manifests")
    # Index or manifest by the one rule (_document.is_index); a manifest lists no platform parts.
    if not is_index(document) or not isinstance(entries, list):
        return None
    return [entry for entry in entries if isinstance(entry, dict)]


def platform_names(walk: BlobWalk, refs: t.Mapping[str, t.Mapping[str, t.Any]], name: str) -> dict[str, str]:
    """suffix -> recorded name of every `<tag>-<suffix>` name that holds a part of the image `name` holds.

    The suffixes are read off the layout, not from a fixed list: whatever
    platform names (and aliases) the build recorded follow. A name counts only
    by what it points at: one of the image's manifests, or an index without
    platform variants made of the image's manifests alone (a per-platform
    index). So `1.0-rc1`, another image, is never taken for a platform name of `1.0`.
    """
    split = split_name(name)
    if split is None:
        return {}
    repository, tag = split
    target = str(refs[name].get("digest"))
    parts = {str(entry.get("digest")) for entry in _index_entries(walk, target) or []}
    if not parts:
        return {}
    found = {}
    for other, entry in refs.items():
        other_split = split_name(other)
        if other == name or other_split is None or other_split[0] != repository:
            continue
        if not other_split[1].startswith(tag + "-") or other_split[1] == tag + "-":
            continue
        digest = str(entry.get("digest"))
        if digest == target:
            continue
        if digest in parts or _is_part_index(walk, digest, parts):
            found[other_split[1][len(tag) + 1 :]] = other
    return found


def _is_part_index(walk: BlobWalk, digest: str, parts: set[str]) -> bool:
    entries = _index_entries(walk, digest)
    if not entries or any(_by_platform_variant(entry) for entry in entries):
        return False
    return all(str(entry.get("digest")) in parts for entry in entries)


def _by_platform_variant(entry: t.Mapping[str, t.Any]) -> bool:
    """A combined index names each entry's platform in `platform.variant`; a per-platform index does not."""
    decision = decide_without_manifest(entry)
    return decision is not None and decision.rule == "platform_variant"


def _layout_error(exc: LayoutError) -> LifecycleError:
    return LifecycleError(str(exc))


@contextlib.contextmanager
def _names_locked(layout: OciLayout, check_mode: bool) -> t.Iterator[None]:
    """The index lock, except in check mode, where even the lock file must not be created."""
    if check_mode:
        yield
    else:
        with layout.locked():
            yield


# ---- tag -------------------------------------------------------------------


@dataclass
class NamePlan:
    """Names to point at descriptors, and what each pointed at before (None: new)."""

    wanted: dict[str, t.Mapping[str, t.Any]] = field(default_factory=dict)
    before: dict[str, str | None] = field(default_factory=dict)

    def want(self, name: str, target: t.Mapping[str, t.Any], why: str) -> None:
        earlier = self.wanted.get(name)
        if earlier is not None and earlier.get("digest") != target.get("digest"):
            raise LifecycleError(
                "%s: %s would point at both %s and %s; drop one of the tags"
                % (why, name, earlier.get("digest"), target.get("digest"))
            )
        self.wanted[name] = target


def new_name(text: t.Any, repository: str | None, where: str) -> tuple[str, str]:
    """(repository, tag) of a new name: a bare tag stays in `repository`, anything else is a full reference."""
    if not isinstance(text, str) or not text:
        raise LifecycleError("%s must be a tag or an image reference, got %r" % (where, text))
    if TAG_RE.match(text):
        if repository is None:
            raise LifecycleError(
                "%s: %s is a bare tag, but name is no repository:tag to put it beside; give a full reference"
                % (where, text)
            )
        return repository, text
    try:
        ref = ImageReference.parse(text)
    except InvalidReference as exc:
        raise LifecycleError("%s: neither a tag nor a valid reference: %s" % (where, exc)) from exc
    if ref.digest:
        raise LifecycleError("%s: %s names a digest; a name needs a tag" % (where, text))
    return ref.name, str(ref.tag)


def _suffixed(repository: str, tag: str, suffix: str, where: str) -> str:
    full = "%s-%s" % (tag, suffix)
    if not TAG_RE.match(full):
        raise LifecycleError("%s: the platform name %s would be no valid tag (over 128 characters?)" % (where, full))
    return join_name(repository, full)


def plan_tag(layout: OciLayout, params: t.Mapping[str, t.Any]) -> tuple[str, t.Mapping[str, t.Any], NamePlan]:
    """What the tags add, decided from the index as it is now; raises before anything changes."""
    refs = layout.refs()
    source = recorded_name(refs, params["name"])
    if source is None:
        layout.resolve(params["name"])  # raises, naming the names that are there
        raise LifecycleError("name: %s is not recorded in layout %s" % (params["name"], layout.path))
    target = refs[source]
    split = split_name(source)
    walk = BlobWalk(layout)
    platforms = platform_names(walk, refs, source) if params["platform_tags"] else {}
    plan = NamePlan()
    for position, text in enumerate(params["tags"] or []):
        where = "tags[%d]" % position
        repository, tag = new_name(text, split[0] if split else None, where)
        plan.want(join_name(repository, tag), target, where)
        for suffix, existing in sorted(platforms.items()):
            plan.want(_suffixed(repository, tag, suffix, where), refs[existing], where)
    for name, wanted in list(plan.wanted.items()):
        current = refs.get(name)
        if current is None:
            plan.before[name] = None
        elif current.get("digest") == wanted.get("digest"):
            del plan.wanted[name]
        elif not params["force"]:
            raise LifecycleError(
                "tags: %s already points at %s, not at %s; set force=true to move it"
                % (name, current.get("digest"), wanted.get("digest"))
            )
        else:
            plan.before[name] = str(current.get("digest"))
    return source, target, plan


def tag_image(params: t.Mapping[str, t.Any], check_mode: bool) -> dict[str, t.Any]:
    """The tag module's one call."""
    if not params["tags"]:
        raise LifecycleError("tags must list at least one new name")
    layout = open_layout(params["layout"], bool(params.get("allow_shared_dest")))
    try:
        with _names_locked(layout, check_mode):
            source, target, plan = plan_tag(layout, params)
            if plan.wanted and not check_mode:
                layout.set_refs(plan.wanted)
    except LayoutError as exc:
        raise _layout_error(exc) from exc
    except OSError as exc:
        raise LifecycleError("writing %s failed: %s" % (layout.index_path, exc.strerror or exc)) from exc
    names = sorted(plan.wanted)
    return {
        "changed": bool(names),
        "name": source,
        "digest": target.get("digest"),
        "names": names,
        "diff": {
            "before": {name: plan.before[name] for name in names},
            "after": {name: plan.wanted[name].get("digest") for name in names},
        },
    }


# ---- remove ----------------------------------------------------------------


def plan_remove(layout: OciLayout, names: t.Sequence[str], platform_tags: bool) -> dict[str, str]:
    """recorded name -> digest of every name that goes; names not there are skipped.

    The signatures and referrers of what only these names reach go with them.
    """
    refs = layout.refs()
    walk = BlobWalk(layout)
    going: dict[str, str] = {}
    for text in names:
        name = recorded_name(refs, text) if isinstance(text, str) else None
        if name is None:
            continue
        going[name] = str(refs[name].get("digest"))
        if platform_tags:
            for other in platform_names(walk, refs, name).values():
                going[other] = str(refs[other].get("digest"))
    if going:
        for name in _orphaned_by(layout, set(going)):
            going[name] = str(refs[name].get("digest"))
    return going


def _orphaned_by(layout: OciLayout, going: set[str]) -> list[str]:
    """The attachment names whose subject nothing reaches once `going` is gone, but something reached before."""
    try:
        _reached, orphaned_before = reachable(layout)
        _reached, orphaned_after = reachable(layout, ignore=going)
    except LifecycleError:
        # A layout with a broken name: leave the attachments to prune, which says what is broken.
        return []
    return sorted(set(orphaned_after) - set(orphaned_before) - going)


def remove_names(
    params: t.Mapping[str, t.Any], check_mode: bool, warn: t.Callable[[str], None] = lambda message: None
) -> dict[str, t.Any]:
    """The remove module's one call; `warn` hears of each name the layout does not record."""
    layout = open_layout(params["layout"], bool(params.get("allow_shared_dest")))
    names = params["names"] or []
    try:
        with _names_locked(layout, check_mode):
            refs = layout.refs()
            # Not an error (the run after a removal finds nothing to remove), but not silent either: a typo
            # would otherwise look like a name that is already gone.
            absent = [text for text in names if not isinstance(text, str) or recorded_name(refs, text) is None]
            going = plan_remove(layout, names, params["platform_tags"])
            if going and not check_mode:
                layout.drop_refs(going)
    except LayoutError as exc:
        raise _layout_error(exc) from exc
    except OSError as exc:
        raise LifecycleError("writing %s failed: %s" % (layout.index_path, exc.strerror or exc)) from exc
    for text in absent:
        warn("names: %s is not in the layout %s; nothing removed for it" % (text, layout.path))
    removed = sorted(going)
    return {
        "changed": bool(removed),
        "removed": removed,
        "diff": {"before": {name: going[name] for name in removed}, "after": {}},
    }


# ---- prune -----------------------------------------------------------------


def attachment_subject(name: str) -> str | None:
    """The digest a `sha256-<hex>` (referrers) or `sha256-<hex>.sig` (signatures) name is about, else None."""
    split = split_name(name)
    match = _ATTACHMENT_TAG_RE.match(split[1]) if split else None
    return "sha256:" + match.group(1) if match else None


def reachable(
    layout: OciLayout,
    young: t.Callable[[t.Mapping[str, t.Any]], bool] = lambda entry: False,
    ignore: t.Collection[str] = (),
) -> tuple[set[str], dict[str, str]]:
    """(every blob the names reach, orphaned attachments: name -> the subject nothing reaches).

    Every index.json entry but an attachment is a root (named or not: the OCI roots). An
    attachment is reached while its subject is (or while `young` says it may still be on its way
    to one), and then reaches its own documents and blobs, never its subject: the signatures and
    referrers of an image live as long as the image, and do not keep it alive. `ignore` names
    entries to leave out, as if they were gone.
    """
    walk = BlobWalk(layout)
    reached: set[str] = set()
    attachments: dict[str, tuple[str, t.Mapping[str, t.Any]]] = {}
    for position, entry in enumerate(layout.read_index()["manifests"]):
        if not isinstance(entry, dict):
            continue
        recorded = (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION)
        name = recorded if isinstance(recorded, str) and recorded else None
        if name is not None and name in ignore:
            continue
        subject = attachment_subject(name) if name is not None else None
        if name is not None and subject is not None:
            attachments[name] = (subject, entry)
            continue
        reached.update(_reach(walk, entry, name or ("index.json entry %d" % position), follow_subject=True))
    # Attachments of attachments (the signature of a referrer) are reached in a later round.
    progress = True
    while progress:
        progress = False
        for name, (subject, entry) in list(attachments.items()):
            if subject in reached or young(entry):
                reached.update(_reach(walk, entry, name, follow_subject=False))
                del attachments[name]
                progress = True
    return reached, {name: subject for name, (subject, _entry) in attachments.items()}


def _reach(walk: BlobWalk, entry: t.Mapping[str, t.Any], label: str, follow_subject: bool) -> set[str]:
    try:
        return set(walk.reach(entry, follow_subject=follow_subject))
    except LayoutError as exc:
        raise LifecycleError(
            "%s: %s; nothing was pruned: rebuild the image or remove the name first" % (label, exc)
        ) from exc


def reachable_blobs(layout: OciLayout) -> set[str]:
    """Every blob that an entry of index.json reaches, named or not (the OCI roots), with their attachments."""
    return reachable(layout)[0]


def _written_after(layout: OciLayout, cutoff: float) -> t.Callable[[t.Mapping[str, t.Any]], bool]:
    """Whether an entry's document was written after the cutoff (a copy may be about to name its subject)."""

    def young(entry: t.Mapping[str, t.Any]) -> bool:
        try:
            return os.stat(layout.blob_path(str(entry.get("digest")))).st_mtime > cutoff
        except (LayoutError, OSError):
            return False

    return young


@dataclass
class ReleasePlan:
    """Prune with `keep` on a layout: the releases kept and going, with their recorded names."""

    kept: list[dict[str, t.Any]] = field(default_factory=list)
    going: list[dict[str, t.Any]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    documents: set[str] = field(default_factory=set)


def _repositories(refs: t.Mapping[str, t.Mapping[str, t.Any]], only: str | None) -> dict[str, dict[str, t.Any]]:
    """repository -> tag -> descriptor of every name that is no signature or referrers name."""
    found: dict[str, dict[str, t.Any]] = {}
    for name, entry in refs.items():
        split = split_name(name)
        if split is None or attachment_subject(name) is not None or (only is not None and split[0] != only):
            continue
        found.setdefault(split[0], {})[split[1]] = entry
    return found


def plan_releases(layout: OciLayout, params: t.Mapping[str, t.Any]) -> ReleasePlan:
    """The releases of each repository (of `name` alone when given) the layout names, grouped and chosen
    as on a registry (`_releases.group_releases`, `_releases.choose_releases`)."""
    only = None
    if params.get("name"):
        try:
            only = ImageReference.parse(params["name"], default_tag=None).name
        except InvalidReference as exc:
            raise LifecycleError("name: %s" % exc) from exc
    store = LayoutStore(layout.path)
    plan = ReleasePlan()
    for repository, descriptors in sorted(_repositories(layout.refs(), only).items()):
        try:
            kept, going = choose_releases(store, group_releases(store, descriptors), params)
        except ImageError as exc:
            raise LifecycleError("%s; nothing was pruned" % exc) from exc
        plan.kept += [_release_result(repository, release) for release in kept]
        plan.going += [_release_result(repository, release) for release in going]
        for release in going:
            plan.names.update({join_name(repository, tag): str(descriptors[tag]["digest"]) for tag in release.tags})
            plan.documents |= release.documents
    return plan


def _release_result(repository: str, release: Release) -> dict[str, t.Any]:
    return {"tags": [join_name(repository, tag) for tag in release.tags], "digest": release.digest}


@contextlib.contextmanager
def _prune_locked(layout: OciLayout, check_mode: bool) -> t.Iterator[None]:
    if check_mode:
        yield
    else:
        with layout.pruning():
            yield


def prune_layout(params: t.Mapping[str, t.Any], check_mode: bool, now: float | None = None) -> dict[str, t.Any]:
    """The prune module's one call: delete (or in check mode list) every blob no name reaches."""
    grace = params["grace_period"]
    if grace < 0:
        raise LifecycleError("grace_period must be 0 or more seconds, got %d" % grace)
    allow_shared = bool(params.get("allow_shared_dest"))
    layout = open_layout(params["layout"], allow_shared)
    removed: list[str] = []
    freed = 0
    kept_young = 0
    orphans: dict[str, str] = {}
    releases: ReleasePlan | None = None
    try:
        # Listed and deleted through descriptors of blobs/sha256: never through a link, never outside the layout.
        with _prune_locked(layout, check_mode), layout.blob_directory(allow_shared) as directory:
            # Taken under the lock: the clock that counts is the one when nothing can start naming.
            cutoff = (time.time() if now is None else now) - grace
            # With `keep`, the old releases' names go first (decided under the lock), then the sweep frees them.
            releases = plan_releases(layout, params) if params.get("keep") is not None else None
            going = releases.names if releases is not None else {}
            if going and not check_mode:
                layout.drop_refs(going)
            reached, orphans = reachable(layout, _written_after(layout, cutoff), ignore=going)
            if releases is not None:
                refs = layout.refs()
                releases.documents |= {str(refs[name].get("digest")) for name in orphans if name in refs}
            # Signatures and referrers of what no name reaches go first, then the blobs only they reached.
            if orphans and not check_mode:
                layout.drop_refs(orphans)
            for digest, stat in sorted(layout.stored_blobs(directory)):
                if digest in reached:
                    continue
                # A blob another tool wrote lately may still be on its way to a name. Only the
                # modification time: a writer sets it when it writes the bytes, and it can be set back.
                if stat.st_mtime > cutoff:
                    kept_young += 1
                    continue
                if check_mode or (directory is not None and layout.remove_blob(digest, directory)):
                    removed.append(digest)
                    freed += stat.st_size
    except LayoutError as exc:
        raise _layout_error(exc) from exc
    except OSError as exc:
        raise LifecycleError("pruning layout %s failed: %s" % (layout.path, exc.strerror or exc)) from exc
    listed = removed[:MAX_LISTED_DIGESTS]
    result = {
        "changed": bool(removed or orphans or (releases and releases.names)),
        "blobs_removed": len(removed),
        "names_removed": sorted(orphans),
        "bytes_freed": freed,
        "digests": listed,
        "digests_truncated": len(removed) > len(listed),
        "blobs_kept_young": kept_young,
        "diff": {"before": {"blobs": listed, "names": sorted(orphans)}, "after": {"blobs": [], "names": []}},
    }
    if releases is not None:
        result.update(_release_results(releases, removed, orphans))
    return result


def _release_results(releases: ReleasePlan, removed: t.Sequence[str], orphans: t.Mapping[str, str]) -> dict[str, t.Any]:
    """The results prune gives on a registry, for a layout: releases, names and the documents freed."""
    documents = releases.documents
    names = sorted(releases.names)
    return {
        "releases_removed": releases.going,
        "releases_kept": releases.kept,
        "removed": names,
        "manifests_deleted": [digest for digest in removed if digest in documents],
        "diff": {
            "before": {"blobs": removed[:MAX_LISTED_DIGESTS], "names": sorted([*names, *orphans])},
            "after": {"blobs": [], "names": []},
        },
    }
