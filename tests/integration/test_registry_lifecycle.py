"""The image lifecycle on registries (issue 24): info lists releases, remove and prune delete them.

Driven through the real ansible CLI against docker-registry (distribution 2.8) and the
referrers-API test registry; what is left is read back with skopeo and the registry's own
tags list, never with the collection's reader.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request

import pytest
from helpers.images import build_ours
from helpers.signing import http_put_manifest, make_key, sig_tag

PUSH = "ironcore.image.ironcore_image_push"
SIGN = "ironcore.image.ironcore_image_sign"
INFO = "ironcore.image.ironcore_image_info"
REMOVE = "ironcore.image.ironcore_image_remove"
PRUNE = "ironcore.image.ironcore_image_prune"
NAME = "registry.example.com/os/gardenlinux:1.0"
VERSIONS = ("1.0", "1.1", "1.2")

pytestmark = pytest.mark.integration


def registry_tags(registry, repository: str) -> list[str]:
    """Every tag, read with plain HTTP (n=1000: the registry's own answer, no pagination here)."""
    url = "http://%s/v2/%s/tags/list?n=1000" % (registry.host, repository)
    with urllib.request.urlopen(url) as answer:
        return sorted(json.load(answer).get("tags") or [])


def raw(registry, reference: str) -> bytes:
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", *registry.skopeo_flags(), "docker://%s/%s" % (registry.host, reference)],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def publish(ansible, registry, root, repository: str, key: dict, versions=VERSIONS) -> dict[str, str]:
    """Tiny releases pushed as <repository>:<version> with platform tags and aliases, each signed; version -> digest."""
    digests = {}
    for version in versions:
        layout = os.path.join(str(root), "layout-" + version)
        workdir = os.path.join(str(root), "in-" + version)
        os.makedirs(workdir, exist_ok=True)
        build_ours(layout, NAME, workdir, tag="%s-%s" % (repository.replace("/", "-"), version))
        reference = "%s/%s:%s" % (registry.host, repository, version)
        pushed = ansible.module(PUSH, dict(registry.registry_args, layout=layout, name=NAME, destination=reference))
        assert pushed["changed"] is True, pushed
        signed = ansible.module(SIGN, dict(registry.registry_args, name=reference, key=key["key"]))
        assert signed.get("failed") is not True, signed
        digests[version] = pushed["digest"]
    return digests


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return make_key(tmp_path_factory.mktemp("lifecycle-keys"), "release")


def test_info_lists_the_releases_of_a_repository_grouped_newest_first(ansible, registry_plain, key, tmp_path):
    digests = publish(ansible, registry_plain, tmp_path, "lifecycle/list", key)
    tags = registry_tags(registry_plain, "lifecycle/list")
    # Each release: its name, 12 platform tags and aliases, and .sig tags: many more tags than releases.
    assert len(tags) > 30

    listed = ansible.module(
        INFO,
        dict(registry_plain.registry_args, name="%s/lifecycle/list" % registry_plain.host, signature_keys=[key["pub"]]),
    )

    assert listed.get("failed") is not True, listed
    releases = listed["releases"]
    assert [release["digest"] for release in releases] == [digests[v] for v in reversed(VERSIONS)]
    grouped = set()
    for version, release in zip(reversed(VERSIONS), releases):
        assert version in release["tags"]
        assert "%s-baremetal-amd64" % version in release["tags"]
        assert "%s-kvm" % version in release["tags"]
        assert release["platforms"] == ["baremetal", "virtualization"]
        assert release["architectures"] == ["amd64", "arm64"]
        assert release["size"] > 0 and release["size_human"]
        assert release["signed"] is True and len(release["signers"]) == 1
        grouped |= set(release["tags"])
    # Every tag is a release's own or an attachment of one: none stands as a release of its own.
    assert {tag for tag in tags if not tag.startswith("sha256-")} == grouped
    assert all(sig_tag(digests[v]) in tags for v in VERSIONS)


def test_info_groups_many_aliases_into_one_release(ansible, registry_plain, key, tmp_path):
    """150 aliases of one index are one release (distribution 2.8 does not paginate the tags list: the
    pagination itself is tested against a paging server in tests/unit/plugins/module_utils/test_releases.py)."""
    digests = publish(ansible, registry_plain, tmp_path, "lifecycle/pages", key, versions=("2.0",))
    index = raw(registry_plain, "lifecycle/pages:2.0")
    media_type = json.loads(index)["mediaType"]
    aliases = ["alias-%03d" % n for n in range(150)]
    for alias in aliases:
        http_put_manifest(registry_plain, "lifecycle/pages", alias, index, media_type)
    assert len(registry_tags(registry_plain, "lifecycle/pages")) > 150

    listed = ansible.module(INFO, dict(registry_plain.registry_args, name="%s/lifecycle/pages" % registry_plain.host))

    [release] = listed["releases"]
    assert release["digest"] == digests["2.0"]
    assert set(aliases) <= set(release["tags"])
