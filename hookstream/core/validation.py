"""Domain-event validation: the router's first stage (consume -> **validate** -> match -> enqueue).

`validate_event` turns one Kafka record value into either a `DomainEvent` or a `Rejection` whose
`reason` is a low-cardinality label (the `reason` of `hookstream_events_rejected_total` and of the
dead-letter headers). It never raises and does no I/O: every JSON Schema under `hookstream/schemas/` is read and
compiled once, at import.

Checks run cheapest first, and each class of bad input has its own reason:

====================  =====================================================================
reason                meaning
====================  =====================================================================
empty                 tombstone (None) or zero-length value
too_large             more than ``max_bytes`` (checked before any decoding)
not_utf8              the bytes are not UTF-8
not_json              UTF-8, but not one JSON document (BOM, trailing garbage, NaN, ...)
not_object            valid JSON whose top level is not an object
too_deep              containers nested deeper than MAX_JSON_DEPTH
number_out_of_range   a number outside the signed 64-bit range, or one that overflows a double
duplicate_keys        an object repeats a key (parsers disagree on which value wins)
missing_field         a required envelope field is absent
wrong_type            an envelope field has the wrong JSON type
bad_id                ``id`` is not 1-128 characters of [A-Za-z0-9_-]
bad_timestamp         ``occurred_at`` is not an RFC 3339 date-time with a zone, not a real date, or
                      outside the years 0001-9999 once converted to UTC
unknown_type          ``type`` is not one of the 12 supported events
invalid_data          ``data`` does not match ``hookstream/schemas/events/<type>.schema.json``
schema                any other envelope violation (empty store id, unknown top-level field, ...)
unstorable            passed every check here, but PostgreSQL refused it (set by the router, with
                      the database's reason; never expected, kept so the pipeline never stops)
internal_error        a bug in this module; never expected, kept so the pipeline never stops
====================  =====================================================================
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Final

import fastjsonschema
import orjson

from hookstream import resources
from hookstream.core.model import parse_rfc3339

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "EVENT_TYPES",
    "MAX_JSON_DEPTH",
    "MAX_REJECTION_DETAIL_CHARS",
    "ORDER_EVENT_TYPES",
    "PRODUCT_EVENT_TYPES",
    "REJECTION_REASONS",
    "SCHEMAS_DIR",
    "DomainEvent",
    "Rejection",
    "validate_event",
    "validate_status_record",
    "validate_webhook_payload",
]

PRODUCT_EVENT_TYPES: Final = ("product.created", "product.updated", "product.deleted")
ORDER_EVENT_TYPES: Final = (
    "order.created",
    "order.confirmed",
    "order.updated",
    "order.cancelled",
    "order.closed",
    "order.out_for_delivery",
    "order.ready_for_pickup",
    "order.delivered",
    "order.shipped",
)
EVENT_TYPES: Final = PRODUCT_EVENT_TYPES + ORDER_EVENT_TYPES

DEFAULT_MAX_EVENT_BYTES: Final = 256 * 1024
MAX_JSON_DEPTH: Final = 32
MAX_REJECTION_DETAIL_CHARS: Final = 500

REJECTION_REASONS: Final = (
    "empty",
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "too_deep",
    "number_out_of_range",
    "duplicate_keys",
    "missing_field",
    "wrong_type",
    "bad_id",
    "bad_timestamp",
    "unknown_type",
    "invalid_data",
    "schema",
    "unstorable",
    "internal_error",
)

SCHEMAS_DIR: Final = resources.SCHEMAS

ENVELOPE_FIELDS: Final = ("id", "type", "occurred_at", "organization_id", "store_id", "data")

# Integers must fit a signed 64-bit integer. orjson turns an integer literal beyond 64 bits into a
# (rounded) float instead of failing, so floats at or beyond 2**63 are rejected too: no quantity in
# an e-commerce event is that large, and such a value could not round-trip through Postgres bigint
# or most receivers.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1
_FLOAT_LIMIT: Final = float(2**63)
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """A domain event that passed every check; `data` matches the schema of `type`."""

    id: str
    type: str
    occurred_at: str
    organization_id: str
    store_id: str
    data: dict[str, Any]
    occurred_at_epoch_s: float
    # occurred_at normalised to UTC by hookstream.core.model.parse_rfc3339 (a leap second is the next
    # second); the outbound body keeps the text as published.
    occurred_at_utc: dt.datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record value was refused.

    `reason` is one of REJECTION_REASONS (a metric label); `detail` is human readable, at most
    MAX_REJECTION_DETAIL_CHARS characters, and never echoes large parts of the input.
    """

    reason: str
    detail: str


