# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

"""A digest-correct manifest nested 200,000 brackets deep, under 4 MiB, in a layout.

Push, copy and sign read it through the one document parser and refuse it in
one line, through the real ansible CLI against a real registry; nothing reaches
the registry (its own storage is looked at), and no task ends in a raw
MODULE FAILURE with a RecursionError.
"""

from __future__ import annotations

import json
import os

import pytest
from helpers.images import write_raw_document
from helpers.signing import make_key
from helpers.tasks import run_tasks

from ansible_collections.ironcore.image.plugins.module_utils._model import MAX_DOCUMENT_SIZE, OCI_INDEX, OCI_MANIFEST

PUSH = "ironcore.image.ironcore_image_push"
COPY = "ironcore.image.ironcore_image_copy"
SIGN = "ironcore.image.ironcore_image_sign"
FETCH = "ironcore.image.ironcore_image_fetch"
INFO = "ironcore.image.ironcore_image_info"
PRUNE = "ironcore.image.ironcore_image_prune"
NAME = "registry.example.com/os/deep:1"
DEEP = 200_000

pytestmark = pytest.mark.integration


def deep_manifest() -> bytes:
    nested = b"[" * DEEP + b"]" * DEEP
    data = b'{"schemaVersion":2,"mediaType":"%s","a":' % OCI_MANIFEST.encode() + nested + b"}"
    assert len(data) < MAX_DOCUMENT_SIZE
    return data


def refused_in_one_line(result: dict) -> bool:
    message = str(result.get("msg"))
    return (
        result.get("failed") is True
        and "\n" not in message
        and "Traceback" not in message
        and "MODULE FAILURE" not in message
        and "RecursionError" not in message
        and "internal error" not in message
        and "nested too deeply" in message
    )


def test_push_copy_and_sign_refuse_a_deeply_nested_manifest_in_one_line(ansible, registry_plain, tmp_path):
    layout = str(tmp_path / "layout")
    write_raw_document(layout, NAME, deep_manifest())
    key = make_key(tmp_path, "signer")["key"]
    connection = registry_plain.registry_args
    tasks = [
        (PUSH, dict(connection, layout=layout, name=NAME, destination=registry_plain.host + "/deep/pushed:1")),
        (
            COPY,
            {
                "source": {"layout": layout, "name": NAME},
                "destination": dict(connection, name=registry_plain.host + "/deep/copied:1"),
            },
        ),
        (SIGN, {"layout": layout, "name": NAME, "key": key}),
    ]
    results = run_tasks(ansible, str(tmp_path), tasks)
    # Every module's answer is looked at before the test fails, so a failure shows all three.
    wrong = {
        module: result.get("msg")
        for (module, _args), result in zip(tasks, results, strict=True)
        if not refused_in_one_line(result)
    }
    assert wrong == {}
    repositories = os.path.join(registry_plain.storage, "docker", "registry", "v2", "repositories", "deep")
    assert not os.path.exists(repositories)


def test_the_same_manifest_behind_an_index_is_refused_in_one_line_by_every_reader(ansible, tmp_path):
    # The child route: fetch and info reach it through an index entry, prune and info's listing through BlobWalk.
    layout = str(tmp_path / "layout")
    deep = deep_manifest()
    entry = {
        "mediaType": OCI_MANIFEST,
        "digest": write_raw_document(layout, "registry.example.com/os/deep:child", deep),
        "size": len(deep),
        "platform": {"architecture": "amd64", "os": "linux"},
    }
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}).encode()
    write_raw_document(layout, NAME, index, media_type=OCI_INDEX)
    dest = tmp_path / "boot"
    node = {"layout": layout, "name": NAME, "platform": "baremetal", "architecture": "amd64"}
    tasks = [
        (FETCH, dict(node, dest=str(dest))),
        (INFO, node),
        (INFO, {"layout": layout}),
        (PRUNE, {"layout": layout, "grace_period": 0}),
    ]
    results = run_tasks(ansible, str(tmp_path), tasks)
    wrong = {
        number: (module, result.get("msg"))
        for number, ((module, _args), result) in enumerate(zip(tasks, results, strict=True))
        if not refused_in_one_line(result)
    }
    assert wrong == {}
    assert not dest.exists() or os.listdir(dest) == [".ironcore"]
