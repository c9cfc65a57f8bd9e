"""Configuration (SPEC §8): sources, precedence, parsing, validation, views."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

import daisi_ws
from daisi_ws import config as cfg
from daisi_ws.config import (
    AdaptiveRule,
    ConfigError,
    Settings,
    default_pod_id,
    load_settings,
    resolve_config_path,
    restart_required,
    to_dict,
    with_ephemeral_keys,
)

HEX_A = "0123456789abcdef" * 4
HEX_B = "FEDCBA9876543210" * 4


def load(tmp_path: Path, yaml_text: str | None = None, **env: str) -> Settings:
    """Load with ./config.yaml = yaml_text (if given) and exactly `env` as environment."""
    if yaml_text is not None:
        (tmp_path / "config.yaml").write_text(yaml_text, encoding="utf-8")
    return load_settings(env=env, cwd=tmp_path)


def load_error(tmp_path: Path, yaml_text: str | None = None, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, yaml_text, **env)
    return info.value


def get(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def nested_yaml(dotted: str, value: Any) -> str:
    data: Any = value
    for part in reversed(dotted.split(".")):
        data = {part: data}
    return yaml.safe_dump(data)


def env_pair(dotted: str) -> tuple[str, str]:
    base = dotted.upper().replace(".", "_")
    return "DAISI_WS_" + base, base


# ---------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------

SPEC_DEFAULTS: dict[str, Any] = {
    "server": {"host": "0.0.0.0", "http_port": 8080},
    "nats": {
        "url": "",
        "delivery": "interest",
        "stream_name": "wa_stream",
        "consumer_name": "ws_fanout",
        "forward_timeout_seconds": 2,
        "connect_timeout_seconds": 5,
        "reconnect_wait_seconds": 2,
        "max_reconnects": -1,
        "ping_interval_seconds": 120,
        "max_pings_out": 2,
        "retry_on_failed_connect": True,
    },
    "redis": {"address": "", "password": "", "db": 0},
    "log": {"level": "info"},
    "auth": {
        "secret_token": "",
        "admin_secret_token": "",
        "token_aes_key": "",
        "admin_token_aes_key": "",
        "jwt_secret": "",
        "token_cache_ttl_seconds": 30,
        "admin_token_cache_ttl_seconds": 60,
        "token_cache_max_entries": 100000,
    },
    "app": {
        "service_name": "daisi-ws",
        "version": daisi_ws.__version__,
        "allowed_origins": [],
        "ping_interval_seconds": 20,
        "pong_wait_seconds": 60,
        "write_timeout_seconds": 10,
        "max_message_bytes": 32768,
        "session_ttl_seconds": 30,
        "route_ttl_seconds": 300,
        "ttl_refresh_interval_seconds": 10,
        "shutdown_timeout_seconds": 30,
        "read_timeout_seconds": 10,
        "idle_timeout_seconds": 60,
        "websocket_message_buffer_size": 100,
        "websocket_backpressure_drop_policy": "drop_oldest",
        "websocket_compression_mode": "disabled",
        "websocket_compression_threshold": 128,
        "websocket_write_delay_ms": 0,  # ours, not the Go service's: 0 keeps its behaviour
        "nats_ack_wait_seconds": 30,
        "nats_max_ack_pending": 1000,
    },
    "adaptive_ttl": {
        "session_lock": dict(
            enabled=False,
            min_ttl_seconds=15,
            max_ttl_seconds=30,
            activity_threshold_seconds=120,
            active_ttl_seconds=30,
            inactive_ttl_seconds=15,
        ),
        "message_route": dict(
            enabled=True,
            min_ttl_seconds=300,
            max_ttl_seconds=900,
            activity_threshold_seconds=600,
            active_ttl_seconds=900,
            inactive_ttl_seconds=300,
        ),
        "chat_route": dict(
            enabled=False,
            min_ttl_seconds=300,
            max_ttl_seconds=900,
            activity_threshold_seconds=600,
            active_ttl_seconds=900,
            inactive_ttl_seconds=300,
        ),
    },
}


def test_defaults_equal_spec(tmp_path: Path) -> None:
    settings = load(tmp_path)
    data = to_dict(settings, mask_secrets=False)
    pod_id = data["server"].pop("pod_id")
    assert data == SPEC_DEFAULTS
    assert pod_id == default_pod_id()
    assert settings.source_path is None
    assert settings.warnings == ()
    assert settings.embedded and not settings.shared
    assert settings.app.allowed_origins == ()


def test_dataclass_defaults_match_loaded_defaults(tmp_path: Path) -> None:
    loaded = to_dict(load(tmp_path), mask_secrets=False)
    plain = to_dict(Settings(), mask_secrets=False)
    assert plain["server"]["pod_id"] == ""
    plain["server"]["pod_id"] = loaded["server"]["pod_id"]
    assert plain == loaded


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.http_port = 1  # type: ignore[misc]


def test_empty_pod_id_from_yaml_or_env_gets_default(tmp_path: Path) -> None:
    assert load(tmp_path, "server:\n  pod_id: ''\n").server.pod_id == default_pod_id()
    assert load(tmp_path, DAISI_WS_SERVER_POD_ID="").server.pod_id == default_pod_id()


# ---------------------------------------------------------------------------------------
# Precedence: prefixed env > unprefixed env > YAML > default
# ---------------------------------------------------------------------------------------

PRECEDENCE_CASES = [
    # key, yaml value, unprefixed env, prefixed env, expected (default, yaml, unprefixed, prefixed)
    ("server.pod_id", "pod-yaml", "pod-env", "pod-pref", (None, "pod-yaml", "pod-env", "pod-pref")),
    ("app.max_message_bytes", 1000, "2000", "3000", (32768, 1000, 2000, 3000)),
    ("nats.retry_on_failed_connect", False, "yes", "0", (True, False, True, False)),
    (
        "app.allowed_origins",
        ["https://y.example"],
        "https://u.example, https://v.example",
        "https://p.example",
        (
            (),
            ("https://y.example",),
            ("https://u.example", "https://v.example"),
            ("https://p.example",),
        ),
    ),
    ("adaptive_ttl.message_route.max_ttl_seconds", 1000, "1100", "1200", (900, 1000, 1100, 1200)),
    ("adaptive_ttl.session_lock.enabled", True, "false", "TRUE", (False, True, False, True)),
]


@pytest.mark.parametrize(("key", "yaml_value", "plain", "prefixed", "expected"), PRECEDENCE_CASES)
def test_precedence(
    tmp_path: Path, key: str, yaml_value: Any, plain: str, prefixed: str, expected: tuple
) -> None:
    pref_name, plain_name = env_pair(key)
    default, from_yaml, from_plain, from_pref = expected
    text = nested_yaml(key, yaml_value)
    if default is not None:
        assert get(load(tmp_path), key) == default
    assert get(load(tmp_path, text), key) == from_yaml
    assert get(load(tmp_path, text, **{plain_name: plain}), key) == from_plain
    assert get(load(tmp_path, **{plain_name: plain}), key) == from_plain
    both = {plain_name: plain, pref_name: prefixed}
    assert get(load(tmp_path, text, **both), key) == from_pref
    assert get(load(tmp_path, **{pref_name: prefixed}), key) == from_pref


def test_env_names() -> None:
    assert cfg.env_names("server.pod_id") == ("DAISI_WS_SERVER_POD_ID", "SERVER_POD_ID")
    assert cfg.env_names("adaptive_ttl.message_route.enabled") == (
        "DAISI_WS_ADAPTIVE_TTL_MESSAGE_ROUTE_ENABLED",
        "ADAPTIVE_TTL_MESSAGE_ROUTE_ENABLED",
    )


def test_every_key_is_listed_once() -> None:
    expected = {
        f"{section}.{key}"
        for section, keys in SPEC_DEFAULTS.items()
        if section != "adaptive_ttl"
        for key in keys
    }
    expected.add("server.pod_id")
    expected |= {
        f"adaptive_ttl.{rule}.{key}"
        for rule, keys in SPEC_DEFAULTS["adaptive_ttl"].items()
        for key in keys
    }
    keys = cfg.all_keys()
    assert len(keys) == len(set(keys))
    assert set(keys) == expected


INT_KEYS = [
    "server.http_port",
    "nats.forward_timeout_seconds",
    "nats.max_reconnects",
    "redis.db",
    "auth.token_cache_max_entries",
    "app.websocket_compression_threshold",
    "adaptive_ttl.chat_route.inactive_ttl_seconds",
]


@pytest.mark.parametrize("key", INT_KEYS)
@pytest.mark.parametrize("use_prefix", [True, False])
def test_every_env_form_is_read(tmp_path: Path, key: str, use_prefix: bool) -> None:
    name = env_pair(key)[0 if use_prefix else 1]
    err = load_error(tmp_path, **{name: "abc"})
    assert err.key == key
    assert str(err) == f"{key}: must be an integer, got 'abc'"


def test_unrelated_env_vars_are_ignored(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        DAISI_WS_NO_EXTENSIONS="1",
        DAISI_WS_FOO="bar",
        DAISI_WS_SERVER_GRPC_PORT="x",
        SERVER_GRPC_PORT="x",
        APP_USE_MELODY_WEBSOCKET="maybe",
        PATH="/usr/bin",
    )
    assert settings.warnings == ()
    assert to_dict(settings, mask_secrets=False)["app"] == SPEC_DEFAULTS["app"]


# ---------------------------------------------------------------------------------------
# Value parsing (env rules; YAML scalars use the same rules)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"), [("42", 42), (" 42 ", 42), ("+42", 42), ("0042", 42), ("\t7\n", 7)]
)
def test_int_parsing_accepts(tmp_path: Path, raw: str, value: int) -> None:
    assert load(tmp_path, DAISI_WS_APP_MAX_MESSAGE_BYTES=raw).app.max_message_bytes == value


def test_negative_int_parses(tmp_path: Path) -> None:
    assert load(tmp_path, NATS_MAX_RECONNECTS="-1").nats.max_reconnects == -1
    assert load(tmp_path, NATS_MAX_RECONNECTS="+5").nats.max_reconnects == 5


@pytest.mark.parametrize("raw", ["1.5", "abc", "", " ", "1_000", "0x10", "1e3", "\u0663", "5s"])
def test_int_parsing_rejects(tmp_path: Path, raw: str) -> None:
    err = load_error(tmp_path, DAISI_WS_APP_PING_INTERVAL_SECONDS=raw)
    assert err.key == "app.ping_interval_seconds"
    assert err.problem == f"must be an integer, got {raw!r}"


def test_int_error_text_exact(tmp_path: Path) -> None:
    err = load_error(tmp_path, APP_PING_INTERVAL_SECONDS="abc")
    assert str(err) == "app.ping_interval_seconds: must be an integer, got 'abc'"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("YES", True),
        (" yes ", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("No", False),
    ],
)
def test_bool_parsing_accepts(tmp_path: Path, raw: str, value: bool) -> None:
    settings = load(tmp_path, DAISI_WS_NATS_RETRY_ON_FAILED_CONNECT=raw)
    assert settings.nats.retry_on_failed_connect is value


@pytest.mark.parametrize("raw", ["maybe", "on", "off", "2", "", "t"])
def test_bool_parsing_rejects(tmp_path: Path, raw: str) -> None:
    err = load_error(tmp_path, NATS_RETRY_ON_FAILED_CONNECT=raw)
    assert err.key == "nats.retry_on_failed_connect"
    assert err.problem.startswith("must be a boolean (true, false, 1, 0, yes, no)")
    assert repr(raw) in err.problem


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("", ()),
        ("https://a.example", ("https://a.example",)),
        (" https://a.example , ,https://b.example,, ", ("https://a.example", "https://b.example")),
        (",,", ()),
    ],
)
def test_list_parsing_env(tmp_path: Path, raw: str, value: tuple[str, ...]) -> None:
    assert load(tmp_path, DAISI_WS_APP_ALLOWED_ORIGINS=raw).app.allowed_origins == value


def test_empty_env_list_overrides_yaml(tmp_path: Path) -> None:
    text = "app:\n  allowed_origins: [https://a.example]\n"
    assert load(tmp_path, text, APP_ALLOWED_ORIGINS="").app.allowed_origins == ()


def test_list_parsing_yaml(tmp_path: Path) -> None:
    text = (
        "app:\n  allowed_origins:\n    - ' https://a.example '\n    - ''\n    - https://b.example\n"
    )
    assert load(tmp_path, text).app.allowed_origins == ("https://a.example", "https://b.example")
    text = "app:\n  allowed_origins: 'https://a.example, https://b.example'\n"
    assert load(tmp_path, text).app.allowed_origins == ("https://a.example", "https://b.example")


def test_list_yaml_rejects_nested(tmp_path: Path) -> None:
    err = load_error(tmp_path, "app:\n  allowed_origins:\n    - [a, b]\n")
    assert err.key == "app.allowed_origins"
    err = load_error(tmp_path, "app:\n  allowed_origins: {a: b}\n")
    assert err.key == "app.allowed_origins"


def test_yaml_scalar_types(tmp_path: Path) -> None:
    text = """
