"""The baseline: what a Python developer would write without daisi-ws.

websockets' asyncio server (a handler coroutine per socket), the same AES-GCM user tokens
validated with `cryptography` on every connect (no cache), the same URL and API-key scheme
(`/ws/<company>/<agent>?token=...&x-api-key=...`), a session table in a dict (one live socket
per user; a second login closes the first with 4402), `{"type":"ready"}` first,
`select_chat` with `ack`, ONE core NATS subscription `websocket.>`, `json.loads` +
`json.dumps` per event and `websockets.broadcast()` to the matching sockets (company/agent,
and the selected chat for `messages`). Deliberately plain: no frame sharing beyond what
`broadcast()` does, no coalescing, no token cache. It exists so `daisi-ws loadtest` can
measure daisi-ws against it on the same machine, in the same run.

    python benchmarks/baseline_gateway.py --port 8090 --nats nats://127.0.0.1:4333 \\
        --api-key KEY --aes-key 64HEX

Keys default to the daisi-ws env vars (DAISI_WS_AUTH_SECRET_TOKEN, DAISI_WS_AUTH_TOKEN_AES_KEY).
Prints one JSON line `{"message":"listening","port":P,...}` on stdout once it accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import json
import os
import signal
import sys
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import websockets
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request

EVENT_TYPES = {"chats": "chat", "messages": "message", "contacts": "contact"}


def error_body(code: str, message: str, details: str) -> str:
    return json.dumps({"code": code, "message": message, "details": details}) + "\n"


class BaselineGateway:
    def __init__(self, api_key: str, aes_key_hex: str) -> None:
        self.api_key = api_key
        self.aesgcm = AESGCM(bytes.fromhex(aes_key_hex))
        self.by_agent: dict[tuple[str, str], set[ServerConnection]] = {}
        self.by_chat: dict[tuple[str, str, str], set[ServerConnection]] = {}
        self.sessions: dict[str, ServerConnection] = {}
        self.info: dict[ServerConnection, dict[str, Any]] = {}
        self.closing: set[asyncio.Future[None]] = set()

    # --- auth ----------------------------------------------------------------------------
    def validate_token(self, token: str) -> dict[str, Any] | None:
        try:
            raw = base64.urlsafe_b64decode(token)
            claims = json.loads(self.aesgcm.decrypt(raw[:12], raw[12:], None))
            expires = datetime.fromisoformat(claims["expires_at"])
        except Exception:
            return None
        if datetime.now(timezone.utc) > expires:
            return None
        return claims

    def process_request(self, connection: ServerConnection, request: Request) -> Any:
        url = urlsplit(request.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "ws":
            return connection.respond(404, "404 page not found\n")
        query = parse_qs(url.query)
        key = request.headers.get("X-API-Key") or query.get("x-api-key", [""])[0]
        if not key or not hmac.compare_digest(key, self.api_key):
            return connection.respond(401, error_body("InvalidAPIKey", "Invalid API key", "The provided API key is not valid."))
        claims = self.validate_token(query.get("token", [""])[0])
        if claims is None:
            return connection.respond(403, error_body("InvalidToken", "Company token is invalid or malformed.", "Token format or content error."))
        if unquote(parts[1]) != claims.get("company_id") or unquote(parts[2]) != claims.get("agent_id"):
            return connection.respond(403, error_body("InvalidToken", "Token does not match the requested company or agent.", ""))
        self.info[connection] = {"claims": claims, "chat": None}
        return None

    # --- sockets -------------------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        info = self.info[ws]
        claims = info["claims"]
        pair = (claims["company_id"], claims["agent_id"])
        session = f"session:{pair[0]}:{pair[1]}:{claims['user_id']}"
        old = self.sessions.get(session)
        if old is not None:
            task = asyncio.ensure_future(old.close(4402, "SessionConflict: Session taken over by another connection"))
            self.closing.add(task)
            task.add_done_callback(self.closing.discard)
        self.sessions[session] = ws
        self.by_agent.setdefault(pair, set()).add(ws)
        try:
            await ws.send('{"type":"ready"}')
            async for message in ws:
                if isinstance(message, str):
                    await self.on_client_message(ws, info, pair, message)
        except websockets.ConnectionClosed:
            pass
        finally:
            if self.sessions.get(session) is ws:
                del self.sessions[session]
            self.by_agent[pair].discard(ws)
            if not self.by_agent[pair]:
                del self.by_agent[pair]
            if info["chat"] is not None:
                self._leave_chat(ws, pair, info["chat"])
            del self.info[ws]

    def _leave_chat(self, ws: ServerConnection, pair: tuple[str, str], chat: str) -> None:
        key = (pair[0], pair[1], chat)
        members = self.by_chat.get(key)
        if members is not None:
            members.discard(ws)
            if not members:
                del self.by_chat[key]

    async def on_client_message(self, ws: ServerConnection, info: dict[str, Any], pair: tuple[str, str], message: str) -> None:
        try:
            msg = json.loads(message)
        except ValueError as exc:
            await ws.send(json.dumps({"type": "error", "payload": {"code": "BadRequest", "message": "Invalid message format", "details": str(exc)}}))
            return
        if not isinstance(msg, dict):
            return
        if msg.get("type") == "ready":
            await ws.send('{"type":"ready"}')
        elif msg.get("type") == "select_chat":
            payload = msg.get("payload") if isinstance(msg.get("payload"), dict) else msg
            chat = payload.get("chat_id")
            if not isinstance(chat, str) or not chat:
                await ws.send(json.dumps({"type": "error", "payload": {"code": "BadRequest", "message": "Invalid select_chat payload", "details": "chat_id must be a non-empty string"}}))
                return
            if info["chat"] is not None:
                self._leave_chat(ws, pair, info["chat"])
            info["chat"] = chat
            self.by_chat.setdefault((pair[0], pair[1], chat), set()).add(ws)
            if "id" in msg:
                await ws.send(json.dumps({"type": "ack", "id": msg["id"]}))

    # --- events --------------------------------------------------------------------------
    async def on_event(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        if len(parts) < 4:
            return
        company, agent, kind = parts[1], parts[2], parts[3]
        try:
            payload = json.loads(msg.data)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        payload.setdefault("event_type", EVENT_TYPES.get(kind, kind))
        if kind == "messages":
            if len(parts) < 5:
                return
            targets = self.by_chat.get((company, agent, parts[4]))
        else:
            targets = self.by_agent.get((company, agent))
        if targets:
            broadcast(targets, json.dumps({"type": "event", "payload": payload}))


async def main_async(args: argparse.Namespace) -> int:
    gateway = BaselineGateway(args.api_key, args.aes_key)
    nc = None
    if args.nats:
        import nats

        nc = await nats.connect(args.nats)
        await nc.subscribe("websocket.>", cb=gateway.on_event)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(gateway.handler, args.host, args.port, process_request=gateway.process_request) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(json.dumps({"message": "listening", "port": port, "pid": os.getpid(), "nats": bool(nc)}), flush=True)
        await stop
        server.close()
    if nc is not None:
        await nc.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--nats", default="", help="NATS URL; events arrive on one subscription `websocket.>`")
    p.add_argument("--api-key", default=os.environ.get("DAISI_WS_AUTH_SECRET_TOKEN", ""))
    p.add_argument("--aes-key", default=os.environ.get("DAISI_WS_AUTH_TOKEN_AES_KEY", ""), help="64 hex characters")
    args = p.parse_args(argv)
    if not args.api_key or len(args.aes_key) != 64:
        sys.stderr.write("baseline: --api-key and a 64-hex --aes-key are required\n")
        return 2
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
