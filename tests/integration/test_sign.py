"""ironcore_image_sign and fetch's signature check through the real ansible CLI, against a real registry.

Keys are made by openssl; every signature written is verified by
`openssl dgst -verify`, the `.sig` manifests are read by `skopeo inspect
--raw` and the payloads from the registry's own storage.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest
from helpers.images import build_ours
from helpers.registry import blob_data_path

SIGN = "ironcore.image.ironcore_image_sign"
PUSH = "ironcore.image.ironcore_image_push"
FETCH = "ironcore.image.ironcore_image_fetch"
NAME = "registry.example.com/os/signed:1.0"
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE = "dev.cosignproject.cosign/signature"
PASSPHRASE = "correct horse battery staple"

pytestmark = pytest.mark.integration


def openssl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60, check=False)


def make_key(directory, label: str, passphrase: str | None = None) -> dict[str, str]:
    """An EC P-256 key made by openssl: SEC1, then PKCS#8 (encrypted with a passphrase), and its public key."""
    sec1, private, public = (os.path.join(str(directory), label + suffix) for suffix in (".ec", ".pem", ".pub"))
    assert openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", sec1).returncode == 0
    crypt = ["-v2", "aes-256-cbc", "-passout", "pass:" + passphrase] if passphrase else ["-nocrypt"]
    assert openssl("pkcs8", "-topk8", "-in", sec1, "-out", private, *crypt).returncode == 0
    assert openssl("ec", "-in", sec1, "-pubout", "-out", public).returncode == 0
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", public, "-outform", "DER"], capture_output=True, check=True
    )
    fingerprint = (
        "SHA256:"
        + subprocess.run(["sha256sum"], input=der.stdout, capture_output=True, check=True).stdout.decode().split()[0]
    )
    return {"sec1": sec1, "key": private, "pub": public, "fingerprint": fingerprint}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sign-keys")
    return {
        "first": make_key(directory, "first"),
        "second": make_key(directory, "second", PASSPHRASE),
        "stranger": make_key(directory, "stranger"),
    }


def push_image(ansible, registry, root, repository: str) -> tuple[str, str]:
    """A tiny image built into a layout and pushed as <registry>/<repository>:1.0; returns (layout, reference)."""
    layout = str(root / "layout")
    os.makedirs(str(root / "in"), exist_ok=True)
    build_ours(layout, NAME, root / "in", tag=repository.replace("/", "-"))
    reference = "%s/%s:1.0" % (registry.host, repository)
    pushed = ansible.module(PUSH, dict(registry.registry_args, layout=layout, name=NAME, destination=reference))
    assert pushed["changed"] is True, pushed
    return layout, reference


def skopeo_bytes(registry, reference: str) -> bytes:
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", *registry.skopeo_flags(), "docker://%s" % reference],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def skopeo_raw(registry, reference: str) -> dict:
    return json.loads(skopeo_bytes(registry, reference))


def image_digests(registry, reference: str) -> list[str]:
    """The index (its digest by sha256sum of the bytes skopeo read) and every manifest it lists."""
    data = skopeo_bytes(registry, reference)
    digest = (
        "sha256:"
        + subprocess.run(["sha256sum"], input=data, capture_output=True, check=True).stdout.split()[0].decode()
    )
    return [digest] + [entry["digest"] for entry in json.loads(data)["manifests"]]


def openssl_verifies(workdir, public: str, payload: bytes, signature_b64: str) -> bool:
    payload_path, signature_path = str(workdir / "payload"), str(workdir / "sig.der")
    with open(payload_path, "wb") as stream:
        stream.write(payload)
    with open(signature_path, "wb") as stream:
        stream.write(base64.b64decode(signature_b64))
    return openssl("dgst", "-sha256", "-verify", public, "-signature", signature_path, payload_path).returncode == 0


def signature_layers(registry, repository_reference: str, digest: str) -> list[tuple[bytes, str]]:
    """(payload bytes from the registry's storage, signature annotation) of each layer of digest's .sig."""
    manifest = skopeo_raw(registry, "%s:%s.sig" % (repository_reference, digest.replace(":", "-")))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    layers = []
    for layer in manifest["layers"]:
        assert layer["mediaType"] == SIMPLESIGNING
        with open(blob_data_path(registry.storage, layer["digest"]), "rb") as stream:
            layers.append((stream.read(), layer["annotations"][SIGNATURE]))
    return layers


