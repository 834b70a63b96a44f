"""One version: galaxy.yml's, the changelog's releases and every version_added agree."""

from __future__ import annotations

import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]


def galaxy_version() -> str:
    return str(yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"])


def released() -> dict[str, dict]:
    return dict(yaml.safe_load((ROOT / "changelogs" / "changelog.yaml").read_text())["releases"])


def as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def version_added(path: pathlib.Path) -> list[str]:
    return re.findall(r"version_added:\s*['\"]?([0-9.]+)", path.read_text())


def test_galaxy_version_is_the_next_release_or_the_newest() -> None:
    newest = max(released(), key=as_tuple)
    assert galaxy_version() == "0.2.0"
    assert as_tuple(galaxy_version()) >= as_tuple(newest)


def test_every_version_added_is_a_release_or_the_coming_one() -> None:
    known = set(released()) | {galaxy_version()}
    sources = [*(ROOT / "plugins").rglob("*.py"), *(ROOT / "roles").rglob("argument_specs.yml")]
    found = {str(path.relative_to(ROOT)): version_added(path) for path in sources}
    wrong = {path: versions for path, versions in found.items() if set(versions) - known}
    assert wrong == {}


def test_a_module_says_it_was_added_in_the_release_that_lists_it() -> None:
    listed = {
        module["name"]: version for version, release in released().items() for module in release.get("modules", [])
    }
    for path in (ROOT / "plugins" / "modules").glob("ironcore_image_*.py"):
        text = path.read_text()
        added = re.search(r"^version_added:\s*['\"]?([0-9.]+)", text, re.MULTILINE)
        assert added is not None, path.name
        assert added.group(1) == listed.get(path.stem, galaxy_version()), path.name
