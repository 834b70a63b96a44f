"""playbooks/provision.yml with the images the IronCore ecosystem publishes, as a new user would run it.

Each shape is written byte for byte by tests/helpers/ecosystem.py and pushed unchanged with
`skopeo copy --all --preserve-digests` to a real registry: os-images' `V-metal` (initramfs, kernel, squashfs,
uki, no rootfs, config `{}`) and `V-kvm` (rootfs only), the published spec (annotated manifests, `disk.img` as
the disk), an older single v1alpha1 manifest (`vmlinuz`, a newline-terminated commandLine) and Garden Linux's
PXE index (`io.gardenlinux.*` layers). Bare-metal boot servers must get exactly the boot files of their
architecture, a boot.ipxe whose URLs (the live root's `gl.url` too) serve those bytes over HTTP, and
hypervisors a disk equal to the image's rootfs; a second run changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import urllib.request
from dataclasses import dataclass

import pytest
from helpers import ecosystem
from helpers.boot import parse_ipxe
from helpers.images import skopeo_push
from helpers.inventory import local_host, outcomes, provision_slug, write_inventory

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROVISION = os.path.join(REPO, "playbooks", "provision.yml")

# Repository paths and tags; the registry's host is put in front of them.
OSIMG = "os/osimg"
OSIMG_METAL = OSIMG + ":1.0-metal"
OSIMG_KVM = OSIMG + ":1.0-kvm"
SPEC = "os/spec:2.0"
LEGACY = "os/legacy:0.9"
GARDENLINUX = "os/gardenlinux-pxe:1592.1"
# The live root's location, as Garden Linux's initramfs reads it.
LIVE_ROOT_ARGS = "gl.url={{ provision_file_urls.squashfs }}"
STATE_DIR = ".ironcore"


@dataclass(frozen=True)
class Delivery:
    """One node and what it must end up with."""

    host: str
    name: str  # the image reference in the registry
    platform: str  # canonical: baremetal or virtualization
    architecture: str
    files: dict[str, bytes]  # role -> bytes the node must hold
    command_line: str  # the image's commandLine as boot.ipxe must carry it ("" for none)


def write_shapes(layout: str) -> dict[str, ecosystem.Shape]:
    """Every ecosystem shape into one layout, under the layout names the tests push."""
    shapes = ecosystem.write_os_images(layout, "registry.example.com/" + OSIMG, "1.0")
    shapes["spec"] = ecosystem.write_spec_image(layout, "registry.example.com/" + SPEC)
    shapes["legacy"] = ecosystem.write_legacy_image(layout, "registry.example.com/" + LEGACY)
    shapes["gardenlinux"] = ecosystem.write_gardenlinux_image(layout, "registry.example.com/" + GARDENLINUX)
    return shapes


def push_shapes(layout: str, registry) -> None:
    """The top-level names only: `--all` carries every manifest an index lists, digests unchanged."""
    for name in (OSIMG_METAL, OSIMG_KVM, SPEC, LEGACY, GARDENLINUX):
        skopeo_push(
            layout, "registry.example.com/" + name, "%s/%s" % (registry.host, name), registry.skopeo_flags("dest-")
        )


def pick(shape: ecosystem.Shape, arch: str, roles: tuple[str, ...]) -> dict[str, bytes]:
    return {role: shape.files[(arch, role)] for role in roles}


def deliveries(shapes: dict[str, ecosystem.Shape], registry, platforms: tuple[str, ...]) -> list[Delivery]:
    """Every (shape, platform, architecture) a node can be given; the legacy image is amd64 only."""
    metal, kvm, spec = shapes["metal"], shapes["kvm"], shapes["spec"]
    legacy, gardenlinux = shapes["legacy"], shapes["gardenlinux"]
    legacy_line = ecosystem.LEGACY_COMMAND_LINE.strip()
    cases = []
    for arch in ecosystem.ARCHS:
        cases += [
            (
                "osimg",
                OSIMG_METAL,
                "baremetal",
                arch,
                pick(metal, arch, ("initramfs", "kernel", "squashfs", "uki")),
                "",
            ),
            ("osimg", OSIMG_KVM, "virtualization", arch, pick(kvm, arch, ("rootfs",)), ""),
            (
                "spec",
                SPEC,
                "baremetal",
                arch,
                pick(spec, arch, ("kernel", "initramfs", "squashfs", "uki", "iso")),
                "console=ttyS0",
            ),
            ("spec", SPEC, "virtualization", arch, pick(spec, arch, ("rootfs",)), "console=ttyS0"),
            ("gl", GARDENLINUX, "baremetal", arch, pick(gardenlinux, arch, ("kernel", "initramfs", "squashfs")), ""),
        ]
    cases += [
        (
            "legacy",
            LEGACY,
            "baremetal",
            "amd64",
            pick(legacy, "amd64", ("rootfs", "squashfs", "initramfs", "kernel")),
            legacy_line,
        ),
        ("legacy", LEGACY, "virtualization", "amd64", pick(legacy, "amd64", ("rootfs",)), legacy_line),
    ]
    return [
        Delivery(
            host="%s-%s-%s" % ("pxe" if platform == "baremetal" else "hv", label, arch),
            name="%s/%s" % (registry.host, name),
            platform=platform,
            architecture=arch,
            files=files,
            command_line=command_line,
        )
        for label, name, platform, arch, files, command_line in cases
        if platform in platforms
    ]


def node_vars(delivery: Delivery, tmp_path, boot_port: int, registry_vars: dict) -> dict:
    """Host variables of one node: its own boot (or pool) and cache directories under the test's directory."""
    common = dict(
        registry_vars,
        provision_name=delivery.name,
        provision_architecture=delivery.architecture,
        provision_cache_dir=str(tmp_path / "cache" / delivery.host),
    )
    if delivery.platform == "baremetal":
        return local_host(
            provision_boot_dir=str(tmp_path / "boot" / delivery.host),
            provision_boot_url="http://127.0.0.1:%d/%s/" % (boot_port, delivery.host),
            provision_kernel_args=LIVE_ROOT_ARGS,
            # The kernel + initrd script on every shape, the UKI of those that carry one included (auto would
            # chain the UKI: tests/playbooks/test_uefi_boot.py boots that path).
            provision_boot_mode="ipxe-kernel",
            **common,
        )
    return local_host(provision_pool_dir=str(tmp_path / "pool" / delivery.host), **common)


