"""ironcore_image_sign and fetch's signature check through the real ansible CLI, against a real registry.

Keys are made by openssl; every signature written is verified by
`openssl dgst -verify`, the `.sig` manifests are read by `skopeo inspect
--raw` and the payloads from the registry's own storage.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from helpers.images import build_ours, push_built_image
from helpers.inventory import local_host, outcomes, write_inventory
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
    sig_tag,
    skopeo_raw,
)

SIGN = "ironcore.image.ironcore_image_sign"
PUSH = "ironcore.image.ironcore_image_push"
FETCH = "ironcore.image.ironcore_image_fetch"
COPY = "ironcore.image.ironcore_image_copy"
NAME = "registry.example.com/os/signed:1.0"
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE = "dev.cosignproject.cosign/signature"
PASSPHRASE = "correct horse battery staple"
REF_NAME = "org.opencontainers.image.ref.name"
PLATFORM_SUFFIXES = ("-baremetal", "-virtualization")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.integration


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
    layout, reference, _pushed = push_built_image(ansible, registry, root, NAME, repository)
    return layout, reference


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
    # The platform indexes the -baremetal and -virtualization names point at are documents of their own.
    platform_indexes = [image_digests(registry_plain, reference + suffix)[0] for suffix in PLATFORM_SUFFIXES]
    assert sorted(signed["signed"]) == sorted(digests + platform_indexes)
    digests += platform_indexes
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


# ---- fetch refuses what is not signed by a trusted key, before anything is written ----------------


def skopeo(*args: str) -> None:
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def fleet(ansible, registry_plain, keys, tmp_path_factory):
    """Repositories of registry_plain in each state a node may meet; returns {case: reference}."""
    root = tmp_path_factory.mktemp("sign-fleet")
    layout = str(root / "layout")
    os.makedirs(str(root / "in"))
    build_ours(layout, NAME, root / "in", tag="fleet")
    other_layout = str(root / "other")
    os.makedirs(str(root / "in-other"))
    build_ours(other_layout, NAME, root / "in-other", tag="other")
    host = registry_plain.host
    flags = ["--src-tls-verify=false", "--dest-tls-verify=false"]

    def push(repository: str, source: str = layout) -> str:
        reference = "%s/sign/%s:1.0" % (host, repository)
        args = dict(registry_plain.registry_args, layout=source, name=NAME, destination=reference)
        assert ansible.module(PUSH, args)["changed"] is True
        return reference

    def sign_with(reference: str, key: str) -> dict:
        # The legacy format alone: each case breaks its `.sig`, and a bundle beside it would still verify.
        args = dict(registry_plain.registry_args, name=reference, key=keys[key]["key"], signature_format="legacy")
        signed = ansible.module(SIGN, args)
        assert signed["changed"] is True, signed
        return signed

    cases = {}
    for case, key in (("good", "first"), ("stranger", "stranger"), ("edited", "first"), ("deleted", "first")):
        cases[case] = push(case)
        if key:
            sign_with(cases[case], key)
    cases["unsigned"] = push("unsigned")

    # Copied with its signatures into another repository: the payloads name the first one.
    good_digests = image_digests(registry_plain, cases["good"])
    cases["elsewhere"] = "%s/sign/elsewhere:1.0" % host
    skopeo("copy", "--all", "--preserve-digests", *flags, "docker://" + cases["good"], "docker://" + cases["elsewhere"])
    for digest in good_digests:
        skopeo(
            "copy",
            *flags,
            "docker://%s/sign/good:%s" % (host, sig_tag(digest)),
            "docker://%s/sign/elsewhere:%s" % (host, sig_tag(digest)),
        )

    # The tag moved to another image, and the signature of the first copied beside it.
    signed = push("moved")
    first_digest = sign_with(signed, "first")["digest"]
    push("moved", other_layout)
    moved_digest = image_digests(registry_plain, signed)[0]
    assert moved_digest != first_digest
    skopeo(
        "copy",
        *flags,
        "docker://%s/sign/moved:%s" % (host, sig_tag(first_digest)),
        "docker://%s/sign/moved:%s" % (host, sig_tag(moved_digest)),
    )
    cases["moved"] = signed

    # A payload whose digest was edited, its signature kept.
    edited_digest = image_digests(registry_plain, cases["edited"])[0]
    manifest = skopeo_raw(registry_plain, "%s/sign/edited:%s" % (host, sig_tag(edited_digest)))
    [(payload, _signature)] = signature_layers(registry_plain, "%s/sign/edited" % host, edited_digest)
    forged = payload.replace(edited_digest.encode(), b"sha256:" + b"0" * 64)
    assert forged != payload
    manifest["layers"][0].update(digest=http_put_blob(registry_plain, "sign/edited", forged), size=len(forged))
    http_put_manifest(registry_plain, "sign/edited", sig_tag(edited_digest), json.dumps(manifest).encode())

    # The platform manifests' signatures deleted; the index's stays.
    for digest in image_digests(registry_plain, cases["deleted"])[1:]:
        skopeo("delete", "--tls-verify=false", "docker://%s/sign/deleted:%s" % (host, sig_tag(digest)))
    return cases


def fetch(ansible, registry, reference: str, dest, keys_given, **extra) -> dict:
    args = dict(
        registry.registry_args,
        name=reference,
        dest=str(dest),
        platform="baremetal",
        architecture="amd64",
        signature_keys=keys_given,
        **extra,
    )
    return ansible.module(FETCH, args)


def test_fetch_delivers_an_image_signed_by_a_trusted_key(ansible, registry_plain, keys, fleet, tmp_path):
    with open(keys["first"]["pub"]) as stream:
        inline = stream.read()
    # A stranger's key beside the trusted one, inline PEM and a file path both work.
    trusted = [keys["stranger"]["pub"], inline]
    fetched = fetch(ansible, registry_plain, fleet["good"], tmp_path / "dest", trusted)
    assert fetched.get("failed") is not True, fetched
    assert fetched["signatures"] == {
        fetched["digest"]: keys["first"]["fingerprint"],
        fetched["manifest_digest"]: keys["first"]["fingerprint"],
    }
    assert fetched["files"]
    for delivered in fetched["files"].values():
        assert os.path.isfile(delivered["path"])


@pytest.mark.parametrize(
    "case, reason",
    [
        ("unsigned", "is unsigned"),
        ("stranger", "is signed, but by an unknown key (SHA256:"),
        ("elsewhere", "payload is for another repository (127.0.0.1"),
        ("moved", "has a signature for another digest (sha256:"),
        ("edited", "has a malformed signature: the signature by SHA256:"),
        ("deleted", "is unsigned"),
    ],
)
def test_fetch_refuses_before_writing(ansible, registry_plain, keys, fleet, tmp_path, case, reason):
    dest = dest_holding_a_kernel(tmp_path)
    for check in (True, False):
        failed = ansible.module(
            FETCH,
            dict(
                registry_plain.registry_args,
                name=fleet[case],
                dest=str(dest),
                platform="baremetal",
                architecture="amd64",
                signature_keys=[keys["first"]["pub"]],
            ),
            check=check,
        )
        assert_refused(failed, reason)
        if case == "stranger":
            assert keys["stranger"]["fingerprint"] in failed["msg"]
    assert_untouched(dest)


def test_require_signature_without_keys_is_refused(ansible, registry_plain, fleet, tmp_path):
    failed = fetch(ansible, registry_plain, fleet["good"], tmp_path / "dest", [], require_signature=True)
    assert failed.get("failed") is True and "signature_keys is empty" in failed["msg"]
    assert not os.path.exists(tmp_path / "dest")


def test_build_role_signs_and_provision_role_checks(ansible, keys, tmp_path):
    """build_sign_key signs in the layout; provision_signature_keys delivers it, and refuses another key's image."""
    artifacts = {}
    for role in ("kernel", "initramfs", "squashfs"):
        path = tmp_path / role
        path.write_bytes(("%s of the role test\n" % role).encode() * 50)
        artifacts[role] = str(path)
    layout, boot = str(tmp_path / "layout"), tmp_path / "boot"
    common = {
        "build_name": NAME,
        "build_layout": layout,
        "build_platforms": ["baremetal"],
        "build_artifacts": [dict(artifacts, architecture="amd64", cmdline="console=ttyS0")],
        "build_sign_key": keys["first"]["key"],
        "provision_name": NAME,
        "provision_layout": layout,
        "provision_platform": "baremetal",
        "provision_architecture": "amd64",
        "provision_boot_dir": str(boot),
        "provision_cache_dir": str(tmp_path / "cache"),
        "provision_boot_url": "http://boot.example.com/",
    }
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role:\n        name: ironcore.image.build\n"
        "    - ansible.builtin.include_role:\n        name: ironcore.image.provision\n"
    )
    rc, document, stderr = ansible.playbook(
        str(play), extra_vars=dict(common, provision_signature_keys=[keys["stranger"]["pub"]])
    )
    assert rc != 0 and "is signed, but by an unknown key (%s)" % keys["first"]["fingerprint"] in json.dumps(document)
    assert not boot.exists() or not any(boot.iterdir())
    # The trusted key, but an identity the signatures do not name: provision_signature_identity reaches the fetch.
    elsewhere = {"type": "exactRepository", "repository": "registry.example.com/os/elsewhere"}
    rc, document, stderr = ansible.playbook(
        str(play),
        extra_vars=dict(
            common, provision_signature_keys=[keys["first"]["pub"]], provision_signature_identity=elsewhere
        ),
    )
    assert rc != 0 and "expects registry.example.com/os/elsewhere" in json.dumps(document)
    assert not boot.exists() or not any(boot.iterdir())
    rc, document, stderr = ansible.playbook(
        str(play), extra_vars=dict(common, provision_signature_keys=[keys["first"]["pub"]])
    )
    assert rc == 0, (json.dumps(document)[-3000:], stderr)
    assert any(boot.iterdir())


