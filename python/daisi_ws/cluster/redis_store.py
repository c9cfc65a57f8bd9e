"""The Redis half of shared mode (SPEC §5, §6): session locks, kill switch, route registry,
renewal loop with adaptive TTLs. Keys, values, scripts and channels are exactly SPEC's, so
pods of the Go service can share the same Redis.

Cost model (DESIGN.md): an uncontended acquire is ONE round trip (SET NX EX); renewal is a
handful of pipelined round trips per tick for all sockets together; event delivery never
touches Redis in interest mode (route activity keys are written at most once per key per
refresh interval, batched).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from daisi_ws.cluster.base import LockError
from daisi_ws.config import AdaptiveRule, Settings
from daisi_ws.log import Logger
from daisi_ws.metrics import KEY_TYPES, USER_TYPES, Metrics
from daisi_ws.protocol import (
    PODS_KEY,
    chats_route_key,
    kill_channel,
    message_route_key,
)
from daisi_ws.timeouts import within

# --- scripts (SPEC §5.2): KEYS[1] = key, ARGV[1] = pod_id, ARGV[2] = TTL seconds ------------
COMPARE_AND_DELETE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
else
    return 0
end
"""
# The renewal pass (SPEC §5.6, §6.3) for a whole slice in one call. Per key it does what SPEC
# §5.2's compare-and-expire (locks: EXPIRE only while GET = pod_id) and member-and-expire
# (routes: EXPIRE only while SISMEMBER pod_id) do, so Go pods see identical keys, values and
# TTLs, without a client round trip of Python work per key.
# KEYS = locks, then selected-chat keys, then route sets; ARGV = pod_id, number of locks,
# number of selected-chat keys, then one TTL per key. Returns 1/0 per lock, then per route.
# Every command runs under redis.pcall: a key that fails (e.g. a foreign value of the wrong
# type, WRONGTYPE) gets its error reply in its own place of the result (redis-py hands it over
# as a ResponseError in the list) and every other key of the slice is still renewed.
RENEW_SLICE = """
local pod = ARGV[1]
local nlocks = tonumber(ARGV[2])
local nchats = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do
    local key, ttl = KEYS[i], ARGV[3 + i]
    if i <= nlocks then
        local owner = redis.pcall("GET", key)
        if type(owner) == "table" then
            out[#out + 1] = owner
        elseif owner == pod then
            out[#out + 1] = redis.pcall("EXPIRE", key, ttl)
        else
            out[#out + 1] = 0
        end
    elseif i <= nlocks + nchats then
        redis.pcall("EXPIRE", key, ttl)
    else
        local member = redis.pcall("SISMEMBER", key, pod)
        if type(member) == "table" then
            out[#out + 1] = member
        elseif member == 1 then
            out[#out + 1] = redis.pcall("EXPIRE", key, ttl)
        else
            out[#out + 1] = 0
        end
    end
end
return out
"""

# --- acquisition timings (SPEC §5.3) ------------------------------------------------------
KILL_PUBLISH_PAUSES = (0.1, 0.2)  # up to 3 attempts, 100 ms then 200 ms apart
RETRY_WAITS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
FORCE_WAIT = 0.135

# --- kill switch (SPEC §5.4) --------------------------------------------------------------
KILL_PREFIX = "session_kill:"
KILL_PATTERNS = ("session_kill:*:*:*", "session_kill:admin:*")
RESUBSCRIBE_FIRST = 2.0
RESUBSCRIBE_MAX = 30.0
PUBSUB_IDLE_PING = 15.0  # an idle subscriber pings Redis to notice a half-open connection

# Client-side limits: fail fast (a new socket gets its 500 promptly while Redis is down).
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
POOL_SIZE = 128
PIPELINE_CHUNK = 500  # commands per pipelined round trip: bounds how long a tick holds the loop
RENEWAL_SLICE = 250  # sessions (and routes) renewed per slice of a renewal pass


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 `[::1]:6379` too); the port defaults to 6379."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address.strip("[]"), 6379
    return host.strip("[]"), int(port)


