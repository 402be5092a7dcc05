"""Signed tokens for unsubscribe and confirm links.

A token is the subscriber's address signed with ``FINEWS_SECRET_KEY`` and salted with its
purpose, so a confirm token cannot be replayed as an unsubscribe token (or the reverse) and
nobody without the secret can make one for an address they merely know. Tokens carry a
timestamp so confirm links can expire; unsubscribe links are read without ``max_age`` because
an old digest in someone's mailbox must still let them leave.
"""

from __future__ import annotations

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from ..config import Config
from ..errors import ConfigError, TokenError

PURPOSES = ("unsubscribe", "confirm")


def secret_of(config: Config) -> str:
    """The signing secret, or a :class:`ConfigError` telling the operator what to set."""
    return _checked(config.secret_key)


def _checked(secret: str) -> str:
    if not secret:
        raise ConfigError(
            "FINEWS_SECRET_KEY is not set: it signs unsubscribe and confirm links",
            hint="set FINEWS_SECRET_KEY in the environment to a long random string, "
            "e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))'",
        )
    return secret


def _serializer(secret: str, purpose: str) -> URLSafeTimedSerializer:
    _checked(secret)
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}; expected one of {', '.join(PURPOSES)}")
    return URLSafeTimedSerializer(secret, salt=f"finews-feeds.{purpose}")


def make_token(secret: str, purpose: str, email: str) -> str:
    """A URL-safe token naming ``email`` (lower-cased: addresses are case-insensitive here)."""
    return _serializer(secret, purpose).dumps(email.strip().lower())


def read_token(secret: str, purpose: str, token: str, max_age: int | None = None) -> str:
    """The address a token was made for; :class:`TokenError` if forged, tampered, expired or for another purpose."""
    serializer = _serializer(secret, purpose)
    try:
        value = serializer.loads(token, max_age=max_age)
    except SignatureExpired:
        raise TokenError(f"this {purpose} link has expired", hint="ask for a new one") from None
    except BadSignature:
        raise TokenError(f"this {purpose} link is not valid (it was changed or not made by this site)") from None
    if not isinstance(value, str) or "@" not in value:
        raise TokenError(f"this {purpose} link is not valid")
    return value
