"""The registry client against hostile servers on loopback: redirects, challenges, endless bodies, dead peers."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess

import pytest
from helpers.registry import PASSWORD, USERNAME, BlackHole, ScriptedServer, blob_data_path, endless

from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient, RegistryError
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import registry_options

pytestmark = pytest.mark.integration

SECRETS = (PASSWORD, base64.b64encode(("%s:%s" % (USERNAME, PASSWORD)).encode()).decode())


@pytest.fixture
def scripted():
    """Factory: scripted(answer, pki=None) -> ScriptedServer; all stopped after the test."""
    servers: list = []

    def make(answer, pki=None):
        server = ScriptedServer(answer, pki)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def client_for(target, on_retry=None, **overrides) -> RegistryClient:
    client = RegistryClient(target.host, registry_options(dict(target.registry_args, **overrides)), on_retry)
    client._sleep = lambda seconds: None  # backoff without waiting: the servers decide what fails
    return client


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put_blob(client: RegistryClient, repository: str, data: bytes) -> str:
    session = client.open_upload(repository)
    assert session is not None
    client.request(
        "PUT",
        session.location,
        what="test upload",
        repository=repository,
        actions=("pull", "push"),
        params={"digest": digest_of(data)},
        body=lambda: io.BytesIO(data),
        ok=(201,),
    )
    return digest_of(data)


def leaked(requests) -> list:
    """Requests that carried an Authorization header or our password in any form."""
    return [
        request
        for request in requests
        if "authorization" in request.headers
        or any(
            secret in json.dumps([request.path, request.headers]) or secret.encode() in request.body
            for secret in SECRETS
        )
    ]


def test_a_blob_redirect_to_storage_never_gets_credentials(registry_tls, fault_proxy, scripted):
    data = b"squashfs " * 20000
    digest = put_blob(client_for(registry_tls), "security/redirect", data)
    realm = scripted(
        lambda request: (200, {"Content-Type": "application/json"}, b'{"token": "stolen"}'), registry_tls.pki
    )
    challenge = {"Www-Authenticate": 'Bearer realm="%s/token",service="storage"' % realm.base_url}
    storage_mode = {"challenge": True}

    def storage_answer(request):
        if storage_mode["challenge"]:
            return 401, challenge, b'{"errors":[{"code":"UNAUTHORIZED","message":"sign in"}]}'
        # S3-style: a pre-signed URL needs no credentials of ours.
        with open(blob_data_path(registry_tls.storage, digest), "rb") as stream:
            return 200, {"Content-Type": "application/octet-stream"}, stream.read()

    storage = scripted(storage_answer, registry_tls.pki)
    proxy = fault_proxy(registry_tls)
    proxy.add("redirect", method="GET", path="/blobs/sha256:", location=storage.base_url, times=-1)
    client = client_for(proxy)
    # A HEAD (not redirected) meets the registry's Basic challenge: from then on credentials go along.
    assert client.head_blob("security/redirect", digest) == len(data)

    with pytest.raises(RegistryError) as refused:
        client.open_blob("security/redirect", digest)
    message = str(refused.value)
    assert refused.value.code == "UNAUTHORIZED" and "\n" not in message
    assert "%s asks for credentials" % storage.base_url in message and "go only to https://%s" % proxy.host in message
    assert storage.requests and not leaked(storage.requests)
    assert realm.requests == []
    # The registry itself did get the credentials: they were there to leak.
    blob_gets = [headers for method, path, headers in proxy.requests if method == "GET" and "/blobs/" in path]
    assert blob_gets and all(headers.get("authorization", "").startswith("Basic ") for headers in blob_gets)

    storage_mode["challenge"] = False
    storage.requests.clear()
    with client.open_blob("security/redirect", digest) as stream:
        assert b"".join(stream.iter_chunks(65536)) == data
    assert len(storage.requests) == 1 and not leaked(storage.requests) and realm.requests == []


def test_a_redirect_from_https_to_http_is_refused(registry_tls, fault_proxy, scripted):
    digest = put_blob(client_for(registry_tls), "security/downgrade", b"kernel")
    plain = scripted(lambda request: (200, {}, b"kernel"))
    proxy = fault_proxy(registry_tls)
    proxy.add("redirect", method="GET", path="/blobs/", location=plain.base_url, times=-1)
    with pytest.raises(RegistryError) as refused:
        client_for(proxy).open_blob("security/downgrade", digest)
    assert refused.value.code == "REDIRECT_REFUSED" and "refusing the downgrade" in str(refused.value)
    assert plain.requests == []


def test_redirect_loops_end(registry_plain, fault_proxy):
    proxy = fault_proxy(registry_plain)
    # Every GET of the proxy sends the client back to the proxy.
    proxy.add("redirect", method="GET", path="/v2/", location="http://%s/again" % proxy.host, times=-1)
    with pytest.raises(RegistryError) as looping:
        client_for(proxy).ping()
    assert looping.value.code == "TOO_MANY_REDIRECTS" and "more than 5 redirects" in str(looping.value)
    assert len(proxy.requests) == 6


def _token_front(scripted, pki, realm_url):
    """A registry that only ever asks for a bearer token from `realm_url`."""
    challenge = {"Www-Authenticate": 'Bearer realm="%s",service="front"' % realm_url}
    return scripted(lambda request: (401, challenge, b""), pki)


def test_a_token_realm_redirecting_to_plain_http_gets_nothing(registry_tls, scripted):
    pki = registry_tls.pki
    recorder = scripted(lambda request: (200, {}, b'{"token": "t"}'))
    realm = scripted(lambda request: (307, {"Location": recorder.base_url + "/token"}, b""), pki)
    front = _token_front(scripted, pki, realm.base_url + "/token")
    options = registry_options({"username": USERNAME, "password": PASSWORD, "ca_cert": pki.ca_cert, "retries": 0})
    with pytest.raises(RegistryError) as refused:
        RegistryClient(front.host, options).ping()
    assert refused.value.code == "REDIRECT_REFUSED" and "from HTTPS to plain HTTP" in str(refused.value)
    assert len(realm.requests) == 1 and realm.requests[0].headers["authorization"].startswith("Basic ")
    assert recorder.requests == []


def test_a_token_realm_redirecting_elsewhere_keeps_the_credentials(registry_tls, scripted, tmp_path):
    pki = registry_tls.pki
    elsewhere = scripted(lambda request: (401, {}, b""), pki)
    realm = scripted(lambda request: (307, {"Location": elsewhere.base_url + "/token"}, b""), pki)
    front = _token_front(scripted, pki, realm.base_url + "/token")
    basic = registry_options({"username": USERNAME, "password": PASSWORD, "ca_cert": pki.ca_cert, "retries": 0})
    with pytest.raises(RegistryError) as refused:
        RegistryClient(front.host, basic).ping()
    assert "refused the credentials" in str(refused.value)
    assert len(elsewhere.requests) == 1 and not leaked(elsewhere.requests)

    # A docker identity token is an OAuth2 refresh token in a POST body: it follows no redirect elsewhere.
    elsewhere.requests.clear()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {front.host: {"identitytoken": "refresh-" + PASSWORD}}}))
    identity = registry_options({"docker_config": str(config), "ca_cert": pki.ca_cert, "retries": 0})
    with pytest.raises(RegistryError) as withheld:
        RegistryClient(front.host, identity).ping()
    assert withheld.value.code == "REDIRECT_REFUSED" and "refusing to send credentials there" in str(withheld.value)
    assert realm.requests[-1].method == "POST" and PASSWORD.encode() in realm.requests[-1].body
    assert elsewhere.requests == []


def _plain_registry(scripted, upload_body=b"", v2_body=b"{}"):
    def answer(request):
        if request.path == "/v2/":
            return 200, {"Content-Type": "application/json"}, v2_body
        if request.method == "POST" and "/blobs/uploads/" in request.path:
            return 202, {"Location": "/v2/os/x/blobs/uploads/1"}, upload_body
        if "/tags/list" in request.path:
            return 200, {"Content-Type": "application/json"}, endless()
        return 404, {"Content-Type": "application/json"}, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}'

    return scripted(answer)


def test_endless_small_bodies_end_in_one_line(scripted):
    v2 = _plain_registry(scripted, v2_body=endless())
    with pytest.raises(RegistryError) as ping:
        RegistryClient(v2.host, registry_options({"plain_http": True, "retries": 0})).ping()
    assert str(ping.value) == (
        "connecting to registry %s failed: %s answered with more than 64 KiB; refusing it" % (v2.host, v2.base_url)
    )
    upload = _plain_registry(scripted, upload_body=endless())
    with pytest.raises(RegistryError) as upload_error:
        RegistryClient(upload.host, registry_options({"plain_http": True, "retries": 0})).open_upload("os/x")
    assert "answered with more than 64 KiB; refusing it" in str(upload_error.value)
    # Closed, not drained: the server stopped long before its 1 GiB.
    assert v2.sent < 256 * 1024 * 1024 and upload.sent < 256 * 1024 * 1024


def test_an_endless_tag_list_keeps_the_module_small(ansible, scripted):
    """ironcore_image_info on a missing tag lists tags; an endless list must not grow the process."""
    server = _plain_registry(scripted)
    args = {"name": "%s/os/x:1.0" % server.host, "plain_http": True, "retries": 0}
    command = ["/usr/bin/time", "-v", "ansible", "localhost", "-c", "local", "-i", "localhost,"]
    command += ["-m", "ironcore.image.ironcore_image_info", "-a", json.dumps(args)]
    proc = subprocess.run(command, env=ansible.env, capture_output=True, text=True, timeout=600, check=False)
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert result["failed"] is True and "\n" not in result["msg"]
    assert "HTTP 404" in result["msg"] and "its tags could not be listed" in result["msg"]
    max_rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    assert max_rss_kib < 300 * 1024, max_rss_kib


def test_a_black_hole_fails_in_one_line_after_the_retries(scripted):
    hole = BlackHole()
    try:
        warnings: list[str] = []
        client = RegistryClient(
            hole.host, registry_options({"plain_http": True, "timeout": 0.5, "retries": 1}), warnings.append
        )
        client._sleep = lambda seconds: None
        with pytest.raises(RegistryError) as dead:
            client.ping()
    finally:
        hole.stop()
    assert str(dead.value) == (
        "connecting to registry %s failed: registry %s did not answer within timeout=0.5s; retry later or raise"
        " timeout" % (hole.host, hole.host)
    )
    assert dead.value.code == "TIMEOUT" and dead.value.option == "timeout"
    assert warnings == [
        "retrying connecting to registry %s (attempt 2 of 2): registry %s did not answer within timeout=0.5s;"
        " retry later or raise timeout" % (hole.host, hole.host)
    ]
    assert client.retries == 1


def test_retries_are_reported(registry_plain, fault_proxy):
    proxy = fault_proxy(registry_plain)
    digest = put_blob(client_for(registry_plain), "security/retries", b"rootfs")
    warnings: list[str] = []
    client = client_for(proxy, warnings.append, retries=3)
    proxy.add("status", method="HEAD", status=503, times=2)
    assert client.head_blob("security/retries", digest) == len(b"rootfs")
    what = "checking blob %s in %s/security/retries" % (digest, proxy.host)
    assert warnings == [
        "retrying %s (attempt 2 of 4): registry answered HTTP 503" % what,
        "retrying %s (attempt 3 of 4): registry answered HTTP 503" % what,
    ]
    assert client.retries == 2


def test_a_missing_tag_names_the_tags_there_are(registry_plain):
    client = client_for(registry_plain)
    repository = "security/tags"
    manifest = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":'
    config = put_blob(client, repository, b"{}")
    manifest += (
        b'{"mediaType":"application/vnd.oci.empty.v1+json","digest":"%s","size":2},"layers":[]}' % config.encode()
    )
    for tag in ["v%02d" % number for number in range(12)]:
        client.put_manifest(repository, tag, manifest, "application/vnd.oci.image.manifest.v1+json")
    with pytest.raises(RegistryError) as missing:
        client.get_manifest(repository, "v111")
    assert missing.value.status == 404 and missing.value.code == "MANIFEST_UNKNOWN"
    # Closest by edit distance first (v11 is one edit away, v01 and v10 two), then the rest by name.
    assert str(missing.value).endswith(
        "; repository security/tags has tags, closest first: v11, v01, v10, v00, v02, v03, v04, v05, v06, v07, ..."
    )
    with pytest.raises(RegistryError) as unknown:
        client.get_manifest("security/never-pushed", "1.0")
    assert str(unknown.value).endswith("; the registry does not know repository security/never-pushed")


def test_missing_credentials_say_why(registry_tls, tmp_path, monkeypatch):
    missing = str(tmp_path / "absent" / "config.json")
    with pytest.raises(RegistryError) as absent:
        client_for(registry_tls, username=None, password=None, docker_config=missing).ping()
    assert "requires authentication; docker_config %s does not exist;" % missing in str(absent.value)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credsStore": "desktop"}))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin") + os.pathsep + "/usr/bin")
    with pytest.raises(RegistryError) as helper:
        client_for(registry_tls, username=None, password=None, docker_config=str(config)).ping()
    assert "docker-credential-desktop not found on PATH" in str(helper.value)


def test_fetch_through_a_redirecting_registry(ansible, registry_tls, fault_proxy, scripted, tmp_path):
    """The module's view: S3-style redirects work, a storage host that asks for credentials gets none."""
    from helpers.images import build_ours, skopeo_push
    from helpers.tasks import run_tasks

    layout = str(tmp_path / "layout")
    files = build_ours(layout, "os/redirected:1.0", tmp_path)
    repository = "security/redirected"
    skopeo_push(
        layout, "os/redirected:1.0", "%s/%s:1.0" % (registry_tls.host, repository), registry_tls.skopeo_flags("dest-")
    )
    realm = scripted(lambda request: (200, {}, b'{"token": "stolen"}'), registry_tls.pki)

    def serve(request):
        digest = request.path.rsplit("/", 1)[1]
        with open(blob_data_path(registry_tls.storage, digest), "rb") as stream:
            return 200, {"Content-Type": "application/octet-stream"}, stream.read()

    signed = scripted(serve, registry_tls.pki)
    challenging = scripted(
        lambda request: (401, {"Www-Authenticate": 'Bearer realm="%s/token"' % realm.base_url}, b""), registry_tls.pki
    )
    proxies = []
    for storage in (signed, challenging):
        proxy = fault_proxy(registry_tls)
        proxy.add("redirect", method="GET", path="/blobs/sha256:", location=storage.base_url, times=-1)
        proxies.append(proxy)
    tasks = [
        (
            "ironcore.image.ironcore_image_fetch",
            dict(
                registry_tls.registry_args,
                name="%s/%s:1.0" % (proxy.host, repository),
                platform="baremetal",
                architecture="arm64",
                dest=str(tmp_path / name),
                retries=0,
            ),
        )
        for proxy, name in zip(proxies, ("signed", "challenging"))
    ]
    fetched, refused = run_tasks(ansible, str(tmp_path), tasks)
    assert fetched["changed"] is True and fetched.get("failed") is not True, fetched
    assert (tmp_path / "signed" / "rootfs").read_bytes() == files[("arm64", "rootfs")]
    assert refused["failed"] is True and "\n" not in refused["msg"]
    assert "%s asks for credentials" % challenging.base_url in refused["msg"], refused["msg"]
    assert signed.requests and challenging.requests and realm.requests == []
    assert not leaked(signed.requests) and not leaked(challenging.requests)
    assert PASSWORD not in json.dumps([fetched, refused])
