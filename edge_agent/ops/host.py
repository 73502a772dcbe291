"""The daemon process's footing on its host: what it may create, and how many descriptors it may hold.

Set up once at start (``daemon.py``): the umask, private directories, the
descriptor limit the HTTP connection cap is derived from.
"""

from __future__ import annotations

import grp
import logging
import os
import resource
from pathlib import Path

log = logging.getLogger("edge_agent.daemon")

# The unit's UMask= (systemd/edge-agent.service), set by the daemon itself so
# that run by hand from a shell with umask 000 it still creates nothing other
# users may write (or read: the cache holds answers, the state dir the update
# history): directories 0750, files 0640.
DAEMON_UMASK = 0o027
DIR_MODE = 0o750


def make_private_dir(path: Path, group: str | None = None) -> None:
    """Create ``path`` and its missing parents with DIR_MODE, whatever the
    umask (mkdir's mode is filtered through it); ``group`` owns what is created.
    An existing directory is left as the operator made it, with a warning if
    every user may write to it."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    if not missing:
        mode = path.stat().st_mode
        if mode & 0o002 and not mode & 0o1000:
            log.warning("%s is writable by every user (mode %04o): chmod o-w it", path, mode & 0o7777)
        return
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            log.warning("group %s does not exist: %s keeps the daemon's group", group, path)
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs
        os.chmod(d, DIR_MODE)
        if gid != -1:
            try:
                os.chown(d, -1, gid)
            except PermissionError as e:
                log.warning("cannot give %s to group %s: %s", d, group, e)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one (an unprivileged
    process may). The soft default (1,024) is what a thousand slow clients
    used to exhaust; the HTTP connection cap is set below whatever this
    leaves (server.limits), so models, SQLite and MQTT keep descriptors.
    Returns (soft, hard) as in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # RLIM_INFINITY cannot be a soft NOFILE limit (the kernel caps it at
    # fs.nr_open): ask for 2^20 then, the usual nr_open.
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("descriptor limit raised from %d to %d (RLIMIT_NOFILE hard limit)", soft, target)
            soft = target
        except (ValueError, OSError) as e:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, target, e)
    else:
        log.info("descriptor limit %d", soft)
    return soft, hard
