"""Keys, signatures and attached documents, made and read back by tools independent of the collection.

openssl makes the keys and verifies signatures, skopeo reads documents from
registries and layouts, and tampering goes straight through the
distribution API (plain HTTP registries only).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import subprocess
import urllib.parse
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


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


def openssl_verifies(workdir, public: str, payload: bytes, signature_b64: str) -> bool:
    payload_path, signature_path = str(workdir / "payload"), str(workdir / "sig.der")
    with open(payload_path, "wb") as stream:
        stream.write(payload)
    with open(signature_path, "wb") as stream:
        stream.write(base64.b64decode(signature_b64))
    return openssl("dgst", "-sha256", "-verify", public, "-signature", signature_path, payload_path).returncode == 0


def sig_tag(digest: str) -> str:
    """The tag of a digest's cosign signatures: sha256-<hex>.sig."""
    return digest.replace(":", "-") + ".sig"


def inspect_raw(*args: str) -> bytes:
    """The exact bytes `skopeo inspect --raw` reads for its arguments (flags, then docker://... or oci:...)."""
    proc = subprocess.run(["skopeo", "inspect", "--raw", *args], capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def skopeo_bytes(registry, reference: str) -> bytes:
    """The bytes of `reference` (host/repository:tag or @digest) at `registry`."""
    return inspect_raw(*registry.skopeo_flags(), "docker://%s" % reference)


def skopeo_raw(registry, reference: str) -> dict:
    return json.loads(skopeo_bytes(registry, reference))


def remote(registry, reference: str) -> bytes:
    """The bytes of `reference` (repository:tag or @digest, without the host) at `registry`."""
    return skopeo_bytes(registry, "%s/%s" % (registry.host, reference))


def image_digests(registry, reference: str) -> list[str]:
    """The index (its digest by sha256sum of the bytes skopeo read) and every manifest it lists."""
    data = skopeo_bytes(registry, reference)
    digest = (
        "sha256:"
        + subprocess.run(["sha256sum"], input=data, capture_output=True, check=True).stdout.split()[0].decode()
    )
    return [digest] + [entry["digest"] for entry in json.loads(data)["manifests"]]


def http_put_blob(registry, repository: str, data: bytes) -> str:
    """Upload a blob straight through the distribution API (the tampering side needs no collection code)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    base = "http://%s/v2/%s/blobs/uploads/" % (registry.host, repository)
    with urllib.request.urlopen(urllib.request.Request(base, method="POST", data=b"")) as answer:
        location = urllib.parse.urljoin(base, answer.headers["Location"])
    separator = "&" if "?" in location else "?"
    put = urllib.request.Request(location + separator + "digest=" + digest, method="PUT", data=data)
    put.add_header("Content-Type", "application/octet-stream")
    urllib.request.urlopen(put).close()
    return digest


def http_put_manifest(registry, repository: str, reference: str, data: bytes, media_type: str = OCI_MANIFEST) -> None:
    """PUT a document as `reference` (a tag or digest) straight through the distribution API."""
    url = "http://%s/v2/%s/manifests/%s" % (registry.host, repository, reference)
    put = urllib.request.Request(url, method="PUT", data=data)
    put.add_header("Content-Type", media_type)
    urllib.request.urlopen(put).close()


KERNEL_ALREADY_HERE = b"the kernel already here"


def dest_holding_a_kernel(directory: pathlib.Path) -> pathlib.Path:
    """`directory`/dest with a vmlinuz in it already, to show that a refused fetch writes nothing."""
    dest = directory / "dest"
    dest.mkdir()
    (dest / "vmlinuz").write_bytes(KERNEL_ALREADY_HERE)
    return dest


def assert_refused(failed: dict, reason: str) -> None:
    """Fetch failed before writing and said why in one line."""
    assert failed.get("failed") is True, failed
    assert reason in failed["msg"] and "nothing was fetched" in failed["msg"], failed["msg"]
    assert "\n" not in failed["msg"]


def assert_untouched(dest: pathlib.Path) -> None:
    """The file that was there, and nothing else (no partial, no state record)."""
    assert sorted(os.listdir(dest)) == ["vmlinuz"]
    assert (dest / "vmlinuz").read_bytes() == KERNEL_ALREADY_HERE
