"""Shape validation of store and webhook bodies. Pure: the URL's network check and the stores'
existence are checked by the handlers (they need DNS and the database).

Each function returns normalised values or raises a 422 :class:`ApiError` naming the first bad
field (``url``, ``event_types[2]``, ``store_ids``, ...). Unknown keys are refused, so a typo such as
``event_type`` is an error and not a silently ignored field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hookstream.api.errors import field_error
from hookstream.core.filters import FilterError, compile_filter
from hookstream.core.ordering import NONE, ORDERINGS
from hookstream.core.validation import EVENT_TYPES

STORE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STORE_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 500
MAX_LIST_ITEMS = 10_000
MAX_STORE_ID_CHARS = 256  # ids referenced by webhooks; the same bound events use for their fields

WEBHOOK_FIELDS = ("url", "event_types", "store_ids", "description", "enabled", "ordering", "filter")
STORE_FIELDS = ("id", "name")
_KNOWN_EVENT_TYPES = frozenset(EVENT_TYPES)


@dataclass(frozen=True)
class StoreInput:
    id: str | None
    name: str


def refuse_unknown_keys(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise field_error(key, f"unknown field; allowed: {', '.join(allowed)}")


def parse_store(body: dict[str, Any]) -> StoreInput:
    refuse_unknown_keys(body, STORE_FIELDS)
    store_id = body.get("id")
    if store_id is not None and (not isinstance(store_id, str) or not STORE_ID_RE.match(store_id)):
        raise field_error("id", "must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'")
    if "name" not in body:
        raise field_error("name", "is required")
    name = body["name"]
    if not isinstance(name, str) or not name.strip():
        raise field_error("name", "must be a non-empty string")
    name = name.strip()
    if len(name) > MAX_STORE_NAME_CHARS:
        raise field_error("name", f"must be at most {MAX_STORE_NAME_CHARS} characters")
    return StoreInput(store_id, name)


def _parse_url(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise field_error("url", "must be a non-empty string")
    return value.strip()


def _parse_string_list(field: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise field_error(field, "must be an array of strings")
    if not value:
        raise field_error(field, "must contain at least one item")
    if len(value) > MAX_LIST_ITEMS:
        raise field_error(field, f"must contain at most {MAX_LIST_ITEMS} items")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise field_error(f"{field}[{index}]", "must be a non-empty string")
    return list(dict.fromkeys(value))  # de-duplicated, first occurrence order kept


def _parse_event_types(value: Any) -> list[str]:
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str) and item and item not in _KNOWN_EVENT_TYPES:
                raise field_error(f"event_types[{index}]", f"unknown event type {item!r}; see GET /v1/event-types")
    return _parse_string_list("event_types", value)


def _parse_store_ids(value: Any) -> list[str]:
    store_ids = _parse_string_list("store_ids", value)
    for index, item in enumerate(value):
        if len(item) > MAX_STORE_ID_CHARS:
            raise field_error(f"store_ids[{index}]", f"must be at most {MAX_STORE_ID_CHARS} characters")
    return store_ids


def _parse_description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise field_error("description", "must be a string")
    if len(value) > MAX_DESCRIPTION_CHARS:
        raise field_error("description", f"must be at most {MAX_DESCRIPTION_CHARS} characters")
    return value


def _parse_enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise field_error("enabled", "must be true or false")
    return value


def _parse_ordering(value: Any) -> str:
    if value not in ORDERINGS:
        raise field_error("ordering", f"must be one of: {', '.join(ORDERINGS)}")
    return str(value)


def _parse_filter(value: Any) -> str | None:
    """None (no filter) or a CEL expression that compiles; 422 on ``filter`` with the position otherwise."""
    if value is None:
        return None
    try:
        return compile_filter(value).source
    except FilterError as exc:
        raise field_error("filter", str(exc)) from None


_PARSERS = {
    "filter": _parse_filter,
    "url": _parse_url,
    "event_types": _parse_event_types,
    "store_ids": _parse_store_ids,
    "description": _parse_description,
    "enabled": _parse_enabled,
    "ordering": _parse_ordering,
}


def parse_webhook_changes(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """The normalised fields present in ``body``; when ``creating``, url/event_types/store_ids are required
    and description/enabled get their defaults."""
    refuse_unknown_keys(body, WEBHOOK_FIELDS)
    if creating:
        for required in ("url", "event_types", "store_ids"):
            if required not in body:
                raise field_error(required, "is required")
    changes = {key: _PARSERS[key](body[key]) for key in WEBHOOK_FIELDS if key in body}
    if creating:
        changes.setdefault("description", "")
        changes.setdefault("enabled", True)
        changes.setdefault("ordering", NONE)
    return changes
