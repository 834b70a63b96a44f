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

import traceback
import typing as t

from ansible.module_utils.basic import missing_required_lib

try:
    import jsonschema  # noqa: F401  (imported to prove it is there)
except ImportError:
    JSONSCHEMA_ERROR: str | None = traceback.format_exc()
else:
    JSONSCHEMA_ERROR = None

try:
    import requests  # noqa: F401
except ImportError:
    REQUESTS_ERROR: str | None = traceback.format_exc()
else:
    REQUESTS_ERROR = None

try:
    import oras.auth.utils  # noqa: F401
except ImportError:
    ORAS_ERROR: str | None = traceback.format_exc()
else:
    ORAS_ERROR = None

_ERRORS = {
    "jsonschema": lambda: JSONSCHEMA_ERROR,
    "requests": lambda: REQUESTS_ERROR,
    "oras": lambda: ORAS_ERROR,
}
_PIP_NAMES = {"jsonschema": "jsonschema>=4.0", "requests": "requests>=2.28", "oras": "oras>=0.2.43"}


def require(module: t.Any, *libraries: str) -> None:
    """Fail the module cleanly when a library it needs is missing."""
    for library in libraries:
        error = _ERRORS[library]()
        if error is not None:
            module.fail_json(msg=missing_required_lib(_PIP_NAMES[library]), exception=error)
