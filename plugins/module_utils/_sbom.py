# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""A CycloneDX 1.5 SBOM of an image: the Debian packages installed in its ext4 rootfs.

The package database is read from inside the file system image with
e2fsprogs' `debugfs -R 'cat /var/lib/dpkg/status'`: nothing is mounted, and
the output is bounded. Only paragraphs whose Status is `install ok
installed` count. The rest is pure: parsing and the document.
"""

from __future__ import annotations

import os
import subprocess
import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json
from ansible_collections.ironcore.image.plugins.module_utils._provenance import COLLECTION_NAME, COLLECTION_VERSION

SBOM_ARTIFACT_TYPE = "application/vnd.cyclonedx+json"
SPEC_VERSION = "1.5"
DPKG_STATUS = "/var/lib/dpkg/status"
INSTALLED = "install ok installed"
# A Debian system's status file is a few MiB; the cap keeps a hostile image from filling memory.
MAX_STATUS_SIZE = 64 * 1024 * 1024
DEBUGFS_TIMEOUT = 300
# The ext2/3/4 superblock starts at byte 1024; its magic 0xEF53 (little endian) sits 56 bytes in.
EXT_MAGIC_OFFSET = 1024 + 56
EXT_MAGIC = b"\x53\xef"


class SbomError(ImageError):
    """The SBOM cannot be made; one line."""


@dataclass(frozen=True, order=True)
class Package:
    name: str
    version: str
    architecture: str

    @property
    def purl(self) -> str:
        return "pkg:deb/debian/%s@%s?arch=%s" % (_purl_part(self.name), _purl_part(self.version), self.architecture)


def _purl_part(text: str) -> str:
    """Percent-encode what a purl name or version may not hold raw (an epoch's ':' is %3A)."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_~+")
    return "".join(char if char in safe else "".join("%%%02X" % byte for byte in char.encode()) for char in text)


def parse_dpkg_status(text: str) -> list[Package]:
    """The installed packages of a dpkg status file, sorted; other paragraphs are skipped."""
    packages: set[Package] = set()
    for paragraph in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            # Continuation lines (descriptions, conffiles) start with a blank and belong to the field above.
            if not line or line[0] in " \t" or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if fields.get("status") != INSTALLED or not fields.get("package") or not fields.get("version"):
            continue
        packages.add(Package(fields["package"], fields["version"], fields.get("architecture") or "all"))
    return sorted(packages)


def is_ext_filesystem(path: str) -> bool:
    """Whether the file starts with an ext2/3/4 superblock (what debugfs can read)."""
    try:
        with open(path, "rb") as stream:
            stream.seek(EXT_MAGIC_OFFSET)
            return stream.read(2) == EXT_MAGIC
    except OSError:
        return False


def read_dpkg_status(path: str, limit: int = MAX_STATUS_SIZE) -> str | None:
    """/var/lib/dpkg/status inside the ext4 image at `path`, or None when the image has none."""
    command = ["debugfs", "-R", "cat %s" % DPKG_STATUS, path]
    try:
        # -R runs one request read-only; stdout is read in bounded pieces, never whole.
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise SbomError("debugfs cannot be run (%s); install e2fsprogs on the host that signs" % exc) from exc
    data = bytearray()
    try:
        stdout = t.cast(t.IO[bytes], process.stdout)
        while True:
            chunk = stdout.read(1024 * 1024)
            if not chunk:
                break
            data += chunk
            if len(data) > limit:
                raise SbomError(
                    "%s in %s is larger than %d bytes; refusing to read it"
                    % (DPKG_STATUS, os.path.basename(path), limit)
                )
        _out, errors = process.communicate(timeout=DEBUGFS_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise SbomError("debugfs did not finish reading %s within %d s" % (DPKG_STATUS, DEBUGFS_TIMEOUT)) from exc
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    message = errors.decode("utf-8", "replace")
    # debugfs exits 0 whatever happens and says on stderr what went wrong.
    if "file not found" in message.lower():
        return None
    if process.returncode != 0 or "while trying to open" in message or "filesystem not open" in message.lower():
        last = [line for line in message.splitlines() if line.strip()][-1:] or ["exit %d" % process.returncode]
        raise SbomError("debugfs could not read %s: %s" % (os.path.basename(path), last[0][:200]))
    return data.decode("utf-8", "replace")


def document(subject_name: str, subject_digest: str, packages: t.Iterable[Package]) -> bytes:
    """The CycloneDX JSON SBOM, canonical: the same packages give the same bytes."""
    components = []
    for package in sorted(set(packages)):
        components.append(
            {
                "type": "library",
                "bom-ref": package.purl,
                "name": package.name,
                "version": package.version,
                "purl": package.purl,
            }
        )
    tool = {"type": "application", "name": COLLECTION_NAME, "version": COLLECTION_VERSION}
    return canonical_json(
        {
            "bomFormat": "CycloneDX",
            "specVersion": SPEC_VERSION,
            "version": 1,
            "metadata": {
                "tools": {"components": [tool]},
                "component": {
                    "type": "operating-system",
                    "bom-ref": subject_digest,
                    "name": subject_name,
                    "version": subject_digest,
                },
            },
            "components": components,
        }
    )
