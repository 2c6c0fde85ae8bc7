"""Every schema under hookstream/schemas/ is a valid JSON Schema 2020-12, and every example under
hookstream/schemas/examples/<schema>/{valid,invalid}/ is judged the same way by the reference implementation
(the `jsonschema` library) and by the compiled validators the services use.

Examples of the event envelope and of full events are also fed, as raw bytes, to
`validate_event`: an invalid example's file name starts with the exact rejection reason
(`<reason>--<why>.json`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest

from hookstream.core import validation
from hookstream.core.validation import (
    EVENT_TYPES,
    REJECTION_REASONS,
    SCHEMAS_DIR,
    DomainEvent,
    Rejection,
    validate_event,
    validate_status_record,
    validate_webhook_payload,
)

EXAMPLES_DIR = SCHEMAS_DIR / "examples"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

SCHEMA_FILES = sorted([*SCHEMAS_DIR.glob("*.schema.json"), *(SCHEMAS_DIR / "events").glob("*.schema.json")])
# examples/<name>/ -> what the examples are checked against
EXAMPLE_SETS = ("event-envelope", "events", "webhook-payload", "delivery-status")


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def example_files(kind: str) -> list[Path]:
    return sorted(EXAMPLES_DIR.glob(f"*/{kind}/*.json"))


def example_id(path: Path) -> str:
    return str(path.relative_to(EXAMPLES_DIR))


def expected_reason(path: Path) -> str:
    return path.name.split("--", 1)[0]


@pytest.fixture(scope="module")
def reference() -> Any:
    """Draft202012Validator factory from the reference implementation."""
    # A dev dependency: if it is missing the suite must fail, not skip the checks of our own validators.
    import jsonschema
    validators: dict[str, Any] = {}

    def get(relative: str) -> Any:
        if relative not in validators:
            validators[relative] = jsonschema.Draft202012Validator(load(SCHEMAS_DIR / relative))
        return validators[relative]

    return get


def reference_verdict(reference: Any, set_name: str, doc: Any) -> bool:
    """True when the reference implementation accepts `doc` as an example of `set_name`."""
    if set_name == "events":
        if not reference("event-envelope.schema.json").is_valid(doc):
            return False
        return reference(f"events/{doc['type']}.schema.json").is_valid(doc["data"])
    return reference(f"{set_name}.schema.json").is_valid(doc)


def compiled_verdict(set_name: str, doc: Any) -> bool:
    """True when the compiled fastjsonschema validators of the services accept `doc`."""
    try:
        if set_name in ("event-envelope", "events"):
            validation._validate_envelope(doc)
            if set_name == "events":
                validation._DATA_VALIDATORS[doc["type"]](doc["data"])
        elif set_name == "webhook-payload":
            validation._validate_payload(doc)
        elif set_name == "delivery-status":
            validation._validate_status(doc)
        else:
            raise AssertionError(f"unknown example set {set_name}")
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# The schemas themselves.


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: str(p.relative_to(SCHEMAS_DIR)))
def test_schema_is_valid_2020_12(path: Path) -> None:
    # A dev dependency: if it is missing the suite must fail, not skip the checks of our own validators.
    import jsonschema
    schema = load(path)
    assert schema["$schema"] == DRAFT_2020_12
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_files_cover_exactly_the_event_types() -> None:
    assert len(EVENT_TYPES) == 12
    names = sorted(p.name for p in (SCHEMAS_DIR / "events").glob("*.schema.json"))
    assert names == sorted(f"{t}.schema.json" for t in EVENT_TYPES)


def test_type_enums_match_event_types() -> None:
    assert (
        tuple(load(SCHEMAS_DIR / "event-envelope.schema.json")["properties"]["type"]["enum"]) == EVENT_TYPES
    )
    extended = (*EVENT_TYPES, "webhook.test")
    assert tuple(load(SCHEMAS_DIR / "webhook-payload.schema.json")["properties"]["type"]["enum"]) == extended
    assert (
        tuple(load(SCHEMAS_DIR / "delivery-status.schema.json")["properties"]["event_type"]["enum"])
        == extended
    )


def test_shared_definitions_do_not_drift() -> None:
    """Each events/*.schema.json is self-contained; the copies of shared $defs must stay identical."""
    for family in ("product.", "order."):
        defs = [
            load(SCHEMAS_DIR / "events" / f"{t}.schema.json")["$defs"]
            for t in EVENT_TYPES
            if t.startswith(family)
        ]
        assert all(d == defs[0] for d in defs), family
    timestamp = load(SCHEMAS_DIR / "event-envelope.schema.json")["properties"]["occurred_at"]["pattern"]
    assert (
        load(SCHEMAS_DIR / "webhook-payload.schema.json")["properties"]["created_at"]["pattern"] == timestamp
    )
    assert load(SCHEMAS_DIR / "delivery-status.schema.json")["properties"]["at"]["pattern"] == timestamp
    for event_type in EVENT_TYPES:
        schema = load(SCHEMAS_DIR / "events" / f"{event_type}.schema.json")
        assert schema["$defs"]["timestamp"]["pattern"] == timestamp


def test_order_created_accepts_the_contract_example() -> None:
    data = {"order": {"id": "ord_991", "total": "42.10", "currency": "USD"}}
    validation._DATA_VALIDATORS["order.created"](data)


# ------------------------------------------------------------------------------------------------
# The example tree.


def test_example_tree_layout() -> None:
    assert sorted(p.name for p in EXAMPLES_DIR.iterdir()) == sorted(EXAMPLE_SETS)
    for set_name in EXAMPLE_SETS:
        assert sorted(p.name for p in (EXAMPLES_DIR / set_name).iterdir()) == ["invalid", "valid"], set_name
        assert len(list((EXAMPLES_DIR / set_name / "valid").glob("*.json"))) >= 1, set_name
        assert len(list((EXAMPLES_DIR / set_name / "invalid").glob("*.json"))) >= 3, set_name
    for event_type in EVENT_TYPES:
        path = EXAMPLES_DIR / "events" / "valid" / f"{event_type}.json"
        assert load(path)["type"] == event_type
    for path in example_files("invalid"):
        if path.parts[-3] in ("event-envelope", "events"):
            assert expected_reason(path) in REJECTION_REASONS, path.name


@pytest.mark.parametrize("path", example_files("valid"), ids=example_id)
def test_valid_example_is_accepted(path: Path, reference: Any) -> None:
    set_name = path.parts[-3]
    doc = load(path)
    assert reference_verdict(reference, set_name, doc), "reference implementation rejects it"
    assert compiled_verdict(set_name, doc), "compiled validator rejects it"
    if set_name in ("event-envelope", "events"):
        result = validate_event(path.read_bytes())
        assert isinstance(result, DomainEvent), result
        assert result.id == doc["id"]
    elif set_name == "webhook-payload":
        assert validate_webhook_payload(doc) is None
    elif set_name == "delivery-status":
        assert validate_status_record(doc) is None


@pytest.mark.parametrize("path", example_files("invalid"), ids=example_id)
def test_invalid_example_is_rejected(path: Path, reference: Any) -> None:
    set_name = path.parts[-3]
    doc = load(path)
    if set_name == "events":
        # The envelope is fine; only `data` breaks its type's schema, for both implementations.
        assert expected_reason(path) == "invalid_data"
        assert reference("event-envelope.schema.json").is_valid(doc)
        assert validation._validate_envelope(doc) == doc
    assert not reference_verdict(reference, set_name, doc), "reference implementation accepts it"
    assert not compiled_verdict(set_name, doc), "compiled validator accepts it"
    if set_name in ("event-envelope", "events"):
        result = validate_event(path.read_bytes())
        assert isinstance(result, Rejection)
        assert result.reason == expected_reason(path), result
    elif set_name == "webhook-payload":
        assert validate_webhook_payload(doc) is not None
    elif set_name == "delivery-status":
        assert validate_status_record(doc) is not None
