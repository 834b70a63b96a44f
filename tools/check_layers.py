# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

"""Check that plugins/module_utils imports only downward, against the layer table below.

Each file of plugins/module_utils sits on one row of LAYERS, the top row first. A file may import
another module_utils file only from a row below its own: never from a row above it, and never from
its own row (a sideways import). Every import counts, at the top of the file or inside a function
(a lazy import is still a dependency). Every file must be in the table, and every file in the table
must exist, so that a new file gets a place on purpose.

docs/architecture.md ("Layers") shows the same table; a unit test keeps the two equal.

Prints the table, then one line per problem; exits 1 when there is any.

Usage: check_layers.py [REPOSITORY_ROOT]
"""

from __future__ import annotations

import ast
import os
import sys
import typing as t

PACKAGE = "ansible_collections.ironcore.image.plugins.module_utils"
DIRECTORY = os.path.join("plugins", "module_utils")

# (row, its files), the top row first. Files on one row must not import each other.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("orchestration", ("_build.py", "_push.py", "_copy_image.py", "_fetch.py", "_info.py", "_lifecycle.py")),
    ("registry lifecycle", ("_registry_lifecycle.py",)),
    ("releases", ("_releases.py",)),
    ("delta fetch", ("_delta.py",)),
    ("copy engine", ("_copy.py",)),
    ("signatures", ("_signatures.py",)),
    ("referrers", ("_referrers.py",)),
    ("image sources", ("_source.py",)),
    ("mirrors", ("_mirrors.py",)),
    ("downloads", ("_download.py",)),
    ("image stores", ("_store.py",)),
    ("image graph", ("_walk.py",)),
    ("uploads", ("_upload.py",)),
    ("registry client", ("_client.py",)),
    ("registry auth", ("_auth.py",)),
    ("layout store", ("_layout.py",)),
    ("SBOM", ("_sbom.py",)),
    ("sigstore bundles", ("_bundle.py",)),
    ("provenance", ("_provenance.py",)),
    ("signing", ("_sign.py",)),
    ("signed identity", ("_identity.py",)),
    ("progress", ("_progress.py",)),
    ("unified kernel images", ("_uki.py",)),
    ("documents", ("_manifest.py", "_blockindex.py", "_select.py")),
    ("document reader", ("_document.py",)),
    ("transfer policy", ("_transfer.py",)),
    ("foundation", ("_model.py", "_io.py", "_deps.py", "_registry_args.py", "_tar.py", "_module.py")),
    ("errors and stop signals", ("_errors.py", "_stop.py")),
)


class Import(t.NamedTuple):
    line: int
    target: str  # a module_utils file name, e.g. "_io.py"


def render_table() -> str:
    """The table as printed here and shown in docs/architecture.md."""
    width = max(len(row) for row, _files in LAYERS)
    return "\n".join("%-*s  %s" % (width, row, "  ".join(files)) for row, files in LAYERS)


def rows() -> dict[str, tuple[int, str]]:
    """File name -> (row number, top row 0; row name)."""
    return {name: (number, row) for number, (row, files) in enumerate(LAYERS) for name in files}


def _targets(node: ast.AST) -> list[str]:
    """The module_utils modules (bare names, e.g. "_io") an import statement names."""
    if isinstance(node, ast.Import):
        return [
            alias.name[len(PACKAGE) + 1 :].split(".")[0] for alias in node.names if alias.name.startswith(PACKAGE + ".")
        ]
    if not isinstance(node, ast.ImportFrom):
        return []
    module = node.module or ""
    if node.level:  # relative: `from . import _io`, `from ._io import x`
        return [module.split(".")[0]] if module else [alias.name for alias in node.names]
    if module == PACKAGE:
        return [alias.name for alias in node.names]
    if module.startswith(PACKAGE + "."):
        return [module[len(PACKAGE) + 1 :].split(".")[0]]
    return []


def imports_of(source: str, filename: str = "<source>") -> list[Import]:
    """Every module_utils import in `source`, wherever it is (top level, function body, TYPE_CHECKING)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        for target in _targets(node):
            found.append(Import(getattr(node, "lineno", 0), target + ".py"))
    return sorted(found)


def problems(root: str) -> list[str]:
    """One line per file missing from the table or from disk, and per import that does not go down."""
    directory = os.path.join(root, DIRECTORY)
    present = sorted(name for name in os.listdir(directory) if name.endswith(".py") and name != "__init__.py")
    placed = rows()
    lines = []
    for name in sorted(set(placed) - set(present)):
        lines.append("%s/%s is in the layer table but does not exist: remove it from LAYERS" % (DIRECTORY, name))
    for name in present:
        path = os.path.join(DIRECTORY, name)
        if name not in placed:
            lines.append("file %s is not in the layer table: add it to a row of LAYERS in tools/check_layers.py" % path)
            continue
        with open(os.path.join(root, path), encoding="utf-8") as stream:
            source = stream.read()
        own_number, own_row = placed[name]
        for found in imports_of(source, path):
            if found.target not in placed:
                # Reported above when the file exists; an import of a missing file fails at import time.
                continue
            number, row = placed[found.target]
            if number > own_number:
                continue
            way = "sideways, on its own row" if number == own_number else "upward"
            lines.append(
                "%s:%d: %s (%s) imports %s (%s): %s; import only from rows below"
                % (path, found.line, name, own_row, found.target, row, way)
            )
    return lines


def main(argv: t.Sequence[str]) -> int:
    root = argv[1] if len(argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print("Layers of %s (top row first; a file imports only from rows below its own):" % DIRECTORY)
    print(render_table())
    found = problems(root)
    for line in found:
        print(line)
    if found:
        print("%d layer problem(s)" % len(found))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