def make_client(settings: Settings) -> Redis:
    host, port = parse_address(settings.redis.address)
    pool = BlockingConnectionPool(
        host=host,
        port=port,
        db=settings.redis.db,
        password=settings.redis.password or None,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        socket_keepalive=True,
        # One immediate retry on a connection error only: a pooled connection that went stale
        # (Redis restarted) reconnects transparently; nothing else is retried behind the
        # caller's back (SPEC §5.3 decides its own retries; timeouts are not retried).
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        max_connections=POOL_SIZE,
        timeout=COMMAND_TIMEOUT,
    )
    return Redis(connection_pool=pool)


def now_text(now: float) -> bytes:
    return str(int(now)).encode()


# --- adaptive TTL (SPEC §5.6) -------------------------------------------------------------
ERROR = object()  # marker: the activity GET failed
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def parse_int64(value: Any) -> int | None:
    """A Redis value read as the Go service reads it, strconv.ParseInt(value, 10, 64): an
    optional sign, then ASCII decimal digits only, within int64; else None. (Python's int()
    would also take surrounding whitespace, `1_000` and non-ASCII digits.)"""
    if isinstance(value, str):
        if not value.isascii():
            return None
        raw = value.encode()
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:
        return None
    digits = raw[1:] if raw[:1] in (b"+", b"-") else raw
    if not digits.isdigit():  # bytes.isdigit: ASCII digits only, False when empty
        return None
    number = int(raw)
    return number if INT64_MIN <= number <= INT64_MAX else None


def decide_ttl(rule: AdaptiveRule, default_ttl: int, now: float, value: Any) -> tuple[int, str, float | None]:
    """(ttl, decision, activity age or None) for one key.

    `value` is the raw GET of the activity key: None (absent), bytes/str, or an exception /
    `ERROR` when the GET failed. The rule's min/max clamp the values the rule produced;
    a disabled rule or an unusable activity value yields the default TTL unchanged.
    """
    if not rule.enabled:
        return default_ttl, "disabled_config", None
    if value is ERROR or isinstance(value, BaseException):
        return default_ttl, "error_fetching_activity", None
    age: float | None = None
    if value is None:
        ttl, decision = rule.inactive_ttl_seconds, "inactive_no_key"
    else:
        stamp = parse_int64(value)
        if stamp is None:
            return default_ttl, "error_fetching_activity", None
        age = now - stamp
        if age <= rule.activity_threshold_seconds:
            ttl, decision = rule.active_ttl_seconds, "active"
        else:
            ttl, decision = rule.inactive_ttl_seconds, "inactive_threshold"
    ttl = max(ttl, rule.min_ttl_seconds)
    ttl = min(ttl, rule.max_ttl_seconds)
    return ttl, decision, age


class RedisStore:
    """One client, the three scripts, settings and pre-labelled metric children."""

    def __init__(self, settings: Settings, metrics: Metrics, log: Logger) -> None:
        self.settings = settings
        self.pod_id = settings.server.pod_id
        self.pod_bytes = self.pod_id.encode()
        self.metrics = metrics
        self.log = log
        self.client = make_client(settings)
        self.compare_and_delete = self.client.register_script(COMPARE_AND_DELETE)
        self.renew_slice = self.client.register_script(RENEW_SLICE)
        m = metrics
        lock_types = ("initial_setnx", "retry_setnx", "force_set", "reassert")
        self.lock_attempt = {(u, t): m.lock_attempts.labels(u, t) for u in USER_TYPES for t in lock_types}
        self.lock_success = {(u, t): m.lock_success.labels(u, t) for u in USER_TYPES for t in lock_types}
        self.conflicts = {u: m.session_conflicts.labels(u) for u in USER_TYPES}
        self.renew_attempt = {u: m.renewal_attempts.labels(u) for u in USER_TYPES}
        self.renew_success = {u: m.renewal_success.labels(u) for u in USER_TYPES}
        self.ttl_observed = {k: m.ttl_calculated.labels(k) for k in KEY_TYPES}
        self.age_observed = {k: m.activity_age.labels(k) for k in KEY_TYPES}

    def pipeline(self) -> Pipeline:
        return self.client.pipeline(transaction=False)

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()

    def observe_ttl(self, key_type: str, ttl: int, decision: str, age: float | None) -> None:
        self.ttl_observed[key_type].observe(ttl)
        if age is not None:
            self.age_observed[key_type].observe(max(age, 0.0))
        self.metrics.ttl_decision.labels(key_type, decision).inc()