server:
  http_port: "8081"
redis:
  password: 0123
nats:
  retry_on_failed_connect: "no"
app:
  version: 1.10
  service_name: yes
adaptive_ttl:
  chat_route:
    enabled: Yes
"""
    settings = load(tmp_path, text)
    assert settings.server.http_port == 8081
    assert settings.redis.password == "0123"  # not YAML 1.1 octal 83
    assert settings.nats.retry_on_failed_connect is False
    assert settings.app.version == "1.10"  # not the float 1.1
    assert settings.app.service_name == "yes"
    assert settings.adaptive_ttl.chat_route.enabled is True


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("server:\n  http_port: true\n", "server.http_port", "must be an integer, got 'true'"),
        ("server:\n  http_port: 80.5\n", "server.http_port", "must be an integer, got '80.5'"),
        (
            "server:\n  http_port: [1]\n",
            "server.http_port",
            "must be an integer, got a list",
        ),
        (
            "nats:\n  retry_on_failed_connect: 5\n",
            "nats.retry_on_failed_connect",
            "must be a boolean (true, false, 1, 0, yes, no), got '5'",
        ),
        ("app:\n  service_name: {a: 1}\n", "app.service_name", "must be a string, got a mapping"),
        ("app:\n  service_name: [a]\n", "app.service_name", "must be a string, got a list"),
    ],
)
def test_yaml_wrong_types(tmp_path: Path, text: str, key: str, problem: str) -> None:
    err = load_error(tmp_path, text)
    assert (err.key, err.problem) == (key, problem)


def test_yaml_null_means_default(tmp_path: Path) -> None:
    text = "server:\n  http_port:\n  host: ~\nnats:\napp:\n  allowed_origins: null\n"
    settings = load(tmp_path, text)
    assert settings.server.http_port == 8080
    assert settings.server.host == "0.0.0.0"
    assert settings.app.allowed_origins == ()
    assert settings.warnings == ()


def test_yaml_empty_file_means_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, "# nothing here\n")
    assert settings.source_path == str(tmp_path / "config.yaml")
    assert to_dict(settings, mask_secrets=False)["app"] == SPEC_DEFAULTS["app"]


def test_yaml_merge_keys(tmp_path: Path) -> None:
    text = """
