"""Provenance (DSSE in-toto/SLSA) and CycloneDX SBOM referrers, and fetch's require_provenance, for real.

The image's rootfs is an ext4 file system made by `mke2fs -d` from a tree
holding a small dpkg status file. What the module attaches is read back
with `skopeo inspect --raw` (the sha256-<hex> tag-schema index and the
referrer manifests) and from the registry's own storage; the DSSE
signature is verified by `openssl dgst -verify` over the PAE the test
builds from the spec.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess

import pytest
from helpers.counting import ByteCountingProxy
from helpers.inventory import local_host, write_inventory
from helpers.referrers_registry import ReferrersRegistry, api_listing, start_referrers_registry
from helpers.registry import blob_data_path
from helpers.signing import (
    assert_refused,
    assert_untouched,
    dest_holding_a_kernel,
    http_put_blob,
    http_put_manifest,
    image_digests,
    make_key,
    openssl_verifies,
    skopeo_bytes,
    skopeo_raw,
)

from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient
from ansible_collections.ironcore.image.plugins.module_utils._referrers import ReferrerBlob, attach_referrer
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import registry_options
from ansible_collections.ironcore.image.plugins.module_utils._store import RegistryStore

pytestmark = pytest.mark.integration

BUILD = "ironcore.image.ironcore_image_build"
PUSH = "ironcore.image.ironcore_image_push"
SIGN = "ironcore.image.ironcore_image_sign"
# The `.sig` format alone: these tests count and edit the provenance and SBOM referrers.
LEGACY = {"signature_format": "legacy"}
FETCH = "ironcore.image.ironcore_image_fetch"
COPY = "ironcore.image.ironcore_image_copy"
INFO = "ironcore.image.ironcore_image_info"
NAME = "registry.example.com/os/attested:1.0"
IN_TOTO = "application/vnd.in-toto+json"
CYCLONEDX = "application/vnd.cyclonedx+json"
VULN = "https://in-toto.io/attestation/vuln/v1"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DPKG_STATUS = """Package: base-files
Status: install ok installed
Priority: required
Architecture: amd64
Version: 12.4+deb12u5
Description: Debian base system miscellaneous files

Package: removed-tool
Status: deinstall ok config-files
Architecture: amd64
Version: 0.9-1

Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u4
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs.
"""
INSTALLED = {"base-files": "12.4+deb12u5", "libc6": "2.36-9+deb12u4"}


def ext4_rootfs(directory) -> str:
    """A 2 MiB ext4 image holding var/lib/dpkg/status, made by mke2fs -d (no mounting)."""
    tree = directory / "tree"
    (tree / "var" / "lib" / "dpkg").mkdir(parents=True)
    (tree / "var" / "lib" / "dpkg" / "status").write_text(DPKG_STATUS)
    image = str(directory / "rootfs.ext4")
    proc = subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), image, "2M"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return image


def artifacts(directory, label: str = "") -> list[dict]:
    files = {}
    for role in ("kernel", "initramfs"):
        path = directory / ("%s%s" % (role, label))
        path.write_bytes(("%s %s of the provenance test\n" % (role, label)).encode() * 40)
        files[role] = str(path)
    return [dict(files, rootfs=ext4_rootfs(directory), architecture="amd64", cmdline="console=ttyS0")]


def build(ansible, directory, label: str = "") -> str:
    """A one-architecture bare-metal image with an ext4 rootfs, built into a layout; returns the layout."""
    directory.mkdir(parents=True, exist_ok=True)
    layout = str(directory / "layout")
    built = ansible.module(
        BUILD,
        {"layout": layout, "name": NAME, "artifacts": artifacts(directory, label), "platforms": ["baremetal"]},
    )
    assert built["changed"] is True, built
    return layout


def push(ansible, registry, layout: str, repository: str) -> str:
    reference = "%s/%s:1.0" % (registry.host, repository)
    pushed = ansible.module(PUSH, dict(registry.registry_args, layout=layout, name=NAME, destination=reference))
    assert pushed["changed"] is True, pushed
    return reference


def referrer_entries(registry, repository: str, digest: str) -> dict[str, dict]:
    """{artifactType: descriptor} of the sha256-<hex> tag-schema index read by skopeo, or of the referrers API."""
    if isinstance(registry, ReferrersRegistry):
        # The registry lists them itself: no tag-schema index was written.
        assert digest.replace(":", "-") not in tags_of(registry, repository.split("/", 1)[1])
        index = api_listing(registry, repository.split("/", 1)[1], digest)
    else:
        index = skopeo_raw(registry, "%s:%s" % (repository, digest.replace(":", "-")))
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    entries = {}
    for entry in index["manifests"]:
        assert entry["artifactType"] not in entries
        entries[entry["artifactType"]] = entry
    return entries


def referrer_layer(registry, repository: str, entry: dict, subject: str) -> bytes:
    """The one layer of a referrer manifest, from the registry's storage; its subject checked."""
    manifest = skopeo_raw(registry, "%s@%s" % (repository, entry["digest"]))
    assert manifest["artifactType"] == entry["artifactType"]
    assert manifest["subject"]["digest"] == subject
    [layer] = manifest["layers"]
    with open(blob_data_path(registry.storage, layer["digest"]), "rb") as stream:
        return stream.read()


