"""Who may change the daemon's state over HTTP.

Reads and inference stay open to whoever reaches a listener (the socket's
file mode, the TCP listener's address). Control endpoints — every POST under
``/edge/`` and ``/v2/repository/models/``: reload, and the model actions
(promote, rollback, load, unload) — need
authority, because reaching the socket or the loopback port is not the same
as being the operator:

- Unix socket: the connecting process's credentials as the kernel gives them
  (SO_PEERCRED, fixed at connect time, unforgeable). Allowed: root, the
  daemon's own user, and members of ``server.admin_group`` (the process's
  primary or supplementary groups, read from /proc/PID/status while it is
  still that uid's process; when that cannot be read — the peer exited, or
  lives in another pid namespace (pid 0) — only the primary gid SO_PEERCRED
  gives counts: the user database could grant a group the process had
  dropped, or map a container's uid to a host member).
- TCP: ``Authorization: Bearer <token>``, compared in constant time with
  ``server.tcp.token_file``. No token file: no control over TCP at all.

Refusals are ``unauthorized`` (401: no or a wrong credential) or
``forbidden`` (403: known, but without authority), each naming who asked,
logged and counted in ``edge_agent_control_refused_total{transport,reason}``.
"""

from __future__ import annotations

import grp
import hmac
import logging
import os
import socket
import ssl
import struct

from prometheus_client import Counter

from ..config import TcpConfig, TcpTlsConfig, read_secret
from ..errors import ConfigError, EdgeError, Forbidden, Unauthorized

log = logging.getLogger("edge_agent.http")

CONTROL_REFUSED = Counter(
    "edge_agent_control_refused_total",
    "Control requests (reload, promote, rollback, load, unload) refused for want of authority, by transport and reason.",
    ["transport", "reason"],
)

# A shorter token is refused at start: guessable over a network.
MIN_TOKEN_CHARS = 16
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected to a Unix socket."""
    return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


def process_groups(pid: int, uid: int) -> set[int] | None:
    """Effective and supplementary gids of process ``pid``, or None when they
    cannot be read or the pid no longer belongs to ``uid`` (it exited and the
    number was reused)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    fields = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in ("Uid", "Gid", "Groups"):
            fields[name] = value.split()
    uids, gids = fields.get("Uid"), fields.get("Gid")
    if not uids or not gids or int(uids[1]) != uid:
        return None
    return {int(gids[1]), *(int(g) for g in fields.get("Groups", ()))}


def load_token(tcp: TcpConfig) -> bytes | None:
    """The bearer token from server.tcp.token_file, checked; None when none is configured."""
    token = read_secret(tcp.token_file, "server.tcp.token_file")
    if token is None:
        return None
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"server.tcp.token_file: the token in {tcp.token_file} is shorter than "
                          f"{MIN_TOKEN_CHARS} characters")
    return token.encode()


def tls_context(tls: TcpTlsConfig) -> ssl.SSLContext:
    """Server-side TLS for the TCP listener: TLS 1.2 or later, HTTP/1.1."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"server.tcp.tls: cannot load {tls.cert_file} / {tls.key_file}: {e}") from None
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class ControlAuthority:
    """Decides whether the caller of a control endpoint may use it.

    ``check(transport, headers)`` returns who asked (for the log) or raises
    Unauthorized / Forbidden; ``transport`` is the connection's asyncio transport."""

    def __init__(self, admin_group: str | None, token: bytes | None, own_uid: int | None = None) -> None:
        self.admin_group = admin_group
        self.token = token
        self.own_uid = os.geteuid() if own_uid is None else own_uid

    def check(self, transport, headers: dict) -> str:
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            raise Unauthorized("the connection is closed")
        if sock.family == socket.AF_UNIX:
            return self._check_local(*peer_credentials(sock))
        return self._check_token(headers.get(b"authorization"), transport.get_extra_info("peername"))

    def _check_local(self, pid: int, uid: int, gid: int) -> str:
        who = f"uid {uid} pid {pid}"
        if uid == 0 or uid == self.own_uid:
            return who
        admin_gid = self._admin_gid()
        if admin_gid is not None:
            groups = process_groups(pid, uid) if pid > 0 else None
            if admin_gid == gid or (groups is not None and admin_gid in groups):
                return f"{who} (group {self.admin_group})"
        raise _refused(Forbidden(
            f"control refused for {who}: needs root, the daemon's user"
            + (f" or membership of group {self.admin_group}" if self.admin_group else "")), "socket")

    def _admin_gid(self) -> int | None:
        if not self.admin_group:
            return None
        try:
            return grp.getgrnam(self.admin_group).gr_gid
        except KeyError:  # no such group on this unit: nobody is in it
            return None

    def _check_token(self, header: bytes | None, peer) -> str:
        who = f"tcp peer {peer[0]}" if isinstance(peer, tuple) and peer else "tcp peer"
        if self.token is None:
            raise _refused(Forbidden(f"control refused for {who}: control over TCP is off "
                                     "(no server.tcp.token_file); use the socket"), "tcp")
        if header is None:
            raise _refused(Unauthorized(f"control refused for {who}: send 'Authorization: Bearer <token>'"), "tcp")
        scheme, _, given = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
            raise _refused(Unauthorized(f"control refused for {who}: invalid bearer token"), "tcp")
        return who


def _refused(err: EdgeError, transport: str) -> EdgeError:
    CONTROL_REFUSED.labels(transport, err.code).inc()
    return err
