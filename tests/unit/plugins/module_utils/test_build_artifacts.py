from __future__ import annotations

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _build as build


@pytest.fixture
def files(tmp_path):
    paths = {}
    for role in ("kernel", "initramfs", "rootfs", "squashfs"):
        paths[role] = str(tmp_path / role)
        (tmp_path / role).write_bytes(role.encode())
    return paths


def artifact(files, *roles):
    return dict({"architecture": "amd64"}, **{role: files[role] for role in roles})


def test_baremetal_may_take_a_squashfs_as_its_root(files):
    (parsed,) = build.parse_artifacts([artifact(files, "kernel", "initramfs", "squashfs")], ["baremetal"])
    assert sorted(parsed.files) == ["initramfs", "kernel", "squashfs"]


def test_baremetal_without_any_root_names_both_choices(files):
    with pytest.raises(build.BuildError) as error:
        build.parse_artifacts([artifact(files, "kernel", "initramfs")], ["baremetal"])
    assert str(error.value) == (
        "artifacts[0]: platform baremetal needs a root for amd64: give a rootfs or a squashfs, which the artifacts lack"
    )


def test_virtualization_still_needs_the_rootfs(files):
    with pytest.raises(build.BuildError, match="platform virtualization needs rootfs for amd64"):
        build.parse_artifacts([artifact(files, "kernel", "initramfs", "squashfs")], ["baremetal", "virtualization"])
