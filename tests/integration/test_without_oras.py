"""Fetch and info on a node without oras: docker config and credential helpers are read by the collection itself."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from helpers.images import build_ours, skopeo_push
from helpers.tasks import run_tasks

pytestmark = pytest.mark.integration

FETCH = "ironcore.image.ironcore_image_fetch"
INFO = "ironcore.image.ironcore_image_info"
PUSH = "ironcore.image.ironcore_image_push"
REPOSITORY = "noras/gardenlinux"

# A helper the way docker's own behave: credentials for the one server it knows, exit 1 for any other.
HELPER = """#!/bin/sh
server=$(cat)
if [ "$server" = "%(host)s" ]; then
  printf '{"ServerURL":"%%s","Username":"%(username)s","Secret":"%(password)s"}' "$server"
else
  echo "credentials not found in native keychain"
  exit 1
fi
"""


@pytest.fixture
def no_oras(tmp_path):
    """An environment whose Python cannot import oras: a package of that name that refuses to import."""
    shadow = tmp_path / "shadow" / "oras"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("oras is not installed on this node")\n')
    return {"PYTHONPATH": str(shadow.parent)}


@pytest.fixture
def pushed(registry_tls, tmp_path):
    layout = str(tmp_path / "layout")
    name = "%s/%s:1.0" % (registry_tls.host, REPOSITORY)
    files = build_ours(layout, name, tmp_path)
    skopeo_push(layout, name, name, registry_tls.skopeo_flags("dest-"))
    return name, files


def test_fetch_and_info_need_no_oras(ansible, registry_tls, pushed, no_oras, tmp_path):
    name, files = pushed
    host, username, password = registry_tls.host, registry_tls.username, registry_tls.password
    inline = tmp_path / "inline.json"
    inline.write_text(
        json.dumps(
            {"auths": {host: {"auth": base64.b64encode(b"%s:%s" % (username.encode(), password.encode())).decode()}}}
        )
    )
    fields = tmp_path / "fields.json"
    fields.write_text(json.dumps({"auths": {"https://%s/v1/" % host: {"username": username, "password": password}}}))
    helper_config = tmp_path / "helper.json"
    helper_config.write_text(json.dumps({"auths": {host: {}}, "credHelpers": {host: "ironcoretest"}}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-ironcoretest"
    helper.write_text(HELPER % {"host": host, "username": username, "password": password})
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    env = dict(no_oras, PATH=str(bin_dir) + os.pathsep + os.environ["PATH"])

    common = {"name": name, "ca_cert": registry_tls.registry_args["ca_cert"]}
    fetch = dict(common, platform="baremetal", architecture="amd64")
    results = run_tasks(
        ansible,
        str(tmp_path),
        [
            (FETCH, dict(fetch, dest=str(tmp_path / "inline"), docker_config=str(inline))),
            (FETCH, dict(fetch, dest=str(tmp_path / "fields"), docker_config=str(fields))),
            (FETCH, dict(fetch, dest=str(tmp_path / "helper"), docker_config=str(helper_config))),
            (INFO, dict(common, docker_config=str(helper_config))),
            # Without credentials the registry refuses: the helper is what let the others in.
            (INFO, dict(common, docker_config=str(tmp_path / "none.json"))),
            # The shadow works: push, which still requires oras, says it is missing.
            (PUSH, {"layout": str(tmp_path / "layout"), "name": name, "ca_cert": common["ca_cert"]}),
        ],
        env=env,
    )
    inline_fetch, fields_fetch, helper_fetch, info, anonymous, push = results
    for result, dest in ((inline_fetch, "inline"), (fields_fetch, "fields"), (helper_fetch, "helper")):
        assert result.get("failed") is not True and result["changed"] is True, result
        for role in ("kernel", "initramfs", "rootfs"):
            assert (tmp_path / dest / role).read_bytes() == files[("amd64", role)], (dest, role)
    assert info.get("failed") is not True and info["digest"] == helper_fetch["digest"], info
    assert anonymous["failed"] is True and "requires authentication" in anonymous["msg"], anonymous
    assert push["failed"] is True and "cannot import oras" in push["msg"], push
    everything = json.dumps(results)
    assert password not in everything
