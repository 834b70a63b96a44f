"""Inventories for playbook tests: YAML files with groups of hosts, reached locally or over SSH."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import typing as t

import yaml


def write_inventory(
    path: str,
    groups: t.Mapping[str, t.Mapping[str, t.Mapping[str, t.Any]]],
    all_vars: t.Mapping[str, t.Any] | None = None,
) -> str:
    """Write {group: {host: hostvars}} as a YAML inventory file; returns its path."""
    document: dict[str, t.Any] = {"all": {"vars": dict(all_vars or {}), "children": {}}}
    for group, hosts in groups.items():
        document["all"]["children"][group] = {"hosts": {host: dict(host_vars) for host, host_vars in hosts.items()}}
    with open(path, "w") as stream:
        yaml.safe_dump(document, stream, sort_keys=False)
    return path


def local_host(**host_vars: t.Any) -> dict[str, t.Any]:
    """Host variables for a node reached with the local connection, running modules with our interpreter."""
    return dict({"ansible_connection": "local", "ansible_python_interpreter": sys.executable}, **host_vars)


def outcomes(document: t.Mapping[str, t.Any]) -> dict[str, list[tuple[str, str, dict[str, t.Any]]]]:
    """Task results of a results_json playbook run, sorted into failed / changed / ok / skipped."""
    sorted_results: dict[str, list[tuple[str, str, dict[str, t.Any]]]] = {
        "failed": [],
        "changed": [],
        "ok": [],
        "skipped": [],
    }
    for play in document.get("plays", []):
        for task in play.get("tasks", []):
            for host, result in task.get("hosts", {}).items():
                if result.get("failed"):
                    kind = "failed"
                elif result.get("skipped"):
                    kind = "skipped"
                elif result.get("changed"):
                    kind = "changed"
                else:
                    kind = "ok"
                # "ironcore.image.provision : Fetch ..." -> "Fetch ..."
                sorted_results[kind].append((task["task"]["name"].split(" : ", 1)[-1], host, result))
    return sorted_results


def failures_by_host(document: t.Mapping[str, t.Any]) -> dict[str, tuple[str, str]]:
    """host -> (failed task name, message) for a run where each host fails at most once."""
    found: dict[str, tuple[str, str]] = {}
    for name, host, result in outcomes(document)["failed"]:
        assert host not in found, "%s failed twice: %s and %s" % (host, found[host], name)
        found[host] = (name, result.get("msg", ""))
    return found


def clean_ansible_env(**overrides: str) -> dict[str, str]:
    """The process environment without ANSIBLE_* settings (as a fresh shell or AWX has), plus overrides."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(overrides)
    return env


def tool(name: str) -> str:
    """A command installed next to the interpreter running the tests (the virtualenv's ansible-*)."""
    return os.path.join(os.path.dirname(sys.executable), name)


def provision_slug(name: str) -> str:
    """The provision role's default boot subdirectory and disk name for an image reference.

    Worked out independently of the role: last path element with ':' and '@' as '-', then '-' and the first
    8 hex digits of the SHA-256 of the repository (the reference without tag or digest).
    """
    repository = name.split("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        repository = repository[: len(repository) - len(last)] + last.split(":", 1)[0]
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", re.sub(r"[:@]", "-", name.split("/")[-1]))
    return "%s-%s" % (readable, hashlib.sha256(repository.encode()).hexdigest()[:8])