# --------------------------------------------------------------------------------------------------
# Schemas, compiled once.


def _load_schema(relative: str) -> dict[str, Any]:
    schema: dict[str, Any] = orjson.loads((SCHEMAS_DIR / relative).read_bytes())
    return schema


def _refuse_remote_ref(uri: str) -> Any:
    # fastjsonschema would otherwise fetch unknown $ref URIs with urllib.
    raise fastjsonschema.JsonSchemaDefinitionException(f"remote $ref not allowed: {uri}")


_NO_REMOTE_REFS: Final = {"http": _refuse_remote_ref, "https": _refuse_remote_ref, "file": _refuse_remote_ref}


def _inline_local_refs(node: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """Replace every {"$ref": "#/$defs/x"} by the definition itself (our schemas are not recursive).

    fastjsonschema compiles each $ref into a function call that also builds the error path eagerly;
    inlined, the same checks run about twice as fast, and error paths build only on failure.
    """
    if depth > 16:
        raise ValueError("schema $refs nest too deeply (recursive schema?)")
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return _inline_local_refs(defs[ref.removeprefix("#/$defs/")], defs, depth + 1)
        return {key: _inline_local_refs(value, defs, depth) for key, value in node.items() if key != "$defs"}
    if isinstance(node, list):
        return [_inline_local_refs(value, defs, depth) for value in node]
    return node


def _compile(schema: dict[str, Any]) -> Any:
    # `format` stays an annotation, as in JSON Schema 2020-12: date-times are enforced by `pattern`,
    # so the reference validator (jsonschema) and this one agree on every example.
    flat = _inline_local_refs(schema, schema.get("$defs", {}))
    return fastjsonschema.compile(flat, handlers=_NO_REMOTE_REFS, use_default=False, use_formats=False)


ENVELOPE_SCHEMA: Final = _load_schema("event-envelope.schema.json")
WEBHOOK_PAYLOAD_SCHEMA: Final = _load_schema("webhook-payload.schema.json")
STATUS_RECORD_SCHEMA: Final = _load_schema("delivery-status.schema.json")
EVENT_DATA_SCHEMAS: Final = {t: _load_schema(f"events/{t}.schema.json") for t in EVENT_TYPES}

_validate_envelope = _compile(ENVELOPE_SCHEMA)
_validate_payload = _compile(WEBHOOK_PAYLOAD_SCHEMA)
_validate_status = _compile(STATUS_RECORD_SCHEMA)
_DATA_VALIDATORS: Final = {t: _compile(s) for t, s in EVENT_DATA_SCHEMAS.items()}

if tuple(ENVELOPE_SCHEMA["properties"]["type"]["enum"]) != EVENT_TYPES:  # pragma: no cover
    raise RuntimeError("hookstream/schemas/event-envelope.schema.json and EVENT_TYPES disagree")


# --------------------------------------------------------------------------------------------------
# Cheap structural checks on the parsed tree.

# One JSON string token (valid JSON only: the text has already been parsed by orjson).
_JSON_STRING_RE: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_ESCAPED_COLON: Final = (b"u003a", b"u003A")


def _inspect_tree(root: dict[str, Any], raw: bytes) -> Rejection | None:
    """Reject too-deep nesting, out-of-range numbers and duplicate keys in one walk.

    Duplicate keys: orjson keeps the last value silently. In valid JSON every ':' outside a string
    separates a key from its value, so the number of keys written in the text is
    ``raw.count(b":")`` minus the colons inside strings. Colons inside strings are the colons of the
    parsed strings, counted during the walk, unless the text spells one as an escape (\\u003a); only
    then is the text re-scanned with a string-aware regex. If the text wrote more keys than the
    parsed objects hold, some key was repeated.
    """
    keys_parsed = 0
    colons_in_strings = 0
    stack: list[tuple[Any, int]] = [(root, 1)]
    pop = stack.pop
    push = stack.append
    while stack:
        node, depth = pop()
        if depth > MAX_JSON_DEPTH:
            return Rejection("too_deep", f"containers are nested deeper than {MAX_JSON_DEPTH} levels")
        if type(node) is dict:
            keys_parsed += len(node)
            for key in node:
                if ":" in key:
                    colons_in_strings += key.count(":")
            children = node.values()
        else:
            children = node
        child_depth = depth + 1
        for value in children:
            kind = type(value)
            if kind is str:
                if ":" in value:
                    colons_in_strings += value.count(":")
            elif kind is dict or kind is list:
                push((value, child_depth))
            elif kind is int:
                if value > _INT_MAX or value < _INT_MIN:
                    return Rejection(
                        "number_out_of_range", "an integer does not fit in a signed 64-bit integer"
                    )
            elif kind is float and not -_FLOAT_LIMIT < value < _FLOAT_LIMIT:
                return Rejection("number_out_of_range", "a number's magnitude is 2**63 or more")

    if _ESCAPED_COLON[0] in raw or _ESCAPED_COLON[1] in raw:
        keys_written = _JSON_STRING_RE.sub(b"", raw).count(b":")
    else:
        keys_written = raw.count(b":") - colons_in_strings
    if keys_written != keys_parsed:
        return Rejection(
            "duplicate_keys", f"an object repeats a key ({keys_written - keys_parsed} repeated key(s))"
        )
    return None


# --------------------------------------------------------------------------------------------------
# Mapping schema errors to reasons.

_JSON_TYPE_NAMES: Final = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _clip(text: str) -> str:
    if len(text) <= MAX_REJECTION_DETAIL_CHARS:
        return text
    return text[: MAX_REJECTION_DETAIL_CHARS - 3] + "..."


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def _envelope_rejection(event: dict[str, Any], error: fastjsonschema.JsonSchemaValueException) -> Rejection:
    path = error.path  # ["event"] for the envelope itself, ["event", "<field>"] for a field
    field = path[1] if len(path) > 1 else None
    rule = error.rule
    if rule == "required":
        missing = [name for name in ENVELOPE_FIELDS if name not in event]
        return Rejection("missing_field", _clip("missing required field(s): " + ", ".join(missing)))
    if rule == "additionalProperties":
        unknown = sorted(name for name in event if name not in ENVELOPE_FIELDS)
        names = ", ".join(_short_repr(name) for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        return Rejection("schema", _clip(f"unknown top-level field(s): {names}{more}"))
    if rule == "type" and field is not None:
        expected = error.rule_definition
        got = _JSON_TYPE_NAMES.get(type(error.value), "unknown")
        return Rejection("wrong_type", f"{field} must be of type {expected}, got {got}")
    if field == "id":
        return Rejection("bad_id", "id must be 1-128 characters of [A-Za-z0-9_-]")
    if field == "occurred_at":
        return Rejection(
            "bad_timestamp",
            f"occurred_at {_short_repr(error.value)} is not an RFC 3339 date-time with a zone",
        )
    if field in ("organization_id", "store_id") and rule == "pattern":
        return Rejection("schema", f"{field} must not contain control characters (U+0000-U+001F, U+007F-U+009F)")
    if field == "type":
        return Rejection(
            "unknown_type",
            f"type {_short_repr(error.value)} is not one of the {len(EVENT_TYPES)} supported events",
        )
    return Rejection("schema", _clip(error.message))


# --------------------------------------------------------------------------------------------------
# Public API.


def validate_event(
    value: bytes | None, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> DomainEvent | Rejection:
    """Validate one record value from aiq.products / aiq.orders.

    Returns a DomainEvent, or a Rejection whose reason is one of REJECTION_REASONS. Never raises,
    whatever `value` holds; performs no I/O.
    """
    try:
        return _validate_event(value, max_bytes)
    except Exception as exc:  # a bug here must dead-letter one record, not stop the router
        return Rejection("internal_error", _clip(f"{type(exc).__name__} while validating: {exc}"))


def _validate_event(value: bytes | None, max_bytes: int) -> DomainEvent | Rejection:
    if value is None:
        return Rejection("empty", "tombstone record (no value)")
    if type(value) is not bytes:
        if not isinstance(value, bytearray | memoryview):
            return Rejection("not_json", f"record value is a {type(value).__name__}, not bytes")
        value = bytes(value)
    size = len(value)
    if size == 0:
        return Rejection("empty", "zero-length value")
    if size > max_bytes:
        return Rejection("too_large", f"value is {size} bytes, the limit is {max_bytes}")

    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return _parse_rejection(value, exc)

    if type(event) is not dict:
        return Rejection(
            "not_object",
            f"top-level JSON value is {_JSON_TYPE_NAMES.get(type(event), 'unknown')}, not object",
        )

    problem = _inspect_tree(event, value)
    if problem is not None:
        return problem

    try:
        _validate_envelope(event, name_prefix="event")
    except fastjsonschema.JsonSchemaValueException as exc:
        return _envelope_rejection(event, exc)

    occurred_at = event["occurred_at"]
    try:
        occurred_at_utc = parse_rfc3339(occurred_at)
    except ValueError as exc:
        return Rejection("bad_timestamp", _clip(f"occurred_at: {exc}"))

    event_type = event["type"]
    data = event["data"]
    try:
        _DATA_VALIDATORS[event_type](data)
    except fastjsonschema.JsonSchemaValueException as exc:
        return Rejection("invalid_data", _clip(f"{event_type}: {exc.message}"))

    return DomainEvent(
        id=event["id"],
        type=event_type,
        occurred_at=occurred_at,
        organization_id=event["organization_id"],
        store_id=event["store_id"],
        data=data,
        occurred_at_epoch_s=(occurred_at_utc - _EPOCH).total_seconds(),
        occurred_at_utc=occurred_at_utc,
    )


def _parse_rejection(value: bytes, exc: orjson.JSONDecodeError) -> Rejection:
    message = str(exc)
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as decode_error:
        return Rejection("not_utf8", f"invalid UTF-8 at byte {decode_error.start}")
    if "depth" in message or "recursion" in message:
        return Rejection("too_deep", f"containers are nested deeper than {MAX_JSON_DEPTH} levels")
    if "infinity" in message or "out of range" in message:
        return Rejection("number_out_of_range", _clip(message))
    return Rejection("not_json", _clip(message))


def validate_webhook_payload(obj: Any) -> str | None:
    """Check an outbound webhook body (parsed) against hookstream/schemas/webhook-payload.schema.json.

    For a domain event type, `data` is also checked against that type's schema. Returns an error
    message, or None when valid.
    """
    try:
        _validate_payload(obj, name_prefix="payload")
        validate_data = _DATA_VALIDATORS.get(obj["type"])
        if validate_data is not None:
            validate_data(obj["data"])
    except fastjsonschema.JsonSchemaValueException as exc:
        return _clip(exc.message)
    return None


def validate_status_record(obj: Any) -> str | None:
    """Check a delivery-status record (parsed) against hookstream/schemas/delivery-status.schema.json.

    Returns an error message, or None when valid.
    """
    try:
        _validate_status(obj, name_prefix="status")
    except fastjsonschema.JsonSchemaValueException as exc:
        return _clip(exc.message)
    return None