def dsse_pae(payload_type: str, body: bytes) -> bytes:
    # The DSSE v1 protocol: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, lengths in ASCII decimal.
    return b" ".join([b"DSSEv1", str(len(payload_type)).encode(), payload_type.encode(), str(len(body)).encode(), body])


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("provenance-keys")
    return {"first": make_key(directory, "first"), "stranger": make_key(directory, "stranger")}


@pytest.mark.parametrize("fixture", ["registry_plain", "registry_referrers"])
def test_sign_attaches_provenance_and_sbom_as_referrers(ansible, request, fixture, keys, tmp_path):
    registry = request.getfixturevalue(fixture)
    layout = build(ansible, tmp_path / "image")
    reference = push(ansible, registry, layout, "attest/reg")
    repository = reference.rsplit(":", 1)[0]
    args = dict(registry.registry_args, name=reference, key=keys["first"]["key"], provenance=True, sbom=True, **LEGACY)

    # Check mode writes nothing: no tag-schema index appears.
    digests = image_digests(registry, reference)
    index_digest = digests[0]
    checked = ansible.module(SIGN, args, check=True)
    assert checked["changed"] is True and checked["provenance"]["referrer"] is None, checked
    assert checked["sbom"]["packages"] == 2
    listing = "docker://%s:%s" % (repository, index_digest.replace(":", "-"))
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", *registry.skopeo_flags(), listing], capture_output=True, check=False
    )
    assert proc.returncode != 0

    signed = ansible.module(SIGN, args)
    assert signed["changed"] is True, signed
    assert signed["digest"] == index_digest
    entries = referrer_entries(registry, repository, index_digest)
    assert sorted(entries) == [CYCLONEDX, IN_TOTO]
    assert signed["provenance"]["referrer"] == entries[IN_TOTO]["digest"]
    assert signed["sbom"]["referrer"] == entries[CYCLONEDX]["digest"]
    assert signed["sbom"]["packages"] == 2

    # The DSSE envelope: its signature verifies over the PAE with openssl, by the signing key only.
    envelope = json.loads(referrer_layer(registry, repository, entries[IN_TOTO], index_digest))
    assert envelope["payloadType"] == IN_TOTO
    body = base64.b64decode(envelope["payload"])
    [signature] = envelope["signatures"]
    assert signature["keyid"] == keys["first"]["fingerprint"]
    assert openssl_verifies(tmp_path, keys["first"]["pub"], dsse_pae(IN_TOTO, body), signature["sig"])
    assert not openssl_verifies(tmp_path, keys["first"]["pub"], body, signature["sig"])
    assert not openssl_verifies(tmp_path, keys["stranger"]["pub"], dsse_pae(IN_TOTO, body), signature["sig"])

    # The statement: subject the index, and every layer skopeo sees among the resolved dependencies.
    statement = json.loads(body)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [{"name": repository, "digest": {"sha256": index_digest.split(":")[1]}}]
    definition = statement["predicate"]["buildDefinition"]
    layers = skopeo_raw(registry, "%s@%s" % (repository, digests[1]))["layers"]
    assert sorted((d["name"], "sha256:" + d["digest"]["sha256"]) for d in definition["resolvedDependencies"]) == sorted(
        (layer["annotations"]["org.opencontainers.image.title"], layer["digest"]) for layer in layers
    )
    assert definition["externalParameters"]["cmdline"] == {"amd64": "console=ttyS0"}
    assert definition["internalParameters"]["version"]

    # The SBOM lists exactly the installed packages of the ext4 rootfs.
    sbom = json.loads(referrer_layer(registry, repository, entries[CYCLONEDX], index_digest))
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    assert {c["name"]: c["version"] for c in sbom["components"]} == INSTALLED
    assert {c["purl"] for c in sbom["components"]} == {
        "pkg:deb/debian/%s@%s?arch=amd64" % (name, version) for name, version in INSTALLED.items()
    }
    assert {c["type"] for c in sbom["components"]} == {"library"}

    # Again: nothing changes, in check mode neither, and the referrers stay as they are.
    assert ansible.module(SIGN, args, check=True)["changed"] is False
    again = ansible.module(SIGN, args)
    assert again["changed"] is False, again
    assert referrer_entries(registry, repository, index_digest) == entries

    # Info reports them, and with the key, the verdicts.
    trusted = [keys["first"]["pub"]]
    info = ansible.module(INFO, dict(registry.registry_args, name=reference, signature_keys=trusted))
    assert info["provenance"]["referrers"] == [entries[IN_TOTO]["digest"]]
    assert info["provenance"]["verified"]["keyid"] == keys["first"]["fingerprint"]
    assert info["sbom"]["referrers"] == [entries[CYCLONEDX]["digest"]]
    verified_by = {digest: described["verified_by"] for digest, described in info["signatures"].items()}
    # The index, its manifests, and the platform index its platform tag names: every digest signed verifies.
    assert set(digests) < set(signed["signed"])
    assert verified_by == dict.fromkeys(signed["signed"], keys["first"]["fingerprint"])


