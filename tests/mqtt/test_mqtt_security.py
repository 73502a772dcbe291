"""TLS (server auth, mutual), password auth, and clear failures that keep retrying."""

from __future__ import annotations


import pytest
from prometheus_client import REGISTRY

from edge_agent.config import MqttTlsConfig
from edge_agent.errors import ConfigError
from edge_agent.transports.mqtt import MqttTransport
from edge_agent.transports.mqtt.bridge import TlsSettings
from brokers import Mosquitto
from certs import make_certs
from mqtt_helpers import DEVICE, body, mqtt_cfg, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("rogue"), name="rogue")


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("edge_agent_mqtt_connect_failures_total", {"client": "transport", "reason": reason}) or 0


@pytest.mark.parametrize("mutual", [False, True], ids=["server-auth", "mutual"])
async def test_tls_round_trip(tmp_path, prefix, make_transport, certs, mutual):
    with Mosquitto(tmp_path / "b", tls=certs, require_client_cert=mutual) as b:
        tls = MqttTlsConfig(ca_file=certs.ca_cert, cert_file=certs.client_cert if mutual else None, key_file=certs.client_key if mutual else None)
        t = await make_transport(mqtt_cfg(b, prefix, tls=tls))
        from edge_agent.transports.mqtt.client import MqttInferClient

        c = MqttInferClient("127.0.0.1", b.port, device=DEVICE, prefix=prefix,
                            tls=TlsSettings(certs.ca_cert, certs.client_cert, certs.client_key))
        await c.connect()
        ans = await c.infer("tiny", body([[1, 2, 3, 4]]), timeout=10)
        assert ans.doc["outputs"][0]["shape"] == [1, 3]
        await c.close()
        await t.stop(timeout=1)


async def test_untrusted_server_cert_logged_and_retried(tmp_path, prefix, make_transport, certs, rogue, caplog):
    with Mosquitto(tmp_path / "b", tls=certs) as b:
        before = failures("tls")
        t = await make_transport(mqtt_cfg(b, prefix, tls=MqttTlsConfig(ca_file=rogue.ca_cert)), connect=False)
        await wait_for(lambda: failures("tls") >= before + 2, what="two failed TLS handshakes")
        assert not t._bridge.connected
        assert "TLS handshake with 127.0.0.1" in caplog.text and "certificate verify failed" in caplog.text


async def test_mutual_tls_without_client_cert_is_refused_and_retried(tmp_path, prefix, make_transport, certs, caplog):
    with Mosquitto(tmp_path / "b", tls=certs, require_client_cert=True) as b:
        def n():
            return failures("tls") + failures("network") + failures("closed")

        before = n()
        t = await make_transport(mqtt_cfg(b, prefix, tls=MqttTlsConfig(ca_file=certs.ca_cert)), connect=False)
        await wait_for(lambda: n() >= before + 2, what="two refused handshakes")
        assert not t._bridge.connected
        assert "client certificate" in caplog.text or "TLS handshake" in caplog.text


async def test_password_auth_and_wrong_password(tmp_path, prefix, make_transport, caplog):
    secret = "pa55-word-xyz"
    (tmp_path / "good").write_text(secret + "\n")
    (tmp_path / "bad").write_text("nope\n")
    with Mosquitto(tmp_path / "b", users={"edge": secret}) as b:
        before = failures("refused")
        bad = await make_transport(mqtt_cfg(b, prefix, username="edge", password_file=tmp_path / "bad", client_id="bad"), connect=False)
        await wait_for(lambda: failures("refused") >= before + 2, what="two refused CONNACKs")
        assert "refused the connection: Not authorized" in caplog.text
        assert not bad._bridge.connected and not bad._bridge._task.done()  # still retrying

        # A systemd credential name resolves under $CREDENTIALS_DIRECTORY.
        import os

        os.environ["CREDENTIALS_DIRECTORY"] = str(tmp_path)
        try:
            good = await make_transport(mqtt_cfg(b, prefix, username="edge", password_file="good"))
        finally:
            del os.environ["CREDENTIALS_DIRECTORY"]
        assert good._bridge.connected
        assert secret not in caplog.text and "nope" not in caplog.text


async def test_missing_credential_files_are_config_errors(tmp_path, prefix, service):
    b = Mosquitto(tmp_path / "b")  # never started: config is checked before any connection
    for cfg in (
        mqtt_cfg(b, prefix, username="u", password_file=tmp_path / "missing"),
        mqtt_cfg(b, prefix, tls=MqttTlsConfig(ca_file=tmp_path / "missing.pem")),
    ):
        t = MqttTransport(cfg, DEVICE, service, tmp_path / "ob", service.info, "x")
        with pytest.raises(ConfigError, match="missing"):
            await t.start()
