"""`daisi-ws serve | check-config | token | publish | loadtest` (SPEC §11)."""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from daisi_ws import __version__


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="YAML config file (else DAISI_WS_CONFIG, ./config/config.yaml, ./config.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daisi-ws", description="WebSocket gateway for NATS events.")
    parser.add_argument("--version", action="version", version=f"daisi-ws {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    _add_config(serve)

    check = sub.add_parser("check-config", help="print the effective config (secrets masked)")
    _add_config(check)

    token = sub.add_parser("token", help="mint a token locally with the configured AES key")
    token_sub = token.add_subparsers(dest="token_kind", required=True)
    user = token_sub.add_parser("user", help="user token")
    _add_config(user)
    user.add_argument("--company", required=True)
    user.add_argument("--agent", required=True)
    user.add_argument("--user", required=True)
    user.add_argument("--expires-in", type=int, default=86400, metavar="SECONDS")
    admin = token_sub.add_parser("admin", help="admin token")
    _add_config(admin)
    admin.add_argument("--admin-id", required=True)
    admin.add_argument("--subscribed-company", default="")
    admin.add_argument("--subscribed-agent", default="")
    admin.add_argument("--company-restriction", default="")
    admin.add_argument("--expires-in", type=int, default=86400, metavar="SECONDS")

    publish = sub.add_parser("publish", help="publish an event through a server's /api/publish")
    _add_config(publish)
    publish.add_argument("subject", help="websocket.<company>.<agent>.<type>[.<chat>]")
    publish.add_argument("payload", help="JSON object")
    publish.add_argument("--url", default=None, help="server base URL (default http://127.0.0.1:<server.http_port>)")
    publish.add_argument("--api-key", default=None, help="admin API key (default auth.admin_secret_token)")

    from daisi_ws.loadtest import add_arguments as add_loadtest_arguments

    loadtest = sub.add_parser("loadtest", help="drive a loopback server with N WebSocket clients and measure delivery")
    _add_config(loadtest)
    add_loadtest_arguments(loadtest)
    return parser


def _settings(path: str | None):  # type: ignore[no-untyped-def]
    from daisi_ws.config import ConfigError, load_settings

    try:
        return load_settings(path)
    except ConfigError as exc:
        sys.stderr.write(f"config error: {exc}\n")
        raise SystemExit(2) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    from daisi_ws import hotpath
    from daisi_ws.config import to_dict

    settings = _settings(args.config)
    out = {
        "native_extensions": hotpath.NATIVE,
        "mode": "embedded" if settings.embedded else "shared",
        "config_file": settings.source_path,
        "config": to_dict(settings, mask_secrets=True),
    }
    print(json.dumps(out, indent=2))
    for w in settings.warnings:
        sys.stderr.write(f"warning: {w}\n")
    return 0


def _is_utf8(text: str) -> bool:
    """False for a command-line argument with bytes that are not UTF-8 (lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _reject_non_utf8(fields: tuple[tuple[str, str], ...]) -> bool:
    """Print the error for the first (name, value) that is not UTF-8; True if there was one."""
    for field, value in fields:
        if not _is_utf8(value):
            sys.stderr.write(f"error: {field} is not valid UTF-8\n")
            return True
    return False


def cmd_token(args: argparse.Namespace) -> int:
    from daisi_ws.auth.tokens import (
        MAX_TIME,
        TokenCipher,
        mint_admin_token,
        mint_user_token,
        parse_aes_key,
    )
    from daisi_ws.protocol import (
        RESERVED_COMPANY,
        id_violation_text,
        is_valid_filter_id,
        is_valid_id,
    )

    settings = _settings(args.config)
    if args.expires_in <= 0:
        sys.stderr.write("error: --expires-in must be a positive number of seconds\n")
        return 2
    now = datetime.now(timezone.utc)
    room = MAX_TIME - now  # the server's limit too (SPEC §1.5: "expires_in_seconds is too large.")
    if args.expires_in > room.days * 86400 + room.seconds:
        sys.stderr.write("error: --expires-in is too large: the token would expire after the year 9999\n")
        return 2
    expires = now + timedelta(seconds=args.expires_in)
    if args.token_kind == "user":
        key = settings.auth.token_aes_key
        user_fields = (("company_id", args.company), ("agent_id", args.agent), ("user_id", args.user))
        if _reject_non_utf8(user_fields):
            return 2
        for field, value in user_fields:
            if not is_valid_id(value):
                sys.stderr.write(f"error: {id_violation_text(field)}\n")
                return 2
        if args.company == RESERVED_COMPANY:
            sys.stderr.write("error: company_id 'admin' is reserved.\n")
            return 2
        if not key:
            sys.stderr.write("error: auth.token_aes_key is not configured (set DAISI_WS_AUTH_TOKEN_AES_KEY)\n")
            return 2
        print(mint_user_token(TokenCipher(parse_aes_key(key)), args.company, args.agent, args.user, expires))
        return 0
    key = settings.auth.admin_token_aes_key
    if _reject_non_utf8(
        (
            ("admin_id", args.admin_id),
            ("subscribed_company_id", args.subscribed_company),
            ("subscribed_agent_id", args.subscribed_agent),
            ("company_id_restriction", args.company_restriction),
        )
    ):
        return 2
    if not is_valid_id(args.admin_id):
        sys.stderr.write(f"error: {id_violation_text('admin_id')}\n")
        return 2
    for field, value in (
        ("subscribed_company_id", args.subscribed_company),
        ("subscribed_agent_id", args.subscribed_agent),
        ("company_id_restriction", args.company_restriction),
    ):
        if not is_valid_filter_id(value):
            sys.stderr.write(f"error: {id_violation_text(field)}\n")
            return 2
    if not key:
        sys.stderr.write("error: auth.admin_token_aes_key is not configured (set DAISI_WS_AUTH_ADMIN_TOKEN_AES_KEY)\n")
        return 2
    print(
        mint_admin_token(
            TokenCipher(parse_aes_key(key)),
            args.admin_id,
            expires,
            company_id_restriction=args.company_restriction,
            subscribed_company_id=args.subscribed_company,
            subscribed_agent_id=args.subscribed_agent,
        )
    )
    return 0


def _url_problem(url: str) -> str | None:
    """Why `url` cannot be POSTed to by urllib, or None."""
    if not url.isascii() or not url.isprintable() or any(ch.isspace() for ch in url):
        return "only ASCII characters without spaces are allowed (percent-encode or punycode the rest)"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        return str(exc)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "expected http://HOST[:PORT] or https://HOST[:PORT]"
    return None


def _header_safe(value: str) -> bool:
    """Whether `value` fits an HTTP header: no control character other than tab (a line
    break would even end the header). It is sent as UTF-8, the bytes the server compares."""
    return all(ch == "\t" or (ch >= " " and ch != "\x7f") for ch in value)


def cmd_publish(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        sys.stderr.write(f"error: payload is not valid JSON: {exc}\n")
        return 2
    if not _is_utf8(args.payload):
        sys.stderr.write("error: payload is not valid UTF-8\n")
        return 2
    if args.url:  # empty: the default, as before
        problem = _url_problem(args.url)
        if problem:
            sys.stderr.write(f"error: --url {args.url!r} is not a valid URL: {problem}\n")
            return 2
    settings = _settings(args.config)
    url = (args.url or f"http://127.0.0.1:{settings.server.http_port}").rstrip("/") + "/api/publish"
    api_key = args.api_key or settings.auth.admin_secret_token
    if not api_key:
        sys.stderr.write("error: no admin API key: pass --api-key or set DAISI_WS_AUTH_ADMIN_SECRET_TOKEN\n")
        return 2
    if not _header_safe(api_key):
        source = "--api-key" if args.api_key else "auth.admin_secret_token"
        sys.stderr.write(
            f"error: {source} cannot be sent in the X-API-Key header: control characters cannot\n"
        )
        return 2
    del payload  # only validated: the server publishes the payload text as typed (SPEC §1.7)
    body = f'{{"subject":{json.dumps(args.subject)},"payload":{args.payload.strip()}}}'.encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "X-API-Key": api_key.encode()}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            sys.stdout.write(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        sys.stderr.write(f"error: HTTP {exc.code}: {exc.read().decode(errors='replace')}")
        return 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"error: cannot reach {url}: {exc}\n")
        return 1
    except http.client.HTTPException as exc:  # e.g. not an HTTP server at that port
        sys.stderr.write(f"error: no valid HTTP response from {url}: {exc!r}\n")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from daisi_ws.app import run_server

        return run_server(args.config)
    if args.command == "check-config":
        return cmd_check_config(args)
    if args.command == "token":
        return cmd_token(args)
    if args.command == "publish":
        return cmd_publish(args)
    if args.command == "loadtest":
        from daisi_ws.loadtest import main as loadtest_main

        return loadtest_main(args, _settings)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
