"""Run modules and playbooks through the real ansible CLI and read their JSON results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t

BIN = os.path.dirname(sys.executable)
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class AnsibleRunner:
    def __init__(self, collections_path: str):
        self.env = dict(os.environ)
        self.env.update(
            {
                "ANSIBLE_COLLECTIONS_PATH": collections_path,
                "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
                "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
                "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
                "ANSIBLE_STDOUT_CALLBACK": "results_json",
                "ANSIBLE_CALLBACK_PLUGINS": os.path.join(TESTS, "callback_plugins"),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_HOST_KEY_CHECKING": "false",
                "ANSIBLE_RETRY_FILES_ENABLED": "false",
                # The CLI of the interpreter running the tests, not whatever PATH finds first.
                "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
            }
        )

    def module(
        self,
        name: str,
        args: t.Mapping[str, t.Any],
        check: bool = False,
        diff: bool = False,
        env: t.Mapping[str, str] | None = None,
        wrapper: t.Sequence[str] = (),
    ) -> dict[str, t.Any]:
        """Run one module on localhost; returns its result dict (failed results too).

        `wrapper` is a command the ansible command line is appended to (see peak_rss_wrapper).
        """
        command = [*wrapper, "ansible", "localhost", "-c", "local", "-i", "localhost,", "-m", name]
        command += ["-a", json.dumps(dict(args))]
        if check:
            command.append("--check")
        if diff:
            command.append("--diff")
        run_env = dict(self.env, **(env or {}))
        proc = subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=1800, check=False)
        try:
            document = json.loads(proc.stdout)
        except ValueError as exc:
            raise AssertionError(
                "ansible printed no JSON (rc=%s):\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr)
            ) from exc
        result = document["plays"][0]["tasks"][0]["hosts"]["localhost"]
        result["_stdout"] = proc.stdout
        result["_stderr"] = proc.stderr
        return result

    def playbook(
        self,
        playbook: str,
        inventory: str = "localhost,",
        extra_vars: t.Mapping[str, t.Any] | None = None,
        check: bool = False,
        env: t.Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> tuple[int, dict[str, t.Any], str]:
        """Run a playbook with the json callback; returns (rc, parsed output, stderr)."""
        command = ["ansible-playbook", "-i", inventory, playbook]
        if extra_vars:
            command += ["-e", json.dumps(dict(extra_vars))]
        if check:
            command.append("--check")
        run_env = dict(self.env, **(env or {}))
        proc = subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=3600, cwd=cwd, check=False)
        try:
            document = json.loads(proc.stdout)
        except ValueError:
            document = {"raw": proc.stdout}
        return proc.returncode, document, proc.stderr


_PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(rc)\n"
)


def peak_rss_wrapper(report: str) -> list[str]:
    """A wrapper for AnsibleRunner.module that writes to `report` the peak RSS (KiB) of the largest process
    the command ran: ansible itself or the module it started, whichever grew most."""
    return [sys.executable, "-c", _PEAK_RSS, report]


def task_results(document: t.Mapping[str, t.Any]) -> list[tuple[str, str, dict[str, t.Any]]]:
    """(task name, host, result) for every task of a json-callback playbook run."""
    results = []
    for play in document.get("plays", []):
        for task in play.get("tasks", []):
            for host, result in task.get("hosts", {}).items():
                results.append((task["task"]["name"], host, result))
    return results
