"""The wire contract in code: frame types, error codes and texts, close codes, id rules.

Every byte-exact string of SPEC.md that more than one module needs lives here.
"""

from __future__ import annotations

import re
from typing import Final

# --- error codes (SPEC §4.7) ---------------------------------------------------------------
INVALID_API_KEY: Final = "InvalidAPIKey"
INVALID_TOKEN: Final = "InvalidToken"
BAD_REQUEST: Final = "BadRequest"
INTERNAL_SERVER_ERROR: Final = "InternalServerError"
ADMIN_KEY_MISSING: Final = "E4001"
FORBIDDEN: Final = "E4003"
SESSION_CONFLICT: Final = "SessionConflict"

# --- close codes and reasons -------------------------------------------------------------
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_INVALID_DATA: Final = 1007
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL: Final = 1011
CLOSE_SESSION_CONFLICT: Final = 4402

REASON_SHUTDOWN: Final = "Server is shutting down"
REASON_SLOW_CONSUMER: Final = "Slow consumer"
REASON_TOO_BIG: Final = "Message too big"
REASON_PONG_TIMEOUT: Final = "Pong timeout"
REASON_USER_CONFLICT: Final = "SessionConflict: Session taken over by another connection"
REASON_ADMIN_CONFLICT: Final = "AdminSessionConflict: Session taken over by another connection"

# --- error frames: (code, message, details) -----------------------------------------------
ErrorTriple = tuple[str, str, str]

SHUTDOWN_ERROR: Final[ErrorTriple] = (
    INTERNAL_SERVER_ERROR,
    "Service shutting down",
    "The WebSocket service is being gracefully terminated.",
)
PONG_TIMEOUT_ERROR: Final[ErrorTriple] = (
    INTERNAL_SERVER_ERROR,
    "Pong timeout",
    "No pong responses received",
)
USER_CONFLICT_ERROR: Final[ErrorTriple] = (
    SESSION_CONFLICT,
    "Session conflict",
    "Session taken over by another connection",
)
ADMIN_CONFLICT_ERROR: Final[ErrorTriple] = (
    SESSION_CONFLICT,
    "Session conflict",
    "Admin session taken over by another connection",
)

# client -> server message problems (SPEC §4.2)
MSG_INVALID_FORMAT: Final = "Invalid message format"
MSG_UNHANDLED_TYPE: Final = "Unhandled message type"
SELECT_BAD_STRUCTURE: Final[ErrorTriple] = (
    BAD_REQUEST,
    "Invalid select_chat payload structure",
    "Expected a JSON object",
)
SELECT_MISSING: Final[ErrorTriple] = (BAD_REQUEST, "Invalid select_chat payload", "chat_id is missing")
SELECT_NOT_STRING: Final[ErrorTriple] = (
    BAD_REQUEST,
    "Invalid select_chat payload",
    "chat_id must be a non-empty string",
)
SELECT_ROUTE_FAILED: Final[ErrorTriple] = (
    INTERNAL_SERVER_ERROR,
    "Failed to select chat",
    "Could not update message subscription.",
)

# --- subjects (SPEC §7) --------------------------------------------------------------------
SUBJECT_PREFIX: Final = "websocket"
SUBJECT_TYPES: Final = ("chats", "messages", "agents", "contacts")
# event_type inserted when a payload has none (SPEC §7.2 step 3)
EVENT_TYPE_BY_SUBJECT_TYPE: Final = {
    "chats": "chat",
    "agents": "agent",
    "messages": "message",
    "contacts": "contact",
}


def subject_type_label(token: str) -> str:
    """Bounded metric label for a subject's 4th token."""
    return token if token in EVENT_TYPE_BY_SUBJECT_TYPE else "other"


# --- ids (SPEC §0.1) -----------------------------------------------------------------------
ID_FORBIDDEN_CHARS: Final = frozenset(":.*>")
RESERVED_COMPANY: Final = "admin"
WILDCARD: Final = "*"


# Printable ASCII except ':' '.' '*' '>' (and space, DEL): a strict subset of valid ids that a
# regex checks ~10x faster than the per-character loop; anything else goes through the loop.
_ascii_id = re.compile(r"[\x21-\x29\x2b-\x2d\x2f-\x39\x3b-\x3d\x3f-\x7e]{1,128}").fullmatch


def is_valid_id(value: str) -> bool:
    """1-128 code points without ':', '.', '*', '>', whitespace or control characters."""
    return _ascii_id(value) is not None or _is_valid_id_slow(value)


def _is_valid_id_slow(value: str) -> bool:
    if not 1 <= len(value) <= 128:
        return False
    for ch in value:
        if ch in ID_FORBIDDEN_CHARS or ch.isspace():
            return False
        o = ord(ch)
        if o < 0x20 or o == 0x7F:
            return False
    return True


def is_valid_filter_id(value: str) -> bool:
    """Admin optional fields: empty, '*' (all) or a valid id."""
    return value == "" or value == WILDCARD or is_valid_id(value)


def id_violation_text(field: str) -> str:
    return (
        f"{field} must be 1-128 characters without ':', '.', '*', '>', "
        "whitespace or control characters."
    )


RESERVED_COMPANY_TEXT: Final = "company_id 'admin' is reserved."


# --- Redis keys and channels (SPEC §5, §6) -------------------------------------------------
def user_session_key(company: str, agent: str, user: str) -> str:
    return f"session:{company}:{agent}:{user}"


def admin_session_key(admin_id: str) -> str:
    return f"session:admin:{admin_id}"


def kill_channel(session_key: str) -> str:
    """`session:<rest>` -> `session_kill:<rest>`."""
    return "session_kill:" + session_key[len("session:") :]


def chats_route_key(company: str, agent: str) -> str:
    return f"route:{company}:{agent}:chats"


def message_route_key(company: str, agent: str, chat: str) -> str:
    return f"route:{company}:{agent}:messages:{chat}"


PODS_KEY: Final = "dws:pods"
FORWARD_SUBJECT_PREFIX: Final = "dws.forward."