x-rule: &rule
  enabled: true
  min_ttl_seconds: 20
  max_ttl_seconds: 40
adaptive_ttl:
  session_lock:
    <<: *rule
    active_ttl_seconds: 40
"""
    settings = load(tmp_path, text)
    assert settings.adaptive_ttl.session_lock == AdaptiveRule(True, 20, 40, 120, 40, 15)
    assert settings.warnings == ("unknown config key x-rule ignored",)


def test_retry_on_failed_connect_false_is_accepted_with_a_warning(tmp_path: Path) -> None:
    settings = load(tmp_path, "nats:\n  retry_on_failed_connect: false\n")
    assert settings.nats.retry_on_failed_connect is False
    assert settings.warnings == ("nats.retry_on_failed_connect=false has no effect: a pod always retries NATS",)


def test_yaml_keys_case_insensitive(tmp_path: Path) -> None:
    settings = load(tmp_path, "Server:\n  HTTP_Port: 9000\n")
    assert settings.server.http_port == 9000
    assert settings.warnings == ()


# ---------------------------------------------------------------------------------------
# YAML structure errors and the Go service's YAML
# ---------------------------------------------------------------------------------------


def test_yaml_unparseable(tmp_path: Path) -> None:
    err = load_error(tmp_path, "server:\n  http_port: [1, 2\n")
    assert err.key == "config"
    assert err.problem.startswith(f"invalid YAML in {tmp_path / 'config.yaml'}")
    assert "line" in err.problem


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_top_level_not_mapping(tmp_path: Path, text: str) -> None:
    err = load_error(tmp_path, text)
    assert err.key == "config"
    assert "top level must be a mapping" in err.problem


@pytest.mark.parametrize(
    ("text", "section"),
    [
        ("server: 8080\n", "server"),
        ("app:\n  - a\n", "app"),
        ("adaptive_ttl:\n  message_route: true\n", "adaptive_ttl.message_route"),
    ],
)
def test_yaml_section_not_mapping(tmp_path: Path, text: str, section: str) -> None:
    err = load_error(tmp_path, text)
    assert err.key == "config"
    assert f"section {section} must be a mapping" in err.problem


GO_YAML = f"""
server:
  http_port: 8080
  grpc_port: 50051
  pod_id: ""
nats:
  url: "nats://127.0.0.1:4222"
  stream_name: "wa_stream"
  consumer_name: "ws_fanout"
  connect_timeout_seconds: 5
  reconnect_wait_seconds: 2
  max_reconnects: -1
  ping_interval_seconds: 120
  max_pings_out: 2
  retry_on_failed_connect: true
redis:
  address: "127.0.0.1:6379"
  password: ""
  db: 0
log:
  level: "info"
auth:
  secret_token: "general-key"
  admin_secret_token: "admin-key"
  token_aes_key: "{HEX_A}"
  admin_token_aes_key: "{HEX_B}"
  token_cache_ttl_seconds: 30
  admin_token_cache_ttl_seconds: 60
app:
  service_name: "daisi-ws-service"
  version: "1.0.0"
  ping_interval_seconds: 20
  pong_wait_seconds: 60
  max_missed_pongs: 2
  write_timeout_seconds: 10
  max_message_size_bytes: 1048576
  session_ttl_seconds: 30
  route_ttl_seconds: 30
  ttl_refresh_interval_seconds: 10
  nats_max_ack_pending: 5000
  nats_ack_wait_seconds: 30
  grpc_pool_idle_timeout_seconds: 300
  grpc_pool_health_check_interval_seconds: 60
  grpc_circuit_breaker_fail_threshold: 5
  grpc_circuit_breaker_open_duration_seconds: 30
  use_melody_websocket: false
  websocket_message_buffer_size: 100
  websocket_backpressure_drop_policy: "drop_oldest"
adaptive_ttl:
  session_lock:
    enabled: false
    min_ttl_seconds: 15
    max_ttl_seconds: 30
    activity_threshold_seconds: 120
    active_ttl_seconds: 30
    inactive_ttl_seconds: 15
  message_route:
    enabled: true
    min_ttl_seconds: 300
    max_ttl_seconds: 900
    activity_threshold_seconds: 600
    active_ttl_seconds: 900
    inactive_ttl_seconds: 300
    unused_knob: 1
grpc:
  tls: false
