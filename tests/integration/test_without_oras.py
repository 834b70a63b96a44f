"""Every module runs without oras: docker config and credential helpers are read by the collection itself.

The collection never imported oras; push, copy and sign once refused to start without it all the same.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys

import pytest
from helpers.images import build_ours, skopeo_push
from helpers.registry import blob_data_path
from helpers.signing import image_digests, make_key, openssl_verifies, sig_tag, skopeo_raw
from helpers.tasks import run_tasks

pytestmark = pytest.mark.integration

FETCH = "ironcore.image.ironcore_image_fetch"
INFO = "ironcore.image.ironcore_image_info"
PUSH = "ironcore.image.ironcore_image_push"
COPY = "ironcore.image.ironcore_image_copy"
SIGN = "ironcore.image.ironcore_image_sign"
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
    env = {"PYTHONPATH": str(shadow.parent)}
    # The shadow works: the Python the modules run with cannot import oras in this environment.
    probe = subprocess.run(
        [sys.executable, "-c", "import oras"], env=dict(os.environ, **env), capture_output=True, check=False
    )
    assert probe.returncode != 0 and b"oras is not installed on this node" in probe.stderr, probe
    return env


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
        ],
        env=env,
    )
    inline_fetch, fields_fetch, helper_fetch, info, anonymous = results
    for result, dest in ((inline_fetch, "inline"), (fields_fetch, "fields"), (helper_fetch, "helper")):
        assert result.get("failed") is not True and result["changed"] is True, result
        for role in ("kernel", "initramfs", "rootfs"):
            assert (tmp_path / dest / role).read_bytes() == files[("amd64", role)], (dest, role)
    assert info.get("failed") is not True and info["digest"] == helper_fetch["digest"], info
    assert anonymous["failed"] is True and "requires authentication" in anonymous["msg"], anonymous
    everything = json.dumps(results)
    assert password not in everything


def test_push_copy_and_sign_need_no_oras(ansible, registry_tls, no_oras, tmp_path):
    """Push, copy (registry to registry, layout to registry) and sign on a registry, read back by skopeo and openssl."""
    host = registry_tls.host
    layout = str(tmp_path / "layout")
    built = "%s/%s:2.0" % (host, REPOSITORY)
    build_ours(layout, built, tmp_path, tag="push-copy-sign")
    key = make_key(tmp_path, "signer")
    connection = dict(registry_tls.registry_args)
    pushed, copied, from_layout = (
        "%s/noras/%s:2.0" % (host, repository) for repository in ("pushed", "copied", "from-layout")
    )
    results = run_tasks(
        ansible,
        str(tmp_path),
        [
            (PUSH, dict(connection, layout=layout, name=built, destination=pushed)),
            (COPY, {"source": dict(connection, name=pushed), "destination": dict(connection, name=copied)}),
            (COPY, {"source": {"layout": layout, "name": built}, "destination": dict(connection, name=from_layout)}),
            (SIGN, dict(connection, name=copied, key=key["key"])),
        ],
        env=no_oras,
    )
    # Every task's message, so that a failure shows each module that refused.
    assert [result.get("msg") for result in results if result.get("failed")] == []
    assert [result["changed"] for result in results] == [True] * 4
    push, registry_copy, layout_copy, signed = results
    # The same bytes at all three names, by skopeo's reading of the registry.
    digests = image_digests(registry_tls, pushed)
    assert digests[0] == push["digest"] == registry_copy["digest"] == layout_copy["digest"]
    assert image_digests(registry_tls, copied) == digests == image_digests(registry_tls, from_layout)
    # Every manifest of the copy, and the two platform indexes its platform tags name, carry a signature openssl
    # accepts.
    assert set(digests) < set(signed["signed"]) and len(signed["signed"]) == len(digests) + 2
    repository = copied.rsplit(":", 1)[0]
    for digest in signed["signed"]:
        [layer] = skopeo_raw(registry_tls, "%s:%s" % (repository, sig_tag(digest)))["layers"]
        with open(blob_data_path(registry_tls.storage, layer["digest"]), "rb") as stream:
            payload = stream.read()
        signature = layer["annotations"]["dev.cosignproject.cosign/signature"]
        assert openssl_verifies(tmp_path, key["pub"], payload, signature)
    assert registry_tls.password not in json.dumps(results)
