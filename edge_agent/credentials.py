"""Where a secret named in the config is found, on every systemd the units have.

``mqtt.password_file`` and ``server.tcp.token_file`` are an absolute path or a
name. A name is a systemd credential: the unit's ``LoadCredential=`` copies
/etc/edge-agent/NAME into ``$CREDENTIALS_DIRECTORY`` (systemd >= 247). Ubuntu
20.04, and so JetPack 5 on the Xavier, has systemd 245, which ignores
``LoadCredential=`` and sets no ``$CREDENTIALS_DIRECTORY``; the same unit then
runs with ``$CONFIGURATION_DIRECTORY`` (``ConfigurationDirectory=edge-agent``,
systemd >= 240: /etc/edge-agent), and the name is read from there, from the
file LoadCredential= would have copied. scripts/install.sh makes it
root:edge-agent 0640, so the daemon's group can read it on 245 and root reads
it for LoadCredential= on newer systemd; a fallback file that other users can
read is refused (the password would be everyone's). Outside systemd neither
variable is set and a name is a path relative to the working directory.

The value is never logged; errors name the config key and the file only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Mapping, Optional, Tuple

from .errors import ConfigError

# The unit's ConfigurationDirectory=, where the secret files live.
UNIT_CONFIG_DIR = "/etc/edge-agent"
CREDENTIAL, CONFIG_DIR, PATH = "credential", "config-dir", "path"


def secret_path(file: "str | os.PathLike", environ: Optional[Mapping[str, str]] = None) -> Tuple[Path, str]:
    """The file a secret setting names, and how it was found: ``credential``
    ($CREDENTIALS_DIRECTORY), ``config-dir`` (the systemd < 247 fallback,
    $CONFIGURATION_DIRECTORY) or ``path`` (absolute, or relative to the
    working directory)."""
    env = os.environ if environ is None else environ
    path = Path(file)
    if path.is_absolute():
        return path, PATH
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds:
        return Path(creds) / path, CREDENTIAL
    # systemd joins several ConfigurationDirectory= entries with ':'; the unit has one.
    conf = (env.get("CONFIGURATION_DIRECTORY") or "").split(":")[0]
    if conf:
        return Path(conf) / path, CONFIG_DIR
    return path, PATH


def check_fallback_mode(path: Path, key: str) -> None:
    """A secret read through the systemd < 247 fallback must not be readable,
    writable or executable by other users (install.sh: root:edge-agent 0640)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None
    if mode & 0o007:
        raise ConfigError(f"{key}: {path} is open to other users (mode {mode:04o}); "
                          f"chown root:edge-agent {path} && chmod 0640 {path}")


def read_secret(file: "str | os.PathLike | None", key: str, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """A secret (password, token): the file's text without its trailing newline.
    None when no file is configured."""
    if file is None:
        return None
    path, how = secret_path(file, environ)
    if how == CONFIG_DIR:
        check_fallback_mode(path, key)
    try:
        return path.read_text().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None
