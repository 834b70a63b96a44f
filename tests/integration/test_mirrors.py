"""ironcore_image_fetch (and info) with `mirrors`: digest-only failover between real servers.

The origin is the TLS + htpasswd registry of conftest; the mirrors are a
second docker-registry holding the same image (copied by skopeo, digests
kept), static servers of the image's OCI layout (tests/helpers/layout_server.py,
a process of its own that can be killed mid-blob, serve corrupted bytes or
ignore Range) and fault proxies. Every delivered file is compared with the
bytes the image was written from; a failed fetch must leave nothing in dest.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers.ansible import task_results
from helpers.counting import ByteCountingProxy
from helpers.images import skopeo_push, write_upstream_image
from helpers.inventory import failures_by_host, local_host, write_inventory
from helpers.layout_server import LayoutServer
from helpers.registry import PASSWORD, BlackHole, free_port, start_registry
from helpers.signing import make_key

from ansible_collections.ironcore.image.plugins.module_utils._io import human_size

MODULE = "ironcore.image.ironcore_image_fetch"
PROVISION = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "playbooks", "provision.yml"
)
REPOSITORY = "mirrors/os"
TAG = "1.0"
SIZE = 5 * 1024 * 1024 + 12345

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site(tmp_path_factory, registry_tls):
    """The image at the origin, in a mirror registry (under another repository) and as a layout directory."""
    workdir = tmp_path_factory.mktemp("mirrors")
    layout = str(workdir / "layout")
    image = write_upstream_image(layout, TAG, architectures=("amd64",), roles=("rootfs",), size=SIZE, tag="mirror")
    origin = "%s/%s:%s" % (registry_tls.host, REPOSITORY, TAG)
    skopeo_push(layout, TAG, origin, registry_tls.skopeo_flags("dest-"))
    mirror = start_registry("mirror", str(workdir / "mirror-registry"))
    try:
        skopeo_push(layout, TAG, "%s/cache/os:%s" % (mirror.host, TAG), mirror.skopeo_flags("dest-"))
        yield {
            "workdir": workdir,
            "layout": layout,
            "image": image,
            "origin": registry_tls,
            "name": origin,
            "mirror": mirror,
            "blob": image.blobs[("amd64", "rootfs")],
            "data": image.files[("amd64", "rootfs")],
        }
    finally:
        mirror.stop()


@pytest.fixture
def layout_servers(site, tmp_path):
    """Factory: layout_servers(*flags) -> a LayoutServer of the site's layout; all stopped after the test."""
    started: list[LayoutServer] = []

    def make(*flags: str) -> LayoutServer:
        server = LayoutServer(site["layout"], str(tmp_path / ("requests-%d.jsonl" % len(started))), *flags)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def origin_args(site, dest, **extra):
    args = dict(site["origin"].registry_args, name=site["name"], dest=str(dest), platform="virtualization")
    args.update(architecture="amd64", **extra)
    return args


def registry_mirror(site, host=None):
    return {"url": "http://%s" % (host or site["mirror"].host), "repository": "cache/os"}


def dead_origin_name(site, digest=True):
    """The origin's name at an address where nothing listens."""
    reference = "@" + site["image"].digest if digest else ":" + TAG
    return "127.0.0.1:%d/%s%s" % (free_port(), REPOSITORY, reference)


def delivered(dest) -> bytes:
    with open(os.path.join(str(dest), "rootfs"), "rb") as stream:
        return stream.read()


def assert_nothing_left(dest):
    """No file for a consumer and no partial in the state directory."""
    names = os.listdir(str(dest)) if os.path.isdir(str(dest)) else []
    assert [name for name in names if name != ".ironcore"] == []
    state = os.path.join(str(dest), ".ironcore")
    partials = [name for name in (os.listdir(state) if os.path.isdir(state) else []) if name.endswith(".partial")]
    assert partials == []


