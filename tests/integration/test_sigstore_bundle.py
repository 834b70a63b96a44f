"""Sigstore bundles: ironcore_image_sign writes them, npm's @sigstore/verify checks them, fetch accepts them.

The bundles are read back from a real docker-registry (distribution, no
referrers API: the `sha256-<hex>` tag schema) with skopeo and from the
registry's own storage, and verified by `tests/sigstore/verify.mjs`, which
runs Sigstore's own verifier with the public key as the only trust material
(`make sigstore-verifier` installs it; `make pytest` depends on that).
"""

from __future__ import annotations

import base64
import json
import pathlib
import subprocess

import pytest
from helpers.images import push_built_image
from helpers.registry import blob_data_path
from helpers.signing import image_digests, make_key, skopeo_bytes, skopeo_raw

SIGN = "ironcore.image.ironcore_image_sign"
FETCH = "ironcore.image.ironcore_image_fetch"
INFO = "ironcore.image.ironcore_image_info"
NAME = "registry.example.com/os/bundled:1.0"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PREDICATE = "https://sigstore.dev/cosign/sign/v1"
VERIFIER = pathlib.Path(__file__).resolve().parents[1] / "sigstore"

pytestmark = pytest.mark.integration


def sigstore_verify(bundle: pathlib.Path, public_key: str, digest: str) -> subprocess.CompletedProcess:
    """The command docs/signing.md shows: node verify.mjs BUNDLE KEY DIGEST."""
    assert (VERIFIER / "node_modules" / "@sigstore" / "verify").is_dir(), "run make sigstore-verifier first"
    return subprocess.run(
        ["node", str(VERIFIER / "verify.mjs"), str(bundle), public_key, digest],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def bundle_referrer(registry, repository: str, digest: str) -> tuple[dict, dict, bytes]:
    """(tag-schema entry, referrer manifest, bundle bytes from the registry's storage) of digest's one bundle."""
    listed = skopeo_raw(registry, "%s:%s" % (repository, digest.replace(":", "-")))
    [entry] = [e for e in listed["manifests"] if e.get("artifactType") == BUNDLE]
    data = skopeo_bytes(registry, "%s@%s" % (repository, entry["digest"]))
    manifest = json.loads(data)
    [layer] = manifest["layers"]
    with open(blob_data_path(registry.storage, layer["digest"]), "rb") as stream:
        return entry, manifest, stream.read()


def test_bundles_verify_with_sigstore_and_fetch_accepts_a_bundle_alone(ansible, registry_plain, tmp_path):
    first = make_key(tmp_path, "first")
    stranger = make_key(tmp_path, "stranger")
    _layout, reference, _pushed = push_built_image(ansible, registry_plain, tmp_path / "both", NAME, "bundle/both")
    repository = reference.rsplit(":", 1)[0]
    args = dict(registry_plain.registry_args, name=reference, key=first["key"])

    # The default writes both formats; check mode first writes nothing.
    checked = ansible.module(SIGN, args, check=True)
    assert checked["changed"] is True and set(checked["bundles"].values()) == {None}, checked
    # The image's index and manifests, then the platform indexes its -baremetal and -virtualization names point at.
    digests = image_digests(registry_plain, reference)
    digests += [image_digests(registry_plain, reference + suffix)[0] for suffix in ("-baremetal", "-virtualization")]
    referrers_tag = "docker://%s:%s" % (repository, digests[0].replace(":", "-"))
    missing = subprocess.run(
        ["skopeo", "inspect", "--raw", *registry_plain.skopeo_flags(), referrers_tag], capture_output=True, check=False
    )
    assert missing.returncode != 0, "check mode wrote the referrers index"

    signed = ansible.module(SIGN, args)
    assert signed["changed"] is True and sorted(signed["signed"]) == sorted(digests), signed
    assert sorted(signed["bundles"]) == sorted(digests) and sorted(signed["signatures"]) == sorted(digests)
    for digest in digests:
        entry, manifest, data = bundle_referrer(registry_plain, repository, digest)
        # cosign's BUNDLE_SPEC.md: artifactType, the empty config, one layer, the subject, two annotations.
        assert entry["digest"] == signed["bundles"][digest]
        assert manifest["artifactType"] == BUNDLE and manifest["subject"]["digest"] == digest
        assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
        assert manifest["layers"][0]["mediaType"] == BUNDLE
        expected = {"dev.sigstore.bundle.content": "dsse-envelope", "dev.sigstore.bundle.predicateType": PREDICATE}
        assert manifest["annotations"] == expected
        assert json.loads(data)["verificationMaterial"]["tlogEntries"] == []
        path = tmp_path / ("%s.json" % digest.replace(":", "-"))
        path.write_bytes(data)
        accepted = sigstore_verify(path, first["pub"], digest)
        assert accepted.returncode == 0, accepted.stderr
        assert sigstore_verify(path, stranger["pub"], digest).returncode == 1
    # The bundle of one digest is not the signature of another.
    assert sigstore_verify(path, first["pub"], digests[0]).returncode == 1
    # One byte of the statement changed: Sigstore's verifier refuses it.
    bundle = json.loads(path.read_bytes())
    payload = bytearray(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    payload[payload.index(b"sha256")] ^= 1
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(bytes(payload)).decode()
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(bundle))
    refused = sigstore_verify(tampered, first["pub"], digest)
    assert refused.returncode == 1 and "refused" in refused.stderr, refused

    # Signed: a second run, in check mode and not, attaches nothing new.
    assert ansible.module(SIGN, args, check=True)["changed"] is False
    again = ansible.module(SIGN, args)
    assert again["changed"] is False and again["bundles"] == signed["bundles"], again

    # An image with a bundle alone: fetch with require_signature delivers it, and says the bundle verified.
    _layout, alone, _pushed = push_built_image(ansible, registry_plain, tmp_path / "alone", NAME, "bundle/alone")
    only = ansible.module(SIGN, dict(args, name=alone, signature_format="bundle"))
    assert only["changed"] is True and only["signatures"] == {}, only
    fetch = dict(
        registry_plain.registry_args,
        name=alone,
        dest=str(tmp_path / "dest"),
        platform="baremetal",
        architecture="amd64",
        require_signature=True,
    )
    fetched = ansible.module(FETCH, dict(fetch, signature_keys=[first["pub"]]))
    assert fetched.get("failed") is not True, fetched
    assert set(fetched["signature_formats"].values()) == {"bundle"} and len(fetched["signature_formats"]) == 2
    assert set(fetched["signatures"].values()) == {first["fingerprint"]}
    # Info reports the bundles it finds and which format verified.
    info = ansible.module(INFO, dict(registry_plain.registry_args, name=alone, signature_keys=[first["pub"]]))
    described = info["signatures"][fetched["digest"]]
    assert described["bundles"] == [only["bundles"][fetched["digest"]]] and described["signed"] is True, described
    assert described["verified_format"] == "bundle" and described["verified_by"] == first["fingerprint"], described
    # Another key's public key: the bundle is refused, nothing is fetched.
    other = ansible.module(FETCH, dict(fetch, dest=str(tmp_path / "other"), signature_keys=[stranger["pub"]]))
    assert other.get("failed") is True and "Sigstore bundle signed by an unknown key" in other["msg"], other
    assert not (tmp_path / "other").exists()