# --- sessions (SPEC §5.1, §5.3) ---------------------------------------------------------------
class SessionLocks:
    def __init__(self, store: RedisStore) -> None:
        self.store = store

    async def acquire(self, key: str, user_type: str, timeout: float, local_holder: bool) -> None:
        """SPEC §5.3; raises LockError (failure metrics counted here)."""
        try:
            await within(timeout, self._acquire(key, user_type, local_holder))
        except asyncio.TimeoutError:
            self.store.metrics.lock_failure.labels(user_type, "timeout_context_cancelled").inc()
            raise LockError("context deadline exceeded", "timeout_context_cancelled") from None

    async def _acquire(self, key: str, user_type: str, local_holder: bool) -> None:
        store = self.store
        r = store.client
        pod = store.pod_bytes
        ttl = store.settings.app.session_ttl_seconds
        # 1. SET NX EX: the whole uncontended path is this one round trip.
        store.lock_attempt[(user_type, "initial_setnx")].inc()
        try:
            ok = await r.set(key, pod, nx=True, ex=ttl)
        except RedisError as exc:
            store.metrics.lock_failure.labels(user_type, "redis_error_initial").inc()
            raise LockError(f"redis error: {exc}", "redis_error_initial") from exc
        if ok:
            store.lock_success[(user_type, "initial_setnx")].inc()
            return
        channel = kill_channel(key)
        payload = orjson.dumps({"new_pod_id": store.pod_id})
        if local_holder:
            # Same-pod re-login: the lock is (normally) already ours, and our own kill would be
            # ignored; take it at once. The gateway replaces the local holder after the 101
            # (identity-checked, so its deregistration does not delete our lock) and counts
            # the conflict then. The kill is still published in the same round trip in case
            # another pod took the lock meanwhile.
            await self._force(key, user_type, ttl, channel, payload)
            return
        store.conflicts[user_type].inc()
        # 2. kill the old owner, up to 3 attempts; failure does not abort.
        await self._publish_kill(channel, payload)
        # 3. fast-polling retries.
        for wait in RETRY_WAITS:
            await asyncio.sleep(wait)
            store.lock_attempt[(user_type, "retry_setnx")].inc()
            try:
                ok = await r.set(key, pod, nx=True, ex=ttl)
            except RedisError as exc:
                store.log.warn("session lock retry failed", error=str(exc))
                continue
            if ok:
                store.lock_success[(user_type, "retry_setnx")].inc()
                return
        # 4. forced SET.
        await asyncio.sleep(FORCE_WAIT)
        await self._force(key, user_type, ttl, None, None)

    async def _force(self, key: str, user_type: str, ttl: int, channel: str | None, payload: bytes | None) -> None:
        store = self.store
        store.lock_attempt[(user_type, "force_set")].inc()
        try:
            if channel is None or payload is None:
                await store.client.set(key, store.pod_bytes, ex=ttl)
            else:
                pipe = store.pipeline()
                pipe.set(key, store.pod_bytes, ex=ttl)
                pipe.publish(channel, payload)
                await pipe.execute()
        except RedisError as exc:
            store.metrics.lock_failure.labels(user_type, "redis_error_force_set").inc()
            raise LockError(f"redis error: {exc}", "redis_error_force_set") from exc
        store.lock_success[(user_type, "force_set")].inc()

    async def _publish_kill(self, channel: str, payload: bytes) -> None:
        r = self.store.client
        for attempt in range(len(KILL_PUBLISH_PAUSES) + 1):
            try:
                await r.publish(channel, payload)
                return
            except RedisError as exc:
                self.store.log.warn("kill publish failed", attempt=attempt + 1, error=str(exc))
            if attempt < len(KILL_PUBLISH_PAUSES):
                await asyncio.sleep(KILL_PUBLISH_PAUSES[attempt])

    async def release(self, key: str) -> None:
        """Compare-and-delete: only while this pod owns the lock."""
        await self.store.compare_and_delete(keys=[key], args=[self.store.pod_bytes])

    async def open(self, key: str, chats_route: str | None) -> str | None:
        """After the 101 (SPEC §3.4 step 4), one round trip: write `:last_active`; users also
        register the chats route and read `:selected_chat` (returned)."""
        store = self.store
        pipe = store.pipeline()
        _queue_touch(pipe, store, key)
        if chats_route is None:
            await pipe.execute()
            return None
        _queue_register(pipe, chats_route, store.pod_bytes, store.settings.app.route_ttl_seconds)
        pipe.get(key + ":selected_chat")
        results = await pipe.execute()
        return _text(results[-1])

    async def save_selected_chat(self, key: str, chat: str) -> None:
        """select_chat (SPEC §4.2): `:selected_chat` and `:last_active` in one round trip."""
        store = self.store
        pipe = store.pipeline()
        pipe.set(key + ":selected_chat", chat, ex=store.settings.app.session_ttl_seconds)
        _queue_touch(pipe, store, key)
        await pipe.execute()


