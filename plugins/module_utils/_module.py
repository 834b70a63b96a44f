# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""How every module of the collection ends: its one call's result, or its error as one line."""

from __future__ import annotations

import traceback
import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError


def run(module: t.Any, action: t.Callable[[], dict[str, t.Any]]) -> None:
    """exit_json with what `action` returns, or fail_json with its ImageError.

    The message stays the one line people read; the traceback goes to
    `exception`, so that -vvv shows the cause. A `diff` is returned only in
    diff mode.
    """
    try:
        result = action()
    except ImageError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
        return
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)
