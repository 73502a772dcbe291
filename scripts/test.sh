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

export PATH="$PWD/$VENV/bin:$PATH:/usr/sbin"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
