#!/usr/bin/env bash
# Field install of edge-agent on a unit, as root, from this checkout. Safe to
# run again: what exists is kept (config, secrets), what is missing is made,
# the venv is brought to the pins. Steps:
#
#   1. the edge-agent user and groups (systemd-sysusers, else groupadd/useradd)
#   2. the directories (systemd-tmpfiles, else install -d)
#   3. /etc/edge-agent/config.yaml (only when absent) and the secret files
#      tcp-token (random) and mqtt-password (empty, or --mqtt-password-file),
#      root:edge-agent 0640: LoadCredential= reads them on systemd >= 247, the
#      daemon itself on systemd 245 (Ubuntu 20.04 / JetPack 5)
#   4. PREFIX/.venv with the pin set for the Python found: 3.8 - 3.10 get
#      requirements-jetpack5.txt, >= 3.11 requirements.txt (as setup.py does);
#      --ort-wheel PATH installs that ONNX Runtime GPU wheel (NVIDIA's JetPack
#      build) instead of the CPU onnxruntime pin
#   5. the unit (edge-agent.service; --companion: edge-agent-companion.service
#      and companion.yaml, and the pool template edge-agent-companion@.service,
#      not enabled), enabled when systemd runs this machine
#   6. edge-agent doctor, as the edge-agent user
#
#   sudo scripts/install.sh --ort-wheel ~/onnxruntime_gpu-1.16.0-cp38-cp38-linux_aarch64.whl
#   scripts/install.sh --root /tmp/unit --python python3.8 --no-doctor   # into a directory tree
#
# --root DIR installs under DIR (users, /etc, /var, units; nothing outside it
# is touched, nothing is enabled or started). Needs the package registry for
# the pins unless --skip-pip. Exit 0 when installed (doctor's failures are
# shown, not fatal: the daemon may not be started yet), 1 on error, 2 on usage.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

usage() {
    cat <<'EOF'
usage: scripts/install.sh [options]
  --root DIR               install under DIR instead of / (default /)
  --prefix DIR             application directory, venv in DIR/.venv (default /opt/edge-agent)
  --python PY              Python for the venv (default: python3; 3.8 - 3.12)
  --ort-wheel PATH         ONNX Runtime GPU wheel to install instead of the onnxruntime pin
  --mqtt-password-file F   copy F to /etc/edge-agent/mqtt-password (replacing it)
  --companion              the companion unit and config (x86_64 GPU host taking offloaded work)
  --start                  start (or restart) the service after installing
  --skip-pip               make the venv but install nothing into it
  --no-doctor              do not run edge-agent doctor at the end
  -h, --help               this text
EOF
}

ROOT=/
PREFIX=/opt/edge-agent
PYTHON=python3
ORT_WHEEL=""
MQTT_PW=""
START=0
COMPANION=0
SKIP_PIP=0
DOCTOR=1
while (($#)); do
    case "$1" in
        --root) ROOT=${2:?}; shift ;;
        --prefix) PREFIX=${2:?}; shift ;;
        --python) PYTHON=${2:?}; shift ;;
        --ort-wheel) ORT_WHEEL=${2:?}; shift ;;
        --mqtt-password-file) MQTT_PW=${2:?}; shift ;;
        --companion) COMPANION=1 ;;
        --start) START=1 ;;
        --skip-pip) SKIP_PIP=1 ;;
        --no-doctor) DOCTOR=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