"""


def test_go_yaml_loads_with_one_warning_per_ignored_key(tmp_path: Path) -> None:
    settings = load(tmp_path, GO_YAML)
    assert settings.warnings == (
        "unknown config key server.grpc_port ignored",
        "unknown config key app.max_missed_pongs ignored",
        "unknown config key app.max_message_size_bytes ignored",
        "unknown config key app.grpc_pool_idle_timeout_seconds ignored",
        "unknown config key app.grpc_pool_health_check_interval_seconds ignored",
        "unknown config key app.grpc_circuit_breaker_fail_threshold ignored",
        "unknown config key app.grpc_circuit_breaker_open_duration_seconds ignored",
        "unknown config key app.use_melody_websocket ignored",
        "unknown config key adaptive_ttl.message_route.unused_knob ignored",
        "unknown config key grpc ignored",
    )
    assert settings.shared
    assert settings.nats.url == "nats://127.0.0.1:4222"
    assert settings.redis.address == "127.0.0.1:6379"
    assert settings.auth.token_aes_key == HEX_A
    assert settings.app.service_name == "daisi-ws-service"
    assert settings.app.nats_max_ack_pending == 5000
    assert settings.app.route_ttl_seconds == 30
    assert settings.server.pod_id == default_pod_id()


# ---------------------------------------------------------------------------------------
# Config file location
# ---------------------------------------------------------------------------------------


def test_named_missing_file_cli(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(str(missing), env={}, cwd=tmp_path)
    assert str(info.value) == f"config: file not found: {missing}"


def test_named_missing_file_env(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("server:\n  http_port: 1\n")
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(env={"DAISI_WS_CONFIG": str(missing)}, cwd=tmp_path)
    assert (info.value.key, info.value.problem) == ("config", f"file not found: {missing}")


def test_named_path_is_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config_path(str(tmp_path), {}, tmp_path)
    assert info.value.key == "config"


def test_resolution_order(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    nested = tmp_path / "config" / "config.yaml"
    flat = tmp_path / "config.yaml"
    cli = tmp_path / "cli.yaml"
    envf = tmp_path / "env.yaml"
    for path, port in ((nested, 1001), (flat, 1002), (cli, 1003), (envf, 1004)):
        path.write_text(f"server:\n  http_port: {port}\n")
    env = {"DAISI_WS_CONFIG": str(envf)}

    assert resolve_config_path(str(cli), env, tmp_path) == cli
    assert resolve_config_path(None, env, tmp_path) == envf
    assert resolve_config_path(None, {}, tmp_path) == nested
    assert load_settings(str(cli), env=env, cwd=tmp_path).server.http_port == 1003
    assert load_settings(None, env=env, cwd=tmp_path).server.http_port == 1004
    settings = load_settings(None, env={}, cwd=tmp_path)
    assert settings.server.http_port == 1001
    assert settings.source_path == str(nested)

    nested.unlink()
    assert resolve_config_path(None, {}, tmp_path) == flat
    assert load_settings(env={}, cwd=tmp_path).server.http_port == 1002

    flat.unlink()
    assert resolve_config_path(None, {}, tmp_path) is None
    assert load_settings(env={}, cwd=tmp_path).source_path is None


def test_relative_named_path_uses_cwd(tmp_path: Path) -> None:
    (tmp_path / "my.yaml").write_text("server:\n  http_port: 1234\n")
    assert load_settings("my.yaml", env={}, cwd=tmp_path).server.http_port == 1234


def test_fallback_missing_is_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()  # directory without config.yaml
    assert resolve_config_path(None, {}, tmp_path) is None


# ---------------------------------------------------------------------------------------
# Validation (SPEC §8.2)
# ---------------------------------------------------------------------------------------

SHARED = {"NATS_URL": "nats://127.0.0.1:4222", "REDIS_ADDRESS": "127.0.0.1:6379"}


def assert_invalid(tmp_path: Path, key: str, problem: str, **env: str) -> None:
    err = load_error(tmp_path, **env)
    assert (err.key, err.problem) == (key, problem)
    assert str(err) == f"{key}: {problem}"


@pytest.mark.parametrize("value", ["-1", "65536", "100000"])
def test_port_range(tmp_path: Path, value: str) -> None:
    problem = "must be an integer between 0 and 65535"
    assert_invalid(tmp_path, "server.http_port", problem, DAISI_WS_SERVER_HTTP_PORT=value)


@pytest.mark.parametrize("value", ["0", "65535"])
def test_port_bounds_allowed(tmp_path: Path, value: str) -> None:
    assert load(tmp_path, SERVER_HTTP_PORT=value).server.http_port == int(value)


AT_LEAST_ONE = [
    "nats.forward_timeout_seconds",
    "nats.connect_timeout_seconds",
    "nats.reconnect_wait_seconds",
    "nats.ping_interval_seconds",
    "nats.max_pings_out",
    "app.ping_interval_seconds",
    "app.pong_wait_seconds",
    "app.write_timeout_seconds",
    "app.max_message_bytes",
    "app.session_ttl_seconds",
    "app.route_ttl_seconds",
    "app.ttl_refresh_interval_seconds",
    "app.shutdown_timeout_seconds",
    "app.read_timeout_seconds",
    "app.idle_timeout_seconds",
    "app.websocket_message_buffer_size",
    "app.nats_ack_wait_seconds",
    "app.nats_max_ack_pending",
]


# Upper bounds: 2**31 - 1 for every integer key (about 68 years of seconds: within asyncio
# timers, Redis EX and int64 nanoseconds), except ports and the send buffer, whose `block`
# policy holds 8 x capacity frames in a Py_ssize_t.
INT_MAX = 2**31 - 1
BUFFER_MAX = INT_MAX // 8


def int_max(key: str) -> int:
    return BUFFER_MAX if key == "app.websocket_message_buffer_size" else INT_MAX


@pytest.mark.parametrize("key", AT_LEAST_ONE)
@pytest.mark.parametrize("value", ["0", "-5"])
def test_durations_sizes_counts_at_least_one(tmp_path: Path, key: str, value: str) -> None:
    problem = f"must be an integer between 1 and {int_max(key)}"
    assert_invalid(tmp_path, key, problem, **{env_pair(key)[0]: value})


def test_max_pings_out_one_is_fine(tmp_path: Path) -> None:
    assert load(tmp_path, NATS_MAX_PINGS_OUT="1").nats.max_pings_out == 1


@pytest.mark.parametrize(
    ("key", "low", "problem"),
    [
        ("auth.token_cache_ttl_seconds", 0, f"must be an integer between 0 and {INT_MAX} (0 = no cache)"),
        ("auth.admin_token_cache_ttl_seconds", 0, f"must be an integer between 0 and {INT_MAX} (0 = no cache)"),
        ("app.websocket_compression_threshold", 0, f"must be an integer between 0 and {INT_MAX}"),
        ("redis.db", 0, f"must be an integer between 0 and {INT_MAX}"),
        ("nats.max_reconnects", -1, f"must be an integer between -1 and {INT_MAX} (-1 = forever)"),
    ],
)
def test_documented_lower_bounds(tmp_path: Path, key: str, low: int, problem: str) -> None:
    name = env_pair(key)[0]
    assert get(load(tmp_path, **{name: str(low)}), key) == low
    assert_invalid(tmp_path, key, problem, **{name: str(low - 1)})


def test_token_cache_max_entries_zero_rejected(tmp_path: Path) -> None:
    err = load_error(tmp_path, AUTH_TOKEN_CACHE_MAX_ENTRIES="0")
    assert err.key == "auth.token_cache_max_entries"
    assert err.problem.startswith(f"must be an integer between 1 and {INT_MAX}")
    assert "cap" in err.problem
    assert load(tmp_path, AUTH_TOKEN_CACHE_MAX_ENTRIES="1").auth.token_cache_max_entries == 1


@pytest.mark.parametrize("key", ["app.session_ttl_seconds", "app.route_ttl_seconds"])
@pytest.mark.parametrize("value", ["10", "5"])
def test_ttls_exceed_refresh_interval(tmp_path: Path, key: str, value: str) -> None:
    problem = "must be greater than app.ttl_refresh_interval_seconds (10)"
    assert_invalid(tmp_path, key, problem, **{env_pair(key)[1]: value})
    assert get(load(tmp_path, **{env_pair(key)[1]: "11"}), key) == 11


def test_refresh_interval_raised_breaks_session_ttl(tmp_path: Path) -> None:
    problem = "must be greater than app.ttl_refresh_interval_seconds (30)"
    assert_invalid(
        tmp_path, "app.session_ttl_seconds", problem, APP_TTL_REFRESH_INTERVAL_SECONDS="30"
    )


@pytest.mark.parametrize("pong", ["20", "19"])
def test_pong_wait_exceeds_ping_interval(tmp_path: Path, pong: str) -> None:
    problem = "must be greater than app.ping_interval_seconds (20)"
    assert_invalid(tmp_path, "app.pong_wait_seconds", problem, APP_PONG_WAIT_SECONDS=pong)
    assert load(tmp_path, APP_PONG_WAIT_SECONDS="21").app.pong_wait_seconds == 21


@pytest.mark.parametrize("timeout", ["30", "31"])
def test_forward_timeout_below_ack_wait(tmp_path: Path, timeout: str) -> None:
    problem = "must be less than app.nats_ack_wait_seconds (30)"
    assert_invalid(
        tmp_path, "nats.forward_timeout_seconds", problem, NATS_FORWARD_TIMEOUT_SECONDS=timeout
    )
    assert load(tmp_path, NATS_FORWARD_TIMEOUT_SECONDS="29").nats.forward_timeout_seconds == 29


def test_adaptive_enabled_min_le_max(tmp_path: Path) -> None:
    problem = "must not exceed adaptive_ttl.message_route.max_ttl_seconds (900)"
    assert_invalid(
        tmp_path,
        "adaptive_ttl.message_route.min_ttl_seconds",
        problem,
        ADAPTIVE_TTL_MESSAGE_ROUTE_MIN_TTL_SECONDS="901",
    )
    ok = load(tmp_path, ADAPTIVE_TTL_MESSAGE_ROUTE_MIN_TTL_SECONDS="900")
    assert ok.adaptive_ttl.message_route.min_ttl_seconds == 900


@pytest.mark.parametrize("value", ["10", "3"])
def test_adaptive_enabled_min_exceeds_refresh(tmp_path: Path, value: str) -> None:
    problem = "must be greater than app.ttl_refresh_interval_seconds (10)"
    assert_invalid(
        tmp_path,
        "adaptive_ttl.session_lock.min_ttl_seconds",
        problem,
        DAISI_WS_ADAPTIVE_TTL_SESSION_LOCK_ENABLED="true",
        DAISI_WS_ADAPTIVE_TTL_SESSION_LOCK_MIN_TTL_SECONDS=value,
    )


@pytest.mark.parametrize(
    "field",
    [
        "min_ttl_seconds",
        "max_ttl_seconds",
        "activity_threshold_seconds",
        "active_ttl_seconds",
        "inactive_ttl_seconds",
    ],
)
def test_adaptive_enabled_values_at_least_one(tmp_path: Path, field: str) -> None:
    key = f"adaptive_ttl.chat_route.{field}"
    env = {"ADAPTIVE_TTL_CHAT_ROUTE_ENABLED": "1", env_pair(key)[0]: "0"}
    assert_invalid(tmp_path, key, f"must be an integer between 1 and {INT_MAX}", **env)


def test_adaptive_disabled_rule_not_checked(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        DAISI_WS_ADAPTIVE_TTL_CHAT_ROUTE_MIN_TTL_SECONDS="5000",
        DAISI_WS_ADAPTIVE_TTL_CHAT_ROUTE_ACTIVE_TTL_SECONDS="0",
        DAISI_WS_ADAPTIVE_TTL_SESSION_LOCK_MIN_TTL_SECONDS="1",
    )
    assert settings.adaptive_ttl.chat_route == AdaptiveRule(False, 5000, 900, 600, 0, 300)
    assert settings.adaptive_ttl.session_lock.min_ttl_seconds == 1


# Every integer key outside adaptive_ttl: (lowest, highest, note) of its range.
INT_RANGES: dict[str, tuple[int, int, str]] = {
    "server.http_port": (0, 65535, ""),
    **{key: (1, int_max(key), "") for key in AT_LEAST_ONE},
    "nats.max_reconnects": (-1, INT_MAX, " (-1 = forever)"),
    "redis.db": (0, INT_MAX, ""),
    "auth.token_cache_ttl_seconds": (0, INT_MAX, " (0 = no cache)"),
    "auth.admin_token_cache_ttl_seconds": (0, INT_MAX, " (0 = no cache)"),
    "auth.token_cache_max_entries": (1, INT_MAX, " (0 would make the cap meaningless)"),
    "app.websocket_compression_threshold": (0, INT_MAX, ""),
    "app.websocket_write_delay_ms": (0, 1000, " (0 = write at once)"),
}
ADAPTIVE_INT_FIELDS = [
    "min_ttl_seconds",
    "max_ttl_seconds",
    "activity_threshold_seconds",
    "active_ttl_seconds",
    "inactive_ttl_seconds",
]
HUGE = "9" * 5000  # more digits than int() reads (4300): must still be a config error


def range_problem(key: str) -> str:
    low, high, note = INT_RANGES[key]
    return f"must be an integer between {low} and {high}{note}"


def test_int_ranges_cover_every_integer_key() -> None:
    ints = {
        k for k in cfg.all_keys() if type(get(Settings(), k)) is int and not k.startswith("adaptive_ttl.")
    }
    assert ints == set(INT_RANGES)


@pytest.mark.parametrize("key", sorted(INT_RANGES))
@pytest.mark.parametrize("too_big", ["max+1", "9" * 25, HUGE, "-" + HUGE, "+" + "0" * 30 + "9" * 11])
def test_integer_upper_bounds(tmp_path: Path, key: str, too_big: str) -> None:
    value = str(INT_RANGES[key][1] + 1) if too_big == "max+1" else too_big
    assert_invalid(tmp_path, key, range_problem(key), **{env_pair(key)[0]: value})


@pytest.mark.parametrize("key", sorted(INT_RANGES))
def test_integer_upper_bounds_from_yaml(tmp_path: Path, key: str) -> None:
    section, name = key.split(".")
    err = load_error(tmp_path, f"{section}:\n  {name}: {HUGE}\n")
    assert (err.key, err.problem) == (key, range_problem(key))


def test_integer_maxima_accepted(tmp_path: Path) -> None:
    """Each key at its maximum (a key that must stay below another one just under it)."""
    below = {"app.ttl_refresh_interval_seconds", "app.ping_interval_seconds", "nats.forward_timeout_seconds"}
    env = {
        env_pair(key)[0]: str(high - 1 if key in below else high)
        for key, (_, high, _) in INT_RANGES.items()
    }
    for rule in ("session_lock", "message_route", "chat_route"):
        env[f"DAISI_WS_ADAPTIVE_TTL_{rule.upper()}_ENABLED"] = "true"
        for name in ADAPTIVE_INT_FIELDS:
            env[env_pair(f"adaptive_ttl.{rule}.{name}")[0]] = str(INT_MAX)
    settings = load(tmp_path, **env)
    for key, (_, high, _) in INT_RANGES.items():
        assert get(settings, key) == (high - 1 if key in below else high), key
    assert settings.app.websocket_message_buffer_size == 268435455
    assert settings.adaptive_ttl.chat_route == AdaptiveRule(True, *[INT_MAX] * 5)


@pytest.mark.parametrize("enabled", ["true", "false"])
@pytest.mark.parametrize("field", ADAPTIVE_INT_FIELDS)
@pytest.mark.parametrize("too_big", [str(INT_MAX + 1), HUGE])
def test_adaptive_upper_bound_even_when_disabled(
    tmp_path: Path, enabled: str, field: str, too_big: str
) -> None:
    key = f"adaptive_ttl.chat_route.{field}"
    env = {"DAISI_WS_ADAPTIVE_TTL_CHAT_ROUTE_ENABLED": enabled, env_pair(key)[0]: too_big}
    assert_invalid(tmp_path, key, f"must be an integer between 1 and {INT_MAX}", **env)


def test_tokencache_and_sendqueue_take_the_maxima() -> None:
    """The compiled (and pure) classes the maxima feed accept them: no OverflowError later."""
    from daisi_ws.hotpath import SendQueue, SendStats, TokenCache

    assert TokenCache(INT_MAX).max_entries == INT_MAX
    queue = SendQueue(BUFFER_MAX, 2, SendStats())  # policy `block`: 8 x capacity frames
    assert queue.capacity * 8 <= INT_MAX


@pytest.mark.parametrize(
    ("tagged", "tag"),
    [
        ("!!int abc", "!!int"),
        (f"!!int {HUGE}", "!!int"),
        ("!!float abc", "!!float"),
        ("!!timestamp 2020-13-45", "!!timestamp"),
    ],
)
def test_yaml_tagged_value_its_constructor_refuses(tmp_path: Path, tagged: str, tag: str) -> None:
    err = load_error(tmp_path, f"server:\n  http_port: {tagged}\n")
    path = tmp_path / "config.yaml"
    assert (err.key, err.problem) == (
        "config",
        f"invalid YAML in {path} at line 2, column 14: not a valid {tag} value",
    )


def test_yaml_tagged_int_out_of_range(tmp_path: Path) -> None:
    err = load_error(tmp_path, f"app:\n  max_message_bytes: !!int {'9' * 4000}\n")
    assert str(err) == f"app.max_message_bytes: must be an integer between 1 and {INT_MAX}"


@pytest.mark.parametrize("opener", ["[", "{a: "])
def test_yaml_nested_too_deeply(tmp_path: Path, opener: str) -> None:
    err = load_error(tmp_path, "app:\n  allowed_origins: " + opener * 3000 + "\n")
    path = tmp_path / "config.yaml"
    assert (err.key, err.problem) == ("config", f"invalid YAML in {path}: nested too deeply")


@pytest.mark.parametrize(
    ("key", "bad", "problem", "good"),
    [
        ("nats.delivery", "fanout", "must be one of interest, queue", ["interest", "queue"]),
        ("log.level", "warning", "must be one of debug, info, warn, error", ["debug", "error"]),
        (
            "app.websocket_backpressure_drop_policy",
            "drop_all",
            "must be one of drop_oldest, drop_newest, block, close",
            ["drop_oldest", "drop_newest", "block", "close"],
        ),
        (
            "app.websocket_compression_mode",
            "enabled",
            "must be one of disabled, no_context_takeover",
            ["disabled", "no_context_takeover"],
        ),
    ],
)
def test_enumerations(tmp_path: Path, key: str, bad: str, problem: str, good: list[str]) -> None:
    name = env_pair(key)[0]
    assert_invalid(tmp_path, key, problem, **{name: bad})
    assert_invalid(tmp_path, key, problem, **{name: ""})
    for value in good:
        assert get(load(tmp_path, **{name: value}), key) == value


def test_enumerations_ignore_case(tmp_path: Path) -> None:
    settings = load(
        tmp_path, LOG_LEVEL="INFO", DAISI_WS_APP_WEBSOCKET_BACKPRESSURE_DROP_POLICY="Block"
    )
    assert settings.log.level == "info"
    assert settings.app.websocket_backpressure_drop_policy == "block"


@pytest.mark.parametrize("key", ["auth.token_aes_key", "auth.admin_token_aes_key"])
@pytest.mark.parametrize("bad", [HEX_A[:-1], HEX_A + "0", "g" * 64, "zz", " " + HEX_A[1:]])
def test_aes_keys(tmp_path: Path, key: str, bad: str) -> None:
    name = env_pair(key)[0]
    problem = "must be 64 hex characters (32 bytes)"
    assert_invalid(tmp_path, key, problem, **{name: bad})
    assert str(load_error(tmp_path, **{name: bad})) == f"{key}: {problem}"
    assert bad not in str(load_error(tmp_path, **{name: bad}))  # never echo key material


@pytest.mark.parametrize("key", ["auth.token_aes_key", "auth.admin_token_aes_key"])
@pytest.mark.parametrize("good", ["", HEX_A, HEX_B, HEX_A.upper()])
def test_aes_keys_valid(tmp_path: Path, key: str, good: str) -> None:
    assert get(load(tmp_path, **{env_pair(key)[0]: good}), key) == good


def test_nats_without_redis(tmp_path: Path) -> None:
    err = load_error(tmp_path, NATS_URL="nats://127.0.0.1:4222")
    assert err.key == "redis.address"
    assert "both or neither" in err.problem


def test_redis_without_nats(tmp_path: Path) -> None:
    err = load_error(tmp_path, REDIS_ADDRESS="127.0.0.1:6379")
    assert err.key == "nats.url"
    assert "both or neither" in err.problem


def test_both_backends_is_shared(tmp_path: Path) -> None:
    settings = load(tmp_path, **SHARED)
    assert settings.shared and not settings.embedded


@pytest.mark.parametrize(
    "address", ["localhost", "localhost:", ":6379", "host:0", "host:65536", "host:abc", "a b:1"]
)
def test_redis_address_format(tmp_path: Path, address: str) -> None:
    env = {**SHARED, "DAISI_WS_REDIS_ADDRESS": address}
    err = load_error(tmp_path, **env)
    assert (err.key, err.problem) == (
        "redis.address",
        "must be host:port with a port between 1 and 65535",
    )


@pytest.mark.parametrize("address", ["localhost:6379", "10.0.0.1:1", "[::1]:6380", "r.svc:65535"])
def test_redis_address_valid(tmp_path: Path, address: str) -> None:
    env = {**SHARED, "DAISI_WS_REDIS_ADDRESS": address}
    assert load(tmp_path, **env).redis.address == address


def test_pod_id_length(tmp_path: Path) -> None:
    assert load(tmp_path, SERVER_POD_ID="p" * 128).server.pod_id == "p" * 128
    assert_invalid(
        tmp_path, "server.pod_id", "must be at most 128 characters", SERVER_POD_ID="p" * 129
    )


@pytest.mark.parametrize("pod_id", ["a b", "a\tb", "a\x00b", "a\x1fb", "a\x7fb", "a\u00a0b", " a"])
def test_pod_id_no_whitespace_or_control(tmp_path: Path, pod_id: str) -> None:
    problem = "must not contain whitespace or control characters"
    assert_invalid(tmp_path, "server.pod_id", problem, DAISI_WS_SERVER_POD_ID=pod_id)


@pytest.mark.parametrize("pod_id", ["pod.1", "pod:1", "pod*", "pod>", "pöd"])
def test_pod_id_queue_mode_charset(tmp_path: Path, pod_id: str) -> None:
    assert load(tmp_path, SERVER_POD_ID=pod_id).server.pod_id == pod_id  # interest: fine
    # embedded mode ignores nats.delivery (SPEC §7.6), so its queue-mode rule too
    assert load(tmp_path, SERVER_POD_ID=pod_id, NATS_DELIVERY="queue").server.pod_id == pod_id
    err = load_error(tmp_path, SERVER_POD_ID=pod_id, NATS_DELIVERY="queue", **SHARED)
    assert err.key == "server.pod_id"
    assert "queue mode" in err.problem
    assert "A-Z, a-z, 0-9, '_' and '-'" in err.problem


def test_pod_id_queue_mode_ok(tmp_path: Path) -> None:
    settings = load(tmp_path, SERVER_POD_ID="Pod_1-a", NATS_DELIVERY="queue", **SHARED)
    assert settings.server.pod_id == "Pod_1-a"
    assert settings.nats.delivery == "queue"


def test_server_host_non_empty(tmp_path: Path) -> None:
    assert_invalid(tmp_path, "server.host", "must not be empty", DAISI_WS_SERVER_HOST="")
    assert load(tmp_path, SERVER_HOST="127.0.0.1").server.host == "127.0.0.1"


def test_first_error_wins(tmp_path: Path) -> None:
    err = load_error(tmp_path, SERVER_HTTP_PORT="x", APP_PING_INTERVAL_SECONDS="y")
    assert err.key in {"server.http_port", "app.ping_interval_seconds"}
    assert "\n" not in str(err)


def test_validate_accepts_defaults_and_rejects_bad_settings() -> None:
    settings = Settings()
    settings = dataclasses.replace(
        settings, server=dataclasses.replace(settings.server, pod_id="p")
    )
    cfg.validate(settings)
    bad = dataclasses.replace(settings, app=dataclasses.replace(settings.app, pong_wait_seconds=5))
    with pytest.raises(ConfigError) as info:
        cfg.validate(bad)
    assert info.value.key == "app.pong_wait_seconds"


# ---------------------------------------------------------------------------------------
# Views: to_dict, restart_required, ephemeral keys, pod id
# ---------------------------------------------------------------------------------------

SECRETS = {
    "auth.secret_token": "general-key",
    "auth.admin_secret_token": "admin-key",
    "auth.token_aes_key": HEX_A,
    "auth.admin_token_aes_key": HEX_B,
    "auth.jwt_secret": "jwt-secret",
    "redis.password": "hunter2",
}


def test_to_dict_masks_secrets(tmp_path: Path) -> None:
    env = {env_pair(k)[0]: v for k, v in SECRETS.items()}
    env["DAISI_WS_AUTH_JWT_SECRET"] = ""  # an empty secret stays visibly empty
    env["APP_ALLOWED_ORIGINS"] = "https://a.example,https://b.example"
    settings = load(tmp_path, **env, **SHARED)

    masked = to_dict(settings)
    assert masked["auth"]["secret_token"] == "****"
    assert masked["auth"]["admin_secret_token"] == "****"
    assert masked["auth"]["token_aes_key"] == "****"
    assert masked["auth"]["admin_token_aes_key"] == "****"
    assert masked["auth"]["jwt_secret"] == ""
    assert masked["redis"]["password"] == "****"
    assert masked["redis"]["address"] == "127.0.0.1:6379"
    assert masked["app"]["allowed_origins"] == ["https://a.example", "https://b.example"]
    assert masked["adaptive_ttl"]["message_route"]["enabled"] is True
    text = repr(masked)
    for value in SECRETS.values():
        assert value not in text

    plain = to_dict(settings, mask_secrets=False)
    assert plain["auth"]["token_aes_key"] == HEX_A
    assert plain["redis"]["password"] == "hunter2"
    assert set(plain) == {"server", "nats", "redis", "log", "auth", "app", "adaptive_ttl"}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:S3cret@10.0.0.1:4222", "nats://alice:****@10.0.0.1:4222"),
        ("nats://s3cret-token@10.0.0.1:4222", "nats://****@10.0.0.1:4222"),
        ("tls://u:p@ss@n1:4222, nats://n2:4222", "tls://u:****@n1:4222,nats://n2:4222"),
        ("nats://10.0.0.1:4222", "nats://10.0.0.1:4222"),
    ],
)
def test_nats_url_credentials_are_masked(tmp_path: Path, url: str, shown: str) -> None:
    settings = load(tmp_path, DAISI_WS_NATS_URL=url, DAISI_WS_REDIS_ADDRESS="127.0.0.1:6379")
    assert to_dict(settings)["nats"]["url"] == shown
    assert cfg.redact_url(url) == shown
    assert to_dict(settings, mask_secrets=False)["nats"]["url"] == url


def test_nats_url_may_list_several_servers(tmp_path: Path) -> None:
    """As with the Go client, a comma-separated nats.url is a cluster's server list."""
    settings = load(tmp_path, DAISI_WS_NATS_URL=" nats://n1:4222 ,nats://n2:4222,", DAISI_WS_REDIS_ADDRESS="r:6379")
    assert cfg.nats_servers(settings.nats.url) == ["nats://n1:4222", "nats://n2:4222"]
    err = load_error(tmp_path, DAISI_WS_NATS_URL=" , ", DAISI_WS_REDIS_ADDRESS="r:6379")
    assert str(err) == "nats.url: must name at least one server (a URL or a comma-separated list)"


