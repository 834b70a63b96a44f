from __future__ import annotations

import os

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


def test_no_artifacts_at_all_is_refused():
    with pytest.raises(build.BuildError, match="artifacts must list at least one architecture"):
        build.parse_artifacts([], ["virtualization"])


def test_an_architecture_listed_twice_is_refused(files):
    twice = [artifact(files, "rootfs"), artifact(files, "rootfs")]
    with pytest.raises(build.BuildError, match=r"artifacts\[1\].architecture: amd64 is listed twice"):
        build.parse_artifacts(twice, ["virtualization"])


def test_each_listed_file_must_be_a_readable_regular_file(files, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = {
        str(tmp_path / "missing"): "artifacts[0].rootfs: file %s does not exist" % (tmp_path / "missing"),
        str(tmp_path): "artifacts[0].rootfs: %s is a directory, not a regular file" % tmp_path,
        str(fifo): "artifacts[0].rootfs: %s is not a regular file (device, socket or pipe)" % fifo,
    }
    for path, message in cases.items():
        with pytest.raises(build.BuildError) as error:
            build.parse_artifacts([{"architecture": "amd64", "rootfs": path}], ["virtualization"])
        assert str(error.value) == message


def test_a_path_that_is_not_a_string_is_named_with_its_field():
    with pytest.raises(build.BuildError, match=r"artifacts\[0\].rootfs must be a path, got 7"):
        build.parse_artifacts([{"architecture": "amd64", "rootfs": 7}], ["virtualization"])


def test_missing_required_layers_are_named_with_platform_and_architecture(files):
    item = dict(artifact(files, "rootfs"), architecture="arm64")
    with pytest.raises(build.BuildError) as error:
        build.parse_artifacts([item], ["baremetal"])
    assert str(error.value) == (
        "artifacts[0]: platform baremetal needs kernel and initramfs for arm64, which the artifacts lack"
    )


def test_parsed_sets_keep_their_position_files_and_trimmed_command_line(files):
    amd64 = dict(artifact(files, "kernel", "initramfs", "rootfs"), cmdline="console=ttyS0\n")
    arm64 = dict(artifact(files, "kernel", "initramfs", "rootfs"), architecture="arm64")
    parsed = build.parse_artifacts([amd64, arm64], ["baremetal", "virtualization"])
    assert [(item.architecture, item.position, item.cmdline) for item in parsed] == [
        ("amd64", 0, "console=ttyS0"),
        ("arm64", 1, None),
    ]
    assert parsed[0].files == {role: files[role] for role in ("kernel", "initramfs", "rootfs")}


def test_an_unsafe_command_line_is_refused_with_its_field(files):
    item = dict(artifact(files, "kernel", "initramfs", "rootfs"), cmdline="quiet ; chain http://evil/")
    with pytest.raises(build.BuildError, match=r"^artifacts\[0\].cmdline: .*; remove it from the command line$"):
        build.parse_artifacts([item], ["baremetal"])


def test_x86_64_is_recorded_as_amd64_and_counts_as_it(files):
    (parsed,) = build.parse_artifacts([dict(artifact(files, "rootfs"), architecture="x86_64")], ["virtualization"])
    assert parsed.architecture == "amd64"
    twice = [artifact(files, "rootfs"), dict(artifact(files, "rootfs"), architecture="x86_64")]
    with pytest.raises(build.BuildError, match=r"artifacts\[1\].architecture: amd64 is listed twice"):
        build.parse_artifacts(twice, ["virtualization"])


def test_an_empty_artifact_is_refused(files):
    with open(files["rootfs"], "wb"):
        pass
    with pytest.raises(build.BuildError) as error:
        build.parse_artifacts([artifact(files, "rootfs")], ["virtualization"])
    assert str(error.value) == (
        "artifacts[0].rootfs: %s is empty (0 bytes); give the artifact the build produced" % files["rootfs"]
    )


def test_uki_auto_is_no_file_and_needs_kernel_and_initramfs(files):
    (parsed,) = build.parse_artifacts(
        [dict(artifact(files, "kernel", "initramfs", "rootfs"), uki="auto")], ["baremetal"]
    )
    assert parsed.uki_auto and "uki" not in parsed.files
    # A virtualization-only build (build_uki: auto sets it on every artifact) carries no UKI: nothing is needed.
    (vm,) = build.parse_artifacts([dict(artifact(files, "rootfs"), uki="auto")], ["virtualization"])
    assert vm.uki_auto and "uki" not in vm.files
    with pytest.raises(build.BuildError, match=r"artifacts\[0\]\.uki: auto needs the kernel and initramfs of amd64"):
        build.parse_artifacts([dict(artifact(files, "squashfs"), uki="auto")], ["baremetal"])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"uki_sign_key": "db.key"}, "uki_sign_key needs uki_sign_cert"),
        ({"uki_require_signature": True}, "uki_require_signature needs uki_sign_cert"),
    ],
)
def test_uki_signing_options_that_do_not_go_together(params, message):
    with pytest.raises(build.BuildError, match=message):
        build._signing_key(params)


def test_uki_signing_key_with_its_certificate():
    key = build._signing_key({"uki_sign_key": "db.key", "uki_sign_cert": "db.pem", "uki_sign_key_passphrase": "x"})
    assert key is not None and (key.key, key.cert, key.passphrase) == ("db.key", "db.pem", "x")
    assert build._signing_key({"uki_sign_cert": "db.pem"}) is None
