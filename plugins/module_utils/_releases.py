# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The releases of a registry repository: every tag, grouped into the images they point into.

A release is the graph one tag's document reaches that no other tag's graph
contains: its tags are every name that points anywhere into that graph (the
combined name, platform tags, aliases), and its attachments are the `.sig`
and referrers-tag-schema (`sha256-<hex>`) tags of the digests it holds, and
their referrers. The tags come from the paginated `/v2/<name>/tags/list`
(`n` and `Link`), the documents through `_walk.walk`, signatures and
referrers through the listing functions fetch and info use.
"""

from __future__ import annotations

import fnmatch
import re
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError, load_json
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._identity import SignedIdentity
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    ARCHITECTURES,
    MAX_DOCUMENT_SIZE,
    PLATFORMS,
    ImageReference,
    InvalidReference,
    platform_refs,
)
from ansible_collections.ironcore.image.plugins.module_utils._referrers import list_referrers
from ansible_collections.ironcore.image.plugins.module_utils._select import decide_platform, platform_of
from ansible_collections.ironcore.image.plugins.module_utils._signatures import (
    Store,
    _describe_digest,
    _read_small_blob,
    open_registry_store,
)
from ansible_collections.ironcore.image.plugins.module_utils._store import RegistryStore
from ansible_collections.ironcore.image.plugins.module_utils._walk import Graph, walk

# A signature (`.sig`), or a referrers-tag-schema index (bare), of the subject sha256:<hex>.
ATTACHMENT_TAG_RE = re.compile(r"sha256-(?P<hex>[0-9a-f]{64})(?P<suffix>\.sig|\.att|\.sbom)?")
# `<url>; rel="next"` in a Link header (distribution, Harbor, zot answer with it while more tags follow).
_NEXT_LINK_RE = re.compile(r'<(?P<url>[^>]+)>\s*;\s*rel="?next"?')
TAGS_PER_PAGE = 100
# A registry whose Link never ends would keep a listing going forever.
MAX_TAG_PAGES = 10000
CREATED_ANNOTATION = "org.opencontainers.image.created"
ORDERS = ("semver", "created", "tag")


class ReleasesError(ImageError):
    """The releases of a repository cannot be listed or changed; one line."""


@dataclass
class Release:
    """One image of a repository: its root, every tag into it, the digests it and its attachments hold."""

    digest: str
    descriptor: dict[str, t.Any]
    graph: Graph
    tags: list[str] = field(default_factory=list)
    # `.sig` and `sha256-<hex>` tags of digests this release holds, with their digests.
    attachment_tags: dict[str, str] = field(default_factory=dict)
    # Referrer manifests (by the API or the tag schema) of the digests it holds.
    referrers: list[str] = field(default_factory=list)

    # Other tagged roots inside this release (platform indexes): digest -> their graph.
    members: dict[str, Graph] = field(default_factory=dict)

    @property
    def documents(self) -> set[str]:
        """Every document the release's tags reach."""
        held = set(self.graph.by_digest)
        for graph in self.members.values():
            held |= set(graph.by_digest)
        return held


@dataclass
class Listing:
    """A repository as read at one moment: tag -> digest, and the releases they form."""

    tags: dict[str, str]
    releases: list[Release]


# ---- tags ---------------------------------------------------------------------------


def list_all_tags(store: RegistryStore) -> list[str]:
    """Every tag of the repository, page after page; [] when the registry does not know it."""
    client, repository = store.client, str(store.repository)
    what = "listing tags of %s" % store.describe()
    url: str | None = client.url(repository, "tags", "list")
    params: dict[str, str] | None = {"n": str(TAGS_PER_PAGE)}
    tags: list[str] = []
    seen: set[str] = set()
    for _page in range(MAX_TAG_PAGES):
        if url is None:
            return tags
        if url in seen:
            raise ReleasesError("%s failed: the registry's Link header leads back to %s" % (what, url))
        seen.add(url)
        response = client.request(
            "GET", url, what=what, repository=repository, params=params, ok=(200, 404), stream=True
        )
        try:
            if response.status_code == 404:
                return tags
            body = _read_capped(response, what)
            link = response.headers.get("Link") or ""
        finally:
            response.close()
        tags.extend(_page_tags(body, what))
        match = _NEXT_LINK_RE.search(link)
        url, params = (client.absolute(match.group("url")) if match else None), None
    raise ReleasesError("%s failed: more than %d pages of tags" % (what, MAX_TAG_PAGES))