def test_sign_given_a_public_key_says_it_needs_the_private_one(ansible, keys, tmp_path):
    layout = str(tmp_path / "layout")
    os.makedirs(str(tmp_path / "in"))
    build_ours(layout, NAME, tmp_path / "in", tag="public")
    failed = ansible.module(SIGN, {"layout": layout, "name": NAME, "key": keys["first"]["pub"]})
    assert failed["failed"] is True
    assert failed["msg"].startswith("key %s is a public key; sign needs the private key" % keys["first"]["pub"])
    assert "\n" not in failed["msg"]


# Every name build.yml publishes, with the platform a node fetches it for.
PUBLISHED = {
    "": "baremetal",
    "-metal": "baremetal",
    "-kvm": "virtualization",
    "-baremetal": "baremetal",
    "-virtualization": "virtualization",
}
PUBLISHED_CHECK = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Every published name is fetched with the public key
      ironcore.image.ironcore_image_fetch:
        layout: "{{ layout }}"
        name: "{{ image }}{{ item.key }}"
        platform: "{{ item.value }}"
        architecture: amd64
        dest: "{{ dest }}/{{ item.value }}{{ item.key }}"
        signature_keys: ["{{ public }}"]
      loop: "{{ published | dict2items }}"
      register: fetched
    - name: Info finds nothing unsigned with the key, and every name unsigned by a stranger's
      ironcore.image.ironcore_image_info:
        layout: "{{ layout }}"
        name: "{{ image }}"
        signature_keys: ["{{ item }}"]
      loop: ["{{ public }}", "{{ stranger }}"]
      register: described
    - name: Hand the results back
      ansible.builtin.debug:
        msg: {fetched: "{{ fetched.results | map(attribute='signatures') }}",
              formats: "{{ fetched.results | map(attribute='signature_formats') }}",
              unsigned: "{{ described.results | map(attribute='unsigned') }}"}