def test_sign_in_a_registry_is_cosign_format_verified_by_openssl(ansible, registry_plain, keys, tmp_path):
    _layout, reference = push_image(ansible, registry_plain, tmp_path, "sign/reg")
    repository = reference.rsplit(":", 1)[0]
    args = dict(registry_plain.registry_args, name=reference, key=keys["first"]["key"])

    signed = ansible.module(SIGN, args)
    assert signed["changed"] is True, signed
    digests = image_digests(registry_plain, reference)
    assert signed["digest"] == digests[0]
    assert sorted(signed["signed"]) == sorted(digests)
    assert signed["fingerprint"] == keys["first"]["fingerprint"]
    for digest in digests:
        [(payload, signature)] = signature_layers(registry_plain, repository, digest)
        critical = json.loads(payload)["critical"]
        assert critical["identity"]["docker-reference"] == repository
        assert critical["image"]["docker-manifest-digest"] == digest
        assert critical["type"] == "cosign container image signature"
        assert openssl_verifies(tmp_path, keys["first"]["pub"], payload, signature)
        assert not openssl_verifies(tmp_path, keys["stranger"]["pub"], payload, signature)

    # The same key again: nothing changes, in check mode neither.
    assert ansible.module(SIGN, args, check=True)["changed"] is False
    again = ansible.module(SIGN, args)
    assert again["changed"] is False and again["signed"] == [], again

    # A second signer appends a layer, with an encrypted PKCS#8 key; the passphrase is never printed.
    second = dict(args, key=keys["second"]["key"], key_passphrase=PASSPHRASE)
    checked = ansible.module(SIGN, second, check=True)
    assert checked["changed"] is True
    assert len(signature_layers(registry_plain, repository, digests[0])) == 1
    added = ansible.module(SIGN, second)
    assert added["changed"] is True and added["fingerprint"] == keys["second"]["fingerprint"]
    assert PASSPHRASE not in added["_stdout"] + added["_stderr"]
    for digest in digests:
        (first_payload, first_sig), (second_payload, second_sig) = signature_layers(registry_plain, repository, digest)
        assert openssl_verifies(tmp_path, keys["first"]["pub"], first_payload, first_sig)
        assert openssl_verifies(tmp_path, keys["second"]["pub"], second_payload, second_sig)


def test_sign_in_a_layout_records_sig_names(ansible, keys, tmp_path):
    layout = str(tmp_path / "layout")
    os.makedirs(str(tmp_path / "in"))
    build_ours(layout, NAME, tmp_path / "in", tag="layout")
    # A SEC1 key works as well as PKCS#8.
    signed = ansible.module(SIGN, {"layout": layout, "name": NAME, "key": keys["first"]["sec1"]})
    assert signed["changed"] is True, signed
    assert signed["digest"] in signed["signed"]
    for digest in signed["signed"]:
        name = "registry.example.com/os/signed:%s.sig" % digest.replace(":", "-")
        proc = subprocess.run(
            ["skopeo", "inspect", "--raw", "oci:%s:%s" % (layout, name)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
        [layer] = json.loads(proc.stdout)["layers"]
        with open(os.path.join(layout, "blobs", "sha256", layer["digest"].split(":")[1]), "rb") as stream:
            payload = stream.read()
        assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == digest
        assert openssl_verifies(tmp_path, keys["first"]["pub"], payload, layer["annotations"][SIGNATURE])
    assert ansible.module(SIGN, {"layout": layout, "name": NAME, "key": keys["first"]["sec1"]})["changed"] is False


def test_sign_refuses_a_wrong_passphrase_in_one_line(ansible, keys, tmp_path):
    layout = str(tmp_path / "layout")
    os.makedirs(str(tmp_path / "in"))
    build_ours(layout, NAME, tmp_path / "in", tag="pass")
    failed = ansible.module(
        SIGN, {"layout": layout, "name": NAME, "key": keys["second"]["key"], "key_passphrase": "wrong"}
    )
    assert failed["failed"] is True
    assert "cannot be loaded" in failed["msg"] and "\n" not in failed["msg"]
    assert not any(
        ".sig" in name for name in json.dumps(json.load(open(os.path.join(layout, "index.json")))).split('"')
    )