def test_killed_mirror_mid_blob_continues_at_the_same_byte(ansible, site, layout_servers, fault_proxy, tmp_path):
    dying = layout_servers("--die-after", str(2 * 1024 * 1024 + 4321))
    proxy = fault_proxy(site["mirror"])
    mirrors = [{"url": dying.url, "type": "layout"}, registry_mirror(site, proxy.host)]
    result = ansible.module(MODULE, origin_args(site, tmp_path / "dest", mirrors=mirrors))
    assert result.get("failed") is not True, result.get("msg")
    assert dying.process.wait(10) == -9
    assert delivered(tmp_path / "dest") == site["data"]
    sources = result["files"]["rootfs"]["sources"]
    assert [source["url"] for source in sources] == [dying.url, "http://%s" % proxy.host]
    assert sources[0]["bytes"] > 0
    assert sum(source["bytes"] for source in sources) == SIZE
    # The second source was asked for exactly the byte where the first one died.
    ranges = [headers.get("range") for method, path, headers in proxy.requests if site["blob"] in path]
    assert ranges == ["bytes=%d-" % sources[0]["bytes"]]
    # Only the tag came from the origin, no blob byte.
    assert 0 < result["bytes_from_origin"] < 4096
    assert [error["url"] for error in result["mirror_errors"]] == [dying.url]


def test_mirror_answering_a_range_with_the_whole_blob_is_not_read_past_a_prefix(
    ansible, site, layout_servers, tmp_path
):
    dying = layout_servers("--die-after", str(3 * 1024 * 1024))
    whole = layout_servers("--ignore-range")
    mirrors = [{"url": dying.url, "type": "layout"}, {"url": whole.url, "type": "layout"}]
    result = ansible.module(MODULE, origin_args(site, tmp_path / "dest", mirrors=mirrors))
    assert result.get("failed") is not True, result.get("msg")
    assert delivered(tmp_path / "dest") == site["data"]
    sources = result["files"]["rootfs"]["sources"]
    # The whole-blob answer was dropped unread: the origin served the rest, from the byte where the first died.
    assert [source["url"] for source in sources] == [dying.url, "https://%s" % site["origin"].host]
    assert sources[1]["bytes"] == SIZE - sources[0]["bytes"]
    asked = [entry["headers"].get("range") for entry in whole.requests() if site["blob"].split(":")[1] in entry["path"]]
    assert asked == ["bytes=%d-" % sources[0]["bytes"]]
    skipped = [error for error in result["mirror_errors"] if error["url"] == whole.url]
    assert len(skipped) == 1 and "whole blob" in skipped[0]["reason"]


def test_a_trickling_mirror_fails_over_to_the_origin(ansible, site, layout_servers, tmp_path):
    # One byte a second keeps every read inside `timeout`; unchecked, the server's 300 bytes take five minutes.
    trickling = layout_servers("--trickle", "1")
    mirrors = [{"url": trickling.url, "type": "layout"}]
    result = ansible.module(MODULE, origin_args(site, tmp_path / "dest", mirrors=mirrors, timeout=3))
    assert result.get("failed") is not True, result.get("msg")
    assert delivered(tmp_path / "dest") == site["data"]
    assert result["files"]["rootfs"]["sources"][-1] == {"url": "https://%s" % site["origin"].host, "bytes": SIZE}
    stalled = [error for error in result["mirror_errors"] if error["url"] == trickling.url]
    assert [error["digest"] for error in stalled] == [site["blob"]]
    assert "stalled" in stalled[0]["reason"] and "minimum rate" in stalled[0]["reason"], stalled


