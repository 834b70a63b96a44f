"""Stop means stop: a signal to the play ends the module's transfer, keeps the partial, frees the lock."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import typing as t

import pytest
from helpers.images import skopeo_push
from helpers.signing import make_key
from helpers.tasks import run_tasks

from ansible_collections.ironcore.image.plugins.module_utils._build import build_image

pytestmark = pytest.mark.integration

FETCH = "ironcore.image.ironcore_image_fetch"
PUSH = "ironcore.image.ironcore_image_push"
SIGN = "ironcore.image.ironcore_image_sign"
BUILD = "ironcore.image.ironcore_image_build"
ROOTFS_SIZE = 8 * 1024 * 1024
HELD_AFTER = 3 * 1024 * 1024
# How long the module processes get to end once the play was interrupted (the bound).
STOP_BOUND = 5.0
PATIENCE = 120.0


def wait_until(condition: t.Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("gave up waiting: %s" % what)
        time.sleep(0.1)


def module_processes(marker: str) -> list[str]:
    """Command lines of live processes that run a module from our own remote temporary directory."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as stream:
                command = stream.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in command and "AnsiballZ_" in command:
            found.append("%s: %s" % (pid, command))
    return found


def start_play(ansible, tmp_path, module: str, args: t.Mapping[str, t.Any]) -> tuple[subprocess.Popen, str]:
    """ansible-playbook running one task, in a process group of its own; returns (process, marker).

    The marker is our own remote temporary directory: its path tells our module processes from everyone else's.
    """
    play = [
        {"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": [{"name": "t", module: args}]}
    ]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    marker = str(tmp_path / "remote-tmp")
    process = subprocess.Popen(
        ["ansible-playbook", "-i", "localhost,", str(tmp_path / "play.yml")],
        env=dict(ansible.env, ANSIBLE_REMOTE_TMP=marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    return process, marker


def interrupt_play(
    started: tuple[subprocess.Popen, str], signum: int, release: threading.Event, mid_flight: t.Callable[[], bool]
) -> None:
    """Once `mid_flight()`, send `signum` to the play's process group; then no module process may be left."""
    process, marker = started
    try:
        wait_until(lambda: mid_flight() or process.poll() is not None, "the transfer to be mid-flight")
        assert process.poll() is None, process.communicate()
        assert module_processes(marker), "no module process found to interrupt"
        # What Ctrl-C in a terminal (SIGINT) or an AWX cancel (SIGTERM) does: the whole process group.
        os.killpg(process.pid, signum)
        process.communicate(timeout=60)
        deadline = time.monotonic() + STOP_BOUND
        while module_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert module_processes(marker) == []
    finally:
        release.set()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


@pytest.fixture
def image(registry_plain, tmp_path):
    """A raw rootfs image in the registry; returns (name, rootfs digest, rootfs bytes)."""
    data = os.urandom(ROOTFS_SIZE)
    (tmp_path / "rootfs.raw").write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    name = "%s/stop/gardenlinux:1.0" % registry_plain.host
    layout = str(tmp_path / "layout")
    build_image(
        {
            "layout": layout,
            "name": name,
            "artifacts": [{"architecture": "amd64", "rootfs": str(tmp_path / "rootfs.raw")}],
            "platforms": ["virtualization"],
            "layer_format": "raw",
            "annotations": None,
            "platform_tags": False,
        },
        check_mode=False,
    )
    skopeo_push(layout, name, name, registry_plain.skopeo_flags("dest-"))
    return name, digest, data


def fetch_args(proxy, dest, **extra: t.Any) -> dict[str, t.Any]:
    return dict(
        proxy.registry_args,
        name="%s/stop/gardenlinux:1.0" % proxy.host,
        platform="virtualization",
        architecture="amd64",
        dest=str(dest),
        **extra,
    )


def partials(dest) -> dict[str, int]:
    state = dest / ".ironcore"
    if not state.is_dir():
        return {}
    return {name: os.path.getsize(state / name) for name in os.listdir(state) if name.endswith(".partial")}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_play_ends_the_fetch_and_the_next_run_resumes(
    ansible, registry_plain, fault_proxy, image, tmp_path, signum
):
    _name, digest, data = image
    proxy = fault_proxy(registry_plain)
    release = threading.Event()
    hold = proxy.add("pause_response", method="GET", path="/blobs/" + digest, after_bytes=HELD_AFTER, release=release)
    dest = tmp_path / "boot"
    play_started = start_play(ansible, tmp_path, FETCH, fetch_args(proxy, dest))
    interrupt_play(play_started, signum, release, lambda: hold.hits > 0 and sum(partials(dest).values()) > 0)

    # The lock is free and the partial file stays for the next run.
    kept = sum(partials(dest).values())
    assert 0 < kept < ROOTFS_SIZE, partials(dest)
    assert not (dest / "rootfs").exists()
    time.sleep(1)
    assert sum(partials(dest).values()) == kept, "the interrupted transfer still writes"
    proxy.clear()
    (resumed,) = run_tasks(ansible, str(tmp_path), [(FETCH, fetch_args(proxy, dest))])
    assert resumed["changed"] is True and resumed.get("failed") is not True, resumed
    assert resumed["bytes_downloaded"] == ROOTFS_SIZE - kept
    assert not resumed.get("warnings"), resumed
    assert (dest / "rootfs").read_bytes() == data


def test_a_signal_to_the_module_fails_it_in_one_line(ansible, registry_plain, fault_proxy, image, tmp_path):
    """SIGTERM to the module process alone (not the play): the task fails with the interruption's one line."""
    _name, digest, _data = image
    proxy = fault_proxy(registry_plain)
    release = threading.Event()
    hold = proxy.add("pause_response", method="GET", path="/blobs/" + digest, after_bytes=HELD_AFTER, release=release)
    dest = tmp_path / "boot"
    marker = str(tmp_path / "remote-tmp")
    results: list[dict[str, t.Any]] = []

    def fetch() -> None:
        results.extend(
            run_tasks(ansible, str(tmp_path), [(FETCH, fetch_args(proxy, dest))], env={"ANSIBLE_REMOTE_TMP": marker})
        )

    runner = threading.Thread(target=fetch)
    runner.start()
    try:
        wait_until(lambda: hold.hits > 0 or not runner.is_alive(), "the fetch to ask for the rootfs")
        wait_until(lambda: sum(partials(dest).values()) > 0 or not runner.is_alive(), "the first bytes")
        for line in module_processes(marker):
            pid = int(line.split(":", 1)[0])
            # The python process that runs the module, not the shell around it.
            with open("/proc/%d/comm" % pid) as stream:
                if stream.read().startswith("python"):
                    os.kill(pid, signal.SIGTERM)
        runner.join(timeout=60)
    finally:
        release.set()
        runner.join()
    (result,) = results
    assert result["failed"] is True
    assert result["msg"] == "interrupted by SIGTERM; partial downloads are kept and the next run resumes"
    assert 0 < sum(partials(dest).values()) < ROOTFS_SIZE


def test_a_run_that_waits_for_the_lock_warns_and_lock_timeout_ends_the_wait(
    ansible, registry_plain, fault_proxy, image, tmp_path
):
    _name, _digest, data = image
    proxy = fault_proxy(registry_plain)
    dest = tmp_path / "boot"
    (first,) = run_tasks(ansible, str(tmp_path), [(FETCH, fetch_args(proxy, dest))])
    assert first["changed"] is True, first
    (dest / "rootfs").unlink()
    lock_path = dest / ".ironcore" / ".ironcore-fetch.lock"
    # This test process plays the other run: it holds the fetch's lock.
    holder = os.open(lock_path, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        (timed_out,) = run_tasks(ansible, str(tmp_path), [(FETCH, fetch_args(proxy, dest, lock_timeout=1))])
        assert timed_out["failed"] is True, timed_out
        assert timed_out["msg"].startswith(
            "gave up waiting for another fetch into %s after 1 seconds (lock_timeout; waiting since " % dest
        ), timed_out["msg"]
        assert "\n" not in timed_out["msg"] and not (dest / "rootfs").exists()

        results: list[dict[str, t.Any]] = []
        runner = threading.Thread(
            target=lambda: results.extend(run_tasks(ansible, str(tmp_path), [(FETCH, fetch_args(proxy, dest))]))
        )
        runner.start()
        wait_until(lambda: waiting_for_lock(lock_path) or not runner.is_alive(), "the second fetch to wait")
    finally:
        os.close(holder)
    runner.join()
    (waited,) = results
    assert waited["changed"] is True and waited.get("failed") is not True, waited
    (warning,) = waited["warnings"]
    assert warning.startswith("waiting for another fetch into %s since " % dest), warning
    assert (dest / "rootfs").read_bytes() == data


def waiting_for_lock(path) -> bool:
    """Whether some process waits in flock() for the file at path (a `->` line of /proc/locks)."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as stream:
        return any("->" in line and line.split()[-3].endswith(":%d" % inode) for line in stream)


def build_rootfs_image(layout: str, name: str, rootfs: t.Any) -> None:
    """A one-architecture virtualization image of `rootfs`, built in this process (no play needed)."""
    build_image(
        {
            "layout": layout,
            "name": name,
            "artifacts": [{"architecture": "amd64", "rootfs": str(rootfs)}],
            "platforms": ["virtualization"],
            "layer_format": "raw",
            "annotations": None,
            "platform_tags": False,
        },
        check_mode=False,
    )


def registry_tags(registry, repository: str) -> list[str]:
    proc = subprocess.run(
        ["skopeo", "list-tags", *registry.skopeo_flags(), "docker://%s/%s" % (registry.host, repository)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 and "404" in proc.stderr:
        # A repository that holds no tag at all is unknown to the registry.
        return []
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout)["Tags"] or [])


def has_manifest(registry, repository: str, digest: str) -> bool:
    command = ["skopeo", "inspect", "--raw", *registry.skopeo_flags()]
    command.append("docker://%s/%s@%s" % (registry.host, repository, digest))
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def dangling(registry, repository: str) -> list[str]:
    """Signature and referrer tags (sha256-<hex>[.sig]) whose subject manifest the registry lacks."""
    found = []
    for tag in registry_tags(registry, repository):
        if tag.startswith("sha256-"):
            subject = "sha256:" + tag[len("sha256-") :].split(".", 1)[0]
            if not has_manifest(registry, repository, subject):
                found.append(tag)
    return found


def test_sigint_to_the_play_ends_the_push_and_leaves_no_dangling_signature(
    ansible, registry_plain, fault_proxy, tmp_path
):
    data = os.urandom(ROOTFS_SIZE)
    (tmp_path / "rootfs.raw").write_bytes(data)
    digest_hex = hashlib.sha256(data).hexdigest()
    layout = str(tmp_path / "layout")
    name = "registry.example.com/stop/pushed:1.0"
    build_rootfs_image(layout, name, tmp_path / "rootfs.raw")
    key = make_key(tmp_path, "signer")
    signed = ansible.module(SIGN, {"layout": layout, "name": name, "key": key["sec1"]})
    assert signed["changed"] is True, signed
    proxy = fault_proxy(registry_plain)
    release = threading.Event()
    # The rootfs upload's answer is held back: the push waits in a read, mid-flight.
    hold = proxy.add("pause_response", method="PUT", path=digest_hex, after_bytes=1, release=release)
    repository = "stop/pushed"
    args = dict(proxy.registry_args, layout=layout, name=name, destination="%s/%s:1.0" % (proxy.host, repository))

    interrupt_play(start_play(ansible, tmp_path, PUSH, args), signal.SIGINT, release, lambda: hold.hits > 0)

    time.sleep(1)
    assert "1.0" not in registry_tags(registry_plain, repository)
    assert dangling(registry_plain, repository) == []
    proxy.clear()
    (pushed,) = run_tasks(ansible, str(tmp_path), [(PUSH, args)])
    assert pushed["changed"] is True and pushed.get("failed") is not True, pushed
    tags = registry_tags(registry_plain, repository)
    assert "1.0" in tags and any(tag.endswith(".sig") for tag in tags), tags
    assert dangling(registry_plain, repository) == []


def test_a_build_waiting_for_the_layout_lock_warns_and_gives_up_after_lock_timeout(ansible, tmp_path):
    rootfs = tmp_path / "rootfs"
    rootfs.write_bytes(os.urandom(4096))
    layout = tmp_path / "layout"
    args = {
        "layout": str(layout),
        "name": "registry.example.com/stop/built:1.0",
        "artifacts": [{"architecture": "amd64", "rootfs": str(rootfs)}],
        "platforms": ["virtualization"],
        "lock_timeout": 1,
    }
    first = ansible.module(BUILD, args)
    assert first["changed"] is True, first
    holder = os.open(layout / ".ironcore.lock", os.O_RDONLY)
    try:
        # This test process plays a prune that holds the layout's index lock.
        fcntl.flock(holder, fcntl.LOCK_EX)
        blocked = ansible.module(BUILD, dict(args, name="registry.example.com/stop/built:2.0"))
    finally:
        os.close(holder)
    assert blocked["failed"] is True, blocked
    assert blocked["msg"].startswith(
        "gave up waiting for another run that changes the layout %s after 1 seconds (lock_timeout" % layout
    ), blocked["msg"]
    (warning,) = blocked["warnings"]
    assert warning.startswith("waiting for another run that changes the layout %s since " % layout), warning


def test_tag_remove_prune_and_sign_give_up_after_lock_timeout(ansible, tmp_path):
    (tmp_path / "rootfs.raw").write_bytes(os.urandom(4096))
    layout = tmp_path / "layout"
    name = "registry.example.com/stop/lifecycle:1.0"
    build_rootfs_image(str(layout), name, tmp_path / "rootfs.raw")
    key = make_key(tmp_path, "signer")
    common = {"layout": str(layout), "lock_timeout": 1}
    tasks = [
        ("ironcore.image.ironcore_image_tag", dict(common, name=name, tags=["2.0"])),
        ("ironcore.image.ironcore_image_remove", dict(common, names=[name])),
        ("ironcore.image.ironcore_image_prune", dict(common, grace_period=0)),
        (SIGN, dict(common, name=name, key=key["sec1"])),
    ]
    # This test process plays a build that holds both of the layout's locks.
    holders = [os.open(layout / lock, os.O_RDONLY) for lock in (".ironcore.blobs.lock", ".ironcore.lock")]
    try:
        for holder in holders:
            fcntl.flock(holder, fcntl.LOCK_EX)
        results = run_tasks(ansible, str(tmp_path), tasks)
    finally:
        for holder in holders:
            os.close(holder)
    expected = "gave up waiting for another run that changes the layout %s after 1 seconds (lock_timeout" % layout
    for (module, _args), result in zip(tasks, results, strict=True):
        assert result["failed"] is True, (module, result)
        assert result["msg"].startswith(expected) and "\n" not in result["msg"], (module, result["msg"])
    assert ansible.module("ironcore.image.ironcore_image_info", {"layout": str(layout)})["images"][0]["name"] == name
