"""_identity: containers-policy.json's signedIdentity rules over the references our signatures name."""

from __future__ import annotations

import pytest

from ansible_collections.ironcore.image.plugins.module_utils._identity import (
    IdentityError,
    SignedIdentity,
    matches_prefix,
    split_reference,
)

HOME = "registry.example.com/os/gardenlinux"
PROMOTED = "prod.example.com:5000/os/gardenlinux"


def test_split_reference_keeps_a_port_in_the_repository():
    assert split_reference("host:5000/os/x") == ("host:5000/os/x", None, None)
    assert split_reference("host:5000/os/x:1.0") == ("host:5000/os/x", "1.0", None)
    assert split_reference("host/os/x@sha256:ab") == ("host/os/x", None, "sha256:ab")


def test_the_default_wants_the_image_repository_and_an_exact_tag():
    default = SignedIdentity.from_params(None)
    assert default.accepts(HOME, "1.0", HOME)
    assert default.accepts(HOME, None, HOME)
    assert not default.accepts(HOME, "1.0", PROMOTED)
    assert default.accepts(HOME, "1.0", HOME + ":1.0")
    assert not default.accepts(HOME, "1.0", HOME + ":2.0")
    # Fetched by digest, a signed tag or digest is fine; fetched by tag, a signed digest is not exact.
    assert default.accepts(HOME, None, HOME + ":2.0")
    assert not default.accepts(HOME, "1.0", HOME + "@sha256:ab")


def test_match_repository_ignores_tags():
    policy = SignedIdentity.from_params({"type": "matchRepository"})
    assert policy.accepts(HOME, "1.0", HOME + ":2.0")
    assert not policy.accepts(HOME, "1.0", PROMOTED)


def test_exact_repository_wants_that_repository_whatever_the_image_is_called():
    policy = SignedIdentity.from_params({"type": "exactRepository", "repository": HOME})
    assert policy.accepts("offline/gardenlinux", "1.0", HOME)
    assert not policy.accepts(HOME + "-other", "1.0", HOME + "-other")


def test_remap_identity_replaces_a_matching_prefix_on_a_component_boundary():
    policy = SignedIdentity.from_params(
        {"type": "remapIdentity", "prefix": "prod.example.com:5000/os", "signed_prefix": "registry.example.com/os"}
    )
    assert policy.accepts(PROMOTED, "1.0", HOME)
    assert not policy.accepts(PROMOTED, "1.0", PROMOTED)
    # Not under the prefix (os-extra is not os/...): matched as it is.
    assert policy.accepts("prod.example.com:5000/os-extra/x", "1", "prod.example.com:5000/os-extra/x")
    assert not policy.accepts("prod.example.com:5000/os-extra/x", "1", "registry.example.com/os-extra/x")
    # After the remap, matchRepoDigestOrExact: a signed tag must be exact.
    assert not policy.accepts(PROMOTED, "1.0", HOME + ":2.0")
    assert "expects registry.example.com/os/gardenlinux" in policy.describe(PROMOTED)


def test_matches_prefix_is_whole_components():
    assert matches_prefix("a/b/c", "a/b") and matches_prefix("a/b", "a/b")
    assert not matches_prefix("a/bc", "a/b")


@pytest.mark.parametrize(
    "given, message",
    [
        ({"type": "exactRepository"}, "needs repository"),
        ({"type": "remapIdentity", "prefix": "a/b"}, "needs prefix and signed_prefix"),
        ({"type": "matchRepository", "repository": HOME}, "does not apply to type matchRepository"),
        ({"type": "exactRepository", "repository": HOME + ":1.0"}, "without a tag, digest"),
        ({"type": "remapIdentity", "prefix": "a/b/", "signed_prefix": "c"}, "trailing /"),
        ({"type": "matchExact"}, "is none of"),
    ],
)
def test_an_incomplete_policy_is_refused_in_one_line(given, message):
    with pytest.raises(IdentityError, match=message) as raised:
        SignedIdentity.from_params(given)
    assert "\n" not in str(raised.value)


def test_the_identities_docs_signing_md_shows_are_valid():
    """Each signature_identity of docs/signing.md's YAML is accepted, and its policy.json is JSON."""
    import json
    import os
    import re
    import textwrap

    import yaml

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    with open(os.path.join(root, "docs", "signing.md"), encoding="utf-8") as stream:
        text = stream.read()
    shown = []
    for block in re.findall(r"```yaml\n(.*?)\n *```", text, re.S):
        for task in yaml.safe_load(textwrap.dedent(block)) or []:
            for args in task.values() if isinstance(task, dict) else []:
                if isinstance(args, dict) and "signature_identity" in args:
                    shown.append(SignedIdentity.from_params(args["signature_identity"]).type)
    assert sorted(shown) == ["exactRepository", "remapIdentity"]
    [policy] = re.findall(r"```json\n(.*?)```", text, re.S)
    assert json.loads(policy)["default"] == [{"type": "reject"}]
