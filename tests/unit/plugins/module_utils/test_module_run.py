"""How a module ends (`_module.run`): a result, a refusal in one line, or our own bug in one line."""

from __future__ import annotations

import signal
import typing as t

import pytest

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._module import run


class Ended(Exception):
    """What exit_json/fail_json raise in AnsibleModule (SystemExit there); carries the arguments."""

    def __init__(self, how: str, arguments: dict[str, t.Any]):
        super().__init__(how)
        self.how = how
        self.arguments = arguments


class Module:
    """The three things run() uses of an AnsibleModule."""

    def __init__(self, name: str = "ironcore.image.ironcore_image_push", diff: bool = False):
        self._name = name
        self._diff = diff

    def exit_json(self, **arguments: t.Any) -> None:
        raise Ended("exit", arguments)

    def fail_json(self, **arguments: t.Any) -> None:
        raise Ended("fail", arguments)


def ended(module: Module, action: t.Callable[[], dict[str, t.Any]]) -> Ended:
    with pytest.raises(Ended) as end:
        run(module, action)
    return end.value


def test_a_result_is_returned_and_diff_only_in_diff_mode():
    end = ended(Module(), lambda: {"changed": True, "diff": {"before": 1}})
    assert (end.how, end.arguments) == ("exit", {"changed": True})
    assert ended(Module(diff=True), lambda: {"changed": True, "diff": {"before": 1}}).arguments["diff"] == {"before": 1}


def test_an_image_error_is_its_one_line_with_the_traceback_in_exception():
    def refuse() -> dict[str, t.Any]:
        raise ImageError("the tag moved;\nrefusing", option="overwrite")

    end = ended(Module(), refuse)
    assert end.how == "fail"
    assert end.arguments["msg"] == "the tag moved; refusing (option: overwrite)"
    assert "Traceback" in end.arguments["exception"] and "refuse" in end.arguments["exception"]


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (KeyError("layers"), "KeyError: 'layers'"),
        (TypeError("unsupported operand\ntype(s)"), "TypeError: unsupported operand type(s)"),
        (RecursionError("maximum recursion depth exceeded"), "RecursionError: maximum recursion depth exceeded"),
        (AssertionError(), "AssertionError"),
    ],
)
def test_anything_else_is_an_internal_error_to_report(error, shown):
    def bug() -> dict[str, t.Any]:
        raise error

    end = ended(Module("ironcore.image.ironcore_image_sign"), bug)
    assert end.how == "fail"
    assert end.arguments["msg"] == "internal error in ironcore_image_sign: %s; please report it" % shown
    assert "\n" not in end.arguments["msg"]
    assert "Traceback" in end.arguments["exception"] and "in bug" in end.arguments["exception"]
    assert "malformed" not in end.arguments["msg"]


def test_the_stop_signal_handlers_are_in_place_while_the_action_runs_and_put_back_after():
    before = signal.getsignal(signal.SIGTERM)
    during: list[t.Any] = []

    def action() -> dict[str, t.Any]:
        during.append(signal.getsignal(signal.SIGTERM))
        return {"changed": False}

    ended(Module(), action)
    assert during[0] not in (before, signal.SIG_DFL) and callable(during[0])
    assert signal.getsignal(signal.SIGTERM) is before