say() { echo "install.sh: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sudo scripts/install.sh ...)"
ROOT=$(realpath -m "$ROOT")
R=${ROOT%/}                # prefix for every system path; empty for /
APP=$R$PREFIX
case "$PREFIX" in /*) ;; *) die "--prefix must be absolute: $PREFIX" ;; esac
if [ -n "$ORT_WHEEL" ]; then
    [ -f "$ORT_WHEEL" ] || die "--ort-wheel $ORT_WHEEL: no such file"
    case "$(basename "$ORT_WHEEL")" in onnxruntime*.whl) ;; *) die "--ort-wheel $ORT_WHEEL: not an onnxruntime wheel" ;; esac
    ORT_WHEEL=$(realpath "$ORT_WHEEL")
fi
[ -z "$MQTT_PW" ] || [ -f "$MQTT_PW" ] || die "--mqtt-password-file $MQTT_PW: no such file"

# --- the Python and its pin set ---------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (JetPack 5: the system python3 is 3.8)"
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$PYVER" in
    3.8|3.9|3.10) PINS=requirements-jetpack5.txt ;;
    3.1[1-9]) PINS=requirements.txt ;;
    *) die "$PYTHON is Python $PYVER; edge-agent needs 3.8 - 3.12" ;;
esac
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 ||
    die "$PYTHON has no venv/ensurepip: apt-get install python3-venv (Ubuntu 20.04: python3.8-venv)"
say "Python $PYVER ($PYTHON): pins from $PINS"

# --- 1. user and groups -------------------------------------------------------------
install -d -m 0755 "$R/etc"
if command -v systemd-sysusers >/dev/null 2>&1; then
    install -D -m 0644 systemd/edge-agent.sysusers.conf "$R/usr/lib/sysusers.d/edge-agent.conf"
    systemd-sysusers --root="$ROOT" "$R/usr/lib/sysusers.d/edge-agent.conf"
elif [ "$ROOT" = / ]; then
    getent group video >/dev/null || groupadd --system video
    getent group edge-agent >/dev/null || groupadd --system edge-agent
    getent group edge-agent-admin >/dev/null || groupadd --system edge-agent-admin
    id edge-agent >/dev/null 2>&1 || useradd --system --gid edge-agent --groups video --home-dir /var/lib/edge-agent \
        --no-create-home --shell /usr/sbin/nologin --comment "edge-agent inference daemon" edge-agent
    id -nG edge-agent | grep -qw video || usermod -a -G video edge-agent
else
    die "--root needs systemd-sysusers (apt-get install systemd)"
fi
# The ids as the target tree knows them (its /etc/group), for chown below.
gid_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$R/etc/group"; }
uid_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$R/etc/passwd"; }
EA_UID=$(uid_of edge-agent)
EA_GID=$(gid_of edge-agent)
[ -n "$EA_UID" ] && [ -n "$EA_GID" ] || die "user/group edge-agent missing from $R/etc/passwd, $R/etc/group"

# --- 2. directories -----------------------------------------------------------------
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    install -D -m 0644 systemd/edge-agent.tmpfiles.conf "$R/usr/lib/tmpfiles.d/edge-agent.conf"
    systemd-tmpfiles --create --root="$ROOT" "$R/usr/lib/tmpfiles.d/edge-agent.conf"
else
    install -d -m 0750 -o 0 -g "$EA_GID" "$R/etc/edge-agent"
    install -d -m 0750 -o "$EA_UID" -g "$EA_GID" "$R/var/lib/edge-agent" "$R/var/lib/edge-agent/models"
fi

# --- 3. config and secrets ----------------------------------------------------------
ETC=$R/etc/edge-agent
if ((COMPANION)); then
    NAME=edge-agent-companion CONFIG_SRC=systemd/companion.yaml CONFIG=companion.yaml
else
    NAME=edge-agent CONFIG_SRC=config.yaml CONFIG=config.yaml
fi
if [ ! -e "$ETC/$CONFIG" ]; then
    install -m 0640 -o 0 -g "$EA_GID" "$CONFIG_SRC" "$ETC/$CONFIG"
    say "wrote $ETC/$CONFIG (edit it: device_id, mqtt; then systemctl restart $NAME)"
fi
# secret NAME [SOURCE]: root:edge-agent 0640; made once, replaced only from SOURCE.
secret() {
    local f=$ETC/$1
    if [ -n "${2:-}" ]; then
        install -m 0640 -o 0 -g "$EA_GID" "$2" "$f"
    elif [ ! -e "$f" ]; then
        (umask 077; if [ "$1" = tcp-token ]; then "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))'; fi >"$f")
    fi
    chown 0:"$EA_GID" "$f"
    chmod 0640 "$f"
}
secret tcp-token
secret mqtt-password "$MQTT_PW"

# --- 4. the venv --------------------------------------------------------------------
VENV=$APP/.venv
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$PYVER" ]; then
    say "$VENV holds another Python: recreating it"
    rm -rf "$VENV"
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
if ((SKIP_PIP)); then
    say "--skip-pip: nothing installed into $VENV"
else
    "${PIP[@]}" install --quiet --upgrade pip
    has() { "${PIP[@]}" show "$1" >/dev/null 2>&1; }
    others=$(mktemp)
    trap 'rm -f "$others"' EXIT
    grep -v -E '^onnxruntime([=<>~ ;]|$)' "$PINS" >"$others"
    if [ -n "$ORT_WHEEL" ]; then
        # The GPU build and the CPU build are both the `onnxruntime` module: one only.
        if has onnxruntime; then "${PIP[@]}" uninstall --quiet --yes onnxruntime; fi
        say "installing $(basename "$ORT_WHEEL") with the other pins of $PINS"
        "${PIP[@]}" install --quiet -r "$others" "$ORT_WHEEL"
    elif has onnxruntime-gpu; then
        say "keeping the installed onnxruntime-gpu $("${PIP[@]}" show onnxruntime-gpu | awk '/^Version:/ { print $2 }')"
        "${PIP[@]}" install --quiet -r "$others"
    else
        "${PIP[@]}" install --quiet -r "$PINS"
    fi
    "${PIP[@]}" install --quiet --no-deps --force-reinstall "$REPO"
fi

# --- 5. the unit --------------------------------------------------------------------
UNIT=$R/etc/systemd/system/$NAME.service
install -d -m 0755 "$(dirname "$UNIT")"
sed "s|/opt/edge-agent/|$PREFIX/|g" "systemd/$NAME.service" >"$UNIT.tmp"
chmod 0644 "$UNIT.tmp"
mv "$UNIT.tmp" "$UNIT"
say "installed $UNIT"
if ((COMPANION)); then
    # The pool template (edge-agent-companion@N), installed beside it, never enabled here.
    POOL=$R/etc/systemd/system/edge-agent-companion@.service
    sed "s|/opt/edge-agent/|$PREFIX/|g" "systemd/edge-agent-companion@.service" >"$POOL.tmp"
    chmod 0644 "$POOL.tmp"
    mv "$POOL.tmp" "$POOL"
    say "installed $POOL (a pool of N: systemctl enable --now edge-agent-companion@0 ... @N-1)"
fi
if [ "$ROOT" = / ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable "$NAME.service"
    if ((START)); then systemctl restart "$NAME.service"; fi
else
    say "systemd is not running this tree: unit not enabled or started"
fi

# --- 6. doctor ----------------------------------------------------------------------
if ((DOCTOR)) && ((!SKIP_PIP)); then
    say "edge-agent doctor:"
    doctor=("$VENV/bin/edge-agent" doctor --config "$ETC/$CONFIG")
    if [ "$ROOT" = / ] && command -v runuser >/dev/null 2>&1; then
        doctor=(runuser -u edge-agent -- "${doctor[@]}")
    fi
    if "${doctor[@]}"; then
        say "doctor: no failed check"
    else
        say "doctor: some checks FAILED (above): fix them, then run it again (start the service first if it is not running)"
    fi
fi
say "done: $VENV, $UNIT, $ETC"
