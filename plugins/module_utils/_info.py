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

import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._model import canonical_platform
from ansible_collections.ironcore.image.plugins.module_utils._select import (
    Document,
    SelectionError,
    decide_platform,
    manifest_layers,
    node_architecture,
    select_layers,
)
from ansible_collections.ironcore.image.plugins.module_utils._source import (
    Source,
    SourceError,
    child_manifest,
    one_line,
    open_source,
    read_config,
    resolve_image,
    select_manifest,
)


class InfoError(Exception):
    """The image cannot be described; the message says why."""


def _describe_manifest(
    source: Source, digest: str, size: int, document: Document, entry: t.Mapping[str, t.Any] | None
) -> dict[str, t.Any]:
    layers = manifest_layers(document)
    platform = dict(entry.get("platform") or {}) if entry else {}
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
    source: Source, params: t.Mapping[str, t.Any], image: t.Any, documents: t.Mapping[str, Document]
) -> dict[str, t.Any]:
    platform = canonical_platform(params["platform"]) or params["platform"]
    architecture = node_architecture(params["architecture"])
    chosen = select_manifest(source, image, platform, architecture, dict(documents))
    digest = chosen.digest
    layers = select_layers(chosen.document, platform, params.get("layers"))
    described = []
    for layer in layers:
        url, headers = source.blob_location(layer.digest)
        described.append(dict(layer.summary(), url=url, **_visible_headers(headers, params.get("include_credentials"))))
    return {
        "platform": platform,
        "architecture": architecture,
        "manifest_digest": digest,
        "decided_by": chosen.decided_by,
        "layers": described,
    }


def image_info(params: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The module's one call."""
    try:
        source = open_source(params)
        image = resolve_image(source)
        documents: dict[str, Document] = {}
        manifests = []
        if image.index:
            for entry in image.document.get("manifests") or []:
                digest = str(entry.get("digest"))
                documents[digest] = child_manifest(source, entry)
                manifests.append(_describe_manifest(source, digest, int(entry["size"]), documents[digest], entry))
        else:
            documents[image.digest] = image.document
            manifests.append(_describe_manifest(source, image.digest, len(image.data), image.document, None))
        return {
            "changed": False,
            "name": str(source.ref),
            "digest": image.digest,
            "media_type": image.document.get("mediaType") or image.media_type,
            "index": image.document if image.index else None,
            "manifests": manifests,
            "selected": _selected(source, params, image, documents) if params.get("platform") else None,
        }
    except (SourceError, SelectionError) as exc:
        raise InfoError(str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InfoError("the image is malformed: %s" % one_line(exc)) from None