def test_sbom_download_stops_at_the_rootfs_size(ansible, registry_plain, fault_proxy, keys, tmp_path):
    # A registry that sends 128 MiB more than the rootfs descriptor's 2 MiB: the SBOM reads the rootfs from it.
    layout = build(ansible, tmp_path / "image", label="padded")
    reference = push(ansible, registry_plain, layout, "attest/padded")
    [_index, manifest_digest] = image_digests(registry_plain, reference)
    manifest = skopeo_raw(registry_plain, "%s@%s" % (reference.rsplit(":", 1)[0], manifest_digest))
    [rootfs] = [layer for layer in manifest["layers"] if layer["mediaType"] == "application/vnd.ironcore.image.rootfs"]
    proxy = fault_proxy(registry_plain)
    extra = 128 * 1024 * 1024
    padding = proxy.add("pad_response", method="GET", path=rootfs["digest"], extra_bytes=extra, times=-1)
    args = dict(proxy.registry_args, name="%s/attest/padded:1.0" % proxy.host, key=keys["first"]["key"], sbom=True)

    failed = ansible.module(SIGN, args, check=True)
    assert failed.get("failed") is True, failed
    assert "larger than the %d bytes its descriptor says" % rootfs["size"] in failed["msg"], failed["msg"]
    assert "\n" not in failed["msg"]
    # The module hung up after its first read past the size: what it let through is socket buffers and
    # one read, not the junk (without the bound it reads all 128 MiB into a temporary file).
    assert padding.hits >= 1
    assert padding.padded < 32 * 1024 * 1024, padding.padded


# ---- fetch with require_provenance -----------------------------------------------------


