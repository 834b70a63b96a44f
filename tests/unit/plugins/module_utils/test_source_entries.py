"""An index entry is checked before its digest or size is read: a bad one is refused by name, not a KeyError."""

from __future__ import annotations

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _source as source
from ansible_collections.ironcore.image.plugins.module_utils._model import ImageReference
from ansible_collections.ironcore.image.plugins.module_utils._select import SelectionError
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore

NAME = "registry.example.com/os/image:1.0"


@pytest.fixture
def layout_source(tmp_path):
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return source.NamedSource(LayoutStore(str(tmp_path)), ImageReference.parse(NAME), NAME)


@pytest.mark.parametrize(
    "entry",
    [
        {"size": 10},
        {"digest": "sha256:" + "0" * 64},
        {"digest": "sha256:" + "0" * 64, "size": "10"},
        {"digest": "sha256:" + "0" * 64, "size": -1},
        {"digest": 7, "size": 10},
    ],
)
def test_an_index_entry_without_a_valid_digest_and_size_is_refused_by_name(layout_source, entry):
    entry = dict(entry, platform={"os": "linux", "architecture": "arm64"})
    with pytest.raises(SelectionError) as error:
        source.child_manifest(layout_source, entry)
    assert str(error.value) == "%s: index entry linux/arm64 lacks a valid digest and size" % layout_source.describe()


def test_a_config_a_mirror_serves_wrong_is_read_from_the_next_source():
    """read_config through the mirror wrapper: wrong bytes lose the mirror the blob (reject_blob), the origin serves."""
    from helpers.memory_store import MemoryStore

    from ansible_collections.ironcore.image.plugins.module_utils._mirrors import MirroredSource

    origin, mirror = MemoryStore("origin.example", "os"), MemoryStore("mirror.example", "copy-of-os")
    manifest_descriptor = origin.add_manifest(config=b'{"commandLine": "quiet"}')
    mirror.documents = dict(origin.documents)
    config = source.load_json(origin.documents[manifest_descriptor["digest"]], "manifest")["config"]
    mirror.blobs[config["digest"]] = b'{"commandLine": "evil"}'
    mirrored = MirroredSource(origin, [mirror], resolve_tags=False, pinned=None)
    image = source.NamedSource(mirrored, ImageReference.parse(NAME), NAME)
    manifest = source.load_json(mirrored.read_document(manifest_descriptor["digest"], 0), "manifest")
    assert source.read_config(image, manifest) == {"commandLine": "quiet"}
    assert [(error["url"], "failed verification" in error["reason"]) for error in mirrored.errors] == [
        ("memory://copy-of-os", True)
    ]
