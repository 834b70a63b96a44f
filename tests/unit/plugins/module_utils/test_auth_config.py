from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _auth as auth
from ansible_collections.ironcore.image.plugins.module_utils._errors import RegistryError
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import RegistryOptions


def options(config: str) -> RegistryOptions:
    return RegistryOptions(docker_config=config, docker_config_given=True)


def helper(bin_dir, name: str, body: str) -> None:
    path = bin_dir / ("docker-credential-" + name)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory) + os.pathsep + os.environ["PATH"])
    return directory


def test_challenge_parameters_are_parsed():
    challenge = auth.parse_challenge('Bearer realm="https://t.example/token",service="reg",scope="repository:a:pull"')
    assert challenge == auth.Challenge("bearer", "https://t.example/token", "reg", "repository:a:pull")
    assert auth.parse_challenge('Basic realm="x"') == auth.Challenge("basic", "x")
    assert auth.parse_challenge("  ") is None


def test_localhost_and_loopback_stand_for_each_other():
    assert auth.host_variants("localhost:5000") == ["localhost:5000", "127.0.0.1:5000"]
    assert auth.host_variants("127.0.0.1:5000") == ["127.0.0.1:5000", "localhost:5000"]
    assert auth.host_variants("r.example") == ["r.example"]


def test_inline_auths_in_every_form(tmp_path):
    config = tmp_path / "config.json"
    entries = {
        "a.example": {"auth": base64.b64encode(b"u:p").decode()},
        "https://b.example/v1/": {"username": "u", "password": "p"},
        "c.example": {"identitytoken": "refresh"},
    }
    config.write_text(json.dumps({"auths": entries}))
    basic = auth.basic_auth("u", "p")
    assert auth.load_credentials("a.example", options(str(config))).basic == basic
    assert auth.load_credentials("b.example", options(str(config))).basic == basic
    assert auth.load_credentials("c.example", options(str(config))).identity_token == "refresh"
    assert not auth.load_credentials("d.example", options(str(config))).present


def test_a_broken_inline_auth_is_refused_without_showing_it(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"a.example": {"auth": "bm90LWEtcGFpcg=="}}}))
    with pytest.raises(RegistryError) as refused:
        auth.load_credentials("a.example", options(str(config)))
    assert "auths.a.example.auth" in str(refused.value) and "bm90" not in str(refused.value)


def test_credential_helpers_and_stores(tmp_path, bin_dir):
    helper(
        bin_dir,
        "pass",
        'read server; [ "$server" = a.example ] || { echo not found; exit 1; }\n'
        'printf \'{"Username":"u","Secret":"p"}\'\n',
    )
    helper(bin_dir, "token", 'cat >/dev/null; printf \'{"Username":"<token>","Secret":"refresh"}\'\n')
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credHelpers": {"a.example": "pass", "b.example": "pass"}, "credsStore": "token"}))
    assert auth.load_credentials("a.example", options(str(config))).basic == auth.basic_auth("u", "p")
    unknown = auth.load_credentials("b.example", options(str(config)))
    assert not unknown.present and "docker-credential-pass has no credentials" in str(unknown.missing)
    assert auth.load_credentials("c.example", options(str(config))).identity_token == "refresh"


@pytest.mark.parametrize(
    "body, message",
    [
        ("cat >/dev/null; echo not-json\n", "gave no usable answer"),
        ("cat >/dev/null; head -c 200000 /dev/zero\n", "answered more than"),
        ("cat >/dev/null; exec sleep 30\n", "did not answer within"),
    ],
)
def test_a_misbehaving_helper_fails_in_one_line(bin_dir, monkeypatch, body, message):
    monkeypatch.setattr(auth, "CREDENTIAL_HELPER_TIMEOUT", 0.5)
    helper(bin_dir, "odd", body)
    with pytest.raises(RegistryError) as failed:
        auth.ask_credential_helper("odd", "a.example")
    assert message in str(failed.value) and "\n" not in str(failed.value)
