"""files.<role>.content_size: the delivered file's size next to the blob's, in check mode too when it is known."""

from __future__ import annotations

import pytest
from helpers.images import write_upstream_image

MODULE = "ironcore.image.ironcore_image_fetch"
PACKED = "registry.example.com/os/sizes-packed:1.0"
RAW = "registry.example.com/os/sizes-raw:1.0"
SIZE = 200 * 1024

pytestmark = pytest.mark.integration


def args_for(layout: str, name: str, dest) -> dict:
    return {"layout": layout, "name": name, "platform": "virtualization", "architecture": "amd64", "dest": str(dest)}


def test_content_size_of_packed_and_raw_layers(ansible, tmp_path):
    layout = str(tmp_path / "layout")
    packed = write_upstream_image(layout, PACKED, architectures=("amd64",), layer_format="tar+gzip", size=SIZE)
    write_upstream_image(layout, RAW, architectures=("amd64",), size=SIZE, tag="raw")
    dest = tmp_path / "dest"
    packed_args = args_for(layout, PACKED, dest)

    unknown = ansible.module(MODULE, packed_args, check=True)["files"]["rootfs"]
    assert unknown["content_size"] is None and unknown["size"] < SIZE

    delivered = ansible.module(MODULE, packed_args)["files"]["rootfs"]
    assert delivered["content_size"] == SIZE == len(packed.files[("amd64", "rootfs")])
    assert delivered["size"] == unknown["size"]
    assert ansible.module(MODULE, packed_args, check=True)["files"]["rootfs"]["content_size"] == SIZE

    # The file is gone, the state record still knows what the blob unpacks to.
    (dest / "rootfs").unlink()
    remembered = ansible.module(MODULE, packed_args, check=True)["files"]["rootfs"]
    assert remembered["changed"] is True and remembered["content_size"] == SIZE

    raw = ansible.module(MODULE, args_for(layout, RAW, tmp_path / "raw"), check=True)["files"]["rootfs"]
    assert raw["content_size"] == raw["size"] == SIZE
