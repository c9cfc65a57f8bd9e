"""SPEC §8.2, §8.4, §11: the `daisi-ws` command line against real servers.

The last test is issue 2's "Done when": `daisi-ws serve` with no configuration prints
ephemeral keys, a ws:// URL and a publish command; the URL connects and gets ready, and
the printed publish command delivers an event to it.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.e2e.helpers import admin_path, publish_ok, recv_json, recv_text, ws_path
from tests.support import Keys, ServerProcess, clean_env, executable, wait_for

DAISI_WS = executable("daisi-ws")
LINE = re.compile(r"config error: (?P<key>[a-z_]+\.[a-z_.]+): (?P<problem>.+)\n")


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    full = clean_env()
    full.update(env or {})
    return subprocess.run([DAISI_WS, *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# --- check-config --------------------------------------------------------------------------------
def test_check_config_masks_secrets(tmp_path: Path) -> None:
    secrets = {
        "DAISI_WS_AUTH_SECRET_TOKEN": "general-secret-1234",
        "DAISI_WS_AUTH_ADMIN_SECRET_TOKEN": "admin-secret-5678",
        "DAISI_WS_AUTH_TOKEN_AES_KEY": "ab" * 32,
        "DAISI_WS_AUTH_ADMIN_TOKEN_AES_KEY": "cd" * 32,
        "DAISI_WS_AUTH_JWT_SECRET": "jwt-secret-9999",
        "DAISI_WS_REDIS_PASSWORD": "redis-password-0000",
        "DAISI_WS_NATS_URL": "nats://alice:nats-password-4321@127.0.0.1:4222",
    }
    env = {**secrets, "DAISI_WS_REDIS_ADDRESS": "127.0.0.1:6379", "DAISI_WS_APP_PING_INTERVAL_SECONDS": "7", "SERVER_HTTP_PORT": "9123"}
    result = run("check-config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for value in secrets.values():
        assert value not in result.stdout and value not in result.stderr
    config = json.loads(result.stdout)["config"]
    for key in ("secret_token", "admin_secret_token", "token_aes_key", "admin_token_aes_key", "jwt_secret"):
        assert config["auth"][key] and config["auth"][key] != "", key  # shown as set, masked
    assert config["redis"]["password"]
    assert config["nats"]["url"] == "nats://alice:****@127.0.0.1:4222"
    # non-secret values are shown as they are (prefixed and unprefixed env both read)
    assert config["app"]["ping_interval_seconds"] == 7
    assert config["server"]["http_port"] == 9123
    assert config["auth"]["token_cache_ttl_seconds"] == 30


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DAISI_WS_AUTH_TOKEN_AES_KEY": "xyz"}, "auth.token_aes_key"),
        ({"DAISI_WS_AUTH_ADMIN_TOKEN_AES_KEY": "g" * 64}, "auth.admin_token_aes_key"),
        ({"DAISI_WS_SERVER_HTTP_PORT": "70000"}, "server.http_port"),
        ({"DAISI_WS_SERVER_HTTP_PORT": "eighty"}, "server.http_port"),
        ({"DAISI_WS_APP_PING_INTERVAL_SECONDS": "10", "DAISI_WS_APP_PONG_WAIT_SECONDS": "5"}, "app.pong_wait_seconds"),
        ({"DAISI_WS_APP_WEBSOCKET_BACKPRESSURE_DROP_POLICY": "sometimes"}, "app.websocket_backpressure_drop_policy"),
        ({"DAISI_WS_APP_WEBSOCKET_COMPRESSION_MODE": "gzip"}, "app.websocket_compression_mode"),
        ({"DAISI_WS_LOG_LEVEL": "loud"}, "log.level"),
        ({"DAISI_WS_APP_MAX_MESSAGE_BYTES": "0"}, "app.max_message_bytes"),
        ({"DAISI_WS_APP_WEBSOCKET_MESSAGE_BUFFER_SIZE": "-1"}, "app.websocket_message_buffer_size"),
        ({"DAISI_WS_NATS_RETRY_ON_FAILED_CONNECT": "perhaps"}, "nats.retry_on_failed_connect"),
        ({"APP_PING_INTERVAL_SECONDS": "0"}, "app.ping_interval_seconds"),  # unprefixed, too
    ],
)
def test_check_config_invalid_value_exits_2_with_one_line(tmp_path: Path, env: dict[str, str], key: str) -> None:
    result = run("check-config", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    m = LINE.fullmatch(result.stderr)
    assert m is not None, result.stderr
    assert m["key"] == key


INT_MAX = 2**31 - 1
HUGE = "9" * 5000  # more digits than Python's int() reads


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"DAISI_WS_AUTH_TOKEN_CACHE_MAX_ENTRIES": "9" * 25},
            f"auth.token_cache_max_entries: must be an integer between 1 and {INT_MAX} (0 would make the cap meaningless)",
        ),
        (
            {"DAISI_WS_APP_WEBSOCKET_MESSAGE_BUFFER_SIZE": "9" * 25},
            f"app.websocket_message_buffer_size: must be an integer between 1 and {INT_MAX // 8}",
        ),
        ({"DAISI_WS_APP_WRITE_TIMEOUT_SECONDS": HUGE}, f"app.write_timeout_seconds: must be an integer between 1 and {INT_MAX}"),
        (
            {"DAISI_WS_ADAPTIVE_TTL_CHAT_ROUTE_MAX_TTL_SECONDS": str(INT_MAX + 1)},
            f"adaptive_ttl.chat_route.max_ttl_seconds: must be an integer between 1 and {INT_MAX}",
        ),
    ],
    ids=["cache-entries", "buffer-size", "5000-digits", "disabled-adaptive-rule"],
)
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_integer_too_big_exits_2_with_one_line(tmp_path: Path, command: str, env: dict[str, str], line: str) -> None:
    """check-config and serve agree: a value the server could not use is a config error (serve
    used to crash with OverflowError, or start and fail every upgrade)."""
    result = run(command, env={"DAISI_WS_SERVER_HTTP_PORT": "0", **env}, cwd=tmp_path, timeout=10)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"config error: {line}\n")


def test_deeply_nested_yaml_exits_2_with_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("app:\n  allowed_origins: " + "[" * 3000 + "\n")
    result = run("check-config", "--config", str(deep), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"config error: config: invalid YAML in {deep}: nested too deeply\n"


async def test_sighup_with_a_huge_integer_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("log:\n  level: info\n")
    message = "config reload rejected; keeping the running config"

    def rejected() -> list[dict[str, object]]:
        records = (json.loads(line) for line in "".join(proc.stderr).splitlines() if line.startswith("{"))
        return [r for r in records if r.get("message") == message]

    with ServerProcess(env={"DAISI_WS_CONFIG": str(config)}) as proc:
        config.write_text(f"app:\n  write_timeout_seconds: {HUGE}\n")
        proc.signal(signal.SIGHUP)
        assert wait_for(rejected, timeout=5), "".join(proc.stderr)[-2000:]
        assert rejected()[0]["error"] == f"app.write_timeout_seconds: must be an integer between 1 and {INT_MAX}"
        assert "Traceback" not in "".join(proc.stderr)
        async with connect(proc.user_url("rl", "a", "u1")) as ws:  # still serving
            assert await recv_text(ws) == '{"type":"ready"}'


def test_check_config_backends_both_or_neither(tmp_path: Path) -> None:
    result = run("check-config", env={"DAISI_WS_NATS_URL": "nats://127.0.0.1:4222"}, cwd=tmp_path)
    assert result.returncode == 2
    m = LINE.fullmatch(result.stderr)
    assert m is not None and m["key"] in ("nats.url", "redis.address"), result.stderr


def test_check_config_yaml_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("app:\n  max_message_bytes: 2048\nauth:\n  secret_token: yaml-secret-42\n")
    result = run("check-config", "--config", str(good), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "yaml-secret-42" not in result.stdout
    assert json.loads(result.stdout)["config"]["app"]["max_message_bytes"] == 2048
    # env beats YAML
    result = run("check-config", "--config", str(good), env={"DAISI_WS_APP_MAX_MESSAGE_BYTES": "4096"}, cwd=tmp_path)
    assert json.loads(result.stdout)["config"]["app"]["max_message_bytes"] == 4096
    bad = tmp_path / "bad.yaml"
    bad.write_text("app:\n  websocket_compression_threshold: -5\n")
    result = run("check-config", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    m = LINE.fullmatch(result.stderr)
    assert m is not None and m["key"] == "app.websocket_compression_threshold", result.stderr


def test_check_config_missing_named_file(tmp_path: Path) -> None:
    result = run("check-config", "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("config error: ") and result.stderr.count("\n") == 1, result.stderr


# --- serve with an invalid value ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DAISI_WS_AUTH_TOKEN_AES_KEY": "0123"}, "auth.token_aes_key"),
        ({"DAISI_WS_APP_PING_INTERVAL_SECONDS": "30", "DAISI_WS_APP_PONG_WAIT_SECONDS": "30"}, "app.pong_wait_seconds"),
    ],
)
def test_serve_invalid_value_exits_2(tmp_path: Path, env: dict[str, str], key: str) -> None:
    started = time.monotonic()
    result = run("serve", env={"DAISI_WS_SERVER_HTTP_PORT": "0", **env}, cwd=tmp_path, timeout=10)
    assert result.returncode == 2
    assert time.monotonic() - started < 5
    m = LINE.fullmatch(result.stderr)
    assert m is not None, result.stderr
    assert m["key"] == key
    assert "listening" not in result.stdout


# --- token and publish -----------------------------------------------------------------------------
async def test_token_user_connects_and_publish_reaches_the_server(server: ServerProcess, tmp_path: Path) -> None:
    keys_env = server.keys.env()
    result = run("token", "user", "--company", "cli", "--agent", "ag", "--user", "u1", env=keys_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert "\n" not in token
    async with connect(server.ws + ws_path("cli", "ag", token, server.keys.api)) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        payload = '{"row_data":{"z": 1, "a": [1.50, 2]},"event_id":"e-cli"}'
        pub = run(
            "publish", "--url", server.http, "--api-key", server.keys.admin_api, "websocket.cli.ag.chats", payload,
            cwd=tmp_path,
        )
        assert pub.returncode == 0, pub.stderr
        assert pub.stdout == '{"delivered_local":1}\n'
        # the payload arrives as typed
        assert await recv_text(ws) == '{"type":"event","payload":{"event_type":"chat",' + payload[1:] + "}"
        # URL and key from the config instead of flags
        pub = run("publish", "websocket.cli.ag.agents", "{}", env={**keys_env, "DAISI_WS_SERVER_HTTP_PORT": str(server.port)}, cwd=tmp_path)
        assert pub.returncode == 0, pub.stderr
        assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "agent"}}


async def test_token_admin_connects_with_its_filter(server: ServerProcess, tmp_path: Path) -> None:
    result = run("token", "admin", "--admin-id", "cli-admin", "--subscribed-company", "cla", env=server.keys.env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    async with connect(server.ws + admin_path(result.stdout.strip(), server.keys.admin_api)) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        assert publish_ok(server, "websocket.other.x.agents", {"n": 1}) == 0
        assert publish_ok(server, "websocket.cla.x.agents", {"n": 2}) == 1
        assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "agent", "n": 2}}


def test_token_with_other_keys_does_not_connect(server: ServerProcess, tmp_path: Path) -> None:
    from tests.support import http_request

    result = run("token", "user", "--company", "c", "--agent", "a", "--user", "u", env=Keys().env(), cwd=tmp_path)
    assert result.returncode == 0
    status, _, body = http_request(server.http + ws_path("c", "a", result.stdout.strip(), server.keys.api))
    assert status == 403 and json.loads(body)["message"] == "Company token is invalid or malformed."


@pytest.mark.parametrize(
    "args",
    [
        ["user", "--company", "a.b", "--agent", "a", "--user", "u"],
        ["user", "--company", "admin", "--agent", "a", "--user", "u"],
        ["user", "--company", "c", "--agent", "a", "--user", "u", "--expires-in", "0"],
        ["admin", "--admin-id", "x y"],
        ["admin", "--admin-id", "x", "--subscribed-agent", "a:b"],
    ],
)
def test_token_rejects_bad_input(tmp_path: Path, args: list[str]) -> None:
    result = run("token", *args, env=Keys().env(), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip()


def test_token_without_key(tmp_path: Path) -> None:
    result = run("token", "user", "--company", "c", "--agent", "a", "--user", "u", cwd=tmp_path)
    assert result.returncode == 2
    assert "auth.token_aes_key" in result.stderr


def test_publish_errors(server: ServerProcess, tmp_path: Path) -> None:
    base = ["publish", "--url", server.http, "--api-key", server.keys.admin_api]
    bad_subject = run(*base, "websocket.c.a", "{}", cwd=tmp_path)
    assert bad_subject.returncode == 1
    assert "400" in bad_subject.stderr and "subject must be" in bad_subject.stderr
    bad_json = run(*base, "websocket.c.a.chats", "{nope", cwd=tmp_path)
    assert bad_json.returncode == 2
    wrong_key = run("publish", "--url", server.http, "--api-key", "nope", "websocket.c.a.chats", "{}", cwd=tmp_path)
    assert wrong_key.returncode == 1 and "403" in wrong_key.stderr
    unreachable = run("publish", "--url", "http://127.0.0.1:1", "--api-key", "k", "websocket.c.a.chats", "{}", cwd=tmp_path)
    assert unreachable.returncode == 1 and unreachable.stderr


def test_token_expiring_after_year_9999_is_refused(tmp_path: Path) -> None:
    """As the server's /generate-token ("expires_in_seconds is too large."): exit 2, no traceback."""
    line = "error: --expires-in is too large: the token would expire after the year 9999\n"
    for args in (
        ["user", "--company", "c", "--agent", "a", "--user", "u"],
        ["admin", "--admin-id", "x"],
    ):
        for seconds in ("315537897600", "9" * 30):
            result = run("token", *args, "--expires-in", seconds, env=Keys().env(), cwd=tmp_path)
            assert (result.returncode, result.stdout, result.stderr) == (2, "", line)
    # about 7,900 years still ends before 9999
    result = run("token", "admin", "--admin-id", "x", "--expires-in", "250000000000", env=Keys().env(), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["user", "--company", "c\udcff", "--agent", "a", "--user", "u"], "company_id"),
        (["user", "--company", "c", "--agent", "a", "--user", "\udcff"], "user_id"),
        (["admin", "--admin-id", "x\udcff"], "admin_id"),
        (["admin", "--admin-id", "x", "--subscribed-agent", "\udcff"], "subscribed_agent_id"),
    ],
)
def test_token_id_with_undecodable_bytes_exits_2(tmp_path: Path, args: list[str], field: str) -> None:
    result = run("token", *args, env=Keys().env(), cwd=tmp_path)  # \udcff: byte 0xff in argv
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"error: {field} is not valid UTF-8\n")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("foo", "expected http://HOST[:PORT] or https://HOST[:PORT]"),
        ("ftp://127.0.0.1:1", "expected http://HOST[:PORT] or https://HOST[:PORT]"),
        ("http://", "expected http://HOST[:PORT] or https://HOST[:PORT]"),
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://127.0.0.1:99999", "Port out of range 0-65535"),
        ("http://127.0.0.1:abc", "Port could not be cast to integer value as 'abc'"),
        ("http://127.0.0.1:1/a b", "only ASCII characters without spaces are allowed (percent-encode or punycode the rest)"),
        ("http://пример.рф", "only ASCII characters without spaces are allowed (percent-encode or punycode the rest)"),
    ],
)
def test_publish_bad_url_exits_2_with_one_line(tmp_path: Path, url: str, problem: str) -> None:
    result = run("publish", "--api-key", "k", "--url", url, "websocket.c.a.chats", "{}", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: --url {url!r} is not a valid URL: {problem}\n"


@pytest.mark.parametrize("key", ["a\nb", "bell\x07", "del\x7f"])
@pytest.mark.parametrize("source", ["--api-key", "auth.admin_secret_token"])
def test_publish_key_that_no_header_can_carry_exits_2(tmp_path: Path, key: str, source: str) -> None:
    if source == "--api-key":
        result = run("publish", "--api-key", key, "--url", "http://127.0.0.1:1", "websocket.c.a.chats", "{}", cwd=tmp_path)
    else:
        env = {"DAISI_WS_AUTH_ADMIN_SECRET_TOKEN": key}
        result = run("publish", "--url", "http://127.0.0.1:1", "websocket.c.a.chats", "{}", env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: {source} cannot be sent in the X-API-Key header: control characters cannot\n"
    assert key not in result.stderr  # a secret is never echoed


@pytest.mark.parametrize("key", ["café-clé", "ключ-ключ"])
def test_publish_with_a_non_ascii_admin_key(tmp_path: Path, key: str) -> None:
    """The server compares the header's bytes with the key's UTF-8 bytes; the CLI sends those
    (http.client would send Latin-1, which no server key matches)."""
    keys = Keys()
    keys.admin_api = key
    with ServerProcess(keys=keys) as proc:
        result = run("publish", "--api-key", key, "--url", proc.http, "websocket.c.a.chats", "{}", cwd=tmp_path)
        assert (result.returncode, result.stdout, result.stderr) == (0, '{"delivered_local":0}\n', "")


def test_publish_payload_with_undecodable_bytes_exits_2(tmp_path: Path) -> None:
    payload = '{"a":"\udcff"}'  # byte 0xff in argv: not UTF-8
    result = run("publish", "--api-key", "k", "--url", "http://127.0.0.1:1", "websocket.c.a.chats", payload, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", "error: payload is not valid UTF-8\n")


def test_publish_to_something_that_is_not_http_exits_1(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_garbage() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"garbage\r\n\r\n")

    thread = threading.Thread(target=answer_garbage, daemon=True)
    thread.start()
    try:
        result = run("publish", "--api-key", "k", "--url", f"http://127.0.0.1:{port}", "websocket.c.a.chats", "{}", cwd=tmp_path)
    finally:
        thread.join(5)
        listener.close()
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"error: no valid HTTP response from http://127.0.0.1:{port}/api/publish: BadStatusLine('garbage\\r\\n')\n"


# --- "Done when": no configuration at all ----------------------------------------------------------------
async def test_serve_without_keys_prints_a_working_example(tmp_path: Path) -> None:
    proc = ServerProcess(cwd=tmp_path)
    for name in proc.keys.env():
        proc.env.pop(name)
    started = time.monotonic()
    proc.start()
    try:
        rule = "=" * 78
        assert wait_for(lambda: sum(rule in line for line in proc.stderr) >= 2, timeout=5), "".join(proc.stderr)
        ready_seconds = time.monotonic() - started
        assert ready_seconds < 3, f"serve took {ready_seconds:.2f}s to print its example"
        banner = "".join(proc.stderr)
        assert "EPHEMERAL" in banner and "VANISH ON RESTART" in banner
        for key in ("auth.secret_token", "auth.admin_secret_token", "auth.token_aes_key", "auth.admin_token_aes_key"):
            assert re.search(rf"^\s+{re.escape(key)} = [0-9a-f]{{64}}$", banner, re.M), key
        url = re.search(r"^\s+(ws://127\.0\.0\.1:\d+/ws/demo/demo\?\S+)$", banner, re.M)
        assert url is not None, banner
        assert f":{proc.port}/" in url[1]
        command = re.search(r"^\s+(daisi-ws publish .*?)\\\n\s+(.*)$", banner, re.M)
        assert command is not None, banner
        argv = shlex.split(command[1] + " " + command[2])
        assert argv[0] == "daisi-ws"
        subject, payload = argv[-2], argv[-1]
        assert subject.startswith("websocket.demo.demo.")

        async with connect(url[1]) as ws:
            assert await recv_text(ws) == '{"type":"ready"}'
            result = subprocess.run([DAISI_WS, *argv[1:]], env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=20)
            assert result.returncode == 0, result.stderr
            assert result.stdout == '{"delivered_local":1}\n'
            frame = json.loads(await recv_text(ws))
            assert frame["type"] == "event"
            assert {k: v for k, v in frame["payload"].items() if k != "event_type"} == json.loads(payload)
            assert frame["payload"]["event_type"] == "chat"
    finally:
        proc.stop(10)
        proc.kill()
    assert proc.proc is not None and proc.proc.returncode == 0


def test_the_example_never_prints_a_configured_key(tmp_path: Path) -> None:
    """Embedded mode with the API keys configured but no AES keys: only the generated keys are
    shown; the example names the configured ones instead of printing them (SPEC §9.2)."""
    proc = ServerProcess(cwd=tmp_path)
    for name in ("DAISI_WS_AUTH_TOKEN_AES_KEY", "DAISI_WS_AUTH_ADMIN_TOKEN_AES_KEY"):
        proc.env.pop(name)
    with proc:
        assert wait_for(lambda: sum("=" * 78 in line for line in proc.stderr) >= 2, timeout=5)
        banner = "".join(proc.stderr)
        assert proc.keys.api not in banner and proc.keys.admin_api not in banner
        assert re.search(r"^\s+auth\.token_aes_key = [0-9a-f]{64}$", banner, re.M)
        assert "auth.secret_token =" not in banner
        assert re.search(r"^\s+ws://127\.0\.0\.1:\d+/ws/demo/demo\?token=\S+&x-api-key=<auth\.secret_token>$", banner, re.M)
        assert "--api-key '<auth.admin_secret_token>'" in banner
