"""Reading the web app's forms: strict UTF-8 fields (:func:`read_form`), one bounded text value
per field (:func:`text_field`) and the tags typed into the subscribe form (:func:`split_tags`).
Anything else is an ``HTTPException`` (400 or 415) that names the field."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

#: Most categories one subscribe form may choose (the form has one checkbox per category).
MAX_CHOICES = 100
#: Fields one form may have (the categories' checkboxes and a few more).
MAX_FIELDS = MAX_CHOICES + 10
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _not_utf8(where: str, exc: UnicodeDecodeError) -> HTTPException:
    byte = exc.object[exc.start:exc.start + 1].hex().upper()
    return HTTPException(400, f"{where} is not UTF-8 text (byte 0x{byte} cannot be read); send the form as UTF-8")


def _urlencoded(body: bytes) -> FormData:
    """An application/x-www-form-urlencoded body as fields, every name and value strict UTF-8.

    Starlette (as ``urllib.parse.unquote_plus``) turns undecodable percent-escapes into U+FFFD
    and raw bytes into Latin-1, so ``a%FF%FE@b.org`` would be stored as ``a\ufffd\ufffd@b.org``
    and a raw UTF-8 ``аdmin@`` as mojibake. Here the body and its escapes are read as Latin-1
    (one character per byte, so nothing is lost or changed), then each name and value, raw
    bytes and escapes alike, is decoded as UTF-8 and refused when it is not.
    """
    try:
        pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1",
                          max_num_fields=MAX_FIELDS)
    except ValueError as exc:
        raise HTTPException(400, f"malformed form: {exc}") from None
    fields: list[tuple[str, str | UploadFile]] = []
    for raw_name, raw_value in pairs:
        try:
            name = raw_name.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8("a field name", exc) from None
        try:
            value = raw_value.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(f"field {name!r}", exc) from None
        fields.append((name, value))
    return FormData(fields)


async def read_form(request: Request) -> FormData:
    """The request's form; 400 for a body that is not a well-formed form of UTF-8 text fields."""
    if _content_type(request) not in FORM_TYPES:
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded or multipart/form-data)")
    charset = request.headers.get("content-type", "").lower().partition("charset=")[2].split(";")[0].strip(' "')
    if charset and charset not in ("utf-8", "utf8"):
        raise HTTPException(415, f"expected a form in UTF-8, not {charset}")
    body = await request.body()
    if _content_type(request) == "application/x-www-form-urlencoded":
        return _urlencoded(body)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Starlette decodes a part that is not UTF-8 as Latin-1; a body that is UTF-8 as a whole
        # has only UTF-8 parts (cut at ASCII boundaries, UTF-8 stays UTF-8).
        raise _not_utf8("the form", exc) from None
    try:
        form = await request.form(max_files=0, max_fields=MAX_FIELDS)
    except HTTPException:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"malformed form: {exc}") from None
    if any(isinstance(value, UploadFile) for _, value in form.multi_items()):
        raise HTTPException(400, "files are not accepted")
    return form


def text_field(form: FormData, name: str, limit: int) -> str:
    """The field's one value, trimmed ("" when absent); 400 when it is given twice, is longer than
    ``limit`` or holds a line break or NUL (which could smuggle mail headers)."""
    values = form.getlist(name)
    if len(values) > 1:
        raise HTTPException(400, f"field {name!r} given more than once")
    value = values[0] if values else ""
    if not isinstance(value, str) or len(value) > limit or any(ch in value for ch in "\r\n\x00"):
        raise HTTPException(400, f"field {name!r} is not valid")
    return value.strip()


def split_tags(text: str) -> tuple[str, ...]:
    """Tags typed into the form: separated by ASCII or Chinese commas (，、), trimmed, no repeats."""
    parts = re.split(r"[,，、]", text)
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
