"""Retries seen by the user: one warning per retried request, and a `retries` count in push and fetch results."""

from __future__ import annotations

import os

import pytest

BUILD = "ironcore.image.ironcore_image_build"
PUSH = "ironcore.image.ironcore_image_push"
FETCH = "ironcore.image.ironcore_image_fetch"
NAME = "registry.example.com/os/retried:1.0"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def layout(ansible, tmp_path_factory):
    root = tmp_path_factory.mktemp("retry-image")
    item = {"architecture": "amd64", "cmdline": "console=ttyS0"}
    for role in ("kernel", "initramfs", "rootfs"):
        path = root / "in" / role
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(20_000))
        item[role] = str(path)
    built = ansible.module(BUILD, {"layout": str(root / "layout"), "name": NAME, "artifacts": [item]})
    assert built.get("failed") is not True, built
    return str(root / "layout")


def test_each_retry_is_a_warning_and_counted(ansible, layout, registry_plain, fault_proxy, tmp_path):
    proxy = fault_proxy(registry_plain)
    destination = "%s/retry/warned:1.0" % proxy.host
    push_args = dict(registry_plain.registry_args, layout=layout, name=NAME, destination=destination)
    proxy.add("status", method="HEAD", path="/manifests/1.0$", status=503, times=1)
    pushed = ansible.module(PUSH, push_args)
    assert pushed["changed"] is True and pushed.get("failed") is not True, pushed
    assert pushed["retries"] == 1
    assert pushed["warnings"] == [
        "retrying checking manifest %s/retry/warned 1.0 (attempt 2 of 5): registry answered HTTP 503" % proxy.host
    ]

    again = ansible.module(PUSH, push_args)
    assert again["changed"] is False and again["retries"] == 0 and not again.get("warnings")

    proxy.clear()
    proxy.add("status", method="GET", path="/manifests/1.0$", status=502, times=2)
    fetch_args = dict(
        registry_plain.registry_args,
        name=destination,
        platform="baremetal",
        architecture="amd64",
        dest=str(tmp_path / "boot"),
    )
    fetched = ansible.module(FETCH, fetch_args)
    assert fetched["changed"] is True and fetched.get("failed") is not True, fetched
    what = "reading manifest %s/retry/warned:1.0" % proxy.host
    assert fetched["retries"] == 2
    assert fetched["warnings"] == [
        "retrying %s (attempt 2 of 5): registry answered HTTP 502" % what,
        "retrying %s (attempt 3 of 5): registry answered HTTP 502" % what,
    ]
