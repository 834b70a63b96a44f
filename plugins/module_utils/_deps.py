# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Third-party imports, guarded in one place.

Modules call require() right after creating AnsibleModule, so a missing
library is one clear failure that says what to install.
"""

from __future__ import annotations

import importlib
import traceback
import typing as t

from ansible.module_utils.basic import missing_required_lib

# Library name -> (module to import, requirement to install when it is missing).
_LIBRARIES = {
    "jsonschema": ("jsonschema", "jsonschema>=4.0"),
    "requests": ("requests", "requests>=2.28"),
    "oras": ("oras.auth.utils", "oras>=0.2.43"),
}


def import_error(library: str) -> str | None:
    """The traceback of importing `library`, or None when it imports."""
    module_name = _LIBRARIES[library][0]
    try:
        importlib.import_module(module_name)
    except ImportError:
        return traceback.format_exc()
    return None


def require(module: t.Any, *libraries: str) -> None:
    """Fail the module cleanly when a library it needs is missing."""
    for library in libraries:
        error = import_error(library)
        if error is not None:
            module.fail_json(msg=missing_required_lib(_LIBRARIES[library][1]), exception=error)
