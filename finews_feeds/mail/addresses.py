"""Subscriber addresses and choices as the store keeps them: validation and normalisation.

Addresses are checked for syntax only (email-validator, no DNS: an import of 10,000 rows must
not make 10,000 lookups, and a site may run without outside DNS). The domain is normalised
(lower-cased, IDNA), the local part kept as written. Below both the store and the CSV
import/export, which use it.
"""

from __future__ import annotations

from collections.abc import Iterable

from email_validator import EmailNotValidError, validate_email

from ..errors import SubscriberError

#: Longest subscriber name kept.
MAX_NAME_CHARS = 200


def normalize_email(email: str) -> str:
    """The address as stored, or a :class:`SubscriberError` saying what is wrong with it."""
    text = email.strip()
    if not text:
        raise SubscriberError("the email address is empty")
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise SubscriberError(f"{text!r} is not a valid email address: {exc}") from None
    return str(result.normalized)


def normalize_names(values: Iterable[str] | str, kind: str) -> tuple[str, ...]:
    """Category or tag names: trimmed, without empties or repeats, sorted (so equal choices compare equal).

    A comma-separated string is split, as given on the command line or in a CSV field.
    """
    items = values.split(",") if isinstance(values, str) else list(values)
    out: set[str] = set()
    for item in items:
        name = item.strip()
        if not name:
            continue
        if "," in name or any(not ch.isprintable() for ch in name):
            raise SubscriberError(f"{kind} {name!r} contains a comma or a control character")
        if len(name) > 100:
            raise SubscriberError(f"{kind} {name[:20]!r}… is longer than 100 characters")
        out.add(name)
    return tuple(sorted(out))
