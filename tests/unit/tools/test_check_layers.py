"""tools/check_layers.py: the import-layer check `make lint` runs, and the table docs/architecture.md shows."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "tools" / "check_layers.py"
PACKAGE = "ansible_collections.ironcore.image.plugins.module_utils"


@pytest.fixture(scope="module")
def layers() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_tree(root: pathlib.Path, files: dict[str, str]) -> str:
    directory = root / "plugins" / "module_utils"
    directory.mkdir(parents=True)
    (directory / "__init__.py").write_text("")
    for name, source in files.items():
        (directory / name).write_text(source)
    return str(root)


def test_the_collection_keeps_its_layers(layers):
    assert layers.problems(str(ROOT)) == []


def test_the_architecture_doc_shows_the_same_table(layers):
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    assert block.rstrip("\n") == layers.render_table()


def test_every_file_is_on_exactly_one_row(layers):
    names = [name for _row, files in layers.LAYERS for name in files]
    assert len(names) == len(set(names))


def test_every_import_form_is_read_lazy_ones_too(layers):
    source = "\n".join(
        [
            "from %s._io import canonical_json" % PACKAGE,
            "from %s import _model, _errors" % PACKAGE,
            "import %s._tar" % PACKAGE,
            "from . import _select",
            "from ._manifest import build",
            "import json",
            "from ansible.module_utils.basic import AnsibleModule",
            "def later():",
            "    from %s._client import RegistryClient" % PACKAGE,
        ]
    )
    found = [(entry.line, entry.target) for entry in layers.imports_of(source)]
    assert found == [
        (1, "_io.py"),
        (2, "_errors.py"),
        (2, "_model.py"),
        (3, "_tar.py"),
        (4, "_select.py"),
        (5, "_manifest.py"),
        (9, "_client.py"),
    ]


def test_upward_sideways_and_lazy_imports_are_each_one_line(layers, monkeypatch, tmp_path):
    monkeypatch.setattr(
        layers, "LAYERS", (("top", ("_top.py",)), ("middle", ("_left.py", "_right.py")), ("bottom", ("_low.py",)))
    )
    root = fake_tree(
        tmp_path,
        {
            "_top.py": "from %s import _left, _low\n" % PACKAGE,
            "_left.py": "from %s._right import x\n" % PACKAGE,
            "_right.py": "def f():\n    from %s._top import y\n" % PACKAGE,
            "_low.py": "import json\n",
        },
    )
    assert layers.problems(root) == [
        "plugins/module_utils/_left.py:1: _left.py (middle) imports _right.py (middle): sideways, on its own row;"
        " import only from rows below",
        "plugins/module_utils/_right.py:2: _right.py (middle) imports _top.py (top): upward;"
        " import only from rows below",
    ]


def test_a_file_not_in_the_table_and_a_stale_entry_are_named(layers, monkeypatch, tmp_path):
    monkeypatch.setattr(layers, "LAYERS", (("top", ("_top.py", "_gone.py")),))
    root = fake_tree(tmp_path, {"_top.py": "", "_unlisted.py": "from %s import _top\n" % PACKAGE})
    assert layers.problems(root) == [
        "plugins/module_utils/_gone.py is in the layer table but does not exist: remove it from LAYERS",
        "file plugins/module_utils/_unlisted.py is not in the layer table: add it to a row of LAYERS in"
        " tools/check_layers.py",
    ]


def test_the_script_prints_the_table_and_fails_with_exit_1(layers, tmp_path):
    root = fake_tree(tmp_path, {"_errors.py": "", "_unlisted.py": ""})
    failed = subprocess.run([sys.executable, str(SCRIPT), root], capture_output=True, text=True, check=False)
    assert failed.returncode == 1
    assert layers.render_table() in failed.stdout
    assert "file plugins/module_utils/_unlisted.py is not in the layer table" in failed.stdout
    passed = subprocess.run([sys.executable, str(SCRIPT), str(ROOT)], capture_output=True, text=True, check=False)
    assert passed.returncode == 0, passed.stdout
    assert layers.render_table() in passed.stdout
