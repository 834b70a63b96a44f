"""Every ansible command of the virtualenv starts without a deprecation warning (requirements-dev.txt bounds
cryptography for that)."""

from __future__ import annotations

import os
import subprocess
import sys

BIN = os.path.dirname(sys.executable)


def test_ansible_starts_without_a_deprecation_warning(tmp_path) -> None:
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), HOME=str(tmp_path))
    # Python's default filters show a DeprecationWarning raised in a library only when asked; ansible-core's
    # CLI shows them, as users see them.
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [os.path.join(BIN, "ansible"), "--version"], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "DeprecationWarning" not in proc.stderr, proc.stderr
