"""Form bodies (application/x-www-form-urlencoded) read from their bytes, strictly.

aiohttp's `request.post()` decodes with whatever charset the client names (`charset=bogus` is a
LookupError) and lets a byte that is not UTF-8 through to a later decode: both were 500s. Here both
are the client's error, named, and nothing else reads a form's bytes.
"""

from urllib.parse import parse_qsl

from multidict import MultiDict

from common.errors import MalformedRequest, UnsupportedMediaType

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# UTF-8 is what every provider posts; US-ASCII is a subset of it.
_READABLE_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
MAX_FORM_FIELDS = 1000


def check_charset(charset: str | None) -> None:
    if charset is not None and charset.lower() not in _READABLE_CHARSETS:
        raise UnsupportedMediaType(
            f"charset {charset[:40]!r} is not supported",
            [{"field": "Content-Type", "reason": "the charset must be utf-8 (or left out)"}],
        )


def parse_form(body: bytes, charset: str | None = None) -> MultiDict[str]:
    """The fields of a form body, repeated names kept, in order."""
    check_charset(charset)
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_FORM_FIELDS
        )
    except UnicodeDecodeError as error:
        raise MalformedRequest(
            "form body is not UTF-8", [{"field": "request", "reason": "holds bytes that are not valid UTF-8"}]
        ) from error
    except ValueError as error:
        raise MalformedRequest(
            "form body has too many fields",
            [{"field": "request", "reason": f"at most {MAX_FORM_FIELDS} fields are taken"}],
        ) from error
    return MultiDict(pairs)