def test_corrupt_mirror_loses_the_blob_and_never_sees_the_origin_password(ansible, site, layout_servers, tmp_path):
    corrupt = layout_servers("--corrupt")
    mirrors = [{"url": corrupt.url, "type": "layout"}]
    result = ansible.module(MODULE, origin_args(site, tmp_path / "dest", mirrors=mirrors))
    assert result.get("failed") is not True, result.get("msg")
    assert delivered(tmp_path / "dest") == site["data"]
    errors = result["mirror_errors"]
    assert [(error["url"], error["digest"]) for error in errors] == [(corrupt.url, site["blob"])]
    assert "failed verification" in errors[0]["reason"]
    sources = result["files"]["rootfs"]["sources"]
    # The corrupt attempt counts too (its bytes crossed the network), then the origin served the whole blob.
    assert sources == [
        {"url": corrupt.url, "bytes": SIZE},
        {"url": "https://%s" % site["origin"].host, "bytes": SIZE},
    ]
    assert result["bytes_from_origin"] > SIZE
    # The origin's credentials went to the origin only.
    seen = corrupt.requests()
    assert seen and all("authorization" not in entry["headers"] for entry in seen)
    assert PASSWORD not in repr(seen) and PASSWORD not in result["_stdout"]


@pytest.mark.parametrize("status", [404, 500, 429])
def test_mirror_answering_an_error_is_passed_over(ansible, site, fault_proxy, tmp_path, status):
    failing = fault_proxy(site["mirror"])
    failing.add("status", status=status, path="/blobs/", times=-1)
    unreachable = "http://127.0.0.1:%d" % free_port()
    good = fault_proxy(site["mirror"])
    mirrors = [{"url": unreachable}, registry_mirror(site, failing.host), registry_mirror(site, good.host)]
    result = ansible.module(MODULE, origin_args(site, tmp_path / "dest", mirrors=mirrors))
    assert result.get("failed") is not True, result.get("msg")
    assert delivered(tmp_path / "dest") == site["data"]
    assert result["files"]["rootfs"]["sources"] == [{"url": "http://%s" % good.host, "bytes": SIZE}]
    # The unreachable mirror was tried once, for the first document, and then left out.
    refused = [error for error in result["mirror_errors"] if error["url"] == unreachable]
    assert len(refused) == 1 and "refused" in refused[0]["reason"]
    blob_errors = [error for error in result["mirror_errors"] if error["digest"] == site["blob"]]
    assert [error["url"] for error in blob_errors] == ["http://%s" % failing.host]
    assert str(status) in blob_errors[0]["reason"]
    # Mirrors are not retried: the next source is the retry.
    assert len([path for _method, path, _headers in failing.requests if site["blob"] in path]) == 1
    assert result["retries"] == 0


def test_a_mirror_that_never_answers_costs_one_timeout(ansible, site, tmp_path):
    hole = BlackHole()
    try:
        mirrors = [{"url": "http://%s" % hole.host}, registry_mirror(site)]
        args = origin_args(site, tmp_path / "dest", mirrors=mirrors, timeout=2)
        result = ansible.module(MODULE, dict(args, name=dead_origin_name(site)))
    finally:
        hole.stop()
    assert result.get("failed") is not True, result.get("msg")
    assert delivered(tmp_path / "dest") == site["data"]
    # Asked once (for the first document); left out for every later digest.
    silent = [error for error in result["mirror_errors"] if error["url"] == "http://%s" % hole.host]
    assert len(silent) == 1 and "timeout" in silent[0]["reason"]


def test_all_mirrors_down_the_origin_serves(ansible, site, fault_proxy, tmp_path):
    broken = fault_proxy(site["mirror"])
    broken.add("status", status=500, times=-1)
    mirrors = [{"url": "http://127.0.0.1:%d" % free_port()}, registry_mirror(site, broken.host)]
    result = ansible.module(MODULE, origin_args(site, tmp_path / "dest", mirrors=mirrors))
    assert result.get("failed") is not True, result.get("msg")
    assert delivered(tmp_path / "dest") == site["data"]
    assert result["files"]["rootfs"]["sources"] == [{"url": "https://%s" % site["origin"].host, "bytes": SIZE}]
    assert result["bytes_from_origin"] > SIZE


