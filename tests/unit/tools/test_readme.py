"""The README says what the code holds: every module, the managed hosts' requirements, the Debian packages."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text()


def section(text: str, heading: str) -> str:
    """The text under a `## `/`### ` heading, up to the next heading of any level."""
    start = text.index(heading + "\n") + len(heading) + 1
    following = re.search(r"^#", text[start:], re.M)
    return text[start : start + following.start()] if following else text[start:]


def requirement_lines(path: pathlib.Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_contents_table_lists_every_module() -> None:
    modules = sorted(path.stem for path in (ROOT / "plugins" / "modules").glob("ironcore_image_*.py"))
    listed = sorted(set(re.findall(r"^\| `ironcore\.image\.(ironcore_image_\w+)` \| module \|", README, re.M)))
    assert listed == modules


def test_managed_host_requirements_are_meta_requirements() -> None:
    named = re.findall(r"`([a-z]+[<>=!~][^`]*)`", section(README, "### Managed hosts"))
    assert sorted(named) == sorted(requirement_lines(ROOT / "meta" / "requirements.txt"))


def test_test_packages_are_the_makefiles() -> None:
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    (packages,) = re.findall(r"^APT_PACKAGES := (.*)$", makefile, re.M)
    (row,) = [line for line in README.splitlines() if line.startswith("| `make test`")]
    assert row.split(" | ")[1].replace("`", "").split(", ") == packages.split()


def test_release_path_points_the_interpreter_at_its_virtualenv() -> None:
    release = section(README, "### From a release")
    venv = re.search(r"python3 -m venv (\S+)", release)
    assert venv, release
    assert "ANSIBLE_PYTHON_INTERPRETER=%s/bin/python" % venv.group(1) in release
