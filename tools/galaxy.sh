#!/usr/bin/env bash
# The release path, as a user and Galaxy see it: build the tarball, let galaxy-importer
# check it, install it into an empty collections path and run the demo from there.
#
# Usage: tools/galaxy.sh BUILD_DIR
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build=$1
dist=$build/dist
installed=$build/galaxy/collections
demo=$build/galaxy/demo

rm -rf "$dist" "$build/galaxy"
mkdir -p "$dist" "$installed" "$demo"

echo "--- ansible-galaxy collection build (tracked files only)"
tarball=$("$repo/tools/build_tarball.sh" "$dist")

echo "--- galaxy-importer $tarball"
# The importer writes importer_result.json into the working directory; it reports problems
# as WARNING/ERROR lines but exits 0 for most of them, so its log is checked as well.
log=$dist/importer.log
(cd "$dist" && GALAXY_IMPORTER_CONFIG=$repo/tools/galaxy-importer.cfg python -m galaxy_importer.main "$tarball") 2>&1 |
	tee "$log"
if grep -qE '^(WARNING|ERROR|CRITICAL)' "$log" || ! grep -q 'Importer processing completed successfully' "$log"; then
	echo "galaxy-importer did not accept $tarball cleanly (see the lines above)" >&2
	exit 1
fi

# From here on only the empty path is configured: the checkout's link in .build/collections
# must neither count as "already installed" nor serve the demo.
export ANSIBLE_COLLECTIONS_PATH=$installed
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false

echo "--- ansible-galaxy collection install into an empty collections path"
ansible-galaxy collection install --offline -p "$installed" "$tarball"
listing=$(ansible-galaxy collection list ironcore.image)
grep -qx "# $installed/ansible_collections" <<<"$listing" || {
	echo "ironcore.image is not installed under $installed" >&2
	exit 1
}

echo "--- the README demo, from the installed copy (run outside the checkout)"
cd "$demo"
ansible-playbook -i localhost, -c local ironcore.image.demo -e demo_dir="$demo"
name=demo.example.com/os/sample:1.0
skopeo inspect --raw "oci:$demo/layout:$name" | python -c '
import json, sys
index = json.load(sys.stdin)
platforms = sorted((m["platform"]["architecture"], m["platform"]["variant"]) for m in index["manifests"])
expected = [(arch, variant) for arch in ("amd64", "arm64") for variant in ("baremetal", "virtualization")]
assert platforms == expected, "the installed demo built %s, not %s" % (platforms, expected)
print("installed collection built %s with %d manifests" % (sys.argv[1], len(platforms)))
' "$name"
