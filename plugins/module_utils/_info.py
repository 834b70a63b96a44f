# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Describe an image without writing anything: index, manifests, layers, configs.

For a chosen platform and architecture it also says where each layer blob
can be fetched and with which headers, so an HTTP boot server can stream the
layers straight from the registry.
"""

from __future__ import annotations

import functools
import os
import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._layout import BlobWalk, LayoutError, OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._mirrors import ATTACHMENT_NAME_RE
from ansible_collections.ironcore.image.plugins.module_utils._model import canonical_platform, descriptors
from ansible_collections.ironcore.image.plugins.module_utils._select import (
    Document,
    SelectionError,
    decide_platform,
    index_entries,
    is_index,
    manifest_layers,
    node_architecture,
    platform_of,
    select_layers,
)
from ansible_collections.ironcore.image.plugins.module_utils._source import (
    NamedSource,
    ResolvedImage,
    child_manifest,
    open_source,
    read_config,
    resolve_image,
    select_manifest,
)


class InfoError(ImageError):
    """The image cannot be described; the message says why."""


def _describe_manifest(
    source: NamedSource, digest: str, size: int, document: Document, entry: t.Mapping[str, t.Any] | None
) -> dict[str, t.Any]:
    layers = manifest_layers(document)
    platform = platform_of(entry) if entry else {}
    decision = decide_platform(entry, document, source.ref.tag)
    return {
        "digest": digest,
        "size": size,
        "media_type": document.get("mediaType") or (entry or {}).get("mediaType"),
        "os": platform.get("os"),
        "architecture": platform.get("architecture"),
        # The one platform it serves; null when its layers serve both or none.
        "platform": decision.platforms[0] if len(decision.platforms) == 1 else None,
        "platforms": list(decision.platforms),
        "decided_by": decision.rule,
        "layers": [layer.summary() for layer in layers],
        "config": read_config(source, document),
    }


def _visible_headers(headers: t.Mapping[str, str], include_credentials: bool | None) -> dict[str, t.Any]:
    """Headers to print; the credential only when the caller asked for it.

    A Basic header is the password in base64, so by default it is left out and
    only its scheme is told: results are logged and shown far more often than
    they are used to fetch.
    """
    scheme = None
    shown = {}
    for key, value in headers.items():
        if key.lower() == "authorization":
            scheme = value.split(" ", 1)[0]
            if not include_credentials:
                continue
        shown[key] = value
    return {"headers": shown, "auth_scheme": scheme}


def _selected(
    source: NamedSource, params: t.Mapping[str, t.Any], image: ResolvedImage, documents: t.Mapping[str, Document]
) -> dict[str, t.Any]:
    platform = canonical_platform(params["platform"]) or params["platform"]
    architecture = node_architecture(params["architecture"])
    chosen = select_manifest(source, image, platform, architecture, dict(documents))
    digest = chosen.digest
    layers = select_layers(chosen.document, platform, params.get("layers"))
    described = []
    for layer in layers:
        url, headers = source.store.blob_location(layer.digest)
        described.append(dict(layer.summary(), url=url, **_visible_headers(headers, params.get("include_credentials"))))
    return {
        "platform": platform,
        "architecture": architecture,
        "manifest_digest": digest,
        "decided_by": chosen.decided_by,
        "layers": described,
    }


def _signatures_of(
    source: NamedSource, params: t.Mapping[str, t.Any], image_digest: str, manifest_digests: list[str]
) -> dict[str, t.Any]:
    """Signatures, provenance and SBOM referrers, when asked for (they cost requests per digest)."""
    keys = params.get("signature_keys") or []
    if not keys and not params.get("show_signatures"):
        return {"signatures": None, "unsigned": None, "provenance": None, "sbom": None}
    from ansible_collections.ironcore.image.plugins.module_utils._identity import SignedIdentity
    from ansible_collections.ironcore.image.plugins.module_utils._signatures import describe_signatures

    identity = SignedIdentity.from_params(params.get("signature_identity"))
    return describe_signatures(source.store, source.ref, image_digest, manifest_digests, keys, identity)


def image_info(params: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The module's one call."""
    try:
        source = open_source(params)
        image = resolve_image(source)
        documents: dict[str, Document] = {}
        manifests = []
        if image.index:
            for entry in index_entries(image.document):
                digest = str(entry.get("digest"))
                documents[digest] = child_manifest(source, entry)
                manifests.append(_describe_manifest(source, digest, int(entry["size"]), documents[digest], entry))
        else:
            documents[image.digest] = image.document
            manifests.append(_describe_manifest(source, image.digest, len(image.data), image.document, None))
        described = {
            "changed": False,
            "name": str(source.ref),
            "digest": image.digest,
            "media_type": image.document.get("mediaType") or image.media_type,
            "index": image.document if image.index else None,
            "manifests": manifests,
            "selected": _selected(source, params, image, documents) if params.get("platform") else None,
        }
        described.update(_signatures_of(source, params, image.digest, [str(m["digest"]) for m in manifests]))
        described.update(source.store.mirror_report())
        return described
    except (SelectionError, DocumentError) as exc:
        raise InfoError(str(exc)) from exc


