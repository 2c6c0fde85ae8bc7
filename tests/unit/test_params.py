"""The API's query-parameter times: the core parser (hookstream.core.model.parse_rfc3339) behind a 422."""

from __future__ import annotations

import datetime as dt

import pytest

from hookstream.api.errors import ApiError
from hookstream.api.params import parse_time_query

TEN_FIFTEEN = dt.datetime(2026, 11, 27, 10, 15, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-27T10:15:00Z", TEN_FIFTEEN),
        ("2026-11-27t10:15:00z", TEN_FIFTEEN),
        ("2026-11-27T11:15:00+01:00", TEN_FIFTEEN),
        ("2026-11-27T11:15:00 01:00", TEN_FIFTEEN),  # an unencoded '+' arrives as a space
        ("2026-11-27 10:15:00Z", TEN_FIFTEEN),  # RFC 3339 allows a space between date and time
        ("2026-11-27 11:15:00 01:00", TEN_FIFTEEN),
        ("2026-11-27T05:15:00-05:00", TEN_FIFTEEN),
        ("2026-11-27T10:15:00.1234567Z", TEN_FIFTEEN.replace(microsecond=123456)),
        ("2026-11-27T10:14:60Z", TEN_FIFTEEN),  # a leap second is the next second, as everywhere else
    ],
)
def test_reads_what_the_core_parser_reads(raw: str, expected: dt.datetime) -> None:
    parsed = parse_time_query("since", raw)
    assert parsed == expected and parsed.tzinfo is dt.UTC


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("yesterday", "is not an RFC 3339 date-time with a zone"),
        ("2026-11-27", "is not an RFC 3339 date-time with a zone"),
        ("2026-11-27T10:15:00", "is not an RFC 3339 date-time with a zone"),
        ("2026-11-27T10:15:00Z\n", "is not an RFC 3339 date-time with a zone"),
        ("2026-11-27T10:15:00 0100", "is not an RFC 3339 date-time with a zone"),
        ("", "is not an RFC 3339 date-time with a zone"),
        ("2026-13-01T00:00:00Z", "is not a real date"),
        ("2026-02-30T00:00:00Z", "is not a real date"),
        ("2026-11-27T24:00:00Z", "out of range"),
        ("2026-11-27T10:15:00+24:00", "zone offset out of range"),
        ("0001-01-01T00:30:00+01:00", "outside the years 0001-9999"),
    ],
)
def test_refusals_are_422_naming_the_field_and_saying_why(raw: str, reason: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_time_query("until", raw)
    error = caught.value
    assert (error.status, error.code, error.field) == (422, "validation_error", "until")
    assert error.message.startswith("until: ") and reason in error.message
    assert "e.g. 2026-11-27T10:15:00Z" in error.message
