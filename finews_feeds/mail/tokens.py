"""Signed tokens for unsubscribe, confirm and manage links, and the manage page's form field.

A token is the subscriber's address signed with ``FINEWS_SECRET_KEY`` and salted with its
purpose, so a confirm token cannot be replayed as an unsubscribe or manage token (or the
reverse) and nobody without the secret can make one for an address they merely know. Tokens
carry a timestamp so confirm links can expire; unsubscribe and manage links are read without
``max_age`` because an old digest in someone's mailbox must still let them leave or change
what they get (listmonk's and Ghost's manage links do not expire either).

The manage page's forms carry a second, short-lived token (:func:`form_token`): the manage
token signed again for the page's forms, valid :data:`FORM_MAX_AGE` seconds. It is the CSRF
field of a site without cookies: a page elsewhere cannot make one without the secret.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from itsdangerous.url_safe import URLSafeSerializerMixin

from ..config import Config
from ..errors import ConfigError, TokenError

PURPOSES = ("unsubscribe", "confirm", "manage")
#: How long a manage page's form stays good for a POST (a page left open for a day is reloaded).
FORM_MAX_AGE = 24 * 3600


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


#: Payloads up to this many bytes of JSON (an address) are not offered to zlib.
SHORT_PAYLOAD = 128


class _Serializer(URLSafeTimedSerializer):
    """itsdangerous's URL-safe timed serializer, without its zlib attempt on a short payload.

    zlib.compress sets up a deflate state of some 256 KB for every call: about 0.2-0.5 ms here, the
    largest single cost of building a digest message, to shorten an address that deflate almost
    never shortens (its output has 6 bytes of frame). A payload that did compress would still be
    read: loads() takes the plain form and the compressed one alike, so every token made before or
    after this reads the same."""

    def dump_payload(self, obj: Any) -> bytes:
        json = super(URLSafeSerializerMixin, self).dump_payload(obj)
        if len(json) > SHORT_PAYLOAD:
            return super().dump_payload(obj)
        return base64_encode(json)


@functools.lru_cache(maxsize=16)  # one per secret and purpose: a digest run signs thousands with one
def _serializer(secret: str, purpose: str) -> URLSafeTimedSerializer:
    _checked(secret)
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}; expected one of {', '.join(PURPOSES)}")
    return _Serializer(secret, salt=f"finews-feeds.{purpose}")


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


def _form_serializer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_checked(secret), salt="finews-feeds.manage-form")


def _digest_of(token: str) -> str:
    # The form field names its link by a hash, so the page does not carry the link twice.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]


def form_token(secret: str, manage_token: str) -> str:
    """The CSRF field of the manage page of ``manage_token`` (good for :data:`FORM_MAX_AGE` seconds)."""
    return _form_serializer(secret).dumps(_digest_of(manage_token))


def check_form_token(secret: str, manage_token: str, value: str, max_age: int = FORM_MAX_AGE) -> None:
    """:class:`TokenError` unless ``value`` is a form token of ``manage_token``'s page younger than ``max_age``."""
    try:
        named = _form_serializer(secret).loads(value, max_age=max_age)
    except SignatureExpired:
        raise TokenError("this page has been open too long", hint="reload it and try again") from None
    except BadSignature:
        raise TokenError("this form was not sent from this page") from None
    if named != _digest_of(manage_token):
        raise TokenError("this form was not sent from this page")