def _queue_touch(pipe: Pipeline, store: RedisStore, session_key: str) -> None:
    """`<session key>:last_active` = now, for the session-lock activity rule (SPEC §5.6)."""
    ttl = store.settings.adaptive_ttl.session_lock.max_ttl_seconds
    pipe.set(session_key + ":last_active", now_text(time.time()), ex=ttl)


def _queue_register(pipe: Pipeline, key: str, pod: bytes, ttl: int) -> None:
    """Route registration (SPEC §6.1): SADD + EXPIRE, in the caller's pipeline."""
    pipe.sadd(key, pod)
    pipe.expire(key, ttl)


def _text(raw: Any) -> str | None:
    """A Redis string value as text; None when absent or not UTF-8."""
    if raw is None or isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode()
    except UnicodeDecodeError:
        return None


# --- kill switch (SPEC §5.4) ------------------------------------------------------------------
def parse_kill(channel: str, data: bytes) -> tuple[str, str] | None:
    """(session key, new_pod_id) of a kill message, or None if it must be skipped."""
    if not channel.startswith(KILL_PREFIX):
        return None
    rest = channel[len(KILL_PREFIX) :]
    if rest.startswith("admin:"):
        admin_id = rest[len("admin:") :]
        if not admin_id or ":" in admin_id:
            return None
    else:
        parts = rest.split(":")
        if len(parts) != 3 or not all(parts):
            return None
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    new_pod_id = body.get("new_pod_id") if type(body) is dict else None
    if type(new_pod_id) is not str:
        return None
    return "session:" + rest, new_pod_id


class KillSwitch:
    """PSUBSCRIBE to both kill families; handling is synchronous and never awaits."""

    def __init__(self, store: RedisStore, on_kill: Callable[[str, str], None]) -> None:
        self.store = store
        self.on_kill = on_kill
        self.subscribed = False
        self._skipped_logged = 0.0

    async def run(self) -> None:
        backoff = RESUBSCRIBE_FIRST
        log = self.store.log
        while True:
            pubsub = self.store.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(*KILL_PATTERNS)
                if not self.subscribed:
                    log.info("kill switch subscribed", patterns=list(KILL_PATTERNS))
                self.subscribed = True
                backoff = RESUBSCRIBE_FIRST
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: resubscribe with backoff
                log.warn("kill switch subscription lost; resubscribing", error=str(exc), retry_in_seconds=backoff)
            finally:
                self.subscribed = False
                try:
                    await pubsub.aclose()
                except Exception:  # the connection is gone anyway
                    pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESUBSCRIBE_MAX)

    async def _listen(self, pubsub: Any) -> None:
        pinged = False
        heard = time.monotonic()
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=PUBSUB_IDLE_PING)
            now = time.monotonic()
            if msg is None:
                # None: a timeout, or a subscribe confirmation (which counts as traffic)
                if now - heard < PUBSUB_IDLE_PING:
                    continue
                if pinged:
                    raise ConnectionError("no answer from Redis on the kill switch connection")
                await pubsub.ping()
                pinged = True
                heard = now
                continue
            pinged = False
            heard = now
            if msg.get("type") != "pmessage":
                continue
            self.handle(msg["channel"], msg["data"])

    def handle(self, channel: Any, data: Any) -> None:
        ch = channel.decode("utf-8", "replace") if isinstance(channel, bytes) else str(channel)
        raw = data if isinstance(data, bytes) else str(data).encode()
        parsed = parse_kill(ch, raw)
        if parsed is None:
            now = time.monotonic()
            if now - self._skipped_logged >= 1.0:
                self._skipped_logged = now
                self.store.log.warn("skipping malformed kill message", channel=ch[:200])
            return
        try:
            self.on_kill(*parsed)
        except Exception as exc:  # the subscriber must survive any handler failure
            self.store.log.error("kill handling failed", error=repr(exc))


