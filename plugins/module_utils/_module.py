# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""How every module of the collection ends: its one call's result, or its error as one line."""

from __future__ import annotations

import traceback
import typing as t

from ansible_collections.ironcore.image.plugins.module_utils import _stop
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError, one_line


def run(module: t.Any, action: t.Callable[[], dict[str, t.Any]]) -> None:
    """exit_json with what `action` returns, or fail_json with its error as one line.

    An ImageError is a refusal we meant: its one-line message (naming its
    option when it has one). Anything else is our own bug, never dressed up as
    a refusal: "internal error in <module>: <type>: <text>; please report it".
    Either way the message stays the one line people read and the traceback
    goes to `exception`, so that -vvv shows the cause. A `diff` is returned
    only in diff mode.

    SIGINT, SIGTERM and SIGHUP end the module within seconds with one line
    ("interrupted by SIGTERM; ..."), whatever its transfer threads are doing
    (see _stop).
    """

    def fail(line: str) -> None:
        module.fail_json(msg=line)

    previous = _stop.install(fail)
    try:
        try:
            result = action()
        finally:
            # The work is over: a stop signal from here on needs no special handling.
            _stop.restore(previous)
    except _stop.Interrupted as exc:
        _stop.finish(fail, str(exc))
    except ImageError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
        return
    except Exception as exc:  # pylint: disable=broad-exception-caught  # our own bug: one line, not a crash
        module.fail_json(msg=internal_error(module_name(module), exc), exception=traceback.format_exc())
        return
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


def module_name(module: t.Any) -> str:
    """The module's short name (Ansible sets `_name`; it may carry the collection's prefix)."""
    name = getattr(module, "_name", None)
    return str(name).rsplit(".", 1)[-1] if name else "this module"


def internal_error(name: str, exc: BaseException) -> str:
    """The one line for an error that is not an ImageError: a bug of ours, to be reported."""
    text = one_line(exc)
    return "internal error in %s: %s%s; please report it" % (name, type(exc).__name__, ": " + text if text else "")
