#!/usr/bin/env bash
# Build the collection tarball from the files git tracks, and nothing else: whatever else lies in the
# checkout (the user guide's working directories, registry blobs, editor files) never ships. Tracked
# files are taken as they are in the working tree, so uncommitted edits to them are built too;
# galaxy.yml's build_ignore still applies on top.
#
# Usage: tools/build_tarball.sh OUTPUT_DIR     (prints the tarball's path)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
output=$1
mkdir -p "$output"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# Tracked files still present in the working tree (a deleted one is not there to copy).
git -C "$repo" ls-files -z | while IFS= read -r -d '' path; do
	if [[ -e $repo/$path || -L $repo/$path ]]; then
		printf '%s\0' "$path"
	fi
done | tar -C "$repo" --null --files-from=- --create --file=- | tar -C "$stage" --extract --file=-

built=$(ansible-galaxy collection build --force --output-path "$output" "$stage")
echo "$built" >&2
sed -n 's/^Created collection for .* at //p' <<<"$built"
