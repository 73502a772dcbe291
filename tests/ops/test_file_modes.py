"""What the daemon creates is never open to other users, whatever umask it was started with (issue 15, item 13)."""

from __future__ import annotations

import os
import socket
import stat

import numpy as np

from daemon_proc import copy_digits, digits_body


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_by_hand_with_umask_000_creates_nothing_others_may_write(agent_factory):
    a = agent_factory(config={"mqtt": {"enabled": True, "host": "127.0.0.1", "port": _closed_port()}})
    a.socket = a.root / "run" / "agent.sock"  # a directory the daemon must make
    a.config.setdefault("server", {})["socket"] = str(a.socket)
    copy_digits(a.models_dir)
    ours = {a.config_path, a.log_path, a.models_dir}
    old = os.umask(0)  # inherited by the daemon, as from an operator's shell
    try:
        a.start(wait=False)
    finally:
        os.umask(old)
    a.wait_ready()
    assert a.infer_once("digits", digits_body(np.zeros((1, 64), np.float32)))[0] == 200
    a.client().json("GET", "/edge/status")

    made = {}
    for dirpath, dirnames, filenames in os.walk(a.root):
        for name in dirnames + filenames:
            p = a.root / os.path.relpath(os.path.join(dirpath, name), a.root)
            if p in ours or a.models_dir in p.parents:
                continue
            made[p.relative_to(a.root).as_posix()] = os.lstat(p).st_mode
    for d in ("state", "cache", "outbox", "run"):
        assert d in made, sorted(made)
    assert any(name.startswith("cache/") for name in made) and any(name.startswith("outbox/") for name in made)
    for name, mode in made.items():
        if stat.S_ISDIR(mode):
            assert stat.S_IMODE(mode) == 0o750, (name, oct(mode))
        elif stat.S_ISSOCK(mode):
            assert stat.S_IMODE(mode) == 0o660, (name, oct(mode))  # server.socket_mode
        else:
            assert stat.S_IMODE(mode) & 0o027 == 0, (name, oct(mode))
