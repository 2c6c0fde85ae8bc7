"""The state enums: their values are the ones the schemas spell, and they reach the wire as plain text."""

from __future__ import annotations

import re

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from hookstream import resources
from hookstream.api.errors import dumps
from hookstream.core.states import AttemptStatus, BreakerState, DeliveryStatus

INIT_SQL = (resources.MIGRATIONS / "0001_init.sql").read_text()
OPENAPI = orjson.loads(resources.OPENAPI.read_bytes())
STATUS_SCHEMA = orjson.loads((resources.SCHEMAS / "delivery-status.schema.json").read_bytes())
ALL_MEMBERS = [*DeliveryStatus, *AttemptStatus, *BreakerState]


def check_values(column: str) -> set[str]:
    """The values a ``column text ... CHECK (column IN (...))`` of 0001_init.sql allows."""
    match = re.search(rf"\b{column}\s+text\b[^\n]*CHECK \({column} IN \(([^)]*)\)\)", INIT_SQL)
    assert match, f"no CHECK constraint on {column}"
    return set(re.findall(r"'([^']*)'", match.group(1)))


def test_delivery_status_is_what_the_deliveries_table_and_the_api_allow() -> None:
    assert set(DeliveryStatus) == check_values("status")
    assert list(DeliveryStatus) == OPENAPI["components"]["schemas"]["DeliveryStatus"]["enum"]


def test_recorded_attempt_statuses_are_what_the_attempts_table_and_the_status_topic_allow() -> None:
    recorded = [s for s in AttemptStatus if s is not AttemptStatus.DEFERRED]
    assert set(recorded) == check_values("outcome")
    assert recorded == STATUS_SCHEMA["properties"]["status"]["enum"]
    assert AttemptStatus.DEFERRED not in check_values("outcome")


def test_breaker_states_are_the_documented_metric_labels() -> None:
    assert [str(s) for s in BreakerState] == ["closed", "open", "half_open"]


@pytest.mark.parametrize("member", ALL_MEMBERS, ids=str)
def test_a_member_is_its_plain_value_everywhere_it_is_written(member) -> None:
    value = member.value
    assert type(value) is str
    assert member == value and hash(member) == hash(value) and {value: 1}[member] == 1
    assert str(member) == f"{member}" == "%s" % member == value  # noqa: UP031 - %-formatting is what logging does
    # byte-identical JSON to the plain string, bare and nested, with and without the API's options
    assert orjson.dumps(member) == orjson.dumps(value)
    assert orjson.dumps({"status": member, "all": [member]}) == orjson.dumps({"status": value, "all": [value]})
    assert dumps({"status": member}) == dumps({"status": value})


def test_a_member_as_a_prometheus_label_is_its_value() -> None:
    registry = CollectorRegistry()
    counter = Counter("t_transitions_total", "test", ["state"], registry=registry)
    counter.labels(BreakerState.HALF_OPEN).inc()
    counter.labels("half_open").inc()
    assert 't_transitions_total{state="half_open"} 2.0' in generate_latest(registry).decode()
