#!/usr/bin/env bash
# Check that every pinned runtime dependency installs on an aarch64 unit from
# wheels alone: one `pip download --no-deps --only-binary=:all:` per line of a
# pin set, for the unit's Python and glibc, into a temporary directory (nothing
# is installed). Run it before changing a pin; it needs the package registry,
# so it is not part of the test suite.
#
#   requirements.txt            cp311, manylinux up to glibc 2.35 (JetPack 6, Ubuntu 22.04)
#   requirements-jetpack5.txt   cp38,  manylinux up to glibc 2.31 (JetPack 5.1.x, Ubuntu 20.04)
#
# A wheel passes when pip accepts it for that interpreter and platform: a cpXY
# or abi3 wheel tagged manylinux2014 / manylinux_2_17 ... manylinux_2_<glibc>
# aarch64, or a pure-Python (py3-none-any) wheel. pip also honours each
# release's Requires-Python.
#
# Prints one line per package and exits 1 when any is missing, 2 on bad usage.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
usage: scripts/check_aarch64_wheels.sh [--dry-run] [--python X.Y --glibc 2.N] [PIN_FILE ...]

Checks each PIN_FILE (default: requirements.txt requirements-jetpack5.txt) for
aarch64 wheels. requirements.txt is checked for Python 3.11 / glibc 2.35,
requirements-jetpack5.txt for Python 3.8 / glibc 2.31; --python/--glibc set
them for the files that follow (required for any other file).
  --dry-run   print the pip command for each package instead of running it
  -h, --help  this text
Environment: PYTHON (default python3) runs pip.
EOF
}

PYTHON=${PYTHON:-python3}
DRY=0
PYVER=""
GLIBC=""
FILES=()
PYVERS=()
GLIBCS=()

add_file() {
    local file=$1 py=$PYVER glibc=$GLIBC
    case "$(basename "$file")" in
        requirements.txt) py=${py:-3.11}; glibc=${glibc:-2.35} ;;
        requirements-jetpack5.txt) py=${py:-3.8}; glibc=${glibc:-2.31} ;;
    esac
    if [[ -z "$py" || -z "$glibc" ]]; then
        echo "check_aarch64_wheels: $file: give --python X.Y and --glibc 2.N before it" >&2
        exit 2
    fi
    if [[ ! -f "$file" ]]; then
        echo "check_aarch64_wheels: $file: no such file" >&2
        exit 2
    fi
    FILES+=("$file"); PYVERS+=("$py"); GLIBCS+=("$glibc")
}

while (($#)); do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --dry-run) DRY=1 ;;
        --python) [[ $# -ge 2 && "$2" =~ ^3\.[0-9]+$ ]] || { usage >&2; exit 2; }; PYVER=$2; shift ;;
        --glibc) [[ $# -ge 2 && "$2" =~ ^2\.[0-9]+$ ]] || { usage >&2; exit 2; }; GLIBC=$2; shift ;;
        -*) echo "check_aarch64_wheels: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) add_file "$1" ;;
    esac
    shift
done
if ((${#FILES[@]} == 0)); then
    add_file requirements.txt
    add_file requirements-jetpack5.txt
fi

# manylinux2014 is manylinux_2_17; aarch64 wheels start there.
platforms() {
    local max=${1#2.} v
    echo -n "--platform manylinux2014_aarch64"
    for ((v = 17; v <= max; v++)); do echo -n " --platform manylinux_2_${v}_aarch64"; done
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

missing=0
checked=0
for i in "${!FILES[@]}"; do
    file=${FILES[$i]} py=${PYVERS[$i]} glibc=${GLIBCS[$i]}
    echo "# $file: Python $py, aarch64, manylinux up to glibc $glibc"
    # shellcheck disable=SC2207
    plat=($(platforms "$glibc"))
    while IFS= read -r line; do
        req=${line%%#*}
        req=${req//[[:space:]]/}
        [[ -z "$req" ]] && continue
        checked=$((checked + 1))
        cmd=("$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" "${plat[@]}" -d "$TMP/$checked" "$req")
        if ((DRY)); then
            echo "${cmd[*]}"
            continue
        fi
        if "${cmd[@]}" >"$TMP/log" 2>&1; then
            printf 'ok       %-28s %s\n' "$req" "$(basename "$(ls "$TMP/$checked"/*.whl)")"
        else
            missing=$((missing + 1))
            printf 'MISSING  %-28s %s\n' "$req" "$(grep -E '^ERROR' "$TMP/log" | head -n 2 | tr '\n' ' ')"
        fi
    done <"$file"
done
((DRY)) && exit 0
if ((missing)); then
    echo "$missing of $checked pinned packages have no usable aarch64 wheel"
    exit 1
fi
echo "all $checked pinned packages have aarch64 wheels"
