#!/usr/bin/env bash
# Download the wheels listed in benchmarks/gpu/wheels.txt for the GPU machine (x86-64, CPython 3.12) into
# a folder (default: .whl in the repo root, git-ignored), without dependencies: the list is complete.
#   benchmarks/gpu/fetch_wheels.sh [DEST]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here/../../.whl}"
mkdir -p "$dest"
grep -vE '^\s*(#|$)' "$here/wheels.txt" | while read -r req; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$dest" "$req"
done
ls -l "$dest"
du -sh "$dest"
