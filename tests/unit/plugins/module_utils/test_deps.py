from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _deps as deps


class ModuleFailed(Exception):
    pass


class RecordingModule:
    """Stands in for AnsibleModule: fail_json ends the module, as the real one does."""

    def fail_json(self, **result):
        raise ModuleFailed(result)


def test_installed_libraries_pass():
    deps.require(RecordingModule(), "jsonschema", "requests", "cryptography", "xxhash")


def test_missing_library_fails_with_what_to_install(monkeypatch):
    monkeypatch.setitem(deps._LIBRARIES, "absent", ("ironcore_image_no_such_module", "no-such-package>=1.0"))
    with pytest.raises(ModuleFailed) as failure:
        deps.require(RecordingModule(), "jsonschema", "absent")
    result = failure.value.args[0]
    assert "no-such-package>=1.0" in result["msg"]
    assert "\n" not in result["msg"]
    assert "ironcore_image_no_such_module" in result["exception"]


def test_import_error_names_only_missing_modules():
    assert deps.import_error("jsonschema") is None


def test_every_missing_library_is_named_in_one_line_with_where_to_get_it(monkeypatch):
    monkeypatch.setitem(deps._LIBRARIES, "absent", ("ironcore_image_no_such_module", "no-such-package>=1.0"))
    monkeypatch.setitem(deps._LIBRARIES, "gone", ("ironcore_image_gone_module", "gone-package>=2"))
    with pytest.raises(ModuleFailed) as failure:
        deps.require(RecordingModule(), "absent", "jsonschema", "gone")
    result = failure.value.args[0]
    assert "\n" not in result["msg"]
    assert "no-such-package>=1.0, gone-package>=2" in result["msg"]
    assert "jsonschema" not in result["msg"]
    assert "ironcore.image.node" in result["msg"]
    assert "ansible_python_interpreter" in result["msg"]
    # Both import failures are kept for -vvv.
    assert "ironcore_image_no_such_module" in result["exception"]
    assert "ironcore_image_gone_module" in result["exception"]


def test_message_names_the_interpreter_that_lacks_them():
    message = deps.missing_message(["jsonschema>=4.0", "requests>=2.28"], "/usr/bin/python3")
    assert message.startswith("/usr/bin/python3 cannot import jsonschema>=4.0, requests>=2.28:")


def test_requirements_file_lists_exactly_what_the_modules_require():
    """meta/requirements.txt (what the node role and the execution environment install) is _LIBRARIES' list."""
    requirements = Path(__file__).resolve().parents[4] / "meta" / "requirements.txt"
    lines = [line.strip() for line in requirements.read_text().splitlines()]
    listed = [line for line in lines if line and not line.startswith("#")]
    assert sorted(listed) == sorted(requirement for _module, requirement in deps._LIBRARIES.values())
