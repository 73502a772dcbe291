#!/usr/bin/env bash
# Check that every pinned runtime dependency has an aarch64 wheel for the
# target Python (default 3.11): downloads them, without installing, into a
# temporary directory. Run before changing a pin in requirements.txt.
#
#   ./scripts/check_aarch64_wheels.sh [PYTHON_VERSION]
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
PYVER=${1:-3.11}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64 \
    -d "$TMP" -r requirements.txt
ls "$TMP"
echo "all $(grep -cv '^#' requirements.txt) runtime dependencies have aarch64 wheels for Python $PYVER"