def test_secret_keys_constant() -> None:
    assert frozenset(SECRETS) == cfg.SECRET_KEYS


RESTART_EXPECTED = {
    "server.host",
    "server.http_port",
    "server.pod_id",
    "nats.url",
    "nats.delivery",
    "nats.stream_name",
    "nats.consumer_name",
    "nats.forward_timeout_seconds",
    "nats.connect_timeout_seconds",
    "nats.reconnect_wait_seconds",
    "nats.max_reconnects",
    "nats.ping_interval_seconds",
    "nats.max_pings_out",
    "nats.retry_on_failed_connect",
    "redis.address",
    "redis.password",
    "redis.db",
    "app.ttl_refresh_interval_seconds",
    "app.nats_ack_wait_seconds",
    "app.nats_max_ack_pending",
    "app.read_timeout_seconds",
    "app.idle_timeout_seconds",
    "app.service_name",
    "app.version",
    "auth.token_cache_max_entries",
}


def changed(settings: Any, path: list[str]) -> Any:
    """A copy of `settings` with the leaf at `path` changed to a different value."""
    name = path[0]
    current = getattr(settings, name)
    if len(path) > 1:
        new = changed(current, path[1:])
    elif isinstance(current, bool):
        new = not current
    elif isinstance(current, int):
        new = current + 1
    elif isinstance(current, str):
        new = current + "x"
    else:
        new = (*current, "x")
    return dataclasses.replace(settings, **{name: new})


