"""``edge-agent registry keygen | publish | serve``.

``register(subparsers)`` adds the ``registry`` command to the main CLI; each
leaf sets ``func(args) -> exit code``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import EdgeError

log = logging.getLogger(__name__)


def register(subparsers) -> argparse.ArgumentParser:
    reg = subparsers.add_parser("registry", help="Model registry: signing keys, publishing, development server.")
    reg.set_defaults(func=lambda args: (reg.print_help(), 2)[1])
    sub = reg.add_subparsers(dest="registry_command", metavar="{keygen,publish,serve}")

    p = sub.add_parser("keygen", help="Create an Ed25519 signing key pair.")
    p.add_argument("--out", type=Path, required=True, help="Directory for ota_signing_key.pem (0600) and .pub.pem.")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("publish", help="Sign and publish a model version directory.")
    p.add_argument("model_dir", type=Path, metavar="MODEL_VERSION_DIR", help="Directory with model.onnx + model.yaml; its name is the version.")
    p.add_argument("--root", type=Path, required=True, help="Registry root directory.")
    p.add_argument("--key", type=Path, required=True, help="Private signing key (PEM, mode 0600).")
    p.add_argument("--channel", help="Point this channel (e.g. stable, canary) at the new version.")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("serve", help="Development HTTP server for a registry directory (Range support).")
    p.add_argument("root", type=Path, metavar="DIR")
    p.add_argument("--host", default="127.0.0.1", help="Bind address (keep loopback: no authentication).")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--throttle-bps", type=int, default=None, help="Cap each response at this many bytes/s.")
    p.set_defaults(func=cmd_serve)
    return reg


def _fail(e: EdgeError) -> int:
    print(f"error [{e.code}]: {e.message}", file=sys.stderr)
    return 1


def cmd_keygen(args: argparse.Namespace) -> int:
    from .signing import keygen, key_id, load_public_key

    try:
        priv, pub = keygen(args.out)
    except EdgeError as e:
        return _fail(e)
    print(f"private key: {priv} (keep secret)\npublic key:  {pub} (pin it in ota.public_keys)\n"
          f"key id:      {key_id(load_public_key(pub))}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from .publish import publish

    try:
        m = publish(args.model_dir, args.root, args.key, args.channel)
    except EdgeError as e:
        return _fail(e)
    print(f"published {m.model} {m.version}: {len(m.artifacts)} artifacts, {m.total_size} bytes"
          + (f", channel {args.channel}" if args.channel else ""))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .devserver import serve

    try:
        serve(args.root, args.host, args.port, args.throttle_bps)
    except FileNotFoundError:
        print(f"error: {args.root} is not a directory", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (python -m edge_agent.ota.cli) until the main CLI wires ``register``."""
    parser = argparse.ArgumentParser(prog="edge-agent")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
