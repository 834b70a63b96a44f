#!/usr/bin/env bash
# Run `ansible-test sanity` on a copy of the collection placed where ansible-test
# requires it (.../ansible_collections/ironcore/image), using only the package index.
#
# Usage: tools/sanity.sh BUILD_DIR [ansible-test sanity options...]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build=$1
shift
root=$build/sanity/ansible_collections/ironcore/image

# The project's rule: findings are fixed, never ignored.
if grep -Hn . "$repo"/tests/sanity/ignore-*.txt 2>/dev/null; then
	echo "tests/sanity/ignore-*.txt must stay empty: fix the findings above instead" >&2
	exit 1
fi

# Exactly the files git would commit (tracked, or new and not ignored): what a fresh clone has.
rm -rf "$build/sanity"
mkdir -p "$root"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard) |
	rsync -a --from0 --files-from=- --ignore-missing-args "$repo/" "$root/"
# ansible-test lists a collection's files with git when it sits in a git work tree,
# and the checkout's own .git (where .build is ignored) would hide every file.
git -C "$root" init -q
git -C "$root" add -A

# ansible-test keeps its per-test virtualenvs under ~/.ansible/test; keep them in the
# build directory instead, seeded with a pip bootstrap that needs only the package index.
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$HOME/.cache/pip}
export HOME=$build/ansible-test-home
mkdir -p "$HOME/.ansible/test/cache"
for version in $(python - <<'PY'
import os
import re

import ansible_test
# The pip version ansible-test pins for its virtualenvs, read from its own source.
source = open(os.path.join(os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py")).read()
print(" ".join(sorted(set(re.findall(r"pip='([0-9.]+)'", source)))))
PY
); do
	cp "$repo/tools/get_pip_offline.py" "$HOME/.ansible/test/cache/get_pip_${version//./_}.py"
done

cd "$root"
exec ansible-test sanity --color no "$@"
