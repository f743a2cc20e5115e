"""The local broker's generated server.properties (no broker started here)."""

from pathlib import Path

from pipeline.broker import server_properties
from pipeline.config import load_settings


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines()
                if line and not line.startswith("#"))


def test_single_kraft_node_on_loopback_with_configured_ports(tmp_path):
    s = load_settings(env={"LLMSPEND_KAFKA_PORT": "39092",
                           "LLMSPEND_KAFKA_CONTROLLER_PORT": "39093",
                           "LLMSPEND_STATE_DIR": str(tmp_path)})
    p = _props(server_properties(s))
    assert p["process.roles"] == "broker,controller"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert p["controller.quorum.voters"] == "1@127.0.0.1:39093"
    assert p["auto.create.topics.enable"] == "false"
    assert p["offsets.topic.replication.factor"] == "1"
    assert p["transaction.state.log.replication.factor"] == "1"
    assert Path(p["log.dirs"]) == (tmp_path / "kafka" / "data").resolve()


def test_message_limit_matches_the_producers():
    s = load_settings(env={"LLMSPEND_KAFKA_MAX_MESSAGE_BYTES": "16777216"})
    p = _props(server_properties(s))
    assert p["message.max.bytes"] == "16777216"
    assert p["replica.fetch.max.bytes"] == "16777216"
    assert int(p["socket.request.max.bytes"]) >= 2 * 16777216


def test_cluster_ids_never_start_with_a_dash(monkeypatch):
    import uuid

    from pipeline import broker

    dash = uuid.UUID(bytes=b"\xf8" + b"\x00" * 15)  # base64 "-A...": read as an option
    ids = iter([dash, uuid.UUID(int=1)])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(ids))
    cid = broker._cluster_id()
    assert not cid.startswith("-") and len(cid) == 22