def _read_capped(response: t.Any, what: str) -> bytes:
    data = bytearray()
    for chunk in response.iter_content(65536):
        data += chunk
        if len(data) > MAX_DOCUMENT_SIZE:
            raise ReleasesError("%s failed: a page of tags is more than 4 MiB; refusing it" % what)
    return bytes(data)


def _page_tags(body: bytes, what: str) -> list[str]:
    try:
        tags = load_json(body, "the answer to " + what).get("tags")
    except DocumentError as exc:
        raise ReleasesError("%s failed: %s" % (what, exc)) from exc
    return [tag for tag in tags or [] if isinstance(tag, str)]


def subject_of(tag: str) -> str | None:
    """sha256:<hex> for a `.sig` or referrers-tag-schema tag, None for any other tag."""
    match = ATTACHMENT_TAG_RE.fullmatch(tag)
    return "sha256:" + match.group("hex") if match else None


# ---- grouping -----------------------------------------------------------------------


def read_listing(store: RegistryStore, with_referrers: bool = True) -> Listing:
    """Every tag with its digest now, and the releases they form (attachments grouped in)."""
    descriptors: dict[str, dict[str, t.Any]] = {}
    for tag in list_all_tags(store):
        found = store.current_name(tag)
        # A tag listed and then deleted before its HEAD is no longer there: nothing to group.
        if found is not None:
            descriptors[tag] = found
    tags = {tag: str(descriptor["digest"]) for tag, descriptor in descriptors.items()}
    releases = group_releases(store, descriptors)
    for release in releases:
        _attach(store, release, tags, with_referrers)
    return Listing(tags=tags, releases=releases)


def walk_cached(store: Store, cache: dict[str, bytes]) -> t.Callable[[t.Sequence[t.Mapping[str, t.Any]]], Graph]:
    """walk() over the store, each document read once however many roots reach it."""

    def read(digest: str, size: int) -> bytes:
        if digest not in cache:
            cache[digest] = store.read_document(digest, size)
        return cache[digest]

    return lambda roots: walk(read, roots, store.describe())


def group_releases(store: Store, descriptors: t.Mapping[str, t.Mapping[str, t.Any]]) -> list[Release]:
    """The releases the non-attachment tags form.

    A root (a tagged document) whose manifests all lie in a larger root's belongs
    to that release: the platform indexes of a build list the manifests its
    combined index lists. Tags are grouped by the digest they point at, never by
    their spelling. The store is a registry repository, or a layout whose names
    of one repository are given by their tags.
    """
    walker = walk_cached(store, {})
    graphs: dict[str, Graph] = {}
    roots: dict[str, dict[str, t.Any]] = {}
    for tag, descriptor in descriptors.items():
        digest = str(descriptor["digest"])
        if subject_of(tag) is None and digest not in graphs:
            graphs[digest] = walker([descriptor])
            roots[digest] = dict(descriptor)
    releases: list[Release] = []
    # The largest graphs first, so that each smaller root finds the release that holds it.
    for digest in sorted(graphs, key=lambda d: (-len(graphs[d].by_digest), d)):
        held = leaves(graphs[digest])
        holder = next((r for r in releases if held <= leaves(r.graph)), None)
        if holder is None:
            releases.append(Release(digest=digest, descriptor=roots[digest], graph=graphs[digest]))
        else:
            holder.members[digest] = graphs[digest]
    for tag in sorted(descriptors):
        digest = str(descriptors[tag]["digest"])
        if subject_of(tag) is None:
            for release in releases:
                if digest in release.documents:
                    release.tags.append(tag)
    return _merge_pending(releases)


