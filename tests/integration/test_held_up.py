"""Defences docs/security.md lists as held up that no other test pins: image text is never templated,
and no password reaches -vvv output."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from helpers.images import skopeo_push, write_upstream_image

MODULE = "ironcore.image.ironcore_image_fetch"
NAME = "registry.example.com/os/held-up:1.0"
# Jinja that would show 49 and create a file if anything evaluated it.
TEMPLATED = "console=ttyS0 x={{ 7 * 7 }} y={{ lookup('ansible.builtin.pipe', 'touch %s') }}"

pytestmark = pytest.mark.integration


def test_image_config_is_never_evaluated_as_jinja(ansible, tmp_path):
    marker = tmp_path / "evaluated"
    cmdline = TEMPLATED % marker
    layout = str(tmp_path / "layout")
    write_upstream_image(layout, NAME, architectures=("amd64",), cmdline=cmdline)
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "fetch",
                    MODULE: {
                        "layout": layout,
                        "name": NAME,
                        "platform": "baremetal",
                        "architecture": "amd64",
                        "dest": str(tmp_path / "dest"),
                    },
                    "register": "fetched",
                },
                {
                    "name": "use",
                    "ansible.builtin.copy": {
                        "content": "{{ fetched.config.commandLine }}",
                        "dest": str(tmp_path / "used"),
                        "mode": "0644",
                    },
                },
            ],
        }
    ]
    path = tmp_path / "play.yml"
    path.write_text(json.dumps(play))
    rc, document, stderr = ansible.playbook(str(path))
    assert rc == 0, (document, stderr)
    assert (tmp_path / "used").read_text() == cmdline
    assert not marker.exists()


def test_no_password_in_verbose_output(ansible, registry_tls, tmp_path):
    layout = str(tmp_path / "layout")
    write_upstream_image(layout, NAME, architectures=("amd64",))
    target = "%s/os/held-up:1.0" % registry_tls.host
    skopeo_push(layout, NAME, target, registry_tls.skopeo_flags("dest-"))
    args = dict(
        registry_tls.registry_args, name=target, platform="virtualization", architecture="amd64", dest=str(tmp_path)
    )
    # As in a real play: the password comes from a variable (a vault, AWX credential), not the task's text.
    args["password"] = "{{ registry_password }}"
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"registry_password": registry_tls.password},
            "tasks": [{"name": "fetch", MODULE: args}],
        }
    ]
    path = tmp_path / "play.yml"
    path.write_text(json.dumps(play))
    command = ["ansible-playbook", "-i", "localhost,", str(path), "-vvvv"]
    env = dict(ansible.env, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert os.path.exists(tmp_path / "rootfs")
    assert "ESTABLISH LOCAL CONNECTION" in output and '"invocation"' in output, "not verbose"
    assert registry_tls.password not in output
