# Fixtures for the roles, playbooks and AWX tests: real nodes (sshd), real boot artifacts, a real
# HTTP server in front of the boot directory.
from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading
import typing as t
import uuid
from dataclasses import dataclass

import pytest
from helpers import boot
from helpers.inventory import clean_ansible_env, tool
from helpers.sshd import SshServer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> t.Iterator[SshServer]:
    if not os.path.exists("/usr/sbin/sshd"):
        pytest.fail("sshd is missing: install openssh-server (make system-deps)")
    server = SshServer(str(tmp_path_factory.mktemp("sshd"))).start()
    yield server
    server.stop()


@dataclass
class BootArtifacts:
    kernel: str
    initramfs: str
    rootfs: str
    marker: str  # random per run: printed by /init only when it is on the kernel command line
    rootfs_marker: bytes  # content of /marker inside the rootfs

    @property
    def command_line(self) -> str:
        # panic=-1: if anything goes wrong the kernel reboots, which ends qemu (-no-reboot) at once.
        return "console=ttyS0 panic=-1 %s=%s" % (boot.MARKER_PARAMETER, self.marker)

    def build_artifact(self) -> dict[str, str]:
        """The amd64 entry of build_artifacts (the build role's variable) for these files."""
        return {
            "architecture": "amd64",
            "kernel": self.kernel,
            "initramfs": self.initramfs,
            "rootfs": self.rootfs,
            "cmdline": self.command_line,
        }


@pytest.fixture(scope="session")
def boot_artifacts(tmp_path_factory) -> BootArtifacts:
    directory = tmp_path_factory.mktemp("artifacts")
    marker = uuid.uuid4().hex
    kernel = str(directory / "vmlinuz")
    # A copy, so a test can never change the cached kernel behind the next run's back.
    shutil.copyfile(boot.debian_kernel(), kernel)
    rootfs_marker = ("ironcore rootfs %s\n" % marker).encode()
    return BootArtifacts(
        kernel=kernel,
        initramfs=boot.make_initramfs(str(directory / "initramfs.gz")),
        rootfs=boot.make_rootfs(
            str(directory / "rootfs.ext4"), {"/marker": rootfs_marker, "/etc/hostname": b"ironcore\n"}
        ),
        marker=marker,
        rootfs_marker=rootfs_marker,
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: t.Any) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]


@pytest.fixture
def http_server(tmp_path) -> t.Iterator[t.Callable[[str], int]]:
    """Start a real HTTP server for a directory on 127.0.0.1; returns its port. Stopped after the test."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(directory: str) -> int:
        handler = functools.partial(_QuietHandler, directory=directory)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.requests = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    serve.servers = servers  # type: ignore[attr-defined]
    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@dataclass
class LayoutImage:
    layout: str
    name: str
    digest: str
    files: dict[str, bytes]  # role -> content (amd64)
    command_line: str


@pytest.fixture(scope="session")
def layout_image(ansible, tmp_path_factory) -> LayoutImage:
    """A small two-platform amd64 image in a local OCI layout, built by the build module."""
    directory = tmp_path_factory.mktemp("layout-image")
    files = {role: (("%s of the layout image\n" % role) * 200).encode() for role in ("kernel", "initramfs", "rootfs")}
    artifact: dict[str, t.Any] = {"architecture": "amd64", "cmdline": "console=ttyS0 root=LABEL=ROOT"}
    for role, content in files.items():
        path = directory / role
        path.write_bytes(content)
        artifact[role] = str(path)
    name = "registry.example.com/os/layout-image:1.0"
    result = ansible.module(
        "ironcore.image.ironcore_image_build",
        {"layout": str(directory / "layout"), "name": name, "artifacts": [artifact]},
    )
    assert result.get("failed") is not True, result
    return LayoutImage(
        layout=str(directory / "layout"),
        name=name,
        digest=result["digest"],
        files=files,
        command_line=artifact["cmdline"],
    )


@pytest.fixture(scope="session")
def collection_tarball(tmp_path_factory) -> str:
    """This checkout as a collection tarball, made by ansible-galaxy (what a release or an EE ships)."""
    output = tmp_path_factory.mktemp("galaxy-build")
    proc = subprocess.run(
        [tool("ansible-galaxy"), "collection", "build", "--output-path", str(output), REPO],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (tarball,) = output.glob("ironcore-image-*.tar.gz")
    return str(tarball)


@pytest.fixture(scope="session")
def installed_collections(collection_tarball, tmp_path_factory) -> str:
    """A collections path holding the collection installed from its tarball, not linked to this checkout."""
    path = tmp_path_factory.mktemp("installed-collections")
    proc = subprocess.run(
        [
            tool("ansible-galaxy"),
            "collection",
            "install",
            "--force",
            "--collections-path",
            str(path),
            collection_tarball,
        ],
        # Without the test's ANSIBLE_COLLECTIONS_PATH, which already holds the linked checkout.
        env=clean_ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert os.path.isfile(os.path.join(path, "ansible_collections", "ironcore", "image", "MANIFEST.json"))
    return str(path)
