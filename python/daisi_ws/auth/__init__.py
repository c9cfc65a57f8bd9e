"""Tokens (AES-GCM, JWT), API keys and the AuthService (cache -> decrypt -> claims)."""

from daisi_ws.auth.apikeys import check_api_key, extract_api_key
from daisi_ws.auth.jwt_tokens import decode_admin_jwt, decode_user_jwt, is_jwt
from daisi_ws.auth.service import (
    FAILURE_REASONS,
    TOKEN_TYPE_ADMIN,
    TOKEN_TYPE_COMPANY,
    AuthError,
    AuthService,
)
from daisi_ws.auth.tokens import (
    AdminClaims,
    TokenCipher,
    TokenExpired,
    TokenInvalid,
    UserClaims,
    decode_admin_claims,
    decode_user_claims,
    format_expiry_detail,
    format_rfc3339,
    mint_admin_token,
    mint_user_token,
    parse_aes_key,
    parse_rfc3339,
)

__all__ = [
    "FAILURE_REASONS",
    "TOKEN_TYPE_ADMIN",
    "TOKEN_TYPE_COMPANY",
    "AdminClaims",
    "AuthError",
    "AuthService",
    "TokenCipher",
    "TokenExpired",
    "TokenInvalid",
    "UserClaims",
    "check_api_key",
    "decode_admin_claims",
    "decode_admin_jwt",
    "decode_user_claims",
    "decode_user_jwt",
    "extract_api_key",
    "format_expiry_detail",
    "format_rfc3339",
    "is_jwt",
    "mint_admin_token",
    "mint_user_token",
    "parse_aes_key",
    "parse_rfc3339",
]
