"""`edge-agent` command line: run, infer, models, status, reload, ctl, check-config, fleet, ...

Exit codes: 0 success, 1 the request or action failed, 2 bad usage or input
file, 3 the daemon could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import orjson

from . import __version__
from .config import load_config
from .errors import ConfigError

DEFAULT_SOCKET = "/run/edge-agent/agent.sock"


def _socket_path(args) -> str:
    return args.socket or os.environ.get("EDGE_AGENT_SOCKET") or DEFAULT_SOCKET


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "localhost", int(port)


# --- run ------------------------------------------------------------------------


def run_overrides(args) -> dict:
    """What the command line sets, nested as the config file would hold it: laid over the
    file's data and validated with it (config.load_config), so it meets every rule the file
    must (``--tcp 0.0.0.0:PORT`` needs server.tcp.tls and token_file, as it would there)."""
    paths: dict = {}
    if args.state_dir:
        state = Path(args.state_dir)  # cache and outbox go beneath it unless set
        paths.update(state_dir=state, cache_dir=state / "cache", outbox_dir=state / "outbox")
    if args.models_dir:
        paths["models_dir"] = Path(args.models_dir)
    if args.cache_dir:
        paths["cache_dir"] = Path(args.cache_dir)
    server: dict = {}
    if args.socket:
        server["socket"] = Path(args.socket)
    if args.tcp:
        host, port = args.tcp
        server["tcp"] = {"host": host, "port": port, "enabled": True}
    mqtt: dict = {}
    offload: dict = {}
    if args.mqtt:
        host, port = args.mqtt
        mqtt.update(enabled=True, host=host, port=port)
    if args.no_mqtt:
        mqtt["enabled"] = False
        offload["enabled"] = False  # offloading travels over MQTT: off with it
    out = {"paths": paths, "server": server, "mqtt": mqtt, "offload": offload,
           "logging": {"level": args.log_level} if args.log_level else {}, "device_id": args.device_id}
    return {key: value for key, value in out.items() if value not in (None, {})}


def cmd_run(args) -> int:
    from .daemon import run_daemon
    from .ops.logsetup import setup_logging

    overrides = run_overrides(args)
    try:
        cfg = load_config(args.config, overrides)
        if args.metrics_port_offset:
            # The port it offsets is the file's, so the file is read first; the result is
            # validated again with everything else (a port past 65535, or the TCP listener's).
            port = cfg.server.metrics.port + args.metrics_port_offset
            overrides.setdefault("server", {})["metrics"] = {"port": port}
            cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"edge-agent: {e.message}", file=sys.stderr)
        return 3
    setup_logging(cfg.logging.level, cfg.logging.json_format)
    return run_daemon(cfg, Path(args.config) if args.config else None, overrides)


def cmd_check_config(args) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        print(e.message, file=sys.stderr)
        return 2
    print(f"{args.file}: OK (mode {cfg.mode}, socket {cfg.server.socket}, models {cfg.paths.models_dir})")
    if args.show:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


# --- client commands --------------------------------------------------------------


def _client(args):
    from .client import AgentClient

    url = getattr(args, "url", None) or os.environ.get("EDGE_AGENT_URL")
    token = _token(args)
    if url:
        ctx = None
        cafile = getattr(args, "cafile", None) or os.environ.get("EDGE_AGENT_CAFILE")
        if cafile:
            import ssl

            ctx = ssl.create_default_context(cafile=cafile)
        return AgentClient(url, timeout=args.timeout, token=token, ssl_context=ctx)
    path = _socket_path(args)
    if not os.path.exists(path):
        print(f"edge-agent: no daemon socket at {path} (is the daemon running? --socket / $EDGE_AGENT_SOCKET)", file=sys.stderr)
        raise SystemExit(1)
    return AgentClient(path, timeout=args.timeout, token=token)


def _token(args) -> str | None:
    """The bearer token for control over TCP: --token-file or $EDGE_AGENT_TOKEN_FILE
    (a path, or a systemd credential name under $CREDENTIALS_DIRECTORY)."""
    from .config import read_secret

    file = getattr(args, "token_file", None) or os.environ.get("EDGE_AGENT_TOKEN_FILE")
    try:
        token = read_secret(file, "--token-file")
    except ConfigError as e:
        print(f"edge-agent: {e.message}", file=sys.stderr)
        raise SystemExit(2) from None
    return token.strip() if token else None


# Image files the infer command sends as they are (the daemon decodes them), by suffix.
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".bmp": "image/bmp", ".webp": "image/webp"}


def _image_file(args) -> tuple[bytes, str] | None:
    """(bytes, content type) when FILE is an image; None for .json/.npy/--text."""
    ctype = IMAGE_TYPES.get(Path(args.file).suffix.lower()) if args.file is not None else None
    if ctype is None:
        return None
    try:
        return Path(args.file).read_bytes(), ctype
    except OSError as e:
        print(f"edge-agent infer: cannot read {args.file}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _request_body(args, client) -> dict:
    if args.text is not None:
        texts = args.text
        name = args.input or "text"
        return {"inputs": [{"name": name, "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}
    if args.file is None:
        raise SystemExit("edge-agent infer: give a .json or .npy FILE, or --text")
    path = Path(args.file)
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            name = args.input
            if name is None:
                status, meta = client.json("GET", f"/v2/models/{args.model}")
                if status != 200:
                    raise SystemExit(f"edge-agent infer: {meta.get('error')}")
                name = meta["inputs"][0]["name"]
            from .types import v2_datatype

            return {"inputs": [{"name": name, "shape": list(arr.shape), "datatype": v2_datatype(arr), "data": arr.ravel().tolist()}]}
        return orjson.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        print(f"edge-agent infer: cannot read {path}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _add_params(body: dict, args) -> dict:
    params = body.setdefault("parameters", {})
    if args.priority:
        params["priority"] = args.priority
    if args.timeout_ms:
        params["timeout_ms"] = args.timeout_ms
    if args.no_cache:
        params["cache"] = False
    if not params:
        body.pop("parameters")
    return body


def cmd_infer(args) -> int:
    if args.mqtt:
        return _infer_mqtt(args)
    client = _client(args)
    image = _image_file(args)
    if image is not None:
        params = _add_params({}, args).get("parameters", {})
        if "cache" in params:
            params["cache"] = "false"
        status, doc = client.infer_image(args.model, image[0], image[1], args.version, params)
        print(json.dumps(doc, indent=None if args.compact else 2))
        return 0 if status == 200 else 1
    body = _add_params(_request_body(args, client), args)
    status, doc = client.infer(args.model, body, args.version)
    print(json.dumps(doc, indent=None if args.compact else 2))
    return 0 if status == 200 else 1


def _infer_mqtt(args) -> int:
    import socket as _socket

    from .transports.mqtt.client import run_infer

    if args.file is not None and args.file.endswith(".npy") and args.input is None:
        print("edge-agent infer --mqtt: give --input NAME with a .npy file", file=sys.stderr)
        return 2
    image = _image_file(args)
    if image is not None and args.mqtt_protocol != "5":
        print("edge-agent infer --mqtt: send images with MQTT 5 (a raw 3.1.1 image payload carries no reply "
              "topic or id; its answer goes to the unit's default response topic, docs/MQTT.md)", file=sys.stderr)
        return 2
    body = image[0] if image is not None else _add_params(_request_body(args, None), args)
    host, port = args.mqtt
    try:
        doc = run_infer(
            f"{host}:{port}", args.model, body, device=args.device or _socket.gethostname(), prefix=args.prefix,
            version=args.version, protocol=args.mqtt_protocol, qos=args.qos, timeout=args.timeout,
            content_type=image[1] if image is not None else None,
        )
    except (OSError, TimeoutError) as e:
        print(f"edge-agent infer --mqtt: {e}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=None if args.compact else 2))
    return 1 if "error" in doc else 0


def cmd_models(args) -> int:
    status, index = _client(args).json("POST", "/v2/repository/index")
    if status != 200:
        print(json.dumps(index), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(index, indent=2))
        return 0
    print(f"{'MODEL':<16} {'VERSION':<8} {'STATE':<12} {'PROVIDER':<9} {'PRECISION':<13} DEFAULT")
    for m in index:
        print(f"{m['name']:<16} {m['version']:<8} {m['state']:<12} {m.get('provider', '-'):<9} {m.get('precision', '-'):<13} "
              f"{'*' if m.get('default') else ''}{' canary' if m.get('canary') else ''}{' ' + m['reason'] if m.get('reason') else ''}"
              + (f" artifact {m['artifact']} ({m['artifact_target']})" if m.get("artifact_target") else "")
              + "".join(f" FALLBACK {f['wanted']}->{f['bound']} ({f['reason']})" for f in m.get("provider_fallback") or ()))
    return 0


def cmd_status(args) -> int:
    status, doc = _client(args).json("GET", "/edge/status")
    print(json.dumps(doc, indent=2))
    return 0 if status == 200 else 1


def cmd_reload(args) -> int:
    status, doc = _client(args).json("POST", "/edge/reload")
    print(json.dumps(doc, indent=2))
    return 0 if status == 200 else 1


def cmd_ctl(args) -> int:
    version = args.version or args.version_arg
    body = {"version": version} if version else {}
    # load/unload: the KServe/Triton repository extension's paths; the daemon answers both the same.
    path = (f"/v2/repository/models/{args.model}/{args.action}" if args.action in ("load", "unload")
            else f"/edge/models/{args.model}/{args.action}")
    status, doc = _client(args).json("POST", path, body)
    print(json.dumps(doc, indent=2))
    return 0 if status == 200 else 1


# --- parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-agent", description="ONNX Runtime inference daemon for edge AI units.")
    ap.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon in the foreground (systemd runs this)")
    p.add_argument("--config", help="YAML config file (default: embedded defaults)")
    p.add_argument("--socket", help="override server.socket")
    p.add_argument("--state-dir", help="override paths.state_dir (cache and outbox go beneath it unless set)")
    p.add_argument("--models-dir", help="override paths.models_dir")
    p.add_argument("--cache-dir", help="override paths.cache_dir")
    p.add_argument("--tcp", type=_host_port, metavar="HOST:PORT",
                   help="also serve HTTP on this TCP address (beyond loopback only with server.tcp.tls and token_file)")
    p.add_argument("--mqtt", type=_host_port, metavar="HOST:PORT", help="enable MQTT with this broker")
    p.add_argument("--no-mqtt", action="store_true",
                   help="disable MQTT whatever the config says (and offloading, which travels over it)")
    p.add_argument("--device-id", help="override device_id")
    p.add_argument("--metrics-port-offset", type=int, default=0, metavar="N",
                   help="serve server.metrics on its configured port + N (a companion pool's instance N; "
                   "systemd/edge-agent-companion@.service passes its instance number)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("file")
    p.add_argument("--show", action="store_true", help="print the full effective configuration")
    p.set_defaults(func=cmd_check_config)

    def client_opts(p):
        p.add_argument("--socket", help=f"daemon socket (default $EDGE_AGENT_SOCKET or {DEFAULT_SOCKET})")
        p.add_argument("--url", help="talk to the TCP listener instead, http(s)://HOST:PORT (default $EDGE_AGENT_URL)")
        p.add_argument("--token-file", help="bearer token for control over TCP (reload, ctl): a file or a systemd "
                                            "credential name (default $EDGE_AGENT_TOKEN_FILE)")
        p.add_argument("--cafile", help="CA certificate to verify an https --url (default $EDGE_AGENT_CAFILE, else the system's)")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the daemon")

    p = sub.add_parser("infer", help="send one inference request and print the answer")
    p.add_argument("model")
    p.add_argument("file", nargs="?", help="KServe v2 JSON body (.json), a tensor (.npy), or an image (.jpg/.png/.bmp/.webp) "
                                           "for a model with an image input")
    p.add_argument("--version", dest="version", help="model version (default: the served one)")
    p.add_argument("--input", help="input name for .npy/--text (default: the model's first input / 'text')")
    p.add_argument("--text", action="append", help="text input for text models (repeat for a batch)")
    p.add_argument("--priority", choices=["high", "normal"])
    p.add_argument("--timeout-ms", type=float)
    p.add_argument("--no-cache", action="store_true", help="bypass the response cache")
    p.add_argument("--mqtt", type=_host_port, metavar="HOST:PORT", help="send over MQTT via this broker instead of the socket")
    p.add_argument("--device", help="device id for --mqtt (default: this host name)")
    p.add_argument("--prefix", default="edge", help="topic prefix for --mqtt")
    p.add_argument("--mqtt-protocol", choices=["5", "3.1.1"], default="5", help="MQTT version for --mqtt")
    p.add_argument("--qos", type=int, choices=[0, 1], default=1, help="QoS for --mqtt")
    p.add_argument("--compact", action="store_true", help="print the answer on one line")
    client_opts(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("models", help="list loaded models, versions, providers and states")
    p.add_argument("--json", action="store_true")
    client_opts(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("status", help="daemon status as JSON")
    client_opts(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("reload", help="re-read config and models (same as SIGHUP)")
    client_opts(p)
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("ctl", help="operator actions on a model: load, unload (drains first; stays unloaded across "
                                   "reloads and restarts until loaded again), and its update's promote, rollback")
    p.add_argument("action", choices=["load", "unload", "promote", "rollback"])
    p.add_argument("model")
    p.add_argument("version_arg", nargs="?", metavar="VERSION", help="one version (default: every version)")
    p.add_argument("--version", dest="version")
    client_opts(p)
    p.set_defaults(func=cmd_ctl)

    for mod in ("edge_agent.ota.cli", "edge_agent.quantize.cli", "edge_agent.ops.doctor", "edge_agent.fleet.cli"):
        try:
            module = __import__(mod, fromlist=["register"])
        except ImportError:
            continue
        module.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
