"""The registry client against the three real registries and the fault proxy."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient, RegistryError
from ansible_collections.ironcore.image.plugins.module_utils._model import OCI_INDEX, OCI_MANIFEST
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import registry_options

pytestmark = pytest.mark.integration

REGISTRIES = ["registry_plain", "registry_tls", "registry_token"]


def client_for(target, **overrides) -> RegistryClient:
    client = RegistryClient(target.host, registry_options(dict(target.registry_args, **overrides)))
    client._sleep = lambda seconds: None  # backoff without waiting: the proxy decides what fails
    return client


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put_blob(client: RegistryClient, repository: str, data: bytes) -> str:
    digest = digest_of(data)
    session = client.open_upload(repository)
    assert session is not None
    client.request(
        "PUT",
        session.location,
        what="test upload",
        repository=repository,
        actions=("pull", "push"),
        params={"digest": digest},
        body=lambda: io.BytesIO(data),
        ok=(201,),
    ).close()
    return digest


@pytest.mark.parametrize("fixture", REGISTRIES)
def test_round_trip_index_with_exact_bytes(request, fixture):
    target = request.getfixturevalue(fixture)
    client = client_for(target)
    client.ping()
    repository = "client/roundtrip"
    layer = b"rootfs bytes " * 5000
    layer_digest = put_blob(client, repository, layer)
    config_digest = put_blob(client, repository, b"{}")
    assert client.head_blob(repository, layer_digest) == len(layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.ironcore.image.config.v1+json",
                "digest": config_digest,
                "size": 2,
            },
            "layers": [
                {"mediaType": "application/vnd.ironcore.image.rootfs", "digest": layer_digest, "size": len(layer)}
            ],
        },
        indent=3,
    ).encode()  # unusual spacing: the registry must keep our bytes
    manifest_digest = client.put_manifest(repository, digest_of(manifest), manifest, OCI_MANIFEST)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux", "variant": "virtualization"},
                }
            ],
        }
    ).encode()
    assert client.put_manifest(repository, "1.0", index, OCI_INDEX) == digest_of(index)
    assert client.get_manifest(repository, "1.0") == (index, OCI_INDEX, digest_of(index))
    assert client.head_manifest(repository, "1.0") == {
        "digest": digest_of(index),
        "mediaType": OCI_INDEX,
        "size": len(index),
    }
    assert client.head_manifest(repository, "2.0") is None
    assert client.list_tags(repository) == ["1.0"]
    assert client.list_tags("client/never-pushed") is None
    with client.open_blob(repository, layer_digest, offset=13) as stream:
        assert stream.offset == 13 and b"".join(stream.iter_chunks(4096)) == layer[13:]
    assert client.open_upload("client/mounted", mount=layer_digest, mount_from=repository) is None
    assert client.head_blob("client/mounted", layer_digest) == len(layer)
    with pytest.raises(RegistryError) as missing:
        client.get_manifest(repository, "nope")
    assert missing.value.status == 404 and missing.value.code == "MANIFEST_UNKNOWN"


@pytest.mark.parametrize("fixture", ["registry_tls", "registry_token"])
def test_wrong_password_and_no_credentials(request, fixture):
    target = request.getfixturevalue(fixture)
    with pytest.raises(RegistryError) as wrong:
        client_for(target, password="not-the-password").ping()
    assert wrong.value.code == "UNAUTHORIZED" and "check username and password" in str(wrong.value)
    with pytest.raises(RegistryError) as anonymous:
        client_for(target, username=None, password=None, docker_config="/nonexistent/config.json").head_blob(
            "x/y", digest_of(b"")
        )
    assert anonymous.value.code == "UNAUTHORIZED" and "requires authentication" in str(anonymous.value)


def test_auth_headers_let_a_plain_client_read_a_blob(registry_token):
    import requests

    client = client_for(registry_token)
    digest = put_blob(client, "client/url", b"kernel")
    headers = client_for(registry_token).auth_headers("client/url")
    assert headers["Authorization"].startswith("Bearer ")
    answer = requests.get(
        client.blob_url("client/url", digest), headers=headers, verify=registry_token.pki.ca_cert, timeout=30
    )
    assert answer.status_code == 200 and answer.content == b"kernel"


def test_retries_through_injected_faults(registry_plain, fault_proxy):
    proxy = fault_proxy(registry_plain)
    client = client_for(proxy, retries=3, timeout=2)
    data = b"x" * 300000
    digest = put_blob(client_for(registry_plain), "client/faults", data)
    proxy.add("status", method="HEAD", status=503, times=1)
    proxy.add("status", method="HEAD", status=429, times=1)
    proxy.add("reset", method="HEAD", times=1)
    assert client.head_blob("client/faults", digest) == len(data)
    assert [entry[2] for entry in proxy.log] == ["status", "status", "reset", "forward"]

    proxy.clear()
    proxy.add("status", method="GET", status=502, times=-1)
    with pytest.raises(RegistryError) as failing:
        client.get_manifest("client/faults", "1.0")
    assert failing.value.status == 502 and failing.value.retryable and len(proxy.log) == 4

    proxy.clear()
    proxy.add("reset_response", method="GET", path="/blobs/", after_bytes=100000)
    with client.open_blob("client/faults", digest) as stream, pytest.raises(RegistryError) as broken:
        b"".join(stream.iter_chunks(65536))
    assert broken.value.retryable

    proxy.clear()
    proxy.add("stall", method="HEAD", times=1, seconds=30)
    assert client.head_blob("client/faults", digest) == len(data)
    assert [entry[2] for entry in proxy.log] == ["stall", "forward"]


def test_connection_refused_and_untrusted_certificate(registry_tls):
    from helpers.registry import free_port

    with pytest.raises(RegistryError) as refused:
        RegistryClient("127.0.0.1:%d" % free_port(), registry_options({"plain_http": True, "retries": 0})).ping()
    assert refused.value.code == "CONNECTION_REFUSED"
    with pytest.raises(RegistryError) as untrusted:
        client_for(registry_tls, ca_cert=None).ping()
    assert "ca_cert" in str(untrusted.value) and "validate_certs" in str(untrusted.value)
    with pytest.raises(RegistryError) as scheme:
        client_for(registry_tls, plain_http=True).ping()
    assert "plain_http=false" in str(scheme.value)
    client_for(registry_tls, ca_cert=None, validate_certs=False).ping()


def test_a_refused_token_is_fetched_again(registry_token):
    client = client_for(registry_token)
    repository = "client/refresh"
    token_server = registry_token.token_server
    token_server.pull_only_tokens = 1
    before = len(token_server.requests)
    # Cached for "pull,push" but granting pull only: the HEAD passes, the POST gets 401.
    assert client.head_blob(repository, digest_of(b"absent"), actions=("pull", "push")) is None
    put_blob(client, repository, b"after a refresh")
    asked = token_server.requests[before:]
    assert [request["scopes"] for request in asked] == [["repository:client/refresh:pull,push"]] * 2


@pytest.mark.parametrize("fixture", ["registry_tls", "registry_token"])
def test_a_location_on_another_port_gets_no_credentials(request, fixture, fault_proxy):
    target = request.getfixturevalue(fixture)
    # The proxy forwards to the same registry, so only the withheld credentials make it fail.
    elsewhere = fault_proxy(target)
    client = client_for(target)
    repository = "client/elsewhere"
    data = b"initramfs"

    def finish(location: str):
        return client.request(
            "PUT",
            location,
            what="test upload",
            repository=repository,
            actions=("pull", "push"),
            params={"digest": digest_of(data)},
            body=lambda: io.BytesIO(data),
            ok=(201,),
        )

    session = client.open_upload(repository)
    assert session is not None and target.host in session.location
    with pytest.raises(RegistryError) as withheld:
        finish(session.location.replace(target.host, elsewhere.host, 1))
    assert withheld.value.code == "UNAUTHORIZED"
    assert "go only to https://%s" % target.host in str(withheld.value)
    assert elsewhere.requests and all("authorization" not in headers for _m, _p, headers in elsewhere.requests)
    finish(session.location).close()
    assert client.head_blob(repository, digest_of(data)) == len(data)


def test_an_oversized_token_answer_is_refused(registry_token):
    token_server = registry_token.token_server
    token_server.oversized_answers = 1
    with pytest.raises(RegistryError) as refused:
        client_for(registry_token).head_blob("client/oversized", digest_of(b"absent"))
    assert "answered with more than 1 MiB; refusing it" in str(refused.value)
    assert token_server.oversized_answers == 0
    assert client_for(registry_token).head_blob("client/oversized", digest_of(b"absent")) is None
