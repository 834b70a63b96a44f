"""The node role's virtualenv against a second local user (`nobody`): it runs no pip and no python that
another user could have planted or changed, and what it makes is writable by root only, whatever the
umask. Real ansible-playbook on the controller (local connection), real `python3 -m venv`; no network
(the only requirement is pip itself, already in a fresh virtualenv)."""

from __future__ import annotations

import os
import pwd
import stat
import typing as t

import pytest
from helpers.inventory import outcomes

pytestmark = pytest.mark.integration

NODE_PLAY = """- name: Prepare this host
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: ironcore.image.node
"""
REFUSAL = "Refuse a virtualenv path that another user could change"


def nobody() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def apply_role(ansible, directory: str, venv: str, **changes: t.Any):
    playbook = os.path.join(directory, "node.yml")
    with open(playbook, "w", encoding="utf-8") as stream:
        stream.write(NODE_PLAY)
    role_vars = {
        # Debian's own Python makes the virtualenv and runs the modules, as on a fresh host.
        "ansible_python_interpreter": "/usr/bin/python3",
        "node_python": "/usr/bin/python3",
        "node_venv": venv,
        "node_requirements": ["pip"],
        "node_pip_extra_args": "--no-index",
    }
    role_vars.update(changes)
    return ansible.playbook(playbook, extra_vars=role_vars)


def plant_virtualenv(venv: str, marker: str, owner: tuple[int, int]) -> None:
    """What `nobody` leaves where node_venv goes: a virtualenv whose pip leaves a marker when run."""
    os.makedirs(os.path.join(venv, "bin"))
    with open(os.path.join(venv, "pyvenv.cfg"), "w", encoding="utf-8") as stream:
        stream.write("home = /usr/bin\n")
    with open(os.path.join(venv, "bin", "activate"), "w", encoding="utf-8") as stream:
        stream.write("# planted\n")
    for name in ("pip", "pip3", "python", "python3"):
        path = os.path.join(venv, "bin", name)
        with open(path, "w", encoding="utf-8") as stream:
            stream.write("#!/bin/sh\necho planted >> %s\nexit 0\n" % marker)
        os.chmod(path, 0o755)
    for directory, names, files in os.walk(venv):
        for name in [directory, *(os.path.join(directory, n) for n in names + files)]:
            os.chown(name, *owner)


def refusal(document: t.Mapping[str, t.Any]) -> str:
    ((name, _host, result),) = outcomes(document)["failed"]
    assert name == REFUSAL, (name, result)
    message = result["msg"]
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    ("parent_owner", "parent_mode"),
    [("nobody", 0o755), ("root", 0o1777)],
    ids=["nobody-parent", "sticky-parent"],
)
def test_a_virtualenv_planted_by_another_user_is_refused_and_never_run(ansible, tmp_path, parent_owner, parent_mode):
    marker = str(tmp_path / "planted-pip-ran")
    parent = tmp_path / "parent"
    parent.mkdir()
    os.chmod(parent, parent_mode)
    if parent_owner == "nobody":
        os.chown(parent, *nobody())
    venv = str(parent / "venv")
    plant_virtualenv(venv, marker, nobody())

    rc, document, stderr = apply_role(ansible, str(tmp_path), venv)

    assert not os.path.exists(marker), "the role ran the planted pip"
    assert rc != 0, stderr
    message = refusal(document)
    culprit = str(parent) if parent_owner == "nobody" else venv
    assert message.startswith(
        "refusing node_venv %s: %s belongs to uid %d, not to root; " % (venv, culprit, nobody()[0])
    ), message
    # Nothing of it was touched: still nobody's, mode as planted.
    assert os.stat(venv).st_uid == nobody()[0]
    assert stat.S_IMODE(os.stat(venv).st_mode) == 0o755


def test_a_parent_others_can_write_to_is_refused(ansible, tmp_path):
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o777)
    venv = str(parent / "venv")
    rc, document, stderr = apply_role(ansible, str(tmp_path), venv)
    assert rc != 0, stderr
    assert refusal(document).startswith(
        "refusing node_venv %s: %s is writable by group or others (mode 0777); " % (venv, parent)
    )
    assert not os.path.exists(venv)


def test_a_link_above_the_virtualenv_is_refused(ansible, tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(str(tmp_path / "real"), str(tmp_path / "link"))
    venv = str(tmp_path / "link" / "venv")
    rc, document, stderr = apply_role(ansible, str(tmp_path), venv)
    assert rc != 0, stderr
    assert refusal(document).startswith(
        "refusing node_venv %s: %s is a symbolic link (to %s); " % (venv, tmp_path / "link", tmp_path / "real")
    )
    assert os.listdir(tmp_path / "real") == []


def test_under_umask_0002_nothing_made_is_writable_by_group_or_others(ansible, tmp_path):
    venv = tmp_path / "opt" / "ironcore" / "venv"
    previous = os.umask(0o002)
    try:
        rc, document, stderr = apply_role(ansible, str(tmp_path), str(venv))
    finally:
        os.umask(previous)
    assert rc == 0, (outcomes(document)["failed"], stderr)
    assert (venv / "bin" / "pip").is_file()
    made = [tmp_path / "opt", tmp_path / "opt" / "ironcore"]
    for directory, names, files in os.walk(venv):
        made += [os.path.join(directory, name) for name in ["", *names, *files]]
    # Links carry mode 0777 and are not followed: what they point to is checked as itself.
    shared = [
        (str(path), oct(stat.S_IMODE(info.st_mode)))
        for path, info in ((path, os.lstat(path)) for path in made)
        if not stat.S_ISLNK(info.st_mode) and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ]
    assert shared == []
    assert len(made) > 100, len(made)


def test_a_virtualenv_left_group_writable_is_refused_not_run(ansible, tmp_path):
    """What an earlier run under umask 0002 left: root's, but a group member could have changed it."""
    venv = tmp_path / "venv"
    rc, document, stderr = apply_role(ansible, str(tmp_path), str(venv))
    assert rc == 0, (outcomes(document)["failed"], stderr)
    os.chmod(venv / "bin", 0o775)
    rc, document, stderr = apply_role(ansible, str(tmp_path), str(venv))
    assert rc != 0
    ((name, _host, result),) = outcomes(document)["failed"]
    assert name == "Refuse a virtualenv that another user could have changed"
    assert result["msg"] == (
        "refusing node_venv %s: %s is writable by group or others, or belongs to someone other than root; "
        "remove the virtualenv (rm -rf %s) and run the role again" % (venv, venv / "bin", venv)
    )


def test_a_sticky_parent_is_accepted_for_a_virtualenv_of_root(ansible, tmp_path):
    """Like /tmp: others may create entries there, but not rename or remove root's."""
    parent = tmp_path / "sticky"
    parent.mkdir()
    os.chmod(parent, 0o1777)
    venv = parent / "venv"
    rc, document, stderr = apply_role(ansible, str(tmp_path), str(venv))
    assert rc == 0, (outcomes(document)["failed"], stderr)
    info = os.stat(venv)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o755)
    assert (venv / "bin" / "pip").is_file()
