"""Text and JSON that come from clients: parse them without crashing, echo them without harm.

Clients can send JSON nested deeper than the parser's recursion limit, strings holding lone UTF-16
surrogates (valid in JSON's ``\\ud800`` escapes, not encodable as UTF-8), and values megabytes long. Any of
these must end in a 400 / an ``error`` message, never in a 500 or a closed socket, and a value we
quote back in an error message is always short and printable.
"""

from __future__ import annotations

import json
import re
from typing import Any, Union

from starlette.responses import JSONResponse

_SURROGATE = re.compile("[\ud800-\udfff]")
ECHO_LIMIT = 40  # characters of a client's value quoted back in an error message


class InvalidJSON(ValueError):
    """The text is not JSON we can use. The message is safe to show to the client."""


def parse_json(data: Union[str, bytes, bytearray]) -> Any:
    """``json.loads`` that turns every failure, the recursion limit included, into :class:`InvalidJSON`."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    except UnicodeDecodeError:
        raise InvalidJSON("not valid JSON (the bytes are not UTF-8 text)") from None
    except RecursionError:
        raise InvalidJSON("not valid JSON we accept (nested too deeply)") from None
    except (TypeError, ValueError) as exc:  # e.g. a number too long to convert
        raise InvalidJSON(f"not valid JSON we accept ({type(exc).__name__})") from None


def echo(value: Any, limit: int = ECHO_LIMIT) -> str:
    """A client's value, quoted for an error message: ASCII-only, escapes shown, at most ``limit`` chars."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    shown = ascii(value[:limit])  # escapes control characters, non-ASCII and lone surrogates
    return shown + ("..." if len(value) > limit else "")


def scrub(value: Any) -> Any:
    """Replace lone surrogates in every string of a JSON-like value with U+FFFD, so it encodes as UTF-8."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Compact JSON text (non-ASCII kept readable) that is always encodable as UTF-8."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(scrub(value), ensure_ascii=False, separators=(",", ":"))
    return text


class SafeJSONResponse(JSONResponse):
    """Starlette's JSONResponse, except a lone surrogate somewhere in the content cannot turn an answer
    into a 500: such strings are scrubbed instead."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return super().render(scrub(content))


_SPECIAL_TOKEN = re.compile(r"<\|[^|<>]{0,40}\|>")


def plain_prompt(text: str) -> str:
    """A client's prompt as plain words. Whisper's tokenizer reads ``<|endoftext|>``, ``<|en|>`` and the like
    in a prompt as control tokens: a prompt of many of them ended the transcript before it began (empty)."""
    return _SPECIAL_TOKEN.sub(" ", text).strip()
