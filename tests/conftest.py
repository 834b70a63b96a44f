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


@pytest.fixture(scope="session")
def ansible() -> AnsibleRunner:
    return AnsibleRunner(collections_path=COLLECTIONS)
