# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Third-party imports, guarded in one place.

Modules call require() right after creating AnsibleModule, so missing
libraries are one clear failure that names all of them and says where to
get them.
"""

from __future__ import annotations

import importlib
import sys
import traceback
import typing as t

# Library name -> (module to import, requirement to install when it is missing).
_LIBRARIES = {
    "jsonschema": ("jsonschema", "jsonschema>=4.0"),
    "requests": ("requests", "requests>=2.28"),
    "cryptography": ("cryptography.hazmat.primitives.asymmetric.ec", "cryptography>=3.3"),
    # The block index's default hash (xxh3-128); only a build that writes such an index needs it.
    "xxhash": ("xxhash", "xxhash>=3.0"),
}


def import_error(library: str) -> str | None:
    """The traceback of importing `library`, or None when it imports."""
    module_name = _LIBRARIES[library][0]
    try:
        importlib.import_module(module_name)
    except ImportError:
        return traceback.format_exc()
    return None


def missing_message(requirements: t.Sequence[str], interpreter: str) -> str:
    """One line: every missing requirement, the interpreter that lacks them, and how to get them."""
    return (
        "%s cannot import %s: install them for that Python, for example into a virtualenv made by the "
        "ironcore.image.node role (playbooks/prepare.yml), and set ansible_python_interpreter to its "
        "bin/python" % (interpreter, ", ".join(requirements))
    )


def require(module: t.Any, *libraries: str) -> None:
    """Fail the module cleanly, once, naming every library it needs that is missing."""
    errors = {library: import_error(library) for library in libraries}
    missing = [library for library, error in errors.items() if error is not None]
    if missing:
        module.fail_json(
            msg=missing_message([_LIBRARIES[library][1] for library in missing], sys.executable),
            exception="\n".join(errors[library] or "" for library in missing),
        )