def inventory_for(path: str, nodes: list[Delivery], tmp_path, boot_port: int, registry_vars: dict) -> str:
    groups: dict[str, dict[str, dict]] = {}
    for delivery in nodes:
        group = "baremetal" if delivery.platform == "baremetal" else "hypervisors"
        groups.setdefault(group, {})[delivery.host] = node_vars(delivery, tmp_path, boot_port, registry_vars)
    return write_inventory(path, groups)


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.read()


def assert_boot_server(delivery: Delivery, tmp_path, boot_port: int) -> None:
    slug = provision_slug(delivery.name)
    boot_dir = tmp_path / "boot" / delivery.host
    # The version's directory and the repository's stable boot entry, which serves the same script.
    (entry,) = [name for name in os.listdir(boot_dir) if name != slug]
    assert entry.endswith("-current"), (delivery.host, entry)
    assert os.readlink(boot_dir / entry / "current") == "../" + slug
    image_dir = boot_dir / slug
    # The boot files, the UKI also under boot-operator's name, and the script; the fetch's state directory is the
    # only other entry.
    served_as = ["sha256-%s.efi" % hashlib.sha256(delivery.files["uki"]).hexdigest()] if "uki" in delivery.files else []
    assert sorted(os.listdir(image_dir)) == sorted([*delivery.files, *served_as, "boot.ipxe", STATE_DIR]), delivery.host
    assert (image_dir / STATE_DIR).is_dir()
    for role, data in delivery.files.items():
        assert (image_dir / role).read_bytes() == data, (delivery.host, role)

    text = (image_dir / "boot.ipxe").read_text()
    assert (boot_dir / entry / "boot.ipxe").read_text() == text, delivery.host
    commands = [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    # One kernel command: a newline from the image's commandLine would split it into two.
    assert commands == ["kernel", "initrd", "boot"], (delivery.host, text)
    url = "http://127.0.0.1:%d/%s/%s" % (boot_port, delivery.host, slug)
    script = parse_ipxe(text)
    assert script.kernel_url == url + "/kernel", delivery.host
    expected_line = " ".join(
        word for word in ("initrd=initramfs", delivery.command_line, "gl.url=%s/squashfs" % url) if word
    )
    assert script.command_line == expected_line, delivery.host
    assert script.initrd_urls == [url + "/initramfs"], delivery.host
    # What a booting machine asks the boot server for is what the image carries.
    live_root = script.command_line.rsplit(" gl.url=", 1)[1]
    for fetched, role in ((script.kernel_url, "kernel"), (script.initrd_urls[0], "initramfs"), (live_root, "squashfs")):
        assert http_get(fetched) == delivery.files[role], (delivery.host, role, fetched)


def assert_hypervisor(delivery: Delivery, tmp_path) -> None:
    pool = tmp_path / "pool" / delivery.host
    disk = pool / ("%s.raw" % provision_slug(delivery.name))
    assert sorted(os.listdir(pool)) == sorted([disk.name, STATE_DIR]), delivery.host
    expected = tmp_path / ("expected-%s.raw" % delivery.host)
    expected.write_bytes(delivery.files["rootfs"])
    compare = subprocess.run(["cmp", str(expected), str(disk)], capture_output=True, text=True, check=False)
    assert compare.returncode == 0, (delivery.host, compare.stdout, compare.stderr)


def assert_delivered(nodes: list[Delivery], tmp_path, boot_port: int) -> None:
    for delivery in nodes:
        if delivery.platform == "baremetal":
            assert_boot_server(delivery, tmp_path, boot_port)
        else:
            assert_hypervisor(delivery, tmp_path)


@pytest.fixture(scope="module")
def plain_shapes(registry_plain, tmp_path_factory) -> dict[str, ecosystem.Shape]:
    layout = str(tmp_path_factory.mktemp("ecosystem-provision") / "layout")
    shapes = write_shapes(layout)
    push_shapes(layout, registry_plain)
    return shapes


def test_every_shape_provisioned_to_both_platforms_and_architectures(
    ansible, registry_plain, plain_shapes, http_server, tmp_path
):
    (tmp_path / "boot").mkdir()
    port = http_server(str(tmp_path / "boot"))
    nodes = deliveries(plain_shapes, registry_plain, ("baremetal", "virtualization"))
    inventory = inventory_for(
        str(tmp_path / "hosts.yml"), nodes, tmp_path, port, {"provision_registry_plain_http": True}
    )

    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (outcomes(document)["failed"], stderr)
    assert_delivered(nodes, tmp_path, port)

    rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory)
    assert rc == 0, (outcomes(document)["failed"], stderr)
    assert outcomes(document)["changed"] == [], outcomes(document)["changed"]
    assert_delivered(nodes, tmp_path, port)