@pytest.fixture(scope="module")
def attested(ansible, registry_plain, keys, tmp_path_factory):
    """Repositories of registry_plain in each state a node may meet; returns {case: reference}."""
    root = tmp_path_factory.mktemp("attested")
    layout = build(ansible, root / "one")
    other_layout = build(ansible, root / "two", label="two")
    host = registry_plain.host

    def sign(reference: str, key: str, provenance: bool) -> dict:
        args = dict(registry_plain.registry_args, name=reference, key=keys[key]["key"], provenance=provenance, **LEGACY)
        signed = ansible.module(SIGN, args)
        assert signed.get("failed") is not True, signed
        return signed

    cases = {}
    for case in ("good", "none", "stranger", "changed", "moved", "vuln"):
        cases[case] = push(ansible, registry_plain, layout, "attest/%s" % case)
        sign(cases[case], "first", case in ("good", "changed", "moved"))
    # Signed, and a vulnerability scan of it signed by the trusted key: a statement, but no provenance.
    attach_statement(
        registry_plain, "attest/vuln", image_digests(registry_plain, cases["vuln"])[0], keys["first"], root
    )
    # Signed by a trusted key, its provenance by another.
    sign(cases["stranger"], "stranger", True)

    # The provenance's payload edited after signing, its signature kept.
    digest = image_digests(registry_plain, cases["changed"])[0]
    tag = digest.replace(":", "-")
    index = skopeo_raw(registry_plain, "%s/attest/changed:%s" % (host, tag))
    [entry] = index["manifests"]
    manifest = skopeo_raw(registry_plain, "%s/attest/changed@%s" % (host, entry["digest"]))
    with open(blob_data_path(registry_plain.storage, manifest["layers"][0]["digest"]), "rb") as stream:
        envelope = json.load(stream)
    body = base64.b64decode(envelope["payload"])
    forged = body.replace(b"console=ttyS0", b"console=ttyS0 init=/bin/sh")
    assert forged != body
    envelope["payload"] = base64.b64encode(forged).decode()
    data = json.dumps(envelope).encode()
    manifest["layers"][0].update(digest=http_put_blob(registry_plain, "attest/changed", data), size=len(data))
    manifest_data = json.dumps(manifest).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest_data).hexdigest()
    http_put_manifest(registry_plain, "attest/changed", manifest_digest, manifest_data, manifest["mediaType"])
    entry.update(digest=manifest_digest, size=len(manifest_data))
    http_put_manifest(registry_plain, "attest/changed", tag, json.dumps(index).encode(), index["mediaType"])

    # The tag moved to another (signed) image, and the first image's referrers listed for it.
    first = image_digests(registry_plain, cases["moved"])[0]
    push(ansible, registry_plain, other_layout, "attest/moved")
    sign(cases["moved"], "first", False)
    moved = image_digests(registry_plain, cases["moved"])[0]
    assert moved != first
    listing = skopeo_bytes(registry_plain, "%s/attest/moved:%s" % (host, first.replace(":", "-")))
    http_put_manifest(
        registry_plain, "attest/moved", moved.replace(":", "-"), listing, "application/vnd.oci.image.index.v1+json"
    )
    return cases


def attach_statement(registry, repository: str, digest: str, key: dict, workdir) -> None:
    """A vulnerability-scan statement about `digest`, in a DSSE envelope signed by `key` with openssl, attached
    as an in-toto referrer listed in the sha256-<hex> tag-schema index, straight through the distribution API."""
    body = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": repository, "digest": {"sha256": digest.split(":")[1]}}],
            "predicateType": VULN,
            "predicate": {"scanner": {"uri": "https://example.com/scanner", "result": []}},
        }
    ).encode()
    pae_path, sig_path = workdir / "vuln.pae", workdir / "vuln.sig"
    pae_path.write_bytes(dsse_pae(IN_TOTO, body))
    signed = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key["key"], "-out", str(sig_path), str(pae_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert signed.returncode == 0, signed.stderr
    envelope = json.dumps(
        {
            "payloadType": IN_TOTO,
            "payload": base64.b64encode(body).decode(),
            "signatures": [{"keyid": key["fingerprint"], "sig": base64.b64encode(sig_path.read_bytes()).decode()}],
        }
    ).encode()
    index = skopeo_bytes(registry, "%s/%s@%s" % (registry.host, repository, digest))
    empty = b"{}"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": IN_TOTO,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": http_put_blob(registry, repository, empty),
                "size": len(empty),
            },
            "layers": [
                {"mediaType": IN_TOTO, "digest": http_put_blob(registry, repository, envelope), "size": len(envelope)}
            ],
            "subject": {"mediaType": json.loads(index)["mediaType"], "digest": digest, "size": len(index)},
        }
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    http_put_manifest(registry, repository, manifest_digest, manifest)
    listing = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest),
                "artifactType": IN_TOTO,
            }
        ],
    }
    http_put_manifest(
        registry,
        repository,
        digest.replace(":", "-"),
        json.dumps(listing).encode(),
        "application/vnd.oci.image.index.v1+json",
    )


