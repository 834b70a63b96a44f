from __future__ import annotations

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _info as info

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "name, subject",
    [
        ("registry.example.com/os/a:sha256-%s" % HEX, "sha256:" + HEX),
        ("registry.example.com:5000/os/a:sha256-%s.sig" % HEX, "sha256:" + HEX),
        ("sha256-%s" % HEX, "sha256:" + HEX),
        ("registry.example.com/os/a:1.0", None),
        ("registry.example.com/os/a:sha256-%s.att" % HEX, None),
        ("registry.example.com/os/a:sha256-%s" % HEX[:-1], None),
        ("registry.example.com/os/a@sha256:%s" % HEX, None),
    ],
)
def test_attachment_subject(name, subject):
    assert info.attachment_subject(name) == subject