def test_origin_down_digest_and_warm_mirror(ansible, site, tmp_path):
    args = origin_args(site, tmp_path / "dest", name=dead_origin_name(site), mirrors=[registry_mirror(site)])
    result = ansible.module(MODULE, args)
    assert result.get("failed") is not True, result.get("msg")
    assert delivered(tmp_path / "dest") == site["data"]
    assert result["bytes_from_origin"] == 0
    assert result["mirror_errors"] == []
    again = ansible.module(MODULE, args)
    assert again["changed"] is False and again["files"]["rootfs"]["sources"] == []
    # A tag with a pinned digest needs no origin either.
    pinned = origin_args(
        site, tmp_path / "pinned", name=dead_origin_name(site, digest=False), digest=site["image"].digest
    )
    pinned["mirrors"] = [registry_mirror(site)]
    result = ansible.module(MODULE, pinned)
    assert result.get("failed") is not True, result.get("msg")
    assert delivered(tmp_path / "pinned") == site["data"]


def test_origin_down_tag_is_not_trusted_from_a_mirror(ansible, site, layout_servers, tmp_path):
    mirrors = [registry_mirror(site)]
    args = origin_args(site, tmp_path / "dest", name=dead_origin_name(site, digest=False), mirrors=mirrors)
    result = ansible.module(MODULE, args)
    assert result["failed"] is True
    assert "\n" not in result["msg"] and "Traceback" not in result["msg"]
    assert "a tag is resolved only at the origin" in result["msg"]
    assert "mirror_resolve_tags" in result["msg"]
    assert_nothing_left(tmp_path / "dest")
    # A mirror trusted with tags resolves it: here a static layout (its index.json).
    static = layout_servers()
    args.update(mirrors=[{"url": static.url, "type": "layout"}], mirror_resolve_tags=True)
    result = ansible.module(MODULE, args)
    assert result.get("failed") is not True, result.get("msg")
    assert result["digest"] == site["image"].digest
    assert delivered(tmp_path / "dest") == site["data"]


def test_info_reads_from_a_mirror_with_the_origin_down(ansible, site):
    args = {"name": dead_origin_name(site), "architecture": "amd64", "mirrors": [registry_mirror(site)]}
    result = ansible.module("ironcore.image.ironcore_image_info", args)
    assert result.get("failed") is not True, result.get("msg")
    assert result["digest"] == site["image"].digest
    assert [layer["digest"] for layer in result["manifests"][0]["layers"]] == [site["blob"]]
    # Layer URLs are the origin's: a plain-HTTP mirror is not handed out for an https origin, even when asked.
    for url_from in ("origin", "mirror"):
        selecting = ansible.module(
            "ironcore.image.ironcore_image_info", dict(args, platform="virtualization", url_from=url_from)
        )
        assert selecting.get("failed") is True
        assert "refused" in selecting["msg"] and site["mirror"].host not in selecting["msg"], selecting["msg"]


def test_info_hands_out_the_origin_url_unless_a_mirror_is_asked_for(ansible, site, layout_servers, fault_proxy):
    hostile = layout_servers()
    tls_mirror = fault_proxy(site["origin"])
    https_entry = dict(
        {key: site["origin"].registry_args[key] for key in ("ca_cert", "username", "password")},
        url="https://%s" % tls_mirror.host,
    )
    args = dict(site["origin"].registry_args, name=site["name"], platform="virtualization", architecture="amd64")
    args["mirrors"] = [{"url": hostile.url, "type": "layout"}, https_entry]

    def layer_url(**extra) -> str:
        result = ansible.module("ironcore.image.ironcore_image_info", dict(args, **extra))
        assert result.get("failed") is not True, result.get("msg")
        assert result["selected"]["layers"][0]["digest"] == site["blob"]
        return str(result["selected"]["layers"][0]["url"])

    origin_url = "https://%s/v2/%s/blobs/%s" % (site["origin"].host, REPOSITORY, site["blob"])
    assert layer_url() == origin_url
    assert layer_url(url_from="origin") == origin_url
    # Asked for: the first mirror that fits, never the plain-HTTP one before it.
    assert layer_url(url_from="mirror") == "https://%s/v2/%s/blobs/%s" % (tls_mirror.host, REPOSITORY, site["blob"])
    args["mirrors"] = args["mirrors"][:1]
    assert layer_url(url_from="mirror") == origin_url