def fetch(ansible, registry, reference: str, dest, keys_given, check: bool = False, **extra) -> dict:
    args = dict(
        registry.registry_args,
        name=reference,
        dest=str(dest),
        platform="baremetal",
        architecture="amd64",
        signature_keys=keys_given,
        require_provenance=True,
        **extra,
    )
    return ansible.module(FETCH, args, check=check)


def test_fetch_delivers_an_image_with_a_trusted_provenance(ansible, registry_plain, keys, attested, tmp_path):
    fetched = fetch(ansible, registry_plain, attested["good"], tmp_path / "dest", [keys["first"]["pub"]])
    assert fetched.get("failed") is not True, fetched
    assert fetched["provenance"] == {
        "verified": True,
        "keyid": keys["first"]["fingerprint"],
        "predicate_type": "https://slsa.dev/provenance/v1",
    }
    assert fetched["files"] and all(os.path.isfile(f["path"]) for f in fetched["files"].values())


@pytest.mark.parametrize(
    "case, reason",
    [
        ("none", "has no provenance"),
        ("stranger", "has a provenance signed by an unknown key (SHA256:"),
        ("changed", "has a provenance whose payload was changed"),
        ("moved", "has a provenance for another digest (sha256:"),
        ("vuln", "has a trusted statement whose predicate type is https://in-toto.io/attestation/vuln/v1, not"),
    ],
)
def test_fetch_refuses_without_a_trusted_provenance(ansible, registry_plain, keys, attested, tmp_path, case, reason):
    dest = dest_holding_a_kernel(tmp_path)
    # Check mode refuses the same way (the provision role's plan runs in it); once is enough to show it.
    for check in (True, False) if case == "changed" else (False,):
        failed = fetch(ansible, registry_plain, attested[case], dest, [keys["first"]["pub"]], check=check)
        assert_refused(failed, reason)
    if case == "stranger":
        assert keys["stranger"]["fingerprint"] in failed["msg"]
    assert_untouched(dest)


def test_fetch_accepts_the_predicate_types_it_is_given(ansible, registry_plain, keys, attested, tmp_path):
    # The vulnerability scan's digest and signature are right: listing its type is all that it lacked.
    fetched = fetch(
        ansible,
        registry_plain,
        attested["vuln"],
        tmp_path / "dest",
        [keys["first"]["pub"]],
        provenance_predicate_types=["https://slsa.dev/provenance/v1", VULN],
    )
    assert fetched.get("failed") is not True, fetched
    assert fetched["provenance"] == {"verified": True, "keyid": keys["first"]["fingerprint"], "predicate_type": VULN}


# ---- the playbooks, as a new user runs them ------------------------------------------------


