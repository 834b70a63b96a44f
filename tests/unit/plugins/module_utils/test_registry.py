"""Pure parts of the registry client: error bodies, challenges, options, credentials."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import stat

import pytest
import requests

from ansible_collections.ironcore.image.plugins.module_utils import _auth as auth
from ansible_collections.ironcore.image.plugins.module_utils import _client as client
from ansible_collections.ironcore.image.plugins.module_utils import _errors as errors
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import (
    InvalidRegistryOptions,
    RegistryOptions,
    default_docker_config,
    registry_options,
)


def test_parse_error_body_reads_every_entry():
    body = json.dumps(
        {
            "errors": [
                {"code": "manifest_blob_unknown", "message": "blob unknown to registry", "detail": "sha256:ab"},
                {"code": "DENIED", "message": "requested access to the resource is denied"},
            ]
        }
    ).encode()
    assert errors.parse_error_body(body) == [
        errors.OciErrorEntry("MANIFEST_BLOB_UNKNOWN", "blob unknown to registry"),
        errors.OciErrorEntry("DENIED", "requested access to the resource is denied"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        None,
        b"<html>Bad Gateway</html>",
        b"[]",
        b'{"errors": "x"}',
        b'{"errors":[{"message":"no code"}]}',
        b"\xff\xfe",
    ],
)
def test_parse_error_body_tolerates_non_oci_bodies(body):
    assert errors.parse_error_body(body) == []


def test_describe_failure_is_one_line_with_code_and_advice():
    body = b'{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown\\nto registry"}]}'
    error = errors.describe_failure("pushing index 1.0 to r/os/x", 400, body)
    assert error.status == 400 and error.code == "MANIFEST_BLOB_UNKNOWN" and not error.retryable
    assert "\n" not in str(error)
    assert str(error).startswith("pushing index 1.0 to r/os/x failed: registry answered HTTP 400 ")
    assert "(MANIFEST_BLOB_UNKNOWN: blob unknown to registry)" in str(error)
    assert "push those first" in str(error)


@pytest.mark.parametrize(
    "status, body, code, retryable, advice",
    [
        (401, b"", "UNAUTHORIZED", False, "check username and password"),
        (403, b"forbidden", "DENIED", False, "not allowed"),
        (429, b"", "TOOMANYREQUESTS", True, "lower concurrency"),
        (503, b"<html>down</html>", None, True, "retry later"),
        (
            404,
            b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}',
            "NAME_UNKNOWN",
            False,
            "does not exist",
        ),
        (
            400,
            b'{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid"}]}',
            "MANIFEST_INVALID",
            False,
            "media types",
        ),
        (
            400,
            b'{"errors":[{"code":"NAME_INVALID","message":"invalid repository name"}]}',
            "NAME_INVALID",
            False,
            "lower-case",
        ),
        (
            400,
            b'{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}',
            "DIGEST_INVALID",
            False,
            "corrupt",
        ),
        (
            404,
            b'{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"blob upload unknown to registry"}]}',
            "BLOB_UPLOAD_UNKNOWN",
            False,
            "again",
        ),
    ],
)
def test_describe_failure_codes(status, body, code, retryable, advice):
    error = errors.describe_failure("doing it", status, body, "Reason")
    assert (error.code, error.retryable) == (code, retryable)
    assert advice in str(error)


def test_describe_failure_truncates_long_registry_messages():
    body = json.dumps({"errors": [{"code": "UNKNOWN", "message": "x" * 5000}]}).encode()
    assert len(str(errors.describe_failure("doing it", 500, body))) < 500


@pytest.mark.parametrize(
    "header, expected",
    [
        ('Basic realm="ironcore-test"', auth.Challenge("basic", realm="ironcore-test")),
        (
            'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:os/x:pull,push"',
            auth.Challenge(
                "bearer", "https://auth.example.com/token", "registry.example.com", "repository:os/x:pull,push"
            ),
        ),
        ('bearer realm="https://a/t",error="invalid_token"', auth.Challenge("bearer", "https://a/t")),
        ("", None),
        (None, None),
    ],
)
def test_parse_challenge(header, expected):
    assert auth.parse_challenge(header) == expected


def test_repository_scope():
    assert auth.repository_scope("os/x", ("pull", "push")) == "repository:os/x:pull,push"


def test_registry_options_defaults_and_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    options = registry_options({})
    assert options == RegistryOptions(docker_config=str(tmp_path / "dc" / "config.json"))
    assert default_docker_config() == str(tmp_path / "dc" / "config.json")
    monkeypatch.delenv("DOCKER_CONFIG")
    assert default_docker_config() == os.path.join(os.path.expanduser("~"), ".docker", "config.json")
    for bad in ({"timeout": 0}, {"retries": -1}, {"concurrency": 0}, {"ca_cert": str(tmp_path / "missing.pem")}):
        with pytest.raises(InvalidRegistryOptions):
            registry_options(bad)


def test_options_repr_hides_the_password():
    assert "hunter2" not in repr(RegistryOptions(username="u", password="hunter2"))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_credentials_explicit_beat_docker_config(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"r.example:5000": {"auth": _b64("cfg:cfgpw")}}}))
    explicit = auth.load_credentials(
        "r.example:5000", RegistryOptions(username="u", password="p", docker_config=str(config))
    )
    assert explicit.basic == _b64("u:p")
    from_config = auth.load_credentials("r.example:5000", RegistryOptions(docker_config=str(config)))
    assert from_config.basic == _b64("cfg:cfgpw")
    other = auth.load_credentials("other.example", RegistryOptions(docker_config=str(config)))
    assert other.basic is None
    assert (
        auth.load_credentials("r.example:5000", RegistryOptions(docker_config=str(tmp_path / "none.json"))).basic
        is None
    )
    assert "cfgpw" not in repr(from_config)


def test_credentials_from_a_credential_helper(tmp_path, monkeypatch):
    helper = tmp_path / "bin" / "docker-credential-ironcoretest"
    helper.parent.mkdir()
    helper.write_text(
        '#!/bin/sh\nread host\necho "{\\"Username\\":\\"helper-user\\",\\"Secret\\":\\"helper-secret-for-$host\\"}"\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(helper.parent) + os.pathsep + os.environ["PATH"])
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credHelpers": {"127.0.0.1:5000": "ironcoretest"}}))
    creds = auth.load_credentials("127.0.0.1:5000", RegistryOptions(docker_config=str(config)))
    assert creds.basic == _b64("helper-user:helper-secret-for-127.0.0.1:5000")
    config.write_text(json.dumps({"credsStore": "ironcoretest"}))
    creds = auth.load_credentials("reg.example", RegistryOptions(docker_config=str(config)))
    assert creds.basic == _b64("helper-user:helper-secret-for-reg.example")


def test_broken_docker_config_is_a_clear_error(tmp_path):
    config = tmp_path / "config.json"
    config.write_text("{not json")
    with pytest.raises(errors.RegistryError, match=r"docker_config .* cannot be read"):
        auth.load_credentials("r", RegistryOptions(docker_config=str(config)))


def _wrapped(inner: Exception) -> requests.exceptions.ConnectionError:
    """How requests wraps a low-level error: ConnectionError(MaxRetryError(reason=inner))."""
    import urllib3.exceptions

    return requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(urllib3.HTTPConnectionPool("127.0.0.1"), "/v2/", reason=inner)
    )


@pytest.mark.parametrize(
    "exc, code, words",
    [
        (_wrapped(ConnectionRefusedError(111, "Connection refused")), "CONNECTION_REFUSED", "refused"),
        (_wrapped(socket.gaierror(-2, "Name or service not known")), "NAME_RESOLUTION", "does not resolve"),
        (requests.exceptions.ReadTimeout("read timed out"), "TIMEOUT", "timeout=20s"),
        (_wrapped(ssl.SSLCertVerificationError(1, "certificate verify failed")), "CERTIFICATE_UNTRUSTED", "ca_cert"),
        (
            _wrapped(ConnectionResetError(104, "Connection reset by peer")),
            "CONNECTION_FAILED",
            "Connection reset by peer",
        ),
    ],
)
def test_connection_failures_are_classified(exc, code, words):
    error = client.connection_failure(exc, "checking blob", "127.0.0.1:5000", RegistryOptions())
    assert error.code == code and words in str(error)
    assert str(error).startswith("checking blob failed: ")


def test_scope_covered():
    held = ["repository:os/x:pull,push"]
    assert auth.scope_covered("repository:os/x:pull", held)
    assert auth.scope_covered("repository:os/x:push,pull", held)
    assert not auth.scope_covered("repository:os/y:pull", held)
    assert not auth.scope_covered("repository:os/x:delete", held)


@pytest.mark.parametrize(
    "url, same",
    [
        ("https://r.example:5000/v2/os/x/blobs/uploads/abc?_state=s", True),
        ("HTTPS://R.example:5000/v2/", True),
        ("https://r.example:5001/v2/os/x/blobs/uploads/abc", False),
        ("http://r.example:5000/v2/os/x/blobs/uploads/abc", False),
        ("https://blobs.example:5000/signed?X-Amz-Signature=s", False),
        ("https://r.example.evil:5000/v2/", False),
        ("/v2/os/x/blobs/uploads/abc", False),
        ("ftp://r.example:5000/v2/", False),
        ("https://r.example:notaport/v2/", False),
    ],
)
def test_credentials_only_for_the_registry_origin(url, same):
    assert auth.same_origin(url, "https://r.example:5000") is same


@pytest.mark.parametrize(
    "url, base, same",
    [
        ("https://r.example:443/v2/", "https://r.example", True),
        ("https://r.example/v2/", "https://r.example", True),
        ("http://r.example:80/v2/", "http://r.example", True),
        ("http://r.example/v2/", "https://r.example", False),
        ("https://r.example:80/v2/", "http://r.example", False),
        ("http://[::1]:5000/v2/", "http://[::1]:5000", True),
    ],
)
def test_same_origin_fills_in_default_ports(url, base, same):
    assert auth.same_origin(url, base) is same


def _challenge(realm: str) -> auth.Challenge:
    return auth.Challenge(scheme="bearer", realm=realm, service="registry")


def test_plain_http_token_realm_is_refused_before_credentials_are_sent():
    # Port 1 on loopback: without the refusal the token request would be tried there.
    registry = client.RegistryClient(
        "r.example:5000", RegistryOptions(username="u", password="hunter2", retries=0, timeout=5)
    )
    with pytest.raises(errors.RegistryError) as refused:
        registry._fetch_token(_challenge("http://127.0.0.1:1/token"), ["repository:os/x:pull"], "reading os/x")
    message = str(refused.value)
    assert refused.value.code == "INSECURE_TOKEN_REALM"
    assert message.startswith("reading os/x failed: registry r.example:5000 asks for credentials over plain HTTP")
    assert "http://127.0.0.1:1/token" in message and "HTTPS" in message and "\n" not in message
    assert "hunter2" not in message


def test_token_realm_checks():
    auth.check_token_realm("https://auth.example/token", False, "r.example", "x")
    auth.check_token_realm("http://127.0.0.1:5001/token", True, "127.0.0.1:5000", "x")
    with pytest.raises(errors.RegistryError, match=r"plain HTTP at http://auth\.example/token"):
        auth.check_token_realm("http://auth.example/token", False, "r.example", "x")
    with pytest.raises(errors.RegistryError, match="not an http"):
        auth.check_token_realm("/token", False, "r.example", "x")


@pytest.mark.parametrize(
    "config",
    [
        {"credsStore": "x/pwn"},
        {"credHelpers": {"r.example": "x/pwn"}},
        {"credHelpers": {"other.example": "../x/pwn"}},
        {"credsStore": "-x"},
        {"credsStore": ["x"]},
    ],
)
def test_credential_helpers_that_are_not_plain_names_never_run(tmp_path, monkeypatch, config):
    # What `credsStore: "x/pwn"` used to run: ./docker-credential-x/pwn from the working directory.
    marker = tmp_path / "ran"
    for name in ("docker-credential-x/pwn", "docker-credential--x"):
        planted = tmp_path / name
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_text('#!/bin/sh\ntouch %s\necho \'{"Username":"u","Secret":"s"}\'\n' % marker)
        planted.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(errors.RegistryError) as refused:
        auth.load_credentials("r.example", RegistryOptions(docker_config=str(path)))
    assert refused.value.code == "CREDENTIAL_HELPER_INVALID" and refused.value.option == "docker_config"
    assert "not a plain program name" in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()


def test_a_missing_docker_config_given_by_the_user_is_named(tmp_path):
    missing = str(tmp_path / "nope" / "config.json")
    given = auth.load_credentials("r.example", RegistryOptions(docker_config=missing, docker_config_given=True))
    assert not given.present and given.missing == "docker_config %s does not exist" % missing
    error = auth.no_credentials_error("reading r.example/os/x:1", "r.example", given)
    assert str(error) == (
        "reading r.example/os/x:1 failed: registry r.example requires authentication; docker_config %s does not"
        " exist; give username and password, or credentials for it in docker_config" % missing
    )
    # The default location may well be absent: that says nothing.
    default = auth.load_credentials("r.example", RegistryOptions(docker_config=missing))
    assert default.missing is None
    assert registry_options({"docker_config": missing}).docker_config_given is True
    assert registry_options({}).docker_config_given is False


def test_a_credential_helper_not_on_path_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credsStore": "desktop", "auths": {"inline.example": {"auth": _b64("a:b")}}}))
    creds = auth.load_credentials("r.example", RegistryOptions(docker_config=str(path)))
    assert not creds.present
    message = str(auth.no_credentials_error("pushing", "r.example", creds))
    assert "docker-credential-desktop not found on PATH" in message and "install it" in message
    # Inline credentials for the host answer before the helper would be asked.
    assert auth.load_credentials("inline.example", RegistryOptions(docker_config=str(path))).basic == _b64("a:b")


@pytest.mark.parametrize("text", ["https://r.example/os/x:1", "http://127.0.0.1:5000/os/x", "HTTPS://r.example/os/x"])
def test_a_scheme_in_a_reference_is_refused_with_advice(text):
    from ansible_collections.ironcore.image.plugins.module_utils._model import ImageReference, InvalidReference

    with pytest.raises(InvalidReference) as refused:
        ImageReference.parse(text)
    assert "drop the scheme" in str(refused.value) and "HTTPS is the default" in str(refused.value)
    assert repr(text.partition("://")[2]) in str(refused.value)


def test_image_error_carries_retryable_and_option():
    error = errors.RegistryError("a\nb", status=503, code="UNAVAILABLE", retryable=True, option="timeout")
    assert isinstance(error, errors.ImageError)
    assert (str(error), error.retryable, error.option, error.status) == ("a b (option: timeout)", True, "timeout", 503)


@pytest.mark.parametrize(
    ("message", "option", "shown"),
    [
        ("the tag moved", "overwrite", "the tag moved (option: overwrite)"),
        ("set overwrite=true to move it", "overwrite", "set overwrite=true to move it"),
        ("check ca_cert and validate_certs", "ca_cert", "check ca_cert and validate_certs"),
        # A longer word that merely contains the option's name does not name it.
        ("check the passwords file", "password", "check the passwords file (option: password)"),
        ("no option to blame", None, "no option to blame"),
    ],
)
def test_the_one_line_names_its_option(message, option, shown):
    assert str(errors.ImageError(message, option=option)) == shown