# --- routes (SPEC §6) -------------------------------------------------------------------------
class RouteRegistry:
    def __init__(self, store: RedisStore) -> None:
        self.store = store

    async def register(self, key: str) -> None:
        store = self.store
        pipe = store.pipeline()
        _queue_register(pipe, key, store.pod_bytes, store.settings.app.route_ttl_seconds)
        await pipe.execute()

    async def unregister(self, key: str) -> None:
        await self.store.client.srem(key, self.store.pod_bytes)

    async def members(self, keys: Sequence[str]) -> list[set[bytes]]:
        """SMEMBERS of every key in one round trip (queue-mode route lookup)."""
        if len(keys) == 1:
            members: set[bytes] = set(await self.store.client.smembers(keys[0]))  # type: ignore[arg-type]
            return [members]
        pipe = self.store.pipeline()
        for key in keys:
            pipe.smembers(key)
        return [set(s) for s in await pipe.execute()]

    async def remove_members(self, pairs: Iterable[tuple[str, bytes]]) -> None:
        """SREM (key, pod) pairs, e.g. pods that no longer answer forwards."""
        pipe = self.store.pipeline()
        n = 0
        for key, pod in pairs:
            pipe.srem(key, pod)
            n += 1
        if n:
            await pipe.execute()

    async def add_pod(self) -> None:
        store = self.store
        pipe = store.pipeline()
        _queue_register(pipe, PODS_KEY, store.pod_bytes, store.settings.app.route_ttl_seconds)
        await pipe.execute()

    async def remove_pod(self) -> None:
        await self.store.client.srem(PODS_KEY, self.store.pod_bytes)


# --- renewal loop (SPEC §5.6, §6.2 activity, §6.3) -----------------------------------------------
async def _run_chunked(store: RedisStore, ops: list[Callable[[Pipeline], Any]]) -> list[Any]:
    """Run queued pipeline operations in chunks; per-command errors come back in place."""
    out: list[Any] = []
    for start in range(0, len(ops), PIPELINE_CHUNK):
        pipe = store.pipeline()
        for op in ops[start : start + PIPELINE_CHUNK]:
            op(pipe)
        out.extend(await pipe.execute(raise_on_error=False))
    return out