def test_build_playbook_attaches_both_and_provision_playbook_requires_provenance(ansible, keys, tmp_path):
    layout, boot = str(tmp_path / "layout"), tmp_path / "boot"
    builder = local_host(
        build_name=NAME,
        build_layout=layout,
        build_platforms=["baremetal"],
        build_artifacts=artifacts(tmp_path),
        build_sign_key=keys["first"]["key"],
    )
    node = local_host(
        provision_name=NAME,
        provision_layout=layout,
        provision_architecture="amd64",
        provision_boot_dir=str(boot),
        provision_cache_dir=str(tmp_path / "cache"),
        provision_boot_url="http://boot.example.com/",
        provision_signature_keys=[keys["first"]["pub"]],
        provision_require_provenance=True,
    )
    inventory = write_inventory(str(tmp_path / "hosts.yml"), {"build_hosts": {"builder": builder}})
    rc, document, stderr = ansible.playbook(os.path.join(REPO, "playbooks", "build.yml"), inventory=inventory)
    assert rc == 0, (json.dumps(document)[-3000:], stderr)

    # In the layout, the tag-schema index is a name: skopeo finds both referrers there.
    index_digest = json.load(open(os.path.join(layout, "index.json")))
    [top] = [m for m in index_digest["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == NAME]
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", "oci:%s:%s" % (layout, top["digest"].replace(":", "-"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # The role signs in both formats (ironcore_image_sign's default): the Sigstore bundle is a referrer too.
    bundle = "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert sorted(entry["artifactType"] for entry in json.loads(proc.stdout)["manifests"]) == [
        CYCLONEDX,
        bundle,
        IN_TOTO,
    ]

    inventory = write_inventory(str(tmp_path / "nodes.yml"), {"baremetal": {"node": node}})
    rc, document, stderr = ansible.playbook(os.path.join(REPO, "playbooks", "provision.yml"), inventory=inventory)
    assert rc == 0, (json.dumps(document)[-3000:], stderr)
    assert any(boot.iterdir())


# ---- a registry with the referrers API, directly and behind mirrors -------------------------------------


@pytest.fixture(scope="module")
def api_mirror(tmp_path_factory):
    """A second registry with the referrers API, to hold a mirror's copy."""
    mirror = start_referrers_registry("mirror-api", str(tmp_path_factory.mktemp("mirror-api")))
    try:
        yield mirror
    finally:
        mirror.stop()


@pytest.fixture(scope="module")
def built(ansible, tmp_path_factory) -> str:
    return build(ansible, tmp_path_factory.mktemp("attest-api") / "image")


def tags_of(registry, repository: str) -> list[str]:
    proc = subprocess.run(
        ["skopeo", "list-tags", *registry.skopeo_flags(), "docker://%s/%s" % (registry.host, repository)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)["Tags"]


def forge_sbom(registry, repository: str, subject: dict) -> str:
    """A CycloneDX SBOM for the real digest that its publisher never made, attached at `registry` only."""
    store = RegistryStore(RegistryClient(registry.host, registry_options(registry.registry_args)), repository)
    forged = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [{"name": "backdoor"}]})
    blob = ReferrerBlob(CYCLONEDX, data=forged.encode())
    return attach_referrer(store, subject, CYCLONEDX, [blob])[1]


def fetch_args(registry, reference: str, dest, keys_given, **extra) -> dict:
    args = dict(registry.registry_args, name=reference, dest=str(dest), platform="baremetal", architecture="amd64")
    args.update(signature_keys=keys_given, require_provenance=True, **extra)
    return args