def _platform_pairs(
    walk: BlobWalk, digest: str, entry: t.Mapping[str, t.Any], architectures: t.Mapping[str, str]
) -> list[dict[str, t.Any]]:
    """(platform, architecture) pairs one manifest serves, decided by the rules fetch uses."""
    document = walk.document(digest)
    platform = platform_of(entry)
    served = decide_platform(entry, document).platforms
    architecture = platform.get("architecture") or architectures.get(digest)
    return [{"platform": name, "architecture": architecture} for name in served]


def _manifests_of(entry: t.Mapping[str, t.Any], document: Document) -> list[tuple[t.Mapping[str, t.Any], str]]:
    """(index entry, digest) of every manifest a name holds: an index's entries, or the manifest itself."""
    if is_index(document, entry.get("mediaType")):
        return [(child, str(child.get("digest"))) for child in descriptors(document.get("manifests"))]
    return [({}, str(entry.get("digest")))]


def _named(name: str, action: t.Callable[[], t.Any]) -> t.Any:
    """Run action; a damaged image fails the listing with its name in the message."""
    try:
        return action()
    except (LayoutError, SelectionError, DocumentError) as exc:
        raise InfoError("%s: %s" % (name, exc)) from exc


def attachment_subject(name: str) -> str | None:
    """The digest a referrers (`sha256-<hex>`) or signature (`sha256-<hex>.sig`) name is about, else None.

    The tag is what follows the last `:` (a registry port comes before a `/`,
    so it never matches); a bare tag, as skopeo records names, is the whole name.
    """
    tag = name.rsplit(":", 1)[-1]
    return "sha256:" + tag[len("sha256-") :][:64] if ATTACHMENT_NAME_RE.fullmatch(tag) else None


def _describe_name(
    walk: BlobWalk,
    entry: t.Mapping[str, t.Any],
    document: Document,
    architectures: t.Mapping[str, str],
    subject: str | None = None,
) -> dict[str, t.Any]:
    pairs: list[dict[str, t.Any]] = []
    for child, child_digest in _manifests_of(entry, document):
        # A nested index is not an image this collection reads; it serves no platform here.
        if is_index(walk.document(child_digest), child.get("mediaType")):
            continue
        for pair in _platform_pairs(walk, child_digest, child, architectures):
            if pair not in pairs:
                pairs.append(pair)
    # Each blob once: the rootfs both platforms share is stored, and counted, once. A signature or referrer
    # counts its own documents and blobs, not the image it is about (its `subject`).
    size = sum(walk.reach(entry, follow_subject=subject is None).values())
    return {"digest": str(entry.get("digest")), "platforms": pairs, "size": size, "subject": subject}


def layout_images(params: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Every name of a layout with its digest, platforms and size: info with `layout` and no `name`."""
    layout = OciLayout(params["layout"])
    if not os.path.isdir(layout.path):
        what = "exists and is not a directory" if os.path.lexists(layout.path) else "does not exist"
        raise InfoError("layout: %s %s" % (layout.path, what))
    try:
        layout.require()
        refs = layout.refs()
        walk = BlobWalk(layout)
        tops = {}
        for name, entry in refs.items():
            tops[name] = _named(name, functools.partial(walk.document, str(entry.get("digest"))))
        # A per-architecture name is a bare manifest: its architecture is what an index of the layout says it is.
        architectures: dict[str, str] = {}
        for document in tops.values():
            for child in descriptors(document.get("manifests")):
                platform = platform_of(child)
                if platform.get("architecture"):
                    architectures.setdefault(str(child.get("digest")), str(platform["architecture"]))
        images = []
        for name in sorted(refs):
            describe = functools.partial(
                _describe_name, walk, refs[name], tops[name], architectures, attachment_subject(name)
            )
            images.append(dict({"name": name}, **_named(name, describe)))
    except LayoutError as exc:
        raise InfoError(str(exc)) from exc
    return {"changed": False, "images": images}