@pytest.mark.parametrize("key", cfg.all_keys())
def test_restart_required_per_key(key: str) -> None:
    old = Settings()
    new = changed(old, key.split("."))
    assert cfg.changed_keys(old, new) == [key]
    assert restart_required(old, new) == ([key] if key in RESTART_EXPECTED else [])


def test_restart_required_mixed_and_unchanged(tmp_path: Path) -> None:
    old = load(tmp_path)
    assert restart_required(old, load(tmp_path)) == []  # same pod id on reload
    new = load(
        tmp_path,
        LOG_LEVEL="debug",
        APP_PING_INTERVAL_SECONDS="15",
        AUTH_TOKEN_AES_KEY=HEX_A,
        APP_NATS_MAX_ACK_PENDING="10",
        SERVER_HTTP_PORT="9000",
        APP_ALLOWED_ORIGINS="https://x.example",
    )
    assert restart_required(old, new) == ["server.http_port", "app.nats_max_ack_pending"]
    assert set(cfg.changed_keys(old, new)) == {
        "server.http_port",
        "log.level",
        "auth.token_aes_key",
        "app.ping_interval_seconds",
        "app.allowed_origins",
        "app.nats_max_ack_pending",
    }


def test_with_ephemeral_keys_fills_only_empty(tmp_path: Path) -> None:
    settings = load(tmp_path, AUTH_SECRET_TOKEN="mine", AUTH_ADMIN_TOKEN_AES_KEY=HEX_B)
    new, generated = with_ephemeral_keys(settings)
    assert set(generated) == {"auth.admin_secret_token", "auth.token_aes_key"}
    for value in generated.values():
        assert re.fullmatch(r"[0-9a-f]{64}", value)
    assert generated["auth.admin_secret_token"] != generated["auth.token_aes_key"]
    assert new.auth.secret_token == "mine"
    assert new.auth.admin_token_aes_key == HEX_B
    assert new.auth.admin_secret_token == generated["auth.admin_secret_token"]
    assert new.auth.token_aes_key == generated["auth.token_aes_key"]
    assert new.auth.jwt_secret == ""  # not an ephemeral key
    assert settings.auth.token_aes_key == ""  # original untouched
    cfg.validate(new)
    # only auth changed
    assert dataclasses.replace(new, auth=settings.auth) == settings


