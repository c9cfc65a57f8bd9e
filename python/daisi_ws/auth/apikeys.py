"""API keys (SPEC §1.2): header `X-API-Key`, else query `x-api-key`; constant-time compare."""

from __future__ import annotations

import hmac


def extract_api_key(header_value: str | None, query_value: str | None) -> str | None:
    """The header value if non-empty, else the query value if non-empty, else None."""
    if header_value:
        return header_value
    if query_value:
        return query_value
    return None


def check_api_key(provided: str | bytes | None, expected: str) -> bool:
    """True iff `provided` equals the configured key (constant time; an empty key never matches).

    Keys are compared as bytes, as the Go service compares them: a `str` is taken as its
    UTF-8 bytes; pass a header value as the bytes the client sent.
    """
    if not provided or not expected:
        return False
    if isinstance(provided, str):
        provided = provided.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(provided, expected.encode("utf-8", "surrogatepass"))