class Renewal:
    """Every ttl_refresh_interval: renew locks (re-assert expired ones, close lost ones),
    refresh selected_chat, refresh or re-register routes, keep `dws:pods`."""

    def __init__(self, store: RedisStore, routes: RouteRegistry, queue_mode: bool) -> None:
        self.store = store
        self.routes = routes
        self.queue_mode = queue_mode
        self.gateway: Any = None
        self.stopped = False
        # route activity (SPEC §6.2): keys written this interval, and those waiting to be
        self._seen: set[tuple[str, str, str | None]] = set()
        self._pending: list[tuple[str, int]] = []
        self._flush_scheduled = False
        self._activity_error_logged = 0.0
        self._error_logged = 0.0

    # --- route activity --------------------------------------------------------------------
    def activity_enabled(self) -> bool:
        at = self.store.settings.adaptive_ttl
        return at.message_route.enabled or at.chat_route.enabled

    def on_activity(self, company: str, agent: str, chat: str | None) -> None:
        """Hub hook: an event reached >= 1 local user socket. No I/O here."""
        t = (company, agent, chat)
        if t in self._seen:
            return
        at = self.store.settings.adaptive_ttl
        rule = at.chat_route if chat is None else at.message_route
        self._seen.add(t)
        if not rule.enabled:
            return
        key = chats_route_key(company, agent) if chat is None else message_route_key(company, agent, chat)
        self._pending.append((key + ":last_active", rule.max_ttl_seconds))
        if not self._flush_scheduled and self.gateway is not None:
            self._flush_scheduled = True  # one batched write for everything seen this loop tick
            self.gateway.spawn(self._flush_activity())

    async def _flush_activity(self) -> None:
        pending, self._pending = self._pending, []
        self._flush_scheduled = False
        if not pending:
            return
        stamp = now_text(time.time())
        pipe = self.store.pipeline()
        for key, ttl in pending:
            pipe.set(key, stamp, ex=ttl)
        try:
            await pipe.execute()
        except RedisError as exc:
            now = time.monotonic()
            if now - self._activity_error_logged >= 60:
                self._activity_error_logged = now
                self.store.log.warn("could not write route activity", error=str(exc))

    # --- loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        interval = float(self.store.settings.app.ttl_refresh_interval_seconds)
        next_tick = time.monotonic()
        while not self.stopped:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop must survive anything
                self.store.log.error("renewal tick failed", error=repr(exc))
            next_tick += interval
            delay = next_tick - time.monotonic()
            if delay < 0:
                next_tick = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    async def tick(self) -> None:
        """One renewal pass, in slices of RENEWAL_SLICE sessions and routes: each slice is its
        own round trips, so the pass never holds the event loop for more than one slice."""
        store = self.store
        gw = self.gateway
        if gw is None:
            return
        self._seen.clear()  # activity keys may be written again this interval
        at = store.settings.adaptive_ttl
        registry = gw.registry
        sessions = list(registry.sessions.items())
        pairs, chats = registry.route_keys()
        routes: list[tuple[str, str, AdaptiveRule, Any]] = [
            (chats_route_key(*p), "chat_route", at.chat_route, p) for p in pairs
        ] + [(message_route_key(*c), "message_route", at.message_route, c) for c in chats]
        if self.queue_mode:
            await self._keep_pod()
        for start in range(0, max(len(sessions), len(routes)), RENEWAL_SLICE):
            stop = start + RENEWAL_SLICE
            try:
                await self._renew(sessions[start:stop], routes[start:stop])
            except RedisError:
                # Redis is failing: the remaining slices would only wait for the same error
                self._fail_all(sessions[stop:], None)
                return

    async def _renew(
        self, sessions: list[tuple[str, Any]], routes: list[tuple[str, str, AdaptiveRule, Any]]
    ) -> None:
        """SPEC §5.6 and §6.3 for one slice; raises RedisError after counting and logging."""
        store = self.store
        gw = self.gateway
        registry = gw.registry
        settings = store.settings
        app = settings.app
        at = settings.adaptive_ttl
        pod = store.pod_bytes
        now = time.time()

        # Round trip 1: activity keys of the enabled rules, one MGET.
        activity_keys: list[str] = []
        if at.session_lock.enabled:
            activity_keys.extend(key + ":last_active" for key, _ in sessions)
        activity_keys.extend(key + ":last_active" for key, _, rule, _ in routes if rule.enabled)
        try:
            values = await store.client.mget(activity_keys) if activity_keys else []
        except RedisError as exc:
            self._fail_all(sessions, exc)
            raise
        it = iter(values)
        session_ttls: list[int] = []
        for _ in sessions:
            value = next(it) if at.session_lock.enabled else None
            ttl, decision, age = decide_ttl(at.session_lock, app.session_ttl_seconds, now, value)
            store.observe_ttl("session_lock", ttl, decision, age)
            session_ttls.append(ttl)
        route_ttls: list[int] = []
        for _, key_type, rule, _ in routes:
            value = next(it) if rule.enabled else None
            ttl, decision, age = decide_ttl(rule, app.route_ttl_seconds, now, value)
            store.observe_ttl(key_type, ttl, decision, age)
            route_ttls.append(ttl)

        # Round trip 2: compare-and-expire locks, EXPIRE selected chats, member-and-expire
        # routes, all in one RENEW_SLICE call.
        for _, conn in sessions:
            store.renew_attempt[conn.kind].inc()
        users = [(key + ":selected_chat", ttl) for (key, conn), ttl in zip(sessions, session_ttls, strict=True) if conn.kind == "user"]
        keys = [key for key, _ in sessions] + [key for key, _ in users] + [key for key, _, _, _ in routes]
        ttls = [*session_ttls, *(ttl for _, ttl in users), *route_ttls]
        try:
            results = await store.renew_slice(keys=keys, args=[pod, len(sessions), len(users), *ttls])
        except RedisError as exc:
            self._fail_all(sessions, exc, attempted=True)
            raise
        n_sessions = len(sessions)
        lock_results = results[:n_sessions]
        route_results = results[n_sessions:]

        # Round trip 3: re-assert expired locks, re-register lost routes.
        fixes: list[Callable[[Pipeline], Any]] = []
        reassert: list[tuple[str, Any, int]] = []
        failure = store.metrics.renewal_failure
        key_errors: list[BaseException] = []  # a key's own error (e.g. WRONGTYPE): no action
        for (key, conn), ttl, res in zip(sessions, session_ttls, lock_results, strict=True):
            kind = conn.kind
            if isinstance(res, BaseException):
                failure.labels(kind, "error").inc()
                key_errors.append(res)
            elif res == 1:
                store.renew_success[kind].inc()
            else:
                failure.labels(kind, "failed_to_renew").inc()
                if registry.holder(key) is conn:  # not ended meanwhile (e.g. killed)
                    reassert.append((key, conn, ttl))
                    fixes.append(_setnx(key, pod, ttl))
        route_ttl = app.route_ttl_seconds
        lost_routes = []
        for (key, _, _, owner), res in zip(routes, route_results, strict=True):
            if isinstance(res, BaseException):
                key_errors.append(res)
            elif res == 0 and (owner in registry.users if len(owner) == 2 else owner in registry.chats):
                lost_routes.append(key)
                fixes.append(_register_op(key, pod, route_ttl))
        if key_errors:
            self._log_error("could not renew some locks or routes", key_errors[0], keys=len(key_errors))
        if not fixes:
            return
        try:
            fixed = await _run_chunked(store, fixes)
        except RedisError as exc:
            self._log_error("could not re-assert locks or routes", exc)
            raise
        for (key, conn, _), res in zip(reassert, fixed[: len(reassert)], strict=True):
            kind = conn.kind
            store.lock_attempt[(kind, "reassert")].inc()
            if isinstance(res, BaseException):
                continue  # Redis error: no action
            if res:
                store.lock_success[(kind, "reassert")].inc()
                store.log.info("session lock re-asserted", pod_id=store.pod_id)
                if registry.holder(key) is not conn:  # ended while we re-asserted: give back
                    gw.spawn(store.compare_and_delete(keys=[key], args=[pod]))
            elif registry.holder(key) is conn:
                store.log.info("session lock lost to another pod", pod_id=store.pod_id)
                gw.lose_session(key)
        if lost_routes:
            store.log.info("routes re-registered", count=len(lost_routes))

    def _fail_all(self, sessions: list[tuple[str, Any]], exc: Exception | None, attempted: bool = False) -> None:
        """Count a Redis error for every session of a failed slice (logged once per 30 s)."""
        failure = self.store.metrics.renewal_failure
        for _, conn in sessions:
            if not attempted:
                self.store.renew_attempt[conn.kind].inc()
            failure.labels(conn.kind, "error").inc()
        if exc is not None:
            self._log_error("session renewal failed", exc)

    def _log_error(self, message: str, exc: BaseException, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._error_logged >= 30:
            self._error_logged = now
            self.store.log.warn(message, error=str(exc), **fields)

    async def _keep_pod(self) -> None:
        try:
            await self.routes.add_pod()
        except RedisError as exc:
            self._log_error("could not refresh dws:pods", exc)


# Small closures so a tick can build its operation list once and chunk it freely.
def _setnx(key: str, value: bytes, ttl: int) -> Callable[[Pipeline], Any]:
    return lambda p: p.set(key, value, nx=True, ex=ttl)


def _register_op(key: str, pod: bytes, ttl: int) -> Callable[[Pipeline], Any]:
    return lambda p: _queue_register(p, key, pod, ttl)
