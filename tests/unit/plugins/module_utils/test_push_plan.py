"""Which tags a push sends, and in which order: the planning that happens before any network traffic."""

from __future__ import annotations

import json

from ansible_collections.ironcore.image.plugins.module_utils import _push as push
from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._model import ImageReference

NAME = "registry.example.com/os/image:1.0"
DIGEST = "sha256:" + "a" * 64


def layout_with_names(tmp_path, names):
    """A layout whose index.json records exactly these names (the documents themselves are not needed)."""
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entries = [
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": DIGEST,
            "size": 1,
            "annotations": {"org.opencontainers.image.ref.name": name},
        }
        for name in names
    ]
    (tmp_path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    return OciLayout(str(tmp_path))


def tag_names(layout, destination=NAME, platform_tags=True, aliases=True):
    name = ImageReference.parse(NAME)
    return push._tag_names(name, ImageReference.parse(destination), layout, platform_tags, aliases)


def test_main_tag_alone_without_platform_tags(tmp_path):
    layout = layout_with_names(tmp_path, [NAME, NAME + "-baremetal", NAME + "-baremetal-amd64"])
    assert tag_names(layout, platform_tags=False) == {"1.0": NAME}


def test_children_before_parents_and_the_main_tag_last(tmp_path):
    recorded = [NAME, NAME + "-baremetal", NAME + "-baremetal-amd64", NAME + "-virtualization-arm64"]
    names = tag_names(layout_with_names(tmp_path, recorded), aliases=False)
    assert list(names) == ["1.0-baremetal-amd64", "1.0-virtualization-arm64", "1.0-baremetal", "1.0"]
    assert names["1.0-baremetal"] == NAME + "-baremetal"


def test_only_recorded_platform_names_are_pushed(tmp_path):
    names = tag_names(layout_with_names(tmp_path, [NAME, NAME + "-kvm"]))
    assert names == {"1.0-kvm": NAME + "-kvm", "1.0": NAME}


def test_aliases_follow_their_switch(tmp_path):
    layout = layout_with_names(tmp_path, [NAME, NAME + "-metal", NAME + "-baremetal"])
    assert list(tag_names(layout, aliases=True)) == ["1.0-baremetal", "1.0-metal", "1.0"]
    assert list(tag_names(layout, aliases=False)) == ["1.0-baremetal", "1.0"]


def test_destination_renames_the_tags_but_reads_the_layout_names(tmp_path):
    layout = layout_with_names(tmp_path, [NAME, NAME + "-kvm-amd64"])
    names = tag_names(layout, destination="other.example.com/mirror/image:2.0")
    assert names == {"2.0-kvm-amd64": NAME + "-kvm-amd64", "2.0": NAME}
