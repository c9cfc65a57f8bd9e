"""Typed settings: YAML file + environment, validated with one clear line per error (SPEC §8).

The dataclasses below ARE the key table: every config key, its type and its default is a
field of a section dataclass; `_RULES` adds the few per-key constraints that differ from the
common ones (integers 1..2**31-1, strings free). Everything else (env names, YAML walking,
masking, restart detection) is derived from those two places.

Value parsing is the same for YAML and env: YAML plain scalars are read as their literal text
(only `null`/empty are special), then parsed like env values, so `password: 0123` stays
"0123", `http_port: "8080"` is 8080 and `http_port: true` is an error. A YAML `null` or an
empty value means "not set" (the default applies).
"""

import dataclasses
import os
import re
import secrets
import socket
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from daisi_ws import __version__

__all__ = [
    "EPHEMERAL_KEYS",
    "RESTART_KEYS",
    "RESTART_KEYS_PREFIXES",
    "SECRET_KEYS",
    "AdaptiveRule",
    "AdaptiveTTLSettings",
    "AppSettings",
    "AuthSettings",
    "ConfigError",
    "LogSettings",
    "NatsSettings",
    "RedisSettings",
    "ServerSettings",
    "Settings",
    "all_keys",
    "changed_keys",
    "default_pod_id",
    "env_names",
    "load_settings",
    "nats_servers",
    "needs_restart",
    "redact_url",
    "resolve_config_path",
    "restart_required",
    "to_dict",
    "validate",
    "with_ephemeral_keys",
]


