"""Signed unsubscribe and confirm tokens."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from finews_feeds.config import build_config
from finews_feeds.errors import ConfigError, TokenError
from finews_feeds.mail.tokens import make_token, read_token, secret_of

SECRET = "s3cret-for-tests"


def test_a_token_reads_back_to_its_lower_cased_address() -> None:
    token = make_token(SECRET, "unsubscribe", "Ann@Example.org")
    assert read_token(SECRET, "unsubscribe", token) == "ann@example.org"


def test_a_token_is_url_safe() -> None:
    token = make_token(SECRET, "confirm", "用户+tag@例子.中国")
    assert all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in token)
    assert read_token(SECRET, "confirm", token) == "用户+tag@例子.中国"


def test_a_token_for_one_purpose_is_refused_for_the_other() -> None:
    token = make_token(SECRET, "confirm", "a@example.org")
    with pytest.raises(TokenError, match="unsubscribe link is not valid"):
        read_token(SECRET, "unsubscribe", token)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = make_token("other-secret", "unsubscribe", "a@example.org")
    with pytest.raises(TokenError):
        read_token(SECRET, "unsubscribe", token)


def test_changing_the_address_in_a_token_breaks_it() -> None:
    token = make_token(SECRET, "unsubscribe", "a@example.org")
    other = make_token(SECRET, "unsubscribe", "b@example.org")
    forged = other.split(".", 1)[0] + "." + token.split(".", 1)[1]
    with pytest.raises(TokenError):
        read_token(SECRET, "unsubscribe", forged)


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=80))
def test_arbitrary_text_is_never_accepted_as_a_token(junk: str) -> None:
    with pytest.raises(TokenError):
        read_token(SECRET, "unsubscribe", junk)


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_flipping_any_character_of_a_token_is_detected(position: int, delta: int) -> None:
    token = make_token(SECRET, "unsubscribe", "a@example.org")
    index = position % len(token)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    replacement = alphabet[(alphabet.find(token[index]) + 1 + delta % 63) % 64]
    tampered = token[:index] + replacement + token[index + 1:]
    if tampered == token:
        return
    try:
        value = read_token(SECRET, "unsubscribe", tampered)
    except TokenError:
        return
    # base64 has spare bits in its last character: a change there may decode to the same bytes.
    assert value == "a@example.org"


def test_max_age_expires_confirm_links() -> None:
    token = make_token(SECRET, "confirm", "a@example.org")
    assert read_token(SECRET, "confirm", token, max_age=60) == "a@example.org"
    time.sleep(1.1)
    with pytest.raises(TokenError, match="confirm link has expired"):
        read_token(SECRET, "confirm", token, max_age=0)


def test_a_missing_secret_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="FINEWS_SECRET_KEY is not set"):
        secret_of(build_config({}, {}))
    with pytest.raises(ConfigError, match="FINEWS_SECRET_KEY"):
        make_token("", "unsubscribe", "a@example.org")
    assert secret_of(build_config({}, {"FINEWS_SECRET_KEY": "k"})) == "k"


def test_a_missing_secret_is_the_same_error_from_the_config_and_from_a_token() -> None:
    errors = []
    for attempt in (lambda: secret_of(build_config({}, {})), lambda: make_token("", "confirm", "a@example.org"),
                    lambda: read_token("", "unsubscribe", "x")):
        with pytest.raises(ConfigError) as info:
            attempt()
        errors.append((info.value.message, info.value.hint))
    assert errors == [("FINEWS_SECRET_KEY is not set: it signs unsubscribe and confirm links",
                       "set FINEWS_SECRET_KEY in the environment to a long random string, "
                       "e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")] * 3


def test_an_unknown_purpose_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown token purpose 'login'"):
        make_token(SECRET, "login", "a@example.org")