# `baremetal`, `baremetal-amd64`, `metal-arm64`, ...: the suffixes push gives platform tags, longest first.
PLATFORM_SUFFIXES = sorted(
    {
        key.replace("/", "-")
        for key in platform_refs(ImageReference("", "r", "t", None), PLATFORMS, ARCHITECTURES, True)
    },
    key=lambda suffix: (-len(suffix), suffix),
)


def pending_base(tags: t.Iterable[str]) -> str | None:
    """`1.2` when every tag is a platform tag of `1.2` (`1.2-baremetal`, `1.2-kvm-arm64`, ...), else None."""
    bases: set[str] = set()
    for tag in tags:
        suffix = next((s for s in PLATFORM_SUFFIXES if tag.endswith("-" + s) and len(tag) > len(s) + 1), None)
        if suffix is None:
            return None
        bases.add(tag[: -len(suffix) - 1])
    return next(iter(bases)) if len(bases) == 1 else None


def _merge_pending(releases: list[Release]) -> list[Release]:
    """Platform tags whose combined tag is not there are one release under that name.

    A push writes the per-architecture tags, then the platform indexes, then the
    combined name: a listing taken meanwhile sees parts that share no manifest.
    Counted apart, a prune would take most of the newest release for old ones.
    """
    tags = {tag for release in releases for tag in release.tags}
    holders: dict[str, Release] = {}
    merged: list[Release] = []
    for release in releases:
        base = pending_base(release.tags)
        holder = holders.get(base) if base is not None else None
        if base is None or base in tags:
            merged.append(release)
        elif holder is None:
            holders[base] = release
            merged.append(release)
        else:
            holder.members[release.digest] = release.graph
            holder.members.update(release.members)
            holder.tags = sorted(holder.tags + release.tags)
    return merged


def leaves(graph: Graph) -> set[str]:
    """The manifests (documents that are no index) a graph holds; its root when it holds none."""
    manifests = {document.digest for document in graph.documents if not document.is_index}
    return manifests or set(graph.by_digest)


def _attach(store: RegistryStore, release: Release, tags: t.Mapping[str, str], with_referrers: bool) -> None:
    """The `.sig`/`sha256-<hex>` tags and referrers of every digest the release holds, and theirs in turn."""
    subjects = sorted(release.documents)
    done: set[str] = set()
    while subjects:
        subject = subjects.pop()
        if subject in done:
            continue
        done.add(subject)
        for tag, digest in tags.items():
            if subject_of(tag) == subject:
                release.attachment_tags[tag] = digest
                # A signature manifest may itself be signed or referred to.
                subjects.append(digest)
        if with_referrers:
            for referrer in list_referrers(store, subject):
                if referrer.digest not in release.referrers:
                    release.referrers.append(referrer.digest)
                    subjects.append(referrer.digest)


# ---- describing ---------------------------------------------------------------------


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB': binary units, one decimal."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return ("%d %s" % (size, unit)) if unit == "B" else ("%.1f %s" % (value, unit))
        value /= 1024
    return "%d B" % size


def _platforms(release: Release) -> tuple[list[str], list[str]]:
    platforms: list[str] = []
    architectures: list[str] = []
    for document in release.graph.documents:
        if not document.is_index:
            continue
        for entry in document.body.get("manifests") or []:
            child = release.graph.by_digest.get(str(entry.get("digest"))) if isinstance(entry, dict) else None
            if child is None or child.is_index:
                continue
            architecture = platform_of(entry).get("architecture")
            if isinstance(architecture, str) and architecture not in architectures:
                architectures.append(architecture)
            for name in decide_platform(entry, child.body).platforms:
                if name not in platforms:
                    platforms.append(name)
    return sorted(platforms), sorted(architectures)


