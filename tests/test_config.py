"""Broker settings: defaults, YAML file, environment, command line, and their precedence."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kafscale.broker import config


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_the_embedded_default() -> None:
    cfg = config.load(parse([]), environ={})
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 9092)
    assert cfg.data_dir == Path("./kafscale-data")
    assert cfg.message_max_bytes == 1048588
    assert cfg.socket_request_max_bytes == 104857600
    assert cfg.advertised == ("127.0.0.1", 9092)


def test_precedence_command_line_over_environment_over_file(tmp_path: Path) -> None:
    yaml_file = tmp_path / "kafscale.yaml"
    yaml_file.write_text(
        "listen: 0.0.0.0:9000\nnum.partitions: 3\nmessage.max.bytes: 2000\n"
        "auto.create.topics.enable: false\n"
    )
    env = {"KAFSCALE_NUM_PARTITIONS": "5", "KAFSCALE_FLUSH_INTERVAL_MS": "7"}
    cfg = config.load(parse(["--config", str(yaml_file), "--num.partitions", "9"]), environ=env)
    assert (cfg.listen_host, cfg.listen_port) == ("0.0.0.0", 9000)
    assert cfg.num_partitions == 9  # command line
    assert cfg.flush_interval_ms == 7  # environment
    assert cfg.message_max_bytes == 2000  # file
    assert cfg.auto_create_topics_enable is False


def test_advertised_listener_and_env_listen() -> None:
    cfg = config.load(
        parse(["--advertised", "kafka.example:19092"]), environ={"KAFSCALE_LISTEN": "[::]:9093"}
    )
    assert cfg.listen_port == 9093
    assert cfg.advertised == ("kafka.example", 19092)


@pytest.mark.parametrize(
    ("argv", "env", "yaml", "message"),
    [
        (["--num.partitions", "many"], {}, None, "num_partitions"),
        ([], {"KAFSCALE_AUTO_CREATE_TOPICS_ENABLE": "maybe"}, None, "auto_create_topics_enable"),
        (["--listen", "9092"], {}, None, "expected host:port"),
        ([], {}, "no.such.setting: 1\n", "unknown setting 'no.such.setting'"),
        ([], {}, "- a list\n", "expected a mapping"),
    ],
)
def test_bad_settings_name_themselves(
    tmp_path: Path, argv: list[str], env: dict[str, str], yaml: str | None, message: str
) -> None:
    if yaml is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml)
        argv = [*argv, "--config", str(path)]
    with pytest.raises(ValueError, match=message):
        config.load(parse(argv), environ=env)


def test_operations_settings() -> None:
    # kafscale serve opens KafScale's HTTP port by default; a broker built in code does not.
    assert config.load(parse([]), environ={}).http_address == ("127.0.0.1", 9093)
    assert config.BrokerConfig().http_address is None
    assert config.load(parse([]), environ={"KAFSCALE_HTTP_LISTEN": ""}).http_address is None
    cfg = config.load(
        parse(["--http-listen", "[::]:0", "--log-format", "json"]),
        environ={"KAFSCALE_OBJECT_STORE_ERROR_RATE_UNAVAILABLE": "0.25"},
    )
    assert cfg.http_address == ("::", 0)
    assert cfg.log_format == "json"
    assert cfg.object_store_error_rate_unavailable == 0.25
    assert config.load(parse([]), environ={}).log_format == "text"
    with pytest.raises(ValueError, match="http-listen: expected host:port"):
        config.load(parse(["--http-listen", "9093"]), environ={})
    with pytest.raises(ValueError, match="log_format"):
        config.load(parse(["--log-format", "xml"]), environ={})
    with pytest.raises(ValueError, match="object_store_error_rate_degraded"):
        config.load(parse(["--object-store.error-rate.degraded", "often"]), environ={})


def test_broker_id_from_the_pod_ordinal(monkeypatch: pytest.MonkeyPatch) -> None:
    # A StatefulSet gives every pod the same settings: KAFSCALE_BROKER_ID=ordinal takes the
    # number after the last '-' of the pod's host name.
    env = {"KAFSCALE_BROKER_ID": "ordinal", "HOSTNAME": "kfs-broker-12"}
    assert config.load(parse([]), environ=env).broker_id == 12
    assert (
        config.load(parse(["--broker-id", "ordinal"]), environ={"HOSTNAME": "a-b-0"}).broker_id == 0
    )
    # A fully qualified name: the first label counts.
    env["HOSTNAME"] = "kfs-broker-3.kfs-broker-headless.ns.svc.cluster.local"
    assert config.load(parse([]), environ=env).broker_id == 3
    # The command line still wins over the environment.
    assert config.load(parse(["--broker-id", "7"]), environ=env).broker_id == 7
    with pytest.raises(ValueError, match="'laptop' has none"):
        config.load(parse([]), environ={"KAFSCALE_BROKER_ID": "ordinal", "HOSTNAME": "laptop"})
    # Without $HOSTNAME, the kernel's host name (a pod's is its name).
    monkeypatch.setattr(config.socket, "gethostname", lambda: "kfs-broker-5")
    assert config.load(parse([]), environ={"KAFSCALE_BROKER_ID": "ordinal"}).broker_id == 5
