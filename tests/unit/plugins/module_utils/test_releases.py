"""_releases: the paginated tags list (against a small real HTTP server), tag names and version order."""

from __future__ import annotations

import http.server
import json
import threading
import typing as t
import urllib.parse

import pytest

from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import RegistryOptions
from ansible_collections.ironcore.image.plugins.module_utils._releases import (
    Release,
    ReleasesError,
    _merge_pending,
    human_size,
    list_all_tags,
    pending_base,
    split_releases,
    subject_of,
    version_key,
)
from ansible_collections.ironcore.image.plugins.module_utils._store import RegistryStore
from ansible_collections.ironcore.image.plugins.module_utils._walk import Graph

TAGS = ["t%03d" % n for n in range(250)]


class _Pages(http.server.BaseHTTPRequestHandler):
    """Answers /v2/os/image/tags/list in pages of `n` with a Link to the next, as distribution 3 does."""

    loop = False

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        size = int(query.get("n", "1000"))
        start = TAGS.index(query["last"]) + 1 if "last" in query else 0
        page = TAGS[start : start + size]
        body = json.dumps({"name": "os/image", "tags": page}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if start + size < len(TAGS) or self.loop:
            last = page[-1] if not self.loop else TAGS[0]
            self.send_header("Link", '</v2/os/image/tags/list?n=%d&last=%s>; rel="next"' % (size, last))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: t.Any) -> None:
        pass


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> t.Iterator[RegistryStore]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = RegistryClient("127.0.0.1:%d" % server.server_address[1], RegistryOptions(plain_http=True, retries=0))
        yield RegistryStore(client, "os/image")
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def paged() -> t.Iterator[RegistryStore]:
    yield from _serve(_Pages)


@pytest.fixture
def looping() -> t.Iterator[RegistryStore]:
    yield from _serve(type("_Looping", (_Pages,), {"loop": True}))


def test_every_page_of_tags_is_listed(paged: RegistryStore) -> None:
    assert list_all_tags(paged) == TAGS


def test_a_link_that_leads_back_fails_in_one_line(looping: RegistryStore) -> None:
    with pytest.raises(ReleasesError, match="leads back"):
        list_all_tags(looping)


def test_attachment_tags_name_their_subject() -> None:
    hexdigest = "a" * 64
    assert subject_of("sha256-%s.sig" % hexdigest) == "sha256:" + hexdigest
    assert subject_of("sha256-%s" % hexdigest) == "sha256:" + hexdigest
    assert subject_of("1.0-baremetal") is None
    assert subject_of("sha256-%s.sig-x" % hexdigest) is None


def test_versions_order_as_numbers_and_pre_releases_first() -> None:
    tags = ["1.10.0", "1.9.2", "v1.9.10", "1.10.0-rc1", "2.0"]
    assert sorted(tags, key=version_key) == ["1.9.2", "v1.9.10", "1.10.0-rc1", "1.10.0", "2.0"]


def test_human_size() -> None:
    assert human_size(512) == "512 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(3 * 1024**3) == "3.0 GiB"


def _release(digest: str, *tags: str) -> Release:
    return Release(digest=digest, descriptor={"digest": digest}, graph=Graph(), tags=list(tags))


def test_pending_base_is_the_combined_name_of_platform_tags_only() -> None:
    assert pending_base(["1.2-baremetal-amd64", "1.2-metal-amd64"]) == "1.2"
    assert pending_base(["1.2-virtualization", "1.2-kvm", "1.2-kvm-arm64"]) == "1.2"
    assert pending_base(["1.2-rc1"]) is None
    assert pending_base(["1.2-baremetal", "1.3-baremetal"]) is None
    assert pending_base(["stable", "1.2-baremetal"]) is None
    assert pending_base(["-baremetal"]) is None


def test_a_push_in_progress_counts_as_one_release_and_the_newest() -> None:
    """Listed between a push's platform tags and its combined tag: keep 1 keeps the whole new release."""
    old = _release("sha256:old", "1.1", "1.1-baremetal", "1.1-virtualization")
    parts = [_release("sha256:bm", "1.2-baremetal", "1.2-metal"), _release("sha256:vm", "1.2-virtualization-arm64")]
    releases = _merge_pending([old, *parts])
    assert [r.digest for r in releases] == ["sha256:old", "sha256:bm"]
    assert releases[1].tags == ["1.2-baremetal", "1.2-metal", "1.2-virtualization-arm64"]
    assert "sha256:vm" in releases[1].members
    kept, going = split_releases([(r, None) for r in releases], 1, [], "semver")
    assert [r.digest for r in kept] == ["sha256:bm"] and [r.digest for r in going] == ["sha256:old"]