class ConfigError(Exception):
    """An invalid configuration: `str(e) == f"{key}: {problem}"`."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


# --------------------------------------------------------------------------------------
# The key table (SPEC §8.3): sections, keys, types, defaults.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "0.0.0.0"
    http_port: int = 8080
    pod_id: str = ""  # after load_settings() never empty: default_pod_id()


@dataclass(frozen=True, slots=True)
class NatsSettings:
    url: str = ""
    delivery: str = "interest"
    stream_name: str = "wa_stream"
    consumer_name: str = "ws_fanout"
    forward_timeout_seconds: int = 2
    connect_timeout_seconds: int = 5
    reconnect_wait_seconds: int = 2
    max_reconnects: int = -1  # -1 = forever
    ping_interval_seconds: int = 120
    max_pings_out: int = 2
    retry_on_failed_connect: bool = True


@dataclass(frozen=True, slots=True)
class RedisSettings:
    address: str = ""
    password: str = ""
    db: int = 0


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    secret_token: str = ""
    admin_secret_token: str = ""
    token_aes_key: str = ""
    admin_token_aes_key: str = ""
    jwt_secret: str = ""
    token_cache_ttl_seconds: int = 30
    admin_token_cache_ttl_seconds: int = 60
    token_cache_max_entries: int = 100000


@dataclass(frozen=True, slots=True)
class AppSettings:
    service_name: str = "daisi-ws"
    version: str = __version__
    allowed_origins: tuple[str, ...] = ()
    ping_interval_seconds: int = 20
    pong_wait_seconds: int = 60
    write_timeout_seconds: int = 10
    max_message_bytes: int = 32768
    session_ttl_seconds: int = 30
    route_ttl_seconds: int = 300
    ttl_refresh_interval_seconds: int = 10
    shutdown_timeout_seconds: int = 30
    read_timeout_seconds: int = 10
    idle_timeout_seconds: int = 60
    websocket_message_buffer_size: int = 100
    websocket_backpressure_drop_policy: str = "drop_oldest"
    websocket_compression_mode: str = "disabled"
    websocket_compression_threshold: int = 128
    websocket_write_delay_ms: int = 0  # not in the Go service; see the README
    nats_ack_wait_seconds: int = 30
    nats_max_ack_pending: int = 1000


@dataclass(frozen=True, slots=True)
class AdaptiveRule:
    enabled: bool
    min_ttl_seconds: int
    max_ttl_seconds: int
    activity_threshold_seconds: int
    active_ttl_seconds: int
    inactive_ttl_seconds: int


@dataclass(frozen=True, slots=True)
class AdaptiveTTLSettings:
    session_lock: AdaptiveRule = field(
        default_factory=lambda: AdaptiveRule(False, 15, 30, 120, 30, 15)
    )
    message_route: AdaptiveRule = field(
        default_factory=lambda: AdaptiveRule(True, 300, 900, 600, 900, 300)
    )
    chat_route: AdaptiveRule = field(
        default_factory=lambda: AdaptiveRule(False, 300, 900, 600, 900, 300)
    )


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    log: LogSettings = field(default_factory=LogSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    app: AppSettings = field(default_factory=AppSettings)
    adaptive_ttl: AdaptiveTTLSettings = field(default_factory=AdaptiveTTLSettings)
    source_path: str | None = None  # the YAML file read, if any
    warnings: tuple[str, ...] = ()  # one line per ignored YAML key or ineffective setting

    @property
    def embedded(self) -> bool:
        """Neither NATS nor Redis configured: in-process backends (SPEC §8.4)."""
        return not self.nats.url and not self.redis.address

    @property
    def shared(self) -> bool:
        """Both NATS and Redis configured."""
        return bool(self.nats.url) and bool(self.redis.address)


def nats_servers(url: str) -> list[str]:
    """`nats.url` as a server list: like the Go client, a comma-separated list is a cluster."""
    return [part.strip() for part in url.split(",") if part.strip()]


def redact_url(url: str) -> str:
    """`nats.url` fit for logs and check-config: credentials (`user:password@` or a bare
    token `token@`) become `****`; the user name of `user:password@` stays."""
    out = []
    for server in nats_servers(url):
        scheme, sep, rest = server.rpartition("://")
        userinfo, at, hostport = rest.rpartition("@")
        if at:
            user, colon, _ = userinfo.partition(":")
            rest = f"{user}:****@{hostport}" if colon else f"****@{hostport}"
        out.append(f"{scheme}{sep}{rest}")
    return ",".join(out)


# Every integer key has an upper bound (SPEC §8.2: a value the server cannot use is a config
# error at start-up, not a crash later). 2**31 - 1 seconds (about 68 years) still fits each
# consumer of a duration or TTL: asyncio timers, Redis `EX` (under 2**63 ms) and the int64
# nanoseconds of NATS JetStream's ack_wait and of Go's time.Duration; counts and sizes fit a
# C Py_ssize_t even on 32-bit builds (the token cache, websockets' max_size, zlib).
_MAX_INT = 2**31 - 1
# The send queue's `block` policy keeps up to 8 x capacity frames (BLOCK_HARD_LIMIT_FACTOR in
# _native/sendqueue.pyx and _pure/sendqueue.py), a Py_ssize_t product: 8 x this fits 2**31 - 1.
_MAX_BUFFER_SIZE = _MAX_INT // 8
# More significant digits than any bound has: rejected before int() (which refuses over 4300).
_MAX_INT_DIGITS = len(str(_MAX_INT))


@dataclass(frozen=True, slots=True)
class _Rule:
    """Per-key constraints beyond the type. Integers default to 1..2**31-1."""

    min: int | None = 1
    max: int | None = _MAX_INT
    note: str = ""  # appended to the range problem, e.g. "(0 = no cache)"
    choices: tuple[str, ...] = ()  # enumeration; matched case-insensitively, stored lower
    hex64: bool = False  # empty or exactly 64 hex characters
    nonempty: bool = False


_PORT = _Rule(min=0, max=65535)

_RULES: dict[str, _Rule] = {
    "server.host": _Rule(nonempty=True),
    "server.http_port": _PORT,
    "nats.delivery": _Rule(choices=("interest", "queue")),
    "nats.max_reconnects": _Rule(min=-1, note="(-1 = forever)"),
    "redis.db": _Rule(min=0),
    "log.level": _Rule(choices=("debug", "info", "warn", "error")),
    "auth.token_aes_key": _Rule(hex64=True),
    "auth.admin_token_aes_key": _Rule(hex64=True),
    "auth.token_cache_ttl_seconds": _Rule(min=0, note="(0 = no cache)"),
    "auth.admin_token_cache_ttl_seconds": _Rule(min=0, note="(0 = no cache)"),
    "auth.token_cache_max_entries": _Rule(min=1, note="(0 would make the cap meaningless)"),
    "app.websocket_backpressure_drop_policy": _Rule(
        choices=("drop_oldest", "drop_newest", "block", "close")
    ),
    "app.websocket_compression_mode": _Rule(choices=("disabled", "no_context_takeover")),
    "app.websocket_message_buffer_size": _Rule(max=_MAX_BUFFER_SIZE),
    "app.websocket_compression_threshold": _Rule(min=0),
    "app.websocket_write_delay_ms": _Rule(min=0, max=1000, note="(0 = write at once)"),
}
_DEFAULT_RULE = _Rule()

SECRET_KEYS: frozenset[str] = frozenset(
    {
        "auth.secret_token",
        "auth.admin_secret_token",
        "auth.token_aes_key",
        "auth.admin_token_aes_key",
        "auth.jwt_secret",
        "redis.password",
    }
)

# Generated in embedded mode when empty (SPEC §8.4).
EPHEMERAL_KEYS: tuple[str, ...] = (
    "auth.secret_token",
    "auth.admin_secret_token",
    "auth.token_aes_key",
    "auth.admin_token_aes_key",
)

# SPEC §8.2: a change of these keys on reload is logged "needs restart" and not applied.
RESTART_KEYS_PREFIXES: tuple[str, ...] = ("server.", "nats.", "redis.", "app.nats_")
RESTART_KEYS: frozenset[str] = frozenset(
    {
        "app.ttl_refresh_interval_seconds",
        "app.read_timeout_seconds",
        "app.idle_timeout_seconds",
        "app.service_name",
        "app.version",
        "auth.token_cache_max_entries",
    }
)

_ENV_PREFIX = "DAISI_WS_"
_CONFIG_ENV = "DAISI_WS_CONFIG"
_FALLBACK_PATHS = (Path("config") / "config.yaml", Path("config.yaml"))
_MAX_POD_ID = 128


# --------------------------------------------------------------------------------------
# Derived key index.
# --------------------------------------------------------------------------------------

_STR_LIST = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Key:
    path: tuple[str, ...]  # ("app", "ping_interval_seconds")
    kind: Any  # str | int | bool | tuple[str, ...]

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def _index(cls: type, prefix: tuple[str, ...]) -> tuple[list[_Key], dict[str, Any]]:
    """Walk a settings dataclass: leaf keys in declaration order and a nested name tree."""
    keys: list[_Key] = []
    tree: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        path = (*prefix, f.name)
        if dataclasses.is_dataclass(kind):
            sub_keys, sub_tree = _index(typing.cast(type, kind), path)
            keys.extend(sub_keys)
            tree[f.name] = sub_tree
        else:
            if kind not in (str, int, bool, _STR_LIST):
                raise TypeError(f"unsupported config type {kind!r} for {'.'.join(path)}")
            key = _Key(path, kind)
            keys.append(key)
            tree[f.name] = key
    return keys, tree


def _sections() -> list[str]:
    hints = typing.get_type_hints(Settings)
    return [f.name for f in dataclasses.fields(Settings) if dataclasses.is_dataclass(hints[f.name])]


_SECTIONS: tuple[str, ...] = tuple(_sections())
_KEYS: tuple[_Key, ...]
_TREE: dict[str, Any] = {}
_keys: list[_Key] = []
for _section in _SECTIONS:
    _section_keys, _section_tree = _index(
        typing.cast(type, typing.get_type_hints(Settings)[_section]), (_section,)
    )
    _keys.extend(_section_keys)
    _TREE[_section] = _section_tree
_KEYS = tuple(_keys)
_BY_DOTTED: dict[str, _Key] = {k.dotted: k for k in _KEYS}
del _keys, _section, _section_keys, _section_tree

for _name in (*_RULES, *SECRET_KEYS, *EPHEMERAL_KEYS, *RESTART_KEYS):
    if _name not in _BY_DOTTED:  # a typo in a table above
        raise AssertionError(f"config table names unknown key {_name}")
del _name


def all_keys() -> tuple[str, ...]:
    """Every dotted config key, in table order."""
    return tuple(_BY_DOTTED)


def env_names(dotted_key: str) -> tuple[str, str]:
    """(prefixed, unprefixed) env names for a key, e.g. DAISI_WS_SERVER_POD_ID, SERVER_POD_ID."""
    base = dotted_key.upper().replace(".", "_")
    return _ENV_PREFIX + base, base


def needs_restart(dotted_key: str) -> bool:
    return dotted_key in RESTART_KEYS or dotted_key.startswith(RESTART_KEYS_PREFIXES)


# --------------------------------------------------------------------------------------
# Parsing (shared by YAML and env).
# --------------------------------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_HEX64_RE = re.compile(r"[0-9A-Fa-f]{64}")
_SAFE_ID_RE = re.compile(r"[A-Za-z0-9_-]+")


_DESCRIBE_MAX = 80


def _describe(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    # the error is one stderr line; a pasted blob need not come back whole
    return text if len(text) <= _DESCRIBE_MAX else f"{text[:_DESCRIBE_MAX - 15]}... ({len(text)} chars)"


def _parse_int(key: str, raw: object) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
        text = raw.strip()
        if len(text.lstrip("+-").lstrip("0")) > _MAX_INT_DIGITS:  # out of range, maybe unparsable
            raise ConfigError(key, _range_problem(_RULES.get(key, _DEFAULT_RULE)))
        return int(text)
    raise ConfigError(key, f"must be an integer, got {_describe(raw)}")


def _parse_bool(key: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(key, f"must be a boolean (true, false, 1, 0, yes, no), got {_describe(raw)}")


def _parse_str(key: str, raw: object) -> str:
    if isinstance(raw, str):
        return raw
    raise ConfigError(key, f"must be a string, got {_describe(raw)}")


def _parse_list(key: str, raw: object) -> tuple[str, ...]:
    items: list[object]
    if isinstance(raw, str):
        items = list(raw.split(","))
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        raise ConfigError(key, f"must be a list or a comma-separated string, got {_describe(raw)}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(key, f"list items must be strings, got {_describe(item)}")
        text = item.strip()
        if text:
            out.append(text)
    return tuple(out)


def _parse(key: _Key, raw: object) -> object:
    name = key.dotted
    if key.kind is int:
        return _parse_int(name, raw)
    if key.kind is bool:
        return _parse_bool(name, raw)
    if key.kind is str:
        text = _parse_str(name, raw)
        choices = _RULES.get(name, _DEFAULT_RULE).choices
        if choices and text.strip().lower() in choices:
            return text.strip().lower()
        return text
    return _parse_list(name, raw)


# --------------------------------------------------------------------------------------
# Sources.
# --------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader whose plain scalars stay text (only null and merge keys are resolved)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # An explicit tag whose constructor refuses the text (`!!int abc`, `!!int` with more
        # than 4300 digits, `!!timestamp 2020-13-45`) raises ValueError and the like: report
        # it as invalid YAML at the node, like any other constructor error.
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError):
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise yaml.constructor.ConstructorError(
                None, None, f"not a valid {tag} value", node.start_mark
            ) from None


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag in ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def resolve_config_path(
    cli_path: str | None, env: Mapping[str, str], cwd: Path | None = None
) -> Path | None:
    """--config, else DAISI_WS_CONFIG, else ./config/config.yaml, else ./config.yaml, else None.

    A named (CLI or env) path that does not exist is an error; the fallbacks are optional.
    """
    base = cwd if cwd is not None else Path.cwd()
    named = cli_path or env.get(_CONFIG_ENV) or None
    if named:
        path = Path(named)
        if not path.is_absolute() and cwd is not None:
            path = cwd / path
        if not path.exists():
            raise ConfigError("config", f"file not found: {path}")
        if not path.is_file():
            raise ConfigError("config", f"not a file: {path}")
        return path
    for candidate in _FALLBACK_PATHS:
        path = base / candidate
        if path.is_file():
            return path
    return None


def _read_yaml(path: Path) -> tuple[dict[str, object], list[str]]:
    """Known keys -> raw values, and one warning per unknown/unused key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("config", f"{path} is not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError("config", f"invalid YAML in {path}{where}: {problem}") from None
    except RecursionError:  # the composer recurses once per nesting level
        raise ConfigError("config", f"invalid YAML in {path}: nested too deeply") from None
    values: dict[str, object] = {}
    warnings: list[str] = []
    if data is None:
        return values, warnings
    if not isinstance(data, dict):
        raise ConfigError(
            "config", f"{path}: top level must be a mapping of sections, got {_describe(data)}"
        )
    _walk_yaml(data, (), _TREE, path, values, warnings)
    return values, warnings


def _walk_yaml(
    node: dict[Any, Any],
    prefix: tuple[str, ...],
    tree: dict[str, Any],
    path: Path,
    values: dict[str, object],
    warnings: list[str],
) -> None:
    for raw_name, value in node.items():
        name = str(raw_name)
        dotted = ".".join((*prefix, name))
        entry = tree.get(name.lower())
        if entry is None:
            warnings.append(f"unknown config key {dotted} ignored")
        elif isinstance(entry, dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(
                    "config",
                    f"{path}: section {dotted} must be a mapping, got {_describe(value)}",
                )
            _walk_yaml(value, (*prefix, name.lower()), entry, path, values, warnings)
        elif value is not None:  # null / empty value = not set
            values[entry.dotted] = value


def _read_env(env: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for key in _KEYS:
        for name in env_names(key.dotted):  # prefixed first
            if name in env:
                values[key.dotted] = env[name]
                break
    return values


def default_pod_id() -> str:
    """`<short hostname>-<pid>`: hostname up to the first '.', unsafe characters -> '-'."""
    host = socket.gethostname().split(".", 1)[0]
    host = re.sub(r"[^A-Za-z0-9_-]", "-", host)[:100] or "host"
    return f"{host}-{os.getpid()}"


def _build(default: Any, prefix: tuple[str, ...], parsed: Mapping[str, object]) -> Any:
    changes: dict[str, object] = {}
    for f in dataclasses.fields(default):
        current = getattr(default, f.name)
        path = (*prefix, f.name)
        if dataclasses.is_dataclass(current):
            changes[f.name] = _build(current, path, parsed)
        else:
            dotted = ".".join(path)
            if dotted in parsed:
                changes[f.name] = parsed[dotted]
    return dataclasses.replace(default, **changes)


def load_settings(
    cli_path: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Defaults < YAML < unprefixed env < prefixed env; validated (raises ConfigError)."""
    if env is None:
        env = os.environ
    path = resolve_config_path(cli_path, env, cwd)
    raw: dict[str, object] = {}
    warnings: list[str] = []
    if path is not None:
        raw, warnings = _read_yaml(path)
    raw.update(_read_env(env))
    parsed = {key.dotted: _parse(key, raw[key.dotted]) for key in _KEYS if key.dotted in raw}
    settings: Settings = _build(Settings(), (), parsed)
    if not settings.server.pod_id:
        settings = dataclasses.replace(
            settings, server=dataclasses.replace(settings.server, pod_id=default_pod_id())
        )
    if not settings.nats.retry_on_failed_connect:
        warnings.append("nats.retry_on_failed_connect=false has no effect: a pod always retries NATS")
    settings = dataclasses.replace(
        settings,
        source_path=str(path) if path is not None else None,
        warnings=tuple(warnings),
    )
    validate(settings)
    return settings


# --------------------------------------------------------------------------------------
# Validation (SPEC §8.2).
# --------------------------------------------------------------------------------------


def get_value(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def replace_value(settings: Any, dotted: str, value: Any) -> Any:
    """A copy of `settings` with one dotted key changed."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(settings, **{head: value})
    return dataclasses.replace(settings, **{head: replace_value(getattr(settings, head), rest, value)})


def _range_problem(rule: _Rule) -> str:
    low, high = rule.min, rule.max
    if low is not None and high is not None:
        problem = f"must be an integer between {low} and {high}"
    else:
        problem = f"must be an integer >= {low}"
    return f"{problem} {rule.note}".rstrip()


def _check_int(dotted: str, value: int, rule: _Rule) -> None:
    low, high = rule.min, rule.max
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(dotted, _range_problem(rule))


def _check_key(key: _Key, value: Any) -> None:
    dotted = key.dotted
    rule = _RULES.get(dotted, _DEFAULT_RULE)
    if key.kind is int:
        _check_int(dotted, value, rule)
    elif key.kind is str:
        if rule.nonempty and not value:
            raise ConfigError(dotted, "must not be empty")
        if rule.choices and value not in rule.choices:
            raise ConfigError(dotted, f"must be one of {', '.join(rule.choices)}")
        if rule.hex64 and value and not _HEX64_RE.fullmatch(value):
            raise ConfigError(dotted, "must be 64 hex characters (32 bytes)")


def _check_pod_id(settings: Settings) -> None:
    pod_id = settings.server.pod_id
    if not pod_id:
        raise ConfigError("server.pod_id", "must not be empty")
    if len(pod_id) > _MAX_POD_ID:
        raise ConfigError("server.pod_id", f"must be at most {_MAX_POD_ID} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in pod_id):
        raise ConfigError("server.pod_id", "must not contain whitespace or control characters")
    # queue mode's forward subject carries the pod id; embedded mode has no queue (SPEC §7.6)
    if settings.nats.delivery == "queue" and not settings.embedded and not _SAFE_ID_RE.fullmatch(pod_id):
        raise ConfigError(
            "server.pod_id", "must contain only A-Z, a-z, 0-9, '_' and '-' in queue mode"
        )


def _check_redis_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if (
        not sep
        or not host
        or any(ch.isspace() for ch in address)
        or not port.isascii()
        or not port.isdigit()
        or not 1 <= int(port) <= 65535
    ):
        raise ConfigError("redis.address", "must be host:port with a port between 1 and 65535")


def _check_greater(settings: Settings, key: str, than: str) -> None:
    bound = get_value(settings, than)
    if not get_value(settings, key) > bound:
        raise ConfigError(key, f"must be greater than {than} ({bound})")


def validate(settings: Settings) -> None:
    """Raise ConfigError for the first invalid value (per-key rules, then cross-key rules)."""
    for key in _KEYS:
        if key.path[0] != "adaptive_ttl":  # checked below, only for enabled rules
            _check_key(key, get_value(settings, key.dotted))
    _check_pod_id(settings)

    nats_url, redis_address = settings.nats.url, settings.redis.address
    if nats_url and not redis_address:
        raise ConfigError("redis.address", "must be set when nats.url is set (both or neither)")
    if redis_address and not nats_url:
        raise ConfigError("nats.url", "must be set when redis.address is set (both or neither)")
    if redis_address:
        _check_redis_address(redis_address)
    if nats_url and not nats_servers(nats_url):
        raise ConfigError("nats.url", "must name at least one server (a URL or a comma-separated list)")

    _check_greater(settings, "app.session_ttl_seconds", "app.ttl_refresh_interval_seconds")
    _check_greater(settings, "app.route_ttl_seconds", "app.ttl_refresh_interval_seconds")
    _check_greater(settings, "app.pong_wait_seconds", "app.ping_interval_seconds")
    ack_wait = settings.app.nats_ack_wait_seconds
    if not settings.nats.forward_timeout_seconds < ack_wait:
        raise ConfigError(
            "nats.forward_timeout_seconds",
            f"must be less than app.nats_ack_wait_seconds ({ack_wait})",
        )

    refresh = settings.app.ttl_refresh_interval_seconds
    for rule_field in dataclasses.fields(settings.adaptive_ttl):
        rule: AdaptiveRule = getattr(settings.adaptive_ttl, rule_field.name)
        prefix = f"adaptive_ttl.{rule_field.name}"
        for f in dataclasses.fields(rule):
            value = getattr(rule, f.name)
            if isinstance(value, bool):
                continue
            if rule.enabled:
                _check_int(f"{prefix}.{f.name}", value, _DEFAULT_RULE)
            elif value > _MAX_INT:  # a disabled rule's values go unchecked, but none above the cap
                raise ConfigError(f"{prefix}.{f.name}", _range_problem(_DEFAULT_RULE))
        if not rule.enabled:
            continue
        if rule.min_ttl_seconds > rule.max_ttl_seconds:
            raise ConfigError(
                f"{prefix}.min_ttl_seconds",
                f"must not exceed {prefix}.max_ttl_seconds ({rule.max_ttl_seconds})",
            )
        if rule.min_ttl_seconds <= refresh:
            raise ConfigError(
                f"{prefix}.min_ttl_seconds",
                f"must be greater than app.ttl_refresh_interval_seconds ({refresh})",
            )


# --------------------------------------------------------------------------------------
# Views and derived settings.
# --------------------------------------------------------------------------------------


def to_dict(settings: Settings, mask_secrets: bool = True) -> dict[str, Any]:
    """Nested {section: {key: value}}; non-empty secrets become "****" when masked."""
    out: dict[str, Any] = {}
    for key in _KEYS:
        value = get_value(settings, key.dotted)
        if isinstance(value, tuple):
            value = list(value)
        if mask_secrets and key.dotted in SECRET_KEYS and value:
            value = "****"
        elif mask_secrets and key.dotted == "nats.url":
            value = redact_url(value)
        node = out
        for part in key.path[:-1]:
            node = node.setdefault(part, {})
        node[key.path[-1]] = value
    return out


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted keys whose values differ, in table order."""
    return [k.dotted for k in _KEYS if get_value(old, k.dotted) != get_value(new, k.dotted)]


def restart_required(old: Settings, new: Settings) -> list[str]:
    """Changed keys that only take effect after a restart (SPEC §8.2)."""
    return [key for key in changed_keys(old, new) if needs_restart(key)]


def keep_restart_keys(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """SIGHUP: the reloaded settings with every restart-only key left as it runs now."""
    keys = restart_required(old, new)
    for key in keys:
        new = replace_value(new, key, get_value(old, key))
    return new, keys


def with_ephemeral_keys(
    settings: Settings, reuse: Mapping[str, str] | None = None
) -> tuple[Settings, dict[str, str]]:
    """Embedded mode: fill each empty EPHEMERAL_KEYS entry with 32 random bytes as hex.

    `reuse` (the dict a previous call returned) keeps earlier keys across reloads. Returns the
    new settings and {dotted_key: value} for every key filled; shared mode changes nothing.
    """
    if not settings.embedded:
        return settings, {}
    generated: dict[str, str] = {}
    changes: dict[str, Any] = {}
    for dotted in EPHEMERAL_KEYS:
        name = dotted.split(".", 1)[1]
        if getattr(settings.auth, name):
            continue
        value = (reuse or {}).get(dotted) or secrets.token_hex(32)
        generated[dotted] = value
        changes[name] = value
    if not changes:
        return settings, {}
    return dataclasses.replace(
        settings, auth=dataclasses.replace(settings.auth, **changes)
    ), generated