"""


def test_build_playbook_signs_every_published_name(ansible, keys, tmp_path):
    """build.yml signs V; V, V-metal, V-kvm, V-baremetal and V-virtualization each fetch with the key."""
    layout = str(tmp_path / "layout")
    files = {}
    for role in ("kernel", "initramfs", "rootfs"):
        files[role] = str(tmp_path / role)
        (tmp_path / role).write_bytes(role.encode() * 64)
    builder = local_host(
        build_name=NAME,
        build_layout=layout,
        build_platforms=["baremetal", "virtualization"],
        build_artifacts=[dict(files, architecture="amd64", cmdline="console=ttyS0")],
        build_sign_key=keys["first"]["key"],
        build_signature_format="bundle",
        build_provenance=False,
        build_sbom=False,
    )
    inventory = write_inventory(str(tmp_path / "hosts.yml"), {"build_hosts": {"builder": builder}})
    rc, document, stderr = ansible.playbook(os.path.join(REPO, "playbooks", "build.yml"), inventory=inventory)
    assert rc == 0, (json.dumps(document)[-3000:], stderr)

    play = tmp_path / "check.yml"
    play.write_text(PUBLISHED_CHECK)
    extra = {
        "layout": layout,
        "image": NAME,
        "published": PUBLISHED,
        "dest": str(tmp_path / "dest"),
        "public": keys["first"]["pub"],
        "stranger": keys["stranger"]["pub"],
    }
    rc, document, stderr = ansible.playbook(str(play), extra_vars=extra)
    failed = [
        item.get("msg") for _h, _t, result in outcomes(document)["failed"] for item in result.get("results", [result])
    ]
    assert rc == 0, (failed, stderr)
    handed = document["plays"][0]["tasks"][-1]["hosts"]["localhost"]["msg"]
    assert len(handed["fetched"]) == len(PUBLISHED)
    for signatures in handed["fetched"]:
        assert set(signatures.values()) == {keys["first"]["fingerprint"]}, signatures
    # build_signature_format: bundle reached the sign step: bundles only, no .sig.
    assert {kind for formats in handed["formats"] for kind in formats.values()} == {"bundle"}
    with open(os.path.join(layout, "index.json")) as stream:
        names = [entry.get("annotations", {}).get(REF_NAME, "") for entry in json.load(stream)["manifests"]]
    assert names and not [name for name in names if name.endswith(".sig")]
    with_key, with_stranger = handed["unsigned"]
    assert with_key == []
    assert {NAME + suffix for suffix in PUBLISHED} <= set(with_stranger)
    assert NAME + "-kvm-amd64" in with_stranger


# ---- promotion and air gaps ------------------------------------------------------


def test_promoted_copies_verify_with_remap_identity_resign_key_and_offline_layouts(
    ansible, registry_plain, registry_referrers, keys, tmp_path
):
    """A signed image promoted to a second registry and copied into a layout: each way to keep it verifiable."""
    host, first = registry_plain.host, [keys["first"]["pub"]]
    # The second registry has the OCI referrers API, the first has not: the bundles move from tag to API.
    target = registry_referrers
    _layout, home = push_image(ansible, registry_plain, tmp_path, "sign/home")
    assert ansible.module(SIGN, dict(registry_plain.registry_args, name=home, key=keys["first"]["key"]))["changed"]

    def copy(destination: dict, **extra) -> dict:
        sides = {"source": dict(registry_plain.registry_args, name=home), "destination": destination}
        copied = ansible.module(COPY, dict(sides, **extra))
        assert copied.get("failed") is not True, copied
        return copied

    # Carried signatures name sign/home on the first registry: refused at the second by default, in one line
    # naming what it expects.
    promoted = "%s/sign/promoted:1.0" % target.host
    copy(dict(target.registry_args, name=promoted))
    refused = fetch(ansible, target, promoted, tmp_path / "refused", first)
    assert_refused(refused, "payload is for another repository (%s/sign/home), where signature_identity" % host)
    remap = {
        "type": "remapIdentity",
        "prefix": "%s/sign/promoted" % target.host,
        "signed_prefix": "%s/sign/home" % host,
    }
    remapped = fetch(ansible, target, promoted, tmp_path / "remapped", first, signature_identity=remap)
    assert remapped.get("failed") is not True, remapped
    assert set(remapped["signatures"].values()) == {keys["first"]["fingerprint"]}
    # A remap to a repository the signatures do not name is refused.
    wrong = dict(remap, signed_prefix="%s/sign/elsewhere" % host)
    refused = fetch(ansible, target, promoted, tmp_path / "wrong", first, signature_identity=wrong)
    assert_refused(refused, "expects %s/sign/elsewhere" % host)

    # Re-signed at the second registry with the second key: the source's signatures stay behind.
    resigned_name = "%s/sign/resigned:1.0" % target.host
    # Check mode names the signer and what it would sign, refuses a wrong passphrase as a real run does,
    # and leaves the destination without the image.
    resign = {
        "source": dict(registry_plain.registry_args, name=home),
        "destination": dict(target.registry_args, name=resigned_name),
        "resign_key": keys["second"]["key"],
    }
    planned = ansible.module(COPY, dict(resign, resign_key_passphrase=PASSPHRASE), check=True)
    assert planned["changed"] and planned["resigned"]["fingerprint"] == keys["second"]["fingerprint"], planned
    assert planned["resigned"]["signed"]
    wrong_passphrase = ansible.module(COPY, dict(resign, resign_key_passphrase="not-" + PASSPHRASE), check=True)
    assert wrong_passphrase.get("failed") is True and "re-signing" in wrong_passphrase["msg"], wrong_passphrase
    absent = subprocess.run(
        ["skopeo", "inspect", "--raw", *target.skopeo_flags(), "docker://" + resigned_name],
        capture_output=True,
        check=False,
    )
    assert absent.returncode != 0
    resigned = copy(
        dict(target.registry_args, name=resigned_name),
        resign_key=keys["second"]["key"],
        resign_key_passphrase=PASSPHRASE,
    )
    assert resigned["resigned"]["fingerprint"] == keys["second"]["fingerprint"] and resigned["resigned"]["signed"]
    assert PASSPHRASE not in resigned["_stdout"] + resigned["_stderr"]
    second = fetch(ansible, target, resigned_name, tmp_path / "second", [keys["second"]["pub"]])
    assert second.get("failed") is not True, second
    assert_refused(fetch(ansible, target, resigned_name, tmp_path / "first", first), "unknown key")

    # Into a layout under another name: signatures and bundles travel; verified offline with exactRepository.
    offline = str(tmp_path / "offline")
    carried = copy({"layout": offline, "name": "offline/gardenlinux:1.0"})
    assert carried["signatures"] and carried["referrers"]
    exact = {"type": "exactRepository", "repository": "%s/sign/home" % home.split("/")[0]}
    args = {
        "layout": offline,
        "name": "offline/gardenlinux:1.0-metal",
        "platform": "baremetal",
        "architecture": "amd64",
    }
    delivered = ansible.module(
        FETCH, dict(args, dest=str(tmp_path / "air"), signature_keys=first, signature_identity=exact)
    )
    assert delivered.get("failed") is not True, delivered
    assert set(delivered["signature_formats"].values()) == {"legacy"}
    assert_refused(
        ansible.module(FETCH, dict(args, dest=str(tmp_path / "strict"), signature_keys=first)),
        "another repository (%s/sign/home)" % host,
    )