def created_of(store: Store, release: Release) -> str | None:
    """The creation time the image records: an annotation, else a config's `created`."""
    for document in reversed(release.graph.documents):
        value = (document.body.get("annotations") or {}).get(CREATED_ANNOTATION)
        if isinstance(value, str) and value:
            return value
    for document in release.graph.documents:
        config = document.body.get("config")
        if document.is_index or not isinstance(config, dict):
            continue
        size = config.get("size")
        if not isinstance(size, int) or size > MAX_DOCUMENT_SIZE:
            continue
        data = _read_small_blob(store, str(config.get("digest")), size)
        try:
            value = load_json(data, "config").get("created") if data else None
        except DocumentError:
            value = None
        if isinstance(value, str) and value:
            return value
    return None


def version_key(tag: str) -> tuple[t.Any, ...]:
    """Semantic-version order of a tag: numbers compare as numbers, `v` prefixes ignored, pre-releases first."""
    core, _dash, pre = tag.lstrip("vV").partition("-")
    numbers = [int(part) if part.isdigit() else -1 for part in re.split(r"[.+]", core)]
    return (numbers, 0 if pre else 1, pre)


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


def choose_releases(
    store: Store, releases: t.Sequence[Release], params: t.Mapping[str, t.Any]
) -> tuple[list[Release], list[Release]]:
    """(kept, going) by prune's `keep`, `keep_tags` and `order`: the one selection of a registry and a layout."""
    order = params.get("order") or "semver"
    keep = params.get("keep")
    if keep is None or keep < 0:
        raise ReleasesError("keep: give the number of newest releases to keep (0 or more)")
    if order not in ORDERS:
        raise ReleasesError("order: %s is none of %s" % (order, ", ".join(ORDERS)))
    dated = [(release, created_of(store, release) if order == "created" else None) for release in releases]
    return split_releases(dated, keep, params.get("keep_tags") or [], order)


def describe_release(
    store: RegistryStore, release: Release, keys: t.Sequence[t.Any], identity: SignedIdentity | None = None
) -> dict[str, t.Any]:
    platforms, architectures = _platforms(release)
    size = sum(release.graph.blobs.values()) + sum(len(document.data) for document in release.graph.documents)
    ref = ImageReference(str(store.registry), str(store.repository), None, None)
    signature = _describe_digest(store, ref, release.digest, keys, identity or SignedIdentity())
    signers = ([signature["verified_by"]] if signature["verified_by"] else []) if keys else signature["signers"]
    return {
        "tags": release.tags,
        "digest": release.digest,
        "platforms": platforms,
        "architectures": architectures,
        "size": size,
        "size_human": human_size(size),
        "created": created_of(store, release),
        "signed": bool(signature["signed"]),
        "signers": signers,
        "referrers": list_referrers_digests(store, release.digest),
    }


def list_referrers_digests(store: RegistryStore, digest: str) -> list[str]:
    return [referrer.digest for referrer in list_referrers(store, digest)]


def newest_first(described: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    """By creation time, then by the highest version among the tags, newest first."""
    return sorted(
        described,
        key=lambda item: (item["created"] or "", max((version_key(tag) for tag in item["tags"]), default=())),
        reverse=True,
    )


def wants_releases(params: t.Mapping[str, t.Any]) -> bool:
    """A registry name without tag or digest: list its releases."""
    if params.get("layout") or not params.get("name"):
        return False
    try:
        ref = ImageReference.parse(params["name"], default_tag=None)
    except InvalidReference:
        return False
    return ref.tag is None and ref.digest is None


def repository_store(params: t.Mapping[str, t.Any]) -> RegistryStore:
    return open_registry_store(params)


def registry_releases(params: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Info with `name` a repository: its releases, newest first."""
    keys: list[t.Any] = []
    if params.get("signature_keys"):
        from ansible_collections.ironcore.image.plugins.module_utils._sign import load_public_key

        keys = [load_public_key(text) for text in params["signature_keys"]]
    identity = SignedIdentity.from_params(params.get("signature_identity"))
    store = repository_store(params)
    try:
        listing = read_listing(store, with_referrers=False)
        described = [describe_release(store, release, keys, identity) for release in listing.releases]
    except DocumentError as exc:
        raise ReleasesError("listing the releases of %s failed: %s" % (store.describe(), exc)) from exc
    return {"changed": False, "name": store.describe(), "releases": newest_first(described)}
