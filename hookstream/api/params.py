"""Request inputs: JSON bodies, query parameters and keyset-pagination cursors. Pure, no I/O.

A cursor is opaque to clients: base64url (unpadded) of a small JSON array ``[kind, *position]``.
The position is the sort key of the last item on the page, so the next page starts strictly after
it: rows inserted while a client pages never produce a duplicate or a gap (keyset pagination,
not OFFSET). ``kind`` stops a cursor of one list from being replayed against another.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

import orjson
from aiohttp import web

from hookstream.api.errors import ApiError, field_error
from hookstream.core.model import parse_rfc3339

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_CURSOR_CHARS = 512

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Far deeper than any webhook or store body; checked before anything walks the body recursively.
MAX_BODY_DEPTH = 32
_ONE_MICROSECOND = dt.timedelta(microseconds=1)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; 400 ``invalid_json`` otherwise (413 comes from aiohttp's size cap)."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    if json_depth_exceeds(body, MAX_BODY_DEPTH):
        raise ApiError(400, "invalid_json", f"request body nests deeper than {MAX_BODY_DEPTH} levels")
    if (where := find_nul(body)) is not None:
        raise field_error(where, "must not contain the NUL character (U+0000)")
    return body


def json_depth_exceeds(root: Any, limit: int) -> bool:
    """True when containers nest deeper than ``limit`` (iterative: a hostile body cannot exhaust
    the interpreter's recursion limit)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def find_nul(value: Any, path: str = "") -> str | None:
    """The field path of the first string (key or value) holding U+0000, which PostgreSQL text refuses."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return path or "body"
            if (found := find_nul(item, child)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := find_nul(item, f"{path}[{index}]")) is not None:
                return found
    return None


def parse_limit(query: dict[str, str] | Any) -> int:
    raw = query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    # the length first: int() of thousands of digits raises (Python's integer-string limit)
    if len(raw) > 6 or not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise field_error("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def parse_time_query(field: str, raw: str) -> dt.datetime:
    """A query parameter's time, read by :func:`hookstream.core.model.parse_rfc3339` (so the API
    accepts the times the rest of hookstream does); a 422 naming ``field`` otherwise.

    What a query string does to a time is undone first: a space before the offset is read as '+'
    (an unencoded '+' arrives as a space), and a space between date and time as ``T`` (RFC 3339
    allows either).
    """
    text = raw
    if len(text) > 19:  # at least a date, a time and a zone: "2026-11-27 10:15:00 01:00"
        if text[10] == " ":
            text = f"{text[:10]}T{text[11:]}"
        if text[-6] == " ":
            text = f"{text[:-6]}+{text[-5:]}"
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise field_error(field, f"{exc} (e.g. 2026-11-27T10:15:00Z)") from None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def to_micros(value: dt.datetime) -> int:
    return (value - _EPOCH) // _ONE_MICROSECOND


def from_micros(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


def encode_cursor(kind: str, *position: Any) -> str:
    """``position`` values are str, int or aware datetimes (kept exact, as epoch microseconds)."""
    values = [to_micros(v) if isinstance(v, dt.datetime) else v for v in position]
    return _b64encode(orjson.dumps([kind, *values]))


def decode_cursor(kind: str, raw: str, types: tuple[type, ...]) -> tuple[Any, ...]:
    """The position in ``raw``, typed as ``types`` (datetime, int or str); 400 ``invalid_cursor`` if not ours."""
    bad = ApiError(400, "invalid_cursor", "cursor is not valid for this list; start again without it",
                   field="cursor")
    if not raw or len(raw) > MAX_CURSOR_CHARS:
        raise bad
    try:
        decoded = orjson.loads(_b64decode(raw))
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(decoded, list) or len(decoded) != len(types) + 1 or decoded[0] != kind:
        raise bad
    if find_nul(decoded) is not None:
        raise bad
    position: list[Any] = []
    for value, expected in zip(decoded[1:], types, strict=True):
        if expected is dt.datetime:
            if type(value) is not int:
                raise bad
            try:
                at = from_micros(value)
            except OverflowError:
                raise bad from None
            # asyncpg sends the ends of datetime's range as +-infinity, which no row has (and no
            # partition bound takes)
            if at.replace(tzinfo=None) in (dt.datetime.min, dt.datetime.max):
                raise bad
            position.append(at)
        elif expected is int:
            if type(value) is not int or not -(2**63) <= value < 2**63:
                raise bad
            position.append(value)
        else:
            if not isinstance(value, str):
                raise bad
            position.append(value)
    return tuple(position)


def page(items: list[Any], limit: int, cursor_of) -> tuple[list[Any], str | None]:
    """Split ``limit + 1`` fetched rows into (this page, next cursor or None)."""
    if len(items) > limit:
        items = items[:limit]
        return items, cursor_of(items[-1])
    return items, None
