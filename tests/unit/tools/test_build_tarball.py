"""tools/build_tarball.sh (what `make galaxy` ships): tracked files only, as the working tree has them."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture
def checkout(tmp_path: pathlib.Path) -> pathlib.Path:
    """A clone of this checkout's HEAD, with the build script of the working tree."""
    if shutil.which("git") is None:
        pytest.fail("git is missing")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    shutil.copy(ROOT / "tools" / "build_tarball.sh", clone / "tools" / "build_tarball.sh")
    return clone


def build(checkout: pathlib.Path, output: pathlib.Path) -> dict[str, bytes | None]:
    """Build with the script; every member of the tarball, with its bytes (None for what is not a file)."""
    bin_dir = str(pathlib.Path(sys.executable).parent)
    proc = subprocess.run(
        ["bash", str(checkout / "tools" / "build_tarball.sh"), str(output)],
        capture_output=True,
        text=True,
        env={"PATH": bin_dir + ":/usr/bin:/bin", "HOME": str(output)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    tarball = proc.stdout.strip()
    assert tarball.startswith(str(output)) and tarball.endswith(".tar.gz"), proc.stdout
    with tarfile.open(tarball) as archive:
        members: dict[str, bytes | None] = {}
        for member in archive.getmembers():
            stream = archive.extractfile(member) if member.isfile() else None
            members[member.name] = stream.read() if stream is not None else None
        return members


def test_untracked_files_stay_out_of_the_tarball(checkout: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # What the user guide's first push leaves behind, and a stray file among the plugins.
    work = checkout / "ironcore-first-push" / "blobs" / "sha256"
    work.mkdir(parents=True)
    (work / ("0" * 64)).write_bytes(b"registry blob")
    (checkout / "plugins" / "modules" / "scratch_notes.py").write_text("# not tracked\n")
    # An uncommitted edit to a tracked file is built as the working tree has it.
    readme = checkout / "README.md"
    readme.write_text(readme.read_text() + "\nuncommitted line\n")

    members = build(checkout, tmp_path / "dist")

    assert "plugins/modules/ironcore_image_fetch.py" in members
    assert not [name for name in members if name.startswith("ironcore-first-push")]
    assert "plugins/modules/scratch_notes.py" not in members
    assert b"uncommitted line" in (members["README.md"] or b"")
    # Every file shipped is tracked, but the two galaxy writes itself.
    tracked = subprocess.run(["git", "-C", str(checkout), "ls-files"], capture_output=True, text=True, check=True)
    files = {name for name, data in members.items() if data is not None}
    assert files - set(tracked.stdout.split()) == {"MANIFEST.json", "FILES.json"}
