"""What a module loads at its start, read from the AnsiballZ payload Ansible really ran.

A fetch or info from a local OCI layout sends no HTTP request, so it must not import requests (and
urllib3 and ssl below it): that import is the largest fixed cost of a module's start (docs/performance.md,
"Module start"). The modules run once through the ansible CLI with the remote files kept; the kept
AnsiballZ file is then run again under `python -X importtime`, which lists every module the process imported.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from helpers.images import build_ours

NAME = "startup.example.com/os/startup:1.0"
UTILS = "ansible_collections.ironcore.image.plugins.module_utils."
# Imported only by the registry client's first request (plugins/module_utils/_client.py, _requests()), and the
# registry client itself only where a registry or a signature check is asked for (_fetch, the info module).
NOT_FROM_A_LAYOUT = ("requests", "urllib3", "ssl", "http.cookiejar", UTILS + "_client", UTILS + "_signatures")


def imported_modules(payload: str) -> tuple[dict, set[str]]:
    """Run a kept AnsiballZ file as Ansible does: its JSON result and the names of every module imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", payload], capture_output=True, text=True, timeout=120, check=False
    )
    names = set()
    for line in proc.stderr.splitlines():
        # "import time: self [us] | cumulative | <indent>name"
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    return json.loads(proc.stdout), names


def kept_payload(remote_tmp: str, module: str) -> str:
    found = glob.glob(os.path.join(remote_tmp, "ansible-tmp-*", "AnsiballZ_%s.py" % module))
    assert len(found) == 1, found
    return found[0]


def test_layout_only_fetch_and_info_do_not_import_requests(ansible, tmp_path):
    layout = str(tmp_path / "layout")
    build_ours(layout, NAME, tmp_path)
    dest = str(tmp_path / "dest")
    calls = {
        "ironcore_image_fetch": {
            "layout": layout,
            "name": NAME,
            "platform": "baremetal",
            "architecture": "amd64",
            "dest": dest,
        },
        "ironcore_image_info": {"layout": layout, "name": NAME},
    }
    for module, args in calls.items():
        remote_tmp = str(tmp_path / ("remote-" + module))
        env = {"ANSIBLE_KEEP_REMOTE_FILES": "1", "ANSIBLE_REMOTE_TMP": remote_tmp}
        first = ansible.module("ironcore.image." + module, args, env=env)
        assert not first.get("failed"), first

        again, names = imported_modules(kept_payload(remote_tmp, module))
        assert not again.get("failed"), again
        # The run did the module's work: the list is of a real start, not of a failed one.
        assert UTILS + "_source" in names, sorted(names)
        assert [name for name in NOT_FROM_A_LAYOUT if name in names] == [], module
    assert again["digest"].startswith("sha256:")
    assert os.listdir(dest)