def test_provision_role_delivers_through_a_static_layout_mirror(ansible, site, layout_servers, tmp_path):
    static = layout_servers()
    origin = site["origin"]
    node = local_host(
        provision_name=site["name"],
        provision_pool_dir=str(tmp_path / "pool"),
        provision_cache_dir=str(tmp_path / "cache"),
        provision_registry_username=origin.username,
        provision_registry_password=origin.password,
        provision_registry_ca_cert=origin.pki.ca_cert,
        provision_mirrors=[{"url": static.url, "type": "layout"}],
    )
    inventory = write_inventory(str(tmp_path / "hosts.yml"), {"hypervisors": {"hv": node}})
    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (failures_by_host(document), stderr)
    disks = [name for name in os.listdir(str(tmp_path / "pool")) if not name.startswith(".")]
    assert len(disks) == 1
    with open(os.path.join(str(tmp_path / "pool"), disks[0]), "rb") as stream:
        assert stream.read() == site["data"]
    fetch = next(result for task, _host, result in task_results(document) if task.endswith("Fetch the image's files"))
    # The plan resolved the tag at the registry; the delivery, pinned to that digest, never needed it.
    assert fetch["files"]["rootfs"]["sources"] == [{"url": static.url, "bytes": SIZE}]
    assert fetch["bytes_from_origin"] == 0
    seen = static.requests()
    assert seen and all("authorization" not in entry["headers"] for entry in seen)


def sign_a_copy(ansible, site, name, key) -> dict:
    """The fixture's image copied to `name` at the origin (so the image itself stays unsigned), then signed there."""
    flags = [*site["origin"].skopeo_flags("src-"), *site["origin"].skopeo_flags("dest-")]
    copy = ["skopeo", "copy", "--quiet", *flags, "docker://%s" % site["name"], "docker://%s" % name]
    subprocess.run(copy, check=True)
    signed = ansible.module(
        "ironcore.image.ironcore_image_sign", dict(site["origin"].registry_args, name=name, key=key["key"])
    )
    assert signed.get("failed") is not True, signed.get("msg")
    return signed


def test_signatures_are_checked_at_the_origin_with_mirrors(ansible, site, tmp_path):
    key = make_key(tmp_path, "key")
    # Signed under a tag of its own, so the fixture's image stays unsigned for the other tests.
    signed_name = site["name"].rsplit(":", 1)[0] + ":signed"
    sign_a_copy(ansible, site, signed_name, key)
    args = origin_args(site, tmp_path / "dest", name=signed_name, mirrors=[registry_mirror(site)])
    result = ansible.module(MODULE, dict(args, signature_keys=[key["pub"]]))
    assert result.get("failed") is not True, result.get("msg")
    assert sorted(result["signatures"]) == sorted({result["digest"], result["manifest_digest"]})
    assert result["files"]["rootfs"]["sources"] == [{"url": "http://%s" % site["mirror"].host, "bytes": SIZE}]
    assert delivered(tmp_path / "dest") == site["data"]


