#!/usr/bin/env bash
# One command on a fresh machine: create .venv, install edge-agent, and run the
# daemon in the foreground on the shipped demo model with a local socket.
#
#   ./scripts/quickstart.sh            # socket at ./.run/agent.sock
#   EDGE_AGENT_RUN_DIR=/tmp/ea ./scripts/quickstart.sh
#
# MQTT is switched on when a broker answers at the configured address
# (localhost:1883 unless EDGE_AGENT_MQTT=host:port), and left off, saying so,
# when none does.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

VENV=${EDGE_AGENT_VENV:-.venv}
RUN_DIR=${EDGE_AGENT_RUN_DIR:-.run}
MQTT_ADDR=${EDGE_AGENT_MQTT:-localhost:1883}

if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
        echo "quickstart: python3 has no venv module; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2
        exit 2
    fi
    echo "quickstart: creating $VENV" >&2
    python3 -m venv "$VENV"
fi
echo "quickstart: installing edge-agent into $VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e .

mkdir -p "$RUN_DIR"
mqtt_args=(--no-mqtt)
if "$VENV/bin/python" - "$MQTT_ADDR" <<'PY'
import socket, sys
host, _, port = sys.argv[1].rpartition(":")
try:
    socket.create_connection((host or "localhost", int(port)), timeout=1).close()
except OSError:
    sys.exit(1)
PY
then
    echo "quickstart: MQTT broker found at $MQTT_ADDR; serving MQTT too" >&2
    mqtt_args=(--mqtt "$MQTT_ADDR")
else
    echo "quickstart: no MQTT broker at $MQTT_ADDR; serving the local socket only" >&2
fi

echo "quickstart: socket $RUN_DIR/agent.sock — try:" >&2
echo "  curl --unix-socket $RUN_DIR/agent.sock http://localhost/v2/models/digits/infer -d @models/digits/1/sample.json" >&2
exec "$VENV/bin/edge-agent" run --config config.yaml \
    --socket "$RUN_DIR/agent.sock" --state-dir "$RUN_DIR/state" --models-dir models \
    "${mqtt_args[@]}" "$@"
