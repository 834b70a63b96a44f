"""tools/build_ee.py's pure parts: bindep selection, the podman settings a host needs, wheel platforms,
the Containerfile (what `make ee` runs; tests/playbooks/test_ee.py builds and runs the image for real)."""

from __future__ import annotations

import importlib.util
import pathlib
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "tools" / "build_ee.py"

CGROUP_V2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"
HYBRID = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"


@pytest.fixture(scope="module")
def ee() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("build_ee", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bindep_selects_by_platform(ee) -> None:
    text = (
        "# comment\nplain\na [platform:dpkg]\nb [platform:rpm]\n"
        "c [platform:dpkg platform:rpm]  # both\nd [!platform:rpm]\n"
    )
    assert ee.bindep_packages(text, "dpkg") == ["plain", "a", "c", "d"]
    assert ee.bindep_packages(text, "rpm") == ["plain", "b", "c"]
    with pytest.raises(ee.BuildError, match=r"bindep\.txt: cannot read"):
        ee.bindep_packages("two words [platform:dpkg]", "dpkg")


def test_bindep_names_the_tools_the_modules_and_roles_call(ee) -> None:
    dpkg, rpm = ee.read_bindep("dpkg"), ee.read_bindep("rpm")
    # debugfs (SBOM), qemu-img (qcow2), ssh (nodes), curl (mirror role).
    assert {"e2fsprogs", "qemu-utils", "openssh-client", "curl"} <= set(dpkg)
    assert {"e2fsprogs", "qemu-img", "openssh-clients", "curl", "diffutils", "util-linux"} <= set(rpm)


@pytest.mark.parametrize(
    ("mounts", "systemd", "crun", "raisable", "expected"),
    [
        (CGROUP_V2, True, True, True, {}),
        # This kind of host: hybrid cgroups, no systemd, ulimits fixed.
        (
            HYBRID,
            False,
            True,
            False,
            {
                "containers": {"default_ulimits": []},
                "engine": {"runtime": "runc", "cgroup_manager": "cgroupfs", "events_logger": "file"},
            },
        ),
        (CGROUP_V2, True, False, True, {"engine": {"runtime": "runc"}}),
    ],
)
def test_host_settings(ee, mounts, systemd, crun, raisable, expected) -> None:
    assert ee.host_settings(mounts, systemd=systemd, crun=crun, runc=True, raisable=raisable) == expected


def test_containers_conf_is_toml(ee) -> None:
    import tomllib

    settings = {"containers": {"default_ulimits": []}, "engine": {"runtime": "runc"}}
    assert tomllib.loads(ee.containers_conf(settings)) == settings


def test_wheel_platforms(ee) -> None:
    tags = ee.wheel_platforms(("glibc", "2.36"), "x86_64")
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    with pytest.raises(ee.BuildError, match="not glibc"):
        ee.wheel_platforms(("", ""), "x86_64")


def test_requirements_are_the_hosts(ee) -> None:
    lines = ee.ee_requirements().split()
    assert [line.split(">")[0].split("<")[0] for line in lines[-3:]] == [
        "ansible-core",
        "cryptography",
        "ansible-runner",
    ]
    meta = [line for line in (ROOT / "meta" / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert lines[: len(meta)] == meta


def test_containerfile_installs_offline_and_keeps_nothing_of_the_context(ee) -> None:
    text = ee.containerfile("localhost/base", "true", pip_index=False, ca_bundle=False)
    assert "--no-index --find-links /ee/wheels" in text and "--no-cache-dir" in text
    assert "RUN --mount=type=bind,source=.,target=/ee" in text
    assert "COPY" not in text
    online = ee.containerfile("b", ee.system_install("dnf", ["e2fsprogs"], True), pip_index=True, ca_bundle=True)
    assert "--cert /ee/ca-bundle.pem" in online and "dnf --setopt=sslcacert=/ee/ca-bundle.pem install" in online
    apt = ee.system_install("apt-get", ["qemu-utils"], True)
    assert "Acquire::https::CAInfo=/ee/ca-bundle.pem" in apt and "rm -rf /var/lib/apt/lists/*" in apt
