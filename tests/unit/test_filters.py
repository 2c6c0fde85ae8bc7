"""CEL filters (issue 15): compiled when saved, evaluated per event without raising."""

from __future__ import annotations

import pytest

from hookstream.core.filters import (
    MAX_FILTER_CHARS,
    SAMPLE_PAYLOADS,
    FilterError,
    FilterFailure,
    check_against_samples,
    compile_filter,
    evaluate,
    webhook_payload,
)
from hookstream.core.validation import EVENT_TYPES

ORDER = webhook_payload("evt_1", "order.created", "2026-11-27T10:15:00Z", "org_1", "store_1",
                        {"order": {"id": "ord_1", "total": "142.10", "currency": "EUR",
                                   "lines": [{"sku": "A", "quantity": 2}], "payment": {"method": "card"}}})
PRODUCT = webhook_payload("evt_2", "product.updated", "2026-11-27T10:15:00Z", "org_1", "store_1",
                          {"product": {"id": "p1", "vendor": "Acme", "tags": ["x"]}})


@pytest.mark.parametrize(("source", "payload", "expected"), [
    ('double(data.order.total) >= 100.0', ORDER, True),
    ('double(data.order.total) >= 200.0', ORDER, False),
    ('type == "order.created" && data.order.currency == "EUR"', ORDER, True),
    ('type == "order.created" && data.order.currency == "USD"', ORDER, False),
    ('has(data.product.vendor) && data.product.vendor == "Acme"', PRODUCT, True),
    ('has(data.product.brand)', PRODUCT, False),
    ('data.order.lines.exists(l, l.sku == "A" && l.quantity > 1)', ORDER, True),
    ('data.order.payment.method == "card"', ORDER, True),
    ('store_id in ["store_1", "store_2"] && organization_id == "org_1"', ORDER, True),
    ('created_at.startsWith("2026-11")', ORDER, True),
    ('id == "evt_1"', ORDER, True),
])
def test_filters_evaluate_over_the_webhook_payload(source: str, payload: dict, expected: bool) -> None:
    assert evaluate(compile_filter(source), payload) is expected


@pytest.mark.parametrize(("source", "message"), [
    ("double(data.order.total) >", "syntax error at line 1, column 27"),
    ("a &&& b", "syntax error at line 1, column 5"),
    ("data.order.total >\n  'x' &&", "syntax error at line 2"),
    ("foo == 1", "unknown variable 'foo'"),
    ("", "non-empty"),
    ("   ", "non-empty"),
    ("x" * (MAX_FILTER_CHARS + 1), f"at most {MAX_FILTER_CHARS}"),
    ("type == 'a\x00'", "U+0000"),
])
def test_bad_filters_are_refused_with_a_reason(source: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_filter(source)
    assert message in str(info.value)


def test_a_non_string_filter_is_refused() -> None:
    with pytest.raises(FilterError):
        compile_filter(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(("source", "kind", "text"), [
    ('data.order.missing == "x"', "missing", "no such key"),
    ('has(data.product.vendor) && data.product.vendor == "Acme"', "missing", "product"),  # an order event
    ('data.order.total > 100', "type", "overload"),  # a string against an int: CEL never coerces
    ('int(data.order.currency) > 1', "other", "int"),
    ('data.order.total', "type", "not a boolean"),
    ('1 / 0 == 1', "other", "ZeroDivisionError"),
])
def test_evaluation_errors_are_values_never_exceptions(source: str, kind: str, text: str) -> None:
    outcome = evaluate(compile_filter(source), ORDER)
    assert isinstance(outcome, FilterFailure), outcome
    assert outcome.kind == kind and text in outcome.error, outcome


def test_comprehension_variables_are_not_unknown() -> None:
    assert compile_filter('data.order.lines.all(line, line.quantity > 0)').source


def test_type_errors_are_found_on_the_sample_events_when_saved() -> None:
    assert set(SAMPLE_PAYLOADS) == set(EVENT_TYPES)
    problem = check_against_samples(compile_filter("data.order.total > 100"), ["order.created"])
    assert problem is not None and "order.created" in problem
    assert check_against_samples(compile_filter("double(data.order.total) > 100.0"), ["order.created"]) is None
    # a key the sample lacks is not an error: real events may have it
    assert check_against_samples(compile_filter('data.order.coupon == "X"'), ["order.created"]) is None
    assert check_against_samples(compile_filter('"yes"'), ["product.created"]) is not None


@pytest.mark.parametrize("source", [
    "[0,1,2,3,4,5,6,7,8,9].all(a, [0,1,2,3,4,5,6,7,8,9].all(b, true))",  # 10^k steps for k levels
    "data.order.lines.exists(l, data.order.lines.exists(m, l.sku == m.sku))",
    "data.order.lines.map(l, data.order.lines.map(m, m)).size() > 0",
])
def test_nested_comprehensions_are_refused(source: str) -> None:
    with pytest.raises(FilterError, match="cannot be nested"):
        compile_filter(source)


def test_chained_comprehensions_and_parentheses_in_strings_are_fine() -> None:
    assert compile_filter('data.order.lines.map(l, l.sku).exists(s, s == "a(")').needs == {"data"}
    assert compile_filter('type == "x.all(" || type.startsWith(")")').needs == {"type"}
    with pytest.raises(FilterError, match="at most 5"):
        compile_filter(" && ".join(["data.order.lines.all(l, true)"] * 6))


@pytest.mark.parametrize("source", ["nosuchfn(type)", 'type.startswith("o")', "data.order.lines.all(x, true) && x"])
def test_undefined_functions_and_variables_are_found_on_the_samples(source: str) -> None:
    problem = check_against_samples(compile_filter(source), ["order.created"])
    assert problem is not None and "undefined" in problem


def test_a_context_built_once_serves_every_filter_of_an_event() -> None:
    from hookstream.core.filters import make_context

    filters = [compile_filter('type == "order.created"'), compile_filter("double(data.order.total) > 100.0")]
    context = make_context(ORDER, set().union(*(f.needs for f in filters)))
    assert [evaluate(f, context) for f in filters] == [True, True]
    only_type = make_context(ORDER, filters[0].needs)  # data is never converted for a type-only filter
    assert evaluate(filters[0], only_type) is True
