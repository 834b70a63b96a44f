# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

"""Stand-in for the pip bootstrap script that ansible-test downloads.

ansible-test creates each sanity test's virtualenv without pip and then runs
a "get-pip" script fetched from a host outside the package index. Where only
the package index is reachable, this script does the same job: it installs the
pip wheel bundled with the interpreter (ensurepip), then lets that pip install
the exact versions ansible-test asked for from the package index.
"""

from __future__ import annotations

import subprocess
import sys

# get-pip's own switches; plain `pip install` does not know them.
GET_PIP_ONLY_OPTIONS = {"--no-setuptools", "--no-wheel"}


def main() -> None:
    # In a child process: ensurepip clears pip's configuration (index, certificates) in the
    # environment of the process that runs it, and the install below needs that configuration.
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
    pip_arguments = [argument for argument in sys.argv[1:] if argument not in GET_PIP_ONLY_OPTIONS]
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *pip_arguments])


if __name__ == "__main__":
    main()