def test_the_ecosystems_platform_words_over_tls(ansible, registry_tls, http_server, tmp_path):
    """`-e provision_platform=metal` / `=kvm`, the names os-images uses, from a TLS registry with credentials."""
    layout = str(tmp_path / "layout")
    shapes = write_shapes(layout)
    push_shapes(layout, registry_tls)
    (tmp_path / "boot").mkdir()
    port = http_server(str(tmp_path / "boot"))
    credentials = {
        "provision_registry_username": registry_tls.username,
        "provision_registry_password": registry_tls.password,
        "provision_registry_ca_cert": registry_tls.pki.ca_cert,
    }
    for word, platform in (("metal", "baremetal"), ("kvm", "virtualization")):
        nodes = deliveries(shapes, registry_tls, (platform,))
        inventory = inventory_for(str(tmp_path / ("%s.yml" % word)), nodes, tmp_path, port, credentials)
        rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory, extra_vars={"provision_platform": word})
        assert rc == 0, (word, outcomes(document)["failed"], stderr)
        assert_delivered(nodes, tmp_path, port)
        assert registry_tls.password not in str(document) + stderr

        rc, document, stderr = ansible.playbook(PROVISION, inventory=inventory, extra_vars={"provision_platform": word})
        assert rc == 0, (word, outcomes(document)["failed"], stderr)
        assert outcomes(document)["changed"] == [], (word, outcomes(document)["changed"])
