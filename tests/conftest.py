# Shared fixtures: every test finds the collection through the link that
# `make collection` creates, and drives modules through the real ansible CLI.
from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.environ.get("ANSIBLE_COLLECTIONS_PATH", os.path.join(REPO, ".build", "collections")).split(os.pathsep)[
    0
]
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)

sys.path.insert(0, os.path.join(REPO, "tests"))

from helpers.ansible import AnsibleRunner  # noqa: E402

# ---- test order ---------------------------------------------------------------
# pytest-xdist hands tests to its workers in collection order, and collection puts
# tests/playbooks (the slowest, 1-3 minutes each) after everything else: the run then
# ended with one worker busy on a long playbook while the other sat idle. The slowest
# tests go first, longest first (as measured by --durations in CI), so the short ones
# fill the gaps at the end. Only the order changes; every test still runs.
SLOWEST_FIRST = (
    "tests/playbooks/test_provision_role.py::test_retention_keeps_versions_and_spares_disks_in_use",
    "tests/playbooks/test_provision_layout.py",
    "tests/playbooks/test_provision_ecosystem.py",
    "tests/playbooks/test_prepare.py",
    "tests/playbooks/test_ee.py",
    "tests/playbooks/test_provision_boot_entry.py",
    "tests/playbooks/test_boot_proof.py",
    "tests/playbooks/test_uefi_boot.py",
    "tests/playbooks/",
)


def _rank(nodeid: str) -> int:
    for rank, prefix in enumerate(SLOWEST_FIRST):
        if nodeid.startswith(prefix):
            return rank
    return len(SLOWEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: _rank(item.nodeid))  # stable: the order within a rank stays


@pytest.fixture(scope="session")
def ansible() -> AnsibleRunner:
    return AnsibleRunner(collections_path=COLLECTIONS)


# ---- real registries (tests/helpers/registry.py) ---------------------------

from helpers.registry import FaultProxy, start_registry  # noqa: E402


def _registry_fixture(name: str, tls: bool, auth: str | None):
    @pytest.fixture(scope="session")
    def fixture(tmp_path_factory):
        registry = start_registry(name, str(tmp_path_factory.mktemp("registry-" + name)), tls=tls, auth=auth)
        try:
            yield registry
        finally:
            registry.stop()

    return fixture


# Plain HTTP, anonymous.
registry_plain = _registry_fixture("plain", tls=False, auth=None)
# TLS with a test CA (SAN IP:127.0.0.1) and bcrypt htpasswd Basic auth.
registry_tls = _registry_fixture("tls", tls=True, auth="htpasswd")
# TLS and `auth: token` with the tests' own token server.
registry_token = _registry_fixture("token", tls=True, auth="token")

from helpers.referrers_registry import start_referrers_registry  # noqa: E402


@pytest.fixture(scope="session")
def registry_referrers(tmp_path_factory):
    """Plain HTTP, anonymous, with the OCI referrers API (tests/helpers/referrers_registry.py)."""
    registry = start_referrers_registry("referrers", str(tmp_path_factory.mktemp("registry-referrers")))
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def fault_proxy():
    """Factory: fault_proxy(registry) -> FaultProxy in front of it; all stopped after the test."""
    proxies: list[FaultProxy] = []

    def make(target) -> FaultProxy:
        proxy = FaultProxy(target)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()
