"""_sbom: which dpkg status paragraphs are installed packages, their purls, and the CycloneDX document."""

from __future__ import annotations

import json

from ansible_collections.ironcore.image.plugins.module_utils import _sbom as sbom

STATUS = """Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 2.36-9+deb12u4
Description: GNU C Library
 Contains the standard libraries.
 .
 Status: install ok installed (a description line, not a field)

Package: old-tool
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2024a-0+deb12u1

Package: half
Status: install ok half-configured
Version: 3

Package: epoch
Status: install ok installed
Architecture: arm64
Version: 1:2.0~rc1-3
"""


def test_only_installed_paragraphs_count():
    assert sbom.parse_dpkg_status(STATUS) == [
        sbom.Package("epoch", "1:2.0~rc1-3", "arm64"),
        sbom.Package("libc6", "2.36-9+deb12u4", "amd64"),
        sbom.Package("tzdata", "2024a-0+deb12u1", "all"),
    ]


def test_empty_and_windows_line_endings():
    assert sbom.parse_dpkg_status("") == []
    crlf = "Package: a\r\nStatus: install ok installed\r\nVersion: 1\r\n"
    assert sbom.parse_dpkg_status(crlf) == [sbom.Package("a", "1", "all")]


def test_purl_encodes_the_epoch():
    assert sbom.Package("libc6", "2.36-9", "amd64").purl == "pkg:deb/debian/libc6@2.36-9?arch=amd64"
    assert sbom.Package("epoch", "1:2.0~rc1-3", "arm64").purl == "pkg:deb/debian/epoch@1%3A2.0~rc1-3?arch=arm64"


def test_cyclonedx_document():
    packages = sbom.parse_dpkg_status(STATUS)
    document = json.loads(sbom.document("registry.example.com/os/x", "sha256:" + "1" * 64, packages))
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.5"
    assert [(c["type"], c["name"], c["version"]) for c in document["components"]] == [
        ("library", "epoch", "1:2.0~rc1-3"),
        ("library", "libc6", "2.36-9+deb12u4"),
        ("library", "tzdata", "2024a-0+deb12u1"),
    ]
    assert all(c["bom-ref"] == c["purl"] for c in document["components"])
    assert document["metadata"]["component"]["version"] == "sha256:" + "1" * 64
    # Canonical: the same packages in another order give the same bytes.
    again = sbom.document("registry.example.com/os/x", "sha256:" + "1" * 64, list(reversed(packages)))
    assert again == sbom.document("registry.example.com/os/x", "sha256:" + "1" * 64, packages)


def test_ext_magic(tmp_path):
    ext = tmp_path / "ext"
    ext.write_bytes(b"\0" * 1080 + b"\x53\xef" + b"\0" * 100)
    other = tmp_path / "other"
    other.write_bytes(b"hsqs" + b"\0" * 2000)
    assert sbom.is_ext_filesystem(str(ext))
    assert not sbom.is_ext_filesystem(str(other))
    assert not sbom.is_ext_filesystem(str(tmp_path / "missing"))