def test_an_air_gapped_site_verifies_signatures_from_its_mirror(ansible, site, tmp_path):
    """Origin gone, digest pinned: the image and its signatures both come from the mirror, and are verified."""
    key = make_key(tmp_path, "key")
    # The origin is reached through a relay that is stopped later: the same name, then nothing listening.
    relay = ByteCountingProxy(site["origin"].host)
    try:
        origin_name = "%s/%s:airgap" % (relay.host, REPOSITORY)
        signed = sign_a_copy(ansible, site, origin_name, key)
        copied = ansible.module(
            "ironcore.image.ironcore_image_copy",
            {
                "source": dict(site["origin"].registry_args, name=origin_name),
                "destination": {"name": "%s/cache/os:airgap" % site["mirror"].host, "plain_http": True},
            },
        )
        assert copied.get("failed") is not True, copied.get("msg")
        assert copied["signatures"] >= 1, copied
    finally:
        relay.stop()
    pinned = origin_name.rsplit(":", 1)[0] + "@" + signed["digest"]
    args = dict(site["origin"].registry_args, name=pinned, dest=str(tmp_path / "dest"), platform="virtualization")
    args["mirrors"] = [registry_mirror(site)]
    result = ansible.module(MODULE, dict(args, signature_keys=[key["pub"]]))
    assert result.get("failed") is not True, result.get("msg")
    assert sorted(result["signatures"]) == sorted({result["digest"], result["manifest_digest"]})
    assert result["bytes_from_origin"] == 0
    assert delivered(tmp_path / "dest") == site["data"]
    # Another key's signatures are not there: refused, from the mirror as from the origin, with nothing written.
    stranger = make_key(tmp_path, "stranger")
    args["dest"] = str(tmp_path / "refused")
    refused = ansible.module(MODULE, dict(args, signature_keys=[stranger["pub"]]))
    assert refused["failed"] is True and "unknown key" in refused["msg"]
    assert_nothing_left(tmp_path / "refused")


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: smaller than the image's blob. Unmounted after the test."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip("cannot mount a tmpfs here (needs root): %s" % exc)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_disk_full_is_refused_before_the_first_byte_and_says_how_much_is_needed(ansible, site, small_disk):
    dest = small_disk / "dest"
    result = ansible.module(MODULE, origin_args(site, dest))
    assert result["failed"] is True
    message = result["msg"]
    assert "\n" not in message and "Traceback" not in message
    assert "needs %s (%d bytes)" % (human_size(SIZE), SIZE) in message and " short; free at least " in message
    assert "nothing was written" in message
    assert_nothing_left(dest)
    assert os.listdir(small_disk) == []
    # The space is given back: the next service on the node finds the disk as it was.
    stats = os.statvfs(str(small_disk))
    assert stats.f_bavail * stats.f_frsize > 3 * 1024 * 1024


def layout_blob(layout, digest) -> bytes:
    with open(os.path.join(str(layout), "blobs", "sha256", digest.split(":", 1)[1]), "rb") as stream:
        return stream.read()


def test_copy_from_mirrors_with_the_source_registry_down(ansible, site, layout_servers, tmp_path):
    dying = layout_servers("--die-after", str(1024 * 1024 + 777))
    source = {
        "name": dead_origin_name(site),
        "mirrors": [{"url": dying.url, "type": "layout"}, registry_mirror(site)],
    }
    destination = {"name": "copied/os:%s" % TAG, "layout": str(tmp_path / "copied")}
    result = ansible.module("ironcore.image.ironcore_image_copy", {"source": source, "destination": destination})
    assert result.get("failed") is not True, result.get("msg")
    assert result["digest"] == site["image"].digest
    assert result["bytes_from_origin"] == 0
    # Blobs are copied in parallel: the config may have asked the dying mirror too, once it was gone.
    assert {error["url"] for error in result["mirror_errors"]} == {dying.url}
    assert dying.process.wait(10) == -9
    assert layout_blob(tmp_path / "copied", site["blob"]) == site["data"]
    # An independent reader finds the very image: skopeo, digests and all.
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", "oci:%s:copied/os:%s" % (tmp_path / "copied", TAG)],
        capture_output=True,
        check=True,
    )
    assert proc.stdout == layout_blob(site["layout"], site["image"].digest)


