"""Run many module tasks in one ansible-playbook process: one start-up cost for a whole matrix."""

from __future__ import annotations

import itertools
import json
import os
import typing as t

from helpers.ansible import AnsibleRunner, task_results

_numbers = itertools.count()


def run_tasks(
    ansible: AnsibleRunner,
    workdir: str,
    tasks: t.Sequence[tuple[t.Any, ...]],
    check: bool = False,
    env: t.Mapping[str, str] | None = None,
) -> list[dict[str, t.Any]]:
    """Each (module, args[, task keywords]) becomes one task; failures do not stop the play.

    Task keywords such as {"check_mode": True} apply to that task alone. Results come in order.
    """
    play_tasks = []
    for number, (module, args, *keywords) in enumerate(tasks):
        task = {"name": "task %d" % number, module: dict(args), "ignore_errors": True}
        task.update(keywords[0] if keywords else {})
        play_tasks.append(task)
    play = {"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": play_tasks}
    path = os.path.join(workdir, "play-%d.yml" % next(_numbers))
    with open(path, "w") as stream:
        json.dump([play], stream)
    rc, document, stderr = ansible.playbook(path, check=check, env=env)
    results = [result for _, _, result in task_results(document)]
    if len(results) != len(tasks):
        raise AssertionError("playbook gave %d results for %d tasks (rc=%s): %s" % (len(results), len(tasks), rc, stderr))
    return results