def test_with_ephemeral_keys_all_empty_and_fresh(tmp_path: Path) -> None:
    settings = load(tmp_path)
    first, gen1 = with_ephemeral_keys(settings)
    _, gen2 = with_ephemeral_keys(settings)
    assert set(gen1) == set(cfg.EPHEMERAL_KEYS)
    assert set(gen1) == {
        "auth.secret_token",
        "auth.admin_secret_token",
        "auth.token_aes_key",
        "auth.admin_token_aes_key",
    }
    assert all(gen1[k] != gen2[k] for k in gen1)
    assert with_ephemeral_keys(first) == (first, {})


def test_with_ephemeral_keys_reuse_keeps_them_across_reload(tmp_path: Path) -> None:
    _, generated = with_ephemeral_keys(load(tmp_path))
    reloaded, again = with_ephemeral_keys(load(tmp_path), reuse=generated)
    assert again == generated
    assert reloaded.auth.token_aes_key == generated["auth.token_aes_key"]


def test_with_ephemeral_keys_never_in_shared_mode(tmp_path: Path) -> None:
    settings = load(tmp_path, **SHARED)
    assert with_ephemeral_keys(settings) == (settings, {})
    assert settings.auth.token_aes_key == ""


def test_default_pod_id_format() -> None:
    pod_id = default_pod_id()
    host = socket.gethostname().split(".", 1)[0]
    assert re.fullmatch(r"[A-Za-z0-9_-]+-[0-9]+", pod_id)
    assert pod_id.endswith(f"-{os.getpid()}")
    assert pod_id == re.sub(r"[^A-Za-z0-9_-]", "-", host) + f"-{os.getpid()}"