@pytest.mark.parametrize("mirror_kind", ["api", "tag_schema"])
def test_provenance_and_sbom_from_an_api_registry_directly_and_through_a_mirror(
    ansible, registry_referrers, registry_plain, api_mirror, built, keys, tmp_path, mirror_kind
):
    """The origin has the referrers API; the mirror has it too, or keeps the tag schema. Both up, then the origin down.

    Fetch with require_provenance delivers either way. A copy with source.mirrors carries the provenance and the
    SBOM from the origin; with the origin down, only what it can verify from the mirror (the signed provenance),
    and says what it left out: the SBOM, and an SBOM the mirror made up.
    """
    mirror = api_mirror if mirror_kind == "api" else registry_plain
    repository = "attest/api-%s" % mirror_kind
    # The origin is reached through a relay that is stopped later: the same name, then nothing listening.
    relay = ByteCountingProxy(registry_referrers.host)
    try:
        reference = "%s/%s:1.0" % (relay.host, repository)
        pushed = ansible.module(
            PUSH, dict(registry_referrers.registry_args, layout=built, name=NAME, destination=reference)
        )
        assert pushed["changed"] is True, pushed
        args = dict(registry_referrers.registry_args, name=reference, key=keys["first"]["key"])
        signed = ansible.module(SIGN, dict(args, provenance=True, sbom=True, **LEGACY))
        assert signed.get("failed") is not True, signed
        digest = signed["digest"]
        provenance, sbom = signed["provenance"]["referrer"], signed["sbom"]["referrer"]
        # The registry indexed both itself: no sha256-<hex> tag was written.
        assert [entry["digest"] for entry in registry_referrers.referrers(repository, digest)] == [provenance, sbom]
        assert not any(
            tag.startswith("sha256-") and not tag.endswith(".sig") for tag in tags_of(registry_referrers, repository)
        )

        # Directly: fetch finds the provenance through the API.
        trusted = [keys["first"]["pub"]]
        direct = ansible.module(FETCH, fetch_args(registry_referrers, reference, tmp_path / "direct", trusted))
        assert direct.get("failed") is not True, direct.get("msg")
        assert direct["provenance"]["verified"] is True

        # The mirror's copy, made by the copy module from the origin (no mirrors: the API lists both).
        cache = "cache/attest-%s" % mirror_kind
        mirrored = {"url": "http://%s" % mirror.host, "repository": cache}
        copied = ansible.module(
            COPY,
            {
                "source": dict(registry_referrers.registry_args, name=reference),
                "destination": dict(mirror.registry_args, name="%s/%s:1.0" % (mirror.host, cache)),
            },
        )
        assert copied.get("failed") is not True, copied.get("msg")
        assert copied["referrers"] == 2 and copied["signatures"] >= 1, copied
        if mirror_kind == "api":
            assert [entry["digest"] for entry in mirror.referrers(cache, digest)] == [provenance, sbom]
        else:
            assert set(referrer_entries(mirror, "%s/%s" % (mirror.host, cache), digest)) == {IN_TOTO, CYCLONEDX}
        index = skopeo_bytes(mirror, "%s/%s@%s" % (mirror.host, cache, digest))
        subject = {"mediaType": json.loads(index)["mediaType"], "digest": digest, "size": len(index)}
        forged = forge_sbom(mirror, cache, subject)

        # Origin up, behind the mirror: the provenance is found at the origin.
        up = ansible.module(
            FETCH, fetch_args(registry_referrers, reference, tmp_path / "up", trusted, mirrors=[mirrored])
        )
        assert up.get("failed") is not True, up.get("msg")
        assert up["provenance"]["verified"] is True
        # A copy with source.mirrors takes the referrers from the origin, which lacks the forged one.
        source = dict(registry_referrers.registry_args, name=reference, mirrors=[mirrored])
        into = "carried/%s-up" % mirror_kind
        destination = dict(registry_plain.registry_args, name="%s/%s:1.0" % (registry_plain.host, into))
        carried = ansible.module(COPY, {"source": source, "destination": destination})
        assert carried.get("failed") is not True, carried.get("msg")
        assert carried["referrers"] == 2 and carried["referrers_left_out"] == [], carried
        entries = referrer_entries(registry_plain, "%s/%s" % (registry_plain.host, into), digest)
        assert {entry["digest"] for entry in entries.values()} == {provenance, sbom}
    finally:
        relay.stop()

    # Origin down, digest pinned: fetch verifies the provenance from the mirror.
    pinned = reference.rsplit(":", 1)[0] + "@" + digest
    down = ansible.module(FETCH, fetch_args(registry_referrers, pinned, tmp_path / "down", trusted, mirrors=[mirrored]))
    assert down.get("failed") is not True, down.get("msg")
    assert down["provenance"]["verified"] is True and down["bytes_from_origin"] == 0
    # The refused origin is waited through once (the default 4 retries), then remembered for the run: the other
    # signature and referrers lookups go straight to the mirror.
    assert down["retries"] <= 4, down["retries"]
    # A copy carries the signed provenance from the mirror, and leaves out both SBOMs, saying so.
    into = "carried/%s-down" % mirror_kind
    source = dict(registry_referrers.registry_args, name=pinned, mirrors=[mirrored])
    destination = dict(registry_plain.registry_args, name="%s/%s:1.0" % (registry_plain.host, into))
    carried = ansible.module(COPY, {"source": source, "destination": destination})
    assert carried.get("failed") is not True, carried.get("msg")
    assert carried["referrers"] == 1, carried
    left_out = sorted(carried["referrers_left_out"], key=lambda entry: entry["digest"])
    expected = [
        {"subject": digest, "digest": left, "artifact_type": CYCLONEDX, "mirror": mirrored["url"]}
        for left in sorted([sbom, forged])
    ]
    assert left_out == expected
    assert {
        entry["digest"]
        for entry in referrer_entries(registry_plain, "%s/%s" % (registry_plain.host, into), digest).values()
    } == {provenance}
    # What was carried verifies at the destination as it did at the origin.
    at_destination = "%s/%s@%s" % (registry_plain.host, into, digest)
    again = ansible.module(
        FETCH, fetch_args(registry_plain, at_destination, tmp_path / "again", trusted, require_signature=False)
    )
    assert again.get("failed") is not True, again.get("msg")
    assert again["provenance"]["verified"] is True
