"""Secrets named in the config: systemd credentials on systemd >= 247, the unit's
configuration directory on systemd 245 (Ubuntu 20.04 / JetPack 5), a plain path
otherwise. Real files, real modes; the environment is what systemd would set."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from edge_agent import config
from edge_agent.credentials import CONFIG_DIR, CREDENTIAL, PATH, read_secret, secret_path
from edge_agent.errors import ConfigError

SECRET = "s3cret-pass-word"


def _file(d: Path, name: str, mode: int = 0o640, text: str = SECRET + "\n") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(text)
    p.chmod(mode)
    return p


def test_systemd_247_reads_the_credential_directory(tmp_path):
    creds = _file(tmp_path / "creds", "mqtt-password", 0o400).parent
    _file(tmp_path / "etc", "mqtt-password", text="not this one\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "CONFIGURATION_DIRECTORY": str(tmp_path / "etc")}
    assert secret_path("mqtt-password", env) == (creds / "mqtt-password", CREDENTIAL)
    assert read_secret("mqtt-password", "mqtt.password_file", env) == SECRET


def test_systemd_245_falls_back_to_the_configuration_directory(tmp_path):
    # systemd 245: LoadCredential= ignored, no $CREDENTIALS_DIRECTORY; ConfigurationDirectory= is set.
    etc = _file(tmp_path / "etc", "mqtt-password", 0o640).parent
    env = {"CONFIGURATION_DIRECTORY": f"{etc}:{tmp_path / 'other'}"}
    assert secret_path("mqtt-password", env) == (etc / "mqtt-password", CONFIG_DIR)
    assert read_secret("mqtt-password", "mqtt.password_file", env) == SECRET
    _file(etc, "tcp-token", 0o600, "t" * 32 + "\r\n")
    assert read_secret("tcp-token", "server.tcp.token_file", env) == "t" * 32


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o641, 0o666])
def test_a_fallback_secret_open_to_others_is_refused(tmp_path, mode):
    etc = _file(tmp_path / "etc", "mqtt-password", mode).parent
    with pytest.raises(ConfigError) as e:
        read_secret("mqtt-password", "mqtt.password_file", {"CONFIGURATION_DIRECTORY": str(etc)})
    msg = str(e.value)
    assert "mqtt.password_file" in msg and f"{mode:04o}" in msg and "chmod 0640" in msg and SECRET not in msg


def test_absolute_paths_and_plain_runs_read_the_path(tmp_path, monkeypatch):
    p = _file(tmp_path / "abs", "pw", 0o644)  # an absolute path is the operator's choice: no mode rule
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds"), "CONFIGURATION_DIRECTORY": str(tmp_path / "etc")}
    assert secret_path(str(p), env) == (p, PATH)
    assert read_secret(p, "k", env) == SECRET
    monkeypatch.chdir(p.parent)
    assert secret_path("pw", {}) == (Path("pw"), PATH)
    assert read_secret("pw", "k", {}) == SECRET
    assert read_secret(None, "k", env) is None


def test_a_missing_secret_names_the_key_and_file_not_the_value(tmp_path):
    for env in ({"CREDENTIALS_DIRECTORY": str(tmp_path)}, {"CONFIGURATION_DIRECTORY": str(tmp_path)}):
        with pytest.raises(ConfigError, match=r"mqtt.password_file: cannot read .*/mqtt-password: No such file"):
            read_secret("mqtt-password", "mqtt.password_file", env)


def test_same_answers_as_config_read_secret_where_that_one_works(tmp_path, monkeypatch):
    """config.read_secret (before the fallback is wired in) and this agree on
    absolute paths and on $CREDENTIALS_DIRECTORY; they differ only on systemd 245."""
    creds = _file(tmp_path / "creds", "tok", 0o400).parent
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert config.read_secret("tok", "k") == read_secret("tok", "k") == SECRET
    assert config.read_secret(str(creds / "tok"), "k") == read_secret(str(creds / "tok"), "k")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    etc = _file(tmp_path / "etc", "tok").parent
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", str(etc))
    monkeypatch.chdir(tmp_path)
    assert read_secret("tok", "k") == SECRET
    if config.read_secret is not read_secret:
        with pytest.raises(ConfigError):  # the systemd 245 case this module exists for
            config.read_secret("tok", "k")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read as another user")
def test_the_daemon_group_can_read_a_root_owned_0640_fallback(tmp_path):
    """install.sh's file: root:GROUP 0640 is readable by a process in GROUP and by no one else."""
    base = Path(tempfile.mkdtemp(prefix="ea-cred-"))  # pytest's tmp_path is under a 0700 directory
    etc = base / "etc"
    p = _file(etc, "mqtt-password", 0o640)
    os.chown(p, 0, 65534)  # group nogroup
    for d in (base, etc):
        d.chmod(0o755)

    def as_user(uid: int, gid: int) -> str:
        """read_secret in a forked child that has dropped to uid/gid (no exec)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                try:
                    out = "ok:" + str(read_secret("mqtt-password", "mqtt.password_file", {"CONFIGURATION_DIRECTORY": str(etc)}))
                except ConfigError as e:
                    out = "error:" + str(e)
                os.write(w, out.encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            out = f.read()
        os.waitpid(pid, 0)
        return out

    try:
        assert as_user(65534, 65534) == "ok:" + SECRET
        other = as_user(65533, 65533)
        assert other.startswith("error:mqtt.password_file: cannot read") and "Permission denied" in other and SECRET not in other
    finally:
        shutil.rmtree(base)