def test_default_pod_id_sanitises_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "My Host+1.cluster.local")
    assert default_pod_id() == f"My-Host-1-{os.getpid()}"


# ---------------------------------------------------------------------------------------
# Small API details
# ---------------------------------------------------------------------------------------


def test_config_error_shape() -> None:
    err = ConfigError("server.http_port", "must be an integer between 0 and 65535")
    assert err.key == "server.http_port"
    assert err.problem == "must be an integer between 0 and 65535"
    assert str(err) == "server.http_port: must be an integer between 0 and 65535"
    assert isinstance(err, Exception)


def test_embedded_and_shared_properties() -> None:
    base = Settings()
    assert base.embedded and not base.shared
    only_nats = dataclasses.replace(base, nats=dataclasses.replace(base.nats, url="nats://x:1"))
    assert not only_nats.embedded and not only_nats.shared
    both = dataclasses.replace(only_nats, redis=dataclasses.replace(base.redis, address="r:6379"))
    assert both.shared and not both.embedded


def test_needs_restart_helper() -> None:
    assert cfg.needs_restart("nats.url")
    assert cfg.needs_restart("app.nats_ack_wait_seconds")
    assert cfg.needs_restart("app.version")
    assert not cfg.needs_restart("app.ping_interval_seconds")
    assert not cfg.needs_restart("auth.token_cache_ttl_seconds")
    assert not cfg.needs_restart("log.level")


def test_loader_does_not_change_global_yaml() -> None:
    assert yaml.safe_load("a: 1\nb: yes\nc: 0123\n") == {"a": 1, "b": True, "c": 83}


def test_a_long_bad_value_is_shortened_in_the_error(tmp_path: Path) -> None:
    err = load_error(tmp_path, DAISI_WS_APP_PING_INTERVAL_SECONDS="x" * 10_000)
    assert str(err) == f"app.ping_interval_seconds: must be an integer, got '{'x' * 64}... (10002 chars)"
