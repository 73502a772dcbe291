"""Control endpoints need authority (issue 15, item 6), against real daemons.

Socket: the peer's SO_PEERCRED uid/gid — root, the daemon's user or server.admin_group.
TCP: a bearer token from server.tcp.token_file; beyond loopback only with TLS and the token.
Reads and inference stay open. Clients of another user are forked processes that drop to
``nobody`` (we run as root) and talk to the daemon's real socket.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys

import numpy as np
import orjson
import pytest

from certs import make_certs
from daemon_proc import REPO, copy_digits, digits_body
from edge_agent.client import AgentClient
from edge_agent.errors import Forbidden, Unauthorized
from edge_agent.transports.authority import ControlAuthority, process_groups

NOBODY = 65534
USERS_GID = 100  # the "users" group: an admin group nobody is not in by default
TOKEN = "s3cret-token-0123456789abcdef"
BODY = digits_body(np.zeros((1, 64), np.float32))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_user(uid: int, gid: int, groups: list[int], calls: list[tuple]) -> list:
    """Run ``calls`` ((method, url, doc) each) in a forked child that became uid/gid/groups
    before connecting; returns [(status, code or None), ...]."""
    path = calls[0][0]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            out = []
            for _, method, url, doc in calls:
                c = AgentClient(path, timeout=30)
                status, body = c.json(method, url, doc)
                c.close()
                out.append([status, body.get("code") if isinstance(body, dict) else None])
            os.write(w, orjson.dumps(out))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(w, orjson.dumps({"exc": repr(e)}))
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    res = orjson.loads(data)
    assert not isinstance(res, dict), res
    return [tuple(x) for x in res]


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run_with(a, *args) -> None:
    """Start ``a`` as AgentProcess.start does, with more command-line arguments."""
    a.write_config()
    a._log = open(a.log_path, "ab")
    a.proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(a.config_path), *args],
                              stdout=a._log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **a.env})


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=120)


# -- the rules, without a daemon ---------------------------------------------------------------


def test_the_bearer_header_is_parsed_strictly_and_compared_whole():
    auth = ControlAuthority(None, TOKEN.encode())
    peer = ("192.0.2.7", 40000)
    assert auth._check_token(b"Bearer " + TOKEN.encode(), peer) == "tcp peer 192.0.2.7"
    assert auth._check_token(b"  bearer   " + TOKEN.encode() + b" ", peer)
    for bad in (b"", b"Bearer", b"Bearer ", b"Bearer " + TOKEN.encode()[:-1], b"Bearer " + TOKEN.encode() + b"x",
                b"Basic " + TOKEN.encode(), TOKEN.encode()):
        with pytest.raises(Unauthorized):
            auth._check_token(bad, peer)
    with pytest.raises(Forbidden, match="no server.tcp.token_file"):
        ControlAuthority(None, None)._check_token(b"Bearer " + TOKEN.encode(), peer)


def test_groups_are_read_from_proc_only_while_the_pid_is_still_that_users():
    assert process_groups(os.getpid(), os.geteuid()) == {os.getegid(), *os.getgroups()}
    assert process_groups(os.getpid(), os.geteuid() + 1) is None  # pid reused by someone else: not trusted
    assert process_groups(2 ** 22 + 12345, 0) is None  # gone
    auth = ControlAuthority("users", None, own_uid=4242)
    with pytest.raises(Forbidden, match="uid 65534 pid 0: needs root, the daemon's user or membership of group users"):
        auth._check_local(0, NOBODY, NOBODY)  # no pid (another namespace): the user database says no
    assert auth._check_local(0, 4242, 4242) == "uid 4242 pid 0"
    assert auth._check_local(0, NOBODY, USERS_GID).endswith("(group users)")


# -- the socket: SO_PEERCRED ----------------------------------------------------------------------


def reachable_by_all(agent_factory, **server):
    """A daemon whose socket every local user reaches (mode 0666, its directory open)."""
    a = agent_factory(config={"server": {"socket_mode": "0666", **server}})
    copy_digits(a.models_dir)
    os.chmod(a.root, 0o755)
    a.start()
    return a


def test_socket_control_by_another_user_is_refused_and_by_root_works(agent_factory):
    a = reachable_by_all(agent_factory)  # default admin_group edge-agent-admin: not on this machine
    s = str(a.socket)
    reads = [(s, "GET", "/edge/status", None), (s, "GET", "/v2/models/digits", None),
             (s, "POST", "/v2/models/digits/infer", BODY), (s, "POST", "/v2/repository/index", None)]
    # nobody reaches the socket and may read and infer, but not control.
    got = as_user(NOBODY, NOBODY, [], [(s, "POST", "/edge/reload", None),
                                       (s, "POST", "/edge/models/digits/rollback", None),
                                       (s, "POST", "/v2/repository/models/digits/unload", None)] + reads)
    assert got[:3] == [(403, "forbidden")] * 3  # before: 200, and the action's own answer
    assert all(status == 200 for status, _ in got[3:]), got  # digits still served: the unload was refused
    # root (and the daemon's own user, root here): allowed; rollback then fails for want of OTA, not authority.
    c = a.client()
    assert c.json("POST", "/edge/reload")[0] == 200
    status, doc = c.json("POST", "/edge/models/digits/rollback")
    assert status == 500 and "OTA" in doc["error"]
    text = c.request("GET", "/metrics")[2].decode()
    assert metric(text, "edge_agent_control_refused_total", transport="socket", reason="forbidden") == 3
    c.close()
    a.stop()
    log = a.log()
    assert re.search(r"POST /edge/reload: forbidden: control refused for uid 65534 pid \d+: needs root, "
                     r"the daemon's user or membership of group edge-agent-admin", log)
    assert "control: POST /edge/reload by uid 0 pid" in log


def test_the_admin_group_grants_control_as_a_primary_or_supplementary_group(agent_factory):
    a = reachable_by_all(agent_factory, admin_group="users")
    reload_ = (str(a.socket), "POST", "/edge/reload", None)
    assert as_user(NOBODY, NOBODY, [], [reload_]) == [(403, "forbidden")]
    assert as_user(NOBODY, NOBODY, [USERS_GID], [reload_]) == [(200, None)]  # from /proc/PID/status
    assert as_user(NOBODY, USERS_GID, [], [reload_]) == [(200, None)]
    a.stop()
    assert "control: POST /edge/reload by uid 65534 pid" in a.log() and "(group users)" in a.log()


def test_without_an_admin_group_only_root_and_the_daemons_user_control(agent_factory):
    a = reachable_by_all(agent_factory, admin_group=None)
    s = str(a.socket)
    assert as_user(NOBODY, USERS_GID, [USERS_GID], [(s, "POST", "/edge/reload", None)]) == [(403, "forbidden")]
    assert a.client().json("POST", "/edge/reload")[0] == 200


# -- TCP: bearer token ------------------------------------------------------------------------


def tcp_agent(agent_factory, host="127.0.0.1", token=True, tls=None, **server):
    port = free_port()
    a = agent_factory(config={"server": {"tcp": {"enabled": True, "host": host, "port": port}, **server}})
    tcp = a.config["server"]["tcp"]
    if token:
        (a.root / "token").write_text(TOKEN + "\n")
        tcp["token_file"] = str(a.root / "token")
    if tls is not None:
        tcp["tls"] = {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key)}
    copy_digits(a.models_dir)
    a.start()
    return a, port


def test_tcp_control_needs_the_bearer_token(agent_factory):
    a, port = tcp_agent(agent_factory)
    url = f"http://127.0.0.1:{port}"
    anon = AgentClient(url, timeout=30)
    status, headers, body = anon.request("POST", "/edge/reload")
    assert status == 401 and orjson.loads(body)["code"] == "unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert AgentClient(url, timeout=30, token="wrong-token-0123456789").json("POST", "/edge/reload")[0] == 401
    status, _, _ = anon.request("POST", "/edge/reload", headers={"Authorization": "Basic " + TOKEN})
    assert status == 401
    assert anon.json("POST", "/edge/models/digits/rollback")[0] == 401
    assert anon.json("POST", "/v2/repository/models/digits/unload")[0] == 401
    assert anon.json("POST", "/v2/repository/models/digits/load", {"version": "1"})[0] == 401
    # Reads and inference need nothing.
    assert anon.json("GET", "/edge/status")[0] == 200 and anon.infer("digits", BODY)[0] == 200
    ok = AgentClient(url, timeout=30, token=TOKEN)
    status, doc = ok.json("POST", "/edge/reload")
    assert status == 200 and "added" in doc
    status, _, _ = anon.request("POST", "/edge/reload", headers={"Authorization": "bearer " + TOKEN})
    assert status == 200  # the scheme is case-insensitive

    # The CLI sends the token from --token-file or $EDGE_AGENT_TOKEN_FILE.
    r = cli("reload", "--url", url, "--token-file", str(a.root / "token"))
    assert r.returncode == 0 and '"added"' in r.stdout, r.stderr
    r = cli("reload", "--url", url, env={"EDGE_AGENT_TOKEN_FILE": str(a.root / "token")})
    assert r.returncode == 0, r.stderr
    r = cli("reload", "--url", url)
    assert r.returncode == 1 and '"unauthorized"' in r.stdout
    r = cli("ctl", "unload", "digits", "--url", url)
    assert r.returncode == 1 and '"unauthorized"' in r.stdout
    assert anon.infer("digits", BODY)[0] == 200  # not unloaded
    r = cli("ctl", "unload", "digits", "1", "--url", url, "--token-file", str(a.root / "token"))
    assert r.returncode == 0 and json.loads(r.stdout)["unloaded"] == ["1"], r.stdout + r.stderr
    assert anon.infer("digits", BODY)[0] == 503
    status, doc = ok.json("POST", "/v2/repository/models/digits/load")
    assert status == 200 and doc["serving"] == ["1"], doc

    text = anon.request("GET", "/metrics")[2].decode()
    assert metric(text, "edge_agent_control_refused_total", transport="tcp", reason="unauthorized") == 8
    a.stop()
    assert "control refused for tcp peer 127.0.0.1: invalid bearer token" in a.log()
    assert TOKEN not in a.log()


def test_tcp_without_a_token_file_refuses_control_and_serves_the_rest(agent_factory):
    a, port = tcp_agent(agent_factory, token=False)
    c = AgentClient(f"http://127.0.0.1:{port}", timeout=30, token=TOKEN)
    status, doc = c.json("POST", "/edge/reload")
    assert status == 403 and doc["code"] == "forbidden" and "token_file" in doc["error"]
    assert c.infer("digits", BODY)[0] == 200
    assert a.client().json("POST", "/edge/reload")[0] == 200  # the socket still works for root


def test_a_short_token_is_refused_at_start(agent_factory):
    a = agent_factory(config={"server": {"tcp": {"enabled": True, "port": free_port(),
                                                  "token_file": "short-token"}}},
                      env={"CREDENTIALS_DIRECTORY": "/nonexistent"})
    a.start(wait=False)
    assert a.wait_exit(60) == 3
    assert "server.tcp.token_file: cannot read /nonexistent/short-token" in a.log()
    (a.root / "creds").mkdir()
    (a.root / "creds" / "short-token").write_text("0123456789\n")
    a.env["CREDENTIALS_DIRECTORY"] = str(a.root / "creds")  # a systemd credential, by name
    a.start(wait=False)
    assert a.wait_exit(60) == 3
    assert "shorter than 16 characters" in a.log()


# -- beyond loopback: TLS and token, or refused -----------------------------------------------------


def test_tcp_beyond_loopback_without_tls_and_token_is_refused_on_the_command_line(agent_factory):
    a = agent_factory()
    run_with(a, "--tcp", f"0.0.0.0:{free_port()}")
    assert a.wait_exit(60) == 3  # before: served plain HTTP to the network, control included
    log = a.log()
    assert "server.tcp.enabled=True" in log and "'0.0.0.0' is not loopback" in log, log
    assert "server.tcp.tls and server.tcp.token_file" in log
    assert not a.socket.exists()


def test_check_config_refuses_tcp_beyond_loopback_without_tls_and_token(tmp_path):
    tls = make_certs(tmp_path / "pki")
    (tmp_path / "token").write_text(TOKEN)
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  tcp:\n    enabled: true\n    host: 0.0.0.0\n"
                   f"    token_file: {tmp_path / 'token'}\n")
    r = cli("check-config", str(bad))
    assert r.returncode == 2
    assert f"{bad}:3: server.tcp: Value error, host '0.0.0.0' is not loopback" in r.stderr
    good = tmp_path / "good.yaml"
    good.write_text(bad.read_text() + f"    tls: {{cert_file: {tls.server_cert}, key_file: {tls.server_key}}}\n")
    r = cli("check-config", str(good))
    assert r.returncode == 0, r.stderr
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.53"):  # loopback needs neither
        (tmp_path / "lo.yaml").write_text(f"server:\n  tcp:\n    enabled: true\n    host: '{host}'\n")
        assert cli("check-config", str(tmp_path / "lo.yaml")).returncode == 0


def test_tls_and_token_serve_beyond_loopback(agent_factory, tmp_path):
    tls = make_certs(tmp_path / "pki")
    a, port = tcp_agent(agent_factory, host="0.0.0.0", tls=tls)  # we only ever talk to 127.0.0.1
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    url = f"https://127.0.0.1:{port}"
    anon = AgentClient(url, timeout=30, ssl_context=ctx)
    assert anon.infer("digits", BODY)[0] == 200
    assert anon.json("POST", "/edge/reload")[0] == 401
    assert AgentClient(url, timeout=30, token=TOKEN, ssl_context=ctx).json("POST", "/edge/reload")[0] == 200
    # No plain HTTP on the TLS port.
    with pytest.raises(OSError):
        AgentClient(f"http://127.0.0.1:{port}", timeout=10).json("GET", "/v2/health/live")
    r = cli("ctl", "rollback", "digits", "--url", url, "--cafile", str(tls.ca_cert),
            "--token-file", str(a.root / "token"))
    assert r.returncode == 1 and "OTA" in r.stdout, (r.stdout, r.stderr)  # past authority: no OTA here
    # And --tcp on a command line is held to the same rule, which this config meets.
    a.stop()
    port2 = free_port()
    run_with(a, "--tcp", f"0.0.0.0:{port2}")
    a.wait_ready()
    assert AgentClient(f"https://127.0.0.1:{port2}", timeout=30, token=TOKEN,
                       ssl_context=ctx).json("POST", "/edge/reload")[0] == 200


def test_a_peer_whose_groups_cannot_be_read_counts_only_its_primary_gid():
    """The peer exited (or lives in another pid namespace: pid 0): its
    supplementary groups are unknown, and the user database is not asked (it
    could grant a group the process had dropped)."""
    import grp as _grp

    from edge_agent.errors import Forbidden
    from edge_agent.transports.authority import ControlAuthority

    group = _grp.getgrgid(os.getegid()).gr_name
    auth = ControlAuthority(admin_group=group, token=None, own_uid=-1)
    gone = 2 ** 22 + 12345
    assert "group" in auth._check_local(gone, 65534, os.getegid())  # primary gid: allowed
    with pytest.raises(Forbidden):
        auth._check_local(gone, 65534, os.getegid() + 4242)
    with pytest.raises(Forbidden):
        auth._check_local(0, 65534, os.getegid() + 4242)