def test_copy_drops_a_corrupt_mirror_for_the_source_registry(ansible, site, layout_servers, tmp_path):
    corrupt = layout_servers("--corrupt")
    origin = site["origin"]
    source = dict(origin.registry_args, name=site["name"], mirrors=[{"url": corrupt.url, "type": "layout"}])
    destination = {"name": "copied/os:%s" % TAG, "layout": str(tmp_path / "copied")}
    result = ansible.module("ironcore.image.ironcore_image_copy", {"source": source, "destination": destination})
    assert result.get("failed") is not True, result.get("msg")
    errors = result["mirror_errors"]
    assert [error["url"] for error in errors if error["digest"] == site["blob"]] == [corrupt.url]
    # The copy also carries the signatures an earlier test gave the origin's image; the layout mirror never had
    # them, and asking it for them is a miss, not a failure of any byte the layout holds.
    held = {"sha256:" + name for name in os.listdir(os.path.join(site["layout"], "blobs", "sha256"))}
    assert all(error["digest"] not in held for error in errors if error["digest"] != site["blob"])
    assert layout_blob(tmp_path / "copied", site["blob"]) == site["data"]
    assert result["bytes_from_origin"] > SIZE
    assert all("authorization" not in entry["headers"] for entry in corrupt.requests())


# ---- a broken cache shouts: every mirror error is a warning ------------------------


def mirror_warnings(result, url) -> list[str]:
    return [line for line in result.get("warnings") or [] if line.startswith("mirror %s failed for " % url)]


def test_every_mirror_error_is_a_warning_in_fetch_info_and_copy(ansible, site, tmp_path):
    dead = "http://127.0.0.1:%d" % free_port()
    mirrors = [{"url": dead}, registry_mirror(site)]
    fetched = ansible.module(MODULE, origin_args(site, tmp_path / "dest", mirrors=mirrors))
    assert fetched.get("failed") is not True, fetched.get("msg")
    assert fetched["mirror_errors"] and len(mirror_warnings(fetched, dead)) == len(fetched["mirror_errors"])
    assert "refused" in mirror_warnings(fetched, dead)[0]

    info_args = dict(site["origin"].registry_args, name=site["name"], mirrors=mirrors)
    described = ansible.module("ironcore.image.ironcore_image_info", info_args)
    assert described.get("failed") is not True, described.get("msg")
    assert described["mirror_errors"] and len(mirror_warnings(described, dead)) == len(described["mirror_errors"])

    source = dict(site["origin"].registry_args, name=site["name"], mirrors=mirrors)
    destination = {"name": "copied/os:%s" % TAG, "layout": str(tmp_path / "copied")}
    copied = ansible.module("ironcore.image.ironcore_image_copy", {"source": source, "destination": destination})
    assert copied.get("failed") is not True, copied.get("msg")
    assert copied["mirror_errors"] and len(mirror_warnings(copied, dead)) == len(copied["mirror_errors"])


def test_provision_with_a_dead_mirror_prints_a_warning_and_the_origin_bytes(ansible, site, tmp_path):
    """What an operator sees in the default output: a [WARNING] naming the mirror, and the summary line."""
    dead = "http://127.0.0.1:%d" % free_port()
    origin = site["origin"]
    node = local_host(
        provision_name=site["name"],
        provision_pool_dir=str(tmp_path / "pool"),
        provision_cache_dir=str(tmp_path / "cache"),
        provision_registry_username=origin.username,
        provision_registry_password=origin.password,
        provision_registry_ca_cert=origin.pki.ca_cert,
        provision_mirrors=[{"url": dead}],
    )
    inventory = write_inventory(str(tmp_path / "hosts.yml"), {"hypervisors": {"hv": node}})
    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory, env={"ANSIBLE_STDOUT_CALLBACK": "default"})
    output = document["raw"] + stderr
    assert rc == 0, output
    assert "[WARNING]: mirror %s failed for " % dead in output
    summary = [line for line in output.splitlines() if "bytes_from_origin=" in line]
    assert summary, output
    assert " mirror_errors=0" not in summary[0] and "bytes_from_origin=0 " not in summary[0]
