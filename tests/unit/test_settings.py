"""Settings.from_env: contract defaults, value parsing, and a SettingsError naming every bad variable."""

from __future__ import annotations

import dataclasses

import pytest

from hookstream.core.settings import VARIABLES, Settings, SettingsError, parse_duration_s


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.database_url == "postgresql://127.0.0.1:5432/hookstream"
    assert s.source_topics == ("aiq.products", "aiq.orders")
    assert s.status_topic == "hookstream.delivery-status"
    assert s.dead_letter_topic == "hookstream.dead-letter"
    assert s.retry_delays_s == (30.0, 300.0, 1800.0)
    assert s.retry_jitter_ratio == 0.2
    assert s.request_timeout_s == 10.0
    assert s.allow_http is False
    assert s.allow_private_networks is False
    assert s.api_listen == ("127.0.0.1", 8080)
    assert s.max_event_bytes == 256 * 1024
    assert s.max_response_excerpt_bytes == 4096


def test_from_env_empty_equals_the_dataclass_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().allow_http = True  # type: ignore[misc]


def test_contract_default_values_written_out_parse_to_the_defaults() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "DATABASE_URL": "postgresql://127.0.0.1:5432/hookstream",
        "HOOKSTREAM_SOURCE_TOPICS": "aiq.products,aiq.orders",
        "HOOKSTREAM_STATUS_TOPIC": "hookstream.delivery-status",
        "HOOKSTREAM_DEAD_LETTER_TOPIC": "hookstream.dead-letter",
        "HOOKSTREAM_RETRY_DELAYS": "30s,5m,30m",
        "HOOKSTREAM_REQUEST_TIMEOUT": "10s",
        "HOOKSTREAM_ALLOW_HTTP": "false",
        "HOOKSTREAM_ALLOW_PRIVATE_NETWORKS": "false",
        "HOOKSTREAM_API_LISTEN": "127.0.0.1:8080",
    }
    assert Settings.from_env(env) == Settings()


# ------------------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("250ms", 0.25),
        ("1ms", 0.001),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        (" 2h ", 7200.0),
        ("30d", 30 * 86400.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration_units(raw: str, seconds: float) -> None:
    assert parse_duration_s("X", raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["30", "", "s", "-5s", "5 minutes", "5w", "5D", "1.s", "5M", "ten"])
def test_parse_duration_refuses_bare_numbers_and_unknown_units(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"^X="):
        parse_duration_s("X", raw)


def test_retry_delays_accept_every_unit() -> None:
    s = Settings.from_env({"HOOKSTREAM_RETRY_DELAYS": "250ms,2s,1h"})
    assert s.retry_delays_s == pytest.approx((0.25, 2.0, 3600.0))


def test_retry_delays_with_spaces() -> None:
    assert Settings.from_env({"HOOKSTREAM_RETRY_DELAYS": "1s, 2m ,3h"}).retry_delays_s == (
        1.0,
        120.0,
        10800.0,
    )


@pytest.mark.parametrize(("raw", "seconds"), [("50ms", 0.05), ("750ms", 0.75), ("10s", 10.0), ("5m", 300.0)])
def test_request_timeout_within_range(raw: str, seconds: float) -> None:
    assert Settings.from_env({"HOOKSTREAM_REQUEST_TIMEOUT": raw}).request_timeout_s == pytest.approx(seconds)


def test_breaker_open_and_flush_interval_durations() -> None:
    s = Settings.from_env({"HOOKSTREAM_BREAKER_OPEN": "2m", "HOOKSTREAM_OUTCOME_FLUSH_INTERVAL": "250ms"})
    assert s.breaker_open_s == 120.0
    assert s.outcome_flush_interval_ms == 250
    assert Settings.from_env({"HOOKSTREAM_OUTCOME_FLUSH_INTERVAL": "1s"}).outcome_flush_interval_ms == 1000


# ------------------------------------------------------------------------------------------- booleans

TRUTHY = ["true", "TRUE", "True", "1", "yes", "YES", " yes "]
FALSY = ["false", "FALSE", "False", "0", "no", "NO", " no "]


@pytest.mark.parametrize("var", ["HOOKSTREAM_ALLOW_HTTP", "HOOKSTREAM_ALLOW_PRIVATE_NETWORKS"])
@pytest.mark.parametrize("raw", TRUTHY)
def test_booleans_true(var: str, raw: str) -> None:
    field = {
        "HOOKSTREAM_ALLOW_HTTP": "allow_http",
        "HOOKSTREAM_ALLOW_PRIVATE_NETWORKS": "allow_private_networks",
    }
    assert getattr(Settings.from_env({var: raw}), field[var]) is True


@pytest.mark.parametrize("var", ["HOOKSTREAM_ALLOW_HTTP", "HOOKSTREAM_ALLOW_PRIVATE_NETWORKS"])
@pytest.mark.parametrize("raw", FALSY)
def test_booleans_false(var: str, raw: str) -> None:
    field = {
        "HOOKSTREAM_ALLOW_HTTP": "allow_http",
        "HOOKSTREAM_ALLOW_PRIVATE_NETWORKS": "allow_private_networks",
    }
    assert getattr(Settings.from_env({var: raw}), field[var]) is False


# ------------------------------------------------------------------------------------ other values


def test_explicit_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": " kafka-1:9092 , kafka-2:9092 ",
            "DATABASE_URL": "postgres://u:p@db:5432/hs",
            "HOOKSTREAM_SOURCE_TOPICS": "a.products, a.orders,",
            "HOOKSTREAM_STATUS_TOPIC": "s.status",
            "HOOKSTREAM_DEAD_LETTER_TOPIC": "s.dlq",
            "HOOKSTREAM_DELIVERY_TOPIC": "s.deliveries",
            "HOOKSTREAM_API_LISTEN": "0.0.0.0:9000",
            "HOOKSTREAM_METRICS_LISTEN": "[::1]:9200",
            "HOOKSTREAM_MAX_EVENT_BYTES": "1MiB",
            "HOOKSTREAM_MAX_RESPONSE_EXCERPT": "8KiB",
            "HOOKSTREAM_ROUTER_GROUP": " r-group ",
            "HOOKSTREAM_SENDER_GROUP": "s-group",
            "HOOKSTREAM_SENDER_MAX_IN_FLIGHT": "50",
            "HOOKSTREAM_ENDPOINT_MAX_CONCURRENCY": "4",
            "HOOKSTREAM_ENDPOINT_MAX_QUEUED": "0",
            "HOOKSTREAM_BREAKER_FAILURE_THRESHOLD": "3",
            "HOOKSTREAM_OUTCOME_FLUSH_MAX": "10",
            "HOOKSTREAM_RECOVER_RATE": "5",
            "HOOKSTREAM_RETENTION": "90d",
            "HOOKSTREAM_LOG_FORMAT": "JSON",
            "HOOKSTREAM_LOG_LEVEL": "debug",
        }
    )
    assert s.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.database_url == "postgres://u:p@db:5432/hs"
    assert s.source_topics == ("a.products", "a.orders")
    assert (s.status_topic, s.dead_letter_topic, s.delivery_topic) == ("s.status", "s.dlq", "s.deliveries")
    assert s.api_listen == ("0.0.0.0", 9000)
    assert s.metrics_listen_override == ("::1", 9200)
    assert s.max_event_bytes == 1024 * 1024
    assert s.max_response_excerpt_bytes == 8192
    assert (s.router_group, s.sender_group) == ("r-group", "s-group")
    assert s.sender_max_in_flight == 50
    assert s.endpoint_max_concurrency == 4
    assert s.endpoint_max_queued == 0
    assert s.breaker_failure_threshold == 3
    assert s.outcome_flush_max == 10
    assert s.recover_rate == 5
    assert s.retention_s == 90 * 86400.0
    assert s.log_format == "json"
    assert s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("raw", "size"), [("4096", 4096), ("2048B", 2048), ("4KiB", 4096), ("1MiB", 1048576)]
)
def test_sizes(raw: str, size: int) -> None:
    assert Settings.from_env({"HOOKSTREAM_MAX_RESPONSE_EXCERPT": raw}).max_response_excerpt_bytes == size


def test_metrics_listen_per_service_and_override() -> None:
    s = Settings.from_env({})
    assert s.metrics_listen_for("router") == ("127.0.0.1", 9101)
    assert s.metrics_listen_for("sender") == ("127.0.0.1", 9102)
    o = Settings.from_env({"HOOKSTREAM_METRICS_LISTEN": "0.0.0.0:9999"})
    assert o.metrics_listen_for("router") == o.metrics_listen_for("sender") == ("0.0.0.0", 9999)


def test_unknown_variables_are_ignored() -> None:
    assert Settings.from_env({"HOME": "/root", "HOOKSTREAM_UNRELATED": "x"}) == Settings()


# ------------------------------------------------------------------------ malformed: every variable

MALFORMED: list[tuple[str, str]] = [
    ("KAFKA_BOOTSTRAP_SERVERS", "localhost"),
    ("KAFKA_BOOTSTRAP_SERVERS", ""),
    ("KAFKA_BOOTSTRAP_SERVERS", " , "),
    ("DATABASE_URL", "mysql://db:3306/hs"),
    ("DATABASE_URL", "not a url"),
    ("DATABASE_URL", "postgresql://"),
    ("DATABASE_READ_URL", "mysql://replica:3306/hs"),
    ("DATABASE_READ_URL", "replica.internal/hs"),
    ("HOOKSTREAM_SOURCE_TOPICS", "bad topic!"),
    ("HOOKSTREAM_SOURCE_TOPICS", ","),
    ("HOOKSTREAM_SOURCE_TOPICS", ""),
    ("HOOKSTREAM_STATUS_TOPIC", "has space"),
    ("HOOKSTREAM_STATUS_TOPIC", ""),
    ("HOOKSTREAM_DEAD_LETTER_TOPIC", "a/b"),
    ("HOOKSTREAM_DELIVERY_TOPIC", "x" * 250),
    ("HOOKSTREAM_RETRY_DELAYS", "bogus"),
    ("HOOKSTREAM_RETRY_DELAYS", "30,300,1800"),
    ("HOOKSTREAM_RETRY_DELAYS", "30s,5m"),
    ("HOOKSTREAM_RETRY_DELAYS", "30s,5m,30m,1h"),
    ("HOOKSTREAM_RETRY_DELAYS", ""),
    ("HOOKSTREAM_REQUEST_TIMEOUT", "ten"),
    ("HOOKSTREAM_REQUEST_TIMEOUT", "10"),
    ("HOOKSTREAM_REQUEST_TIMEOUT", "49ms"),
    ("HOOKSTREAM_REQUEST_TIMEOUT", "301s"),
    ("HOOKSTREAM_REQUEST_TIMEOUT", "0s"),
    ("HOOKSTREAM_ALLOW_HTTP", "maybe"),
    ("HOOKSTREAM_ALLOW_HTTP", "2"),
    ("HOOKSTREAM_ALLOW_PRIVATE_NETWORKS", "sure"),
    ("HOOKSTREAM_API_LISTEN", "8080"),
    ("HOOKSTREAM_API_LISTEN", "127.0.0.1:"),
    ("HOOKSTREAM_API_LISTEN", ":8080"),
    ("HOOKSTREAM_API_LISTEN", "127.0.0.1:65536"),
    ("HOOKSTREAM_API_LISTEN", "127.0.0.1:http"),
    ("HOOKSTREAM_METRICS_LISTEN", "nowhere"),
    ("HOOKSTREAM_MAX_EVENT_BYTES", "big"),
    ("HOOKSTREAM_MAX_EVENT_BYTES", "100"),
    ("HOOKSTREAM_MAX_EVENT_BYTES", "17MiB"),
    ("HOOKSTREAM_MAX_EVENT_BYTES", "2MiB"),  # its delivery task could outgrow the 4 MiB delivery topic
    ("HOOKSTREAM_MAX_EVENT_BYTES", "1GB"),
    ("HOOKSTREAM_MAX_RESPONSE_EXCERPT", "lots"),
    ("HOOKSTREAM_MAX_RESPONSE_EXCERPT", "2MiB"),
    ("HOOKSTREAM_MAX_RESPONSE_EXCERPT", "-1"),
    ("HOOKSTREAM_ROUTER_GROUP", "   "),
    ("HOOKSTREAM_SENDER_GROUP", ""),
    ("HOOKSTREAM_SENDER_MAX_IN_FLIGHT", "many"),
    ("HOOKSTREAM_SENDER_MAX_IN_FLIGHT", "0"),
    ("HOOKSTREAM_SENDER_MAX_IN_FLIGHT", "100001"),
    ("HOOKSTREAM_ENDPOINT_MAX_CONCURRENCY", "0"),
    ("HOOKSTREAM_ENDPOINT_MAX_CONCURRENCY", "1.5"),
    ("HOOKSTREAM_ENDPOINT_MAX_QUEUED", "-1"),
    ("HOOKSTREAM_BREAKER_FAILURE_THRESHOLD", "0"),
    ("HOOKSTREAM_OUTCOME_FLUSH_MAX", "0"),
    ("HOOKSTREAM_RECOVER_RATE", "0"),
    ("HOOKSTREAM_RECOVER_RATE", "10001"),
    ("HOOKSTREAM_RETENTION", "12h"),  # less than the one-day partitions
    ("HOOKSTREAM_RETENTION", "3651d"),
    ("HOOKSTREAM_RETENTION", "30"),
    ("HOOKSTREAM_BREAKER_OPEN", "30"),
    ("HOOKSTREAM_BREAKER_OPEN", "soon"),
    ("HOOKSTREAM_OUTCOME_FLUSH_INTERVAL", "fast"),
    ("HOOKSTREAM_OUTCOME_FLUSH_INTERVAL", "0ms"),
    ("HOOKSTREAM_OUTCOME_FLUSH_INTERVAL", "11s"),
    ("HOOKSTREAM_LOG_FORMAT", "xml"),
    ("HOOKSTREAM_SECRET_KEY", "not base64!"),
    ("HOOKSTREAM_SECRET_KEY", "c2hvcnQ="),  # base64, but 5 bytes
    ("HOOKSTREAM_LOG_LEVEL", "LOUD"),
]


def test_malformed_cases_cover_every_variable_from_env_reads() -> None:
    known = {variable.env for variable in VARIABLES}  # from_env reads exactly the table
    assert len(known) == len(VARIABLES) >= 25
    assert known == {var for var, _ in MALFORMED}


@pytest.mark.parametrize(("var", "raw"), MALFORMED, ids=[f"{v}={r[:20]!r}" for v, r in MALFORMED])
def test_malformed_value_raises_settings_error_naming_the_variable(var: str, raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: raw})
    assert var in str(info.value)


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_database_url_error_does_not_echo_the_password() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"DATABASE_URL": "mysql://user:hunter2@db/hs"})
    assert "DATABASE_URL" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_database_read_url_is_optional_and_parsed_like_database_url() -> None:
    assert Settings.from_env({}).database_read_url is None
    assert Settings.from_env({"DATABASE_READ_URL": ""}).database_read_url is None  # empty: unset
    assert Settings.from_env({"DATABASE_READ_URL": "  "}).database_read_url is None
    replica = "postgresql://reader:pw@replica.internal:5432/hookstream"
    s = Settings.from_env({"DATABASE_URL": "postgresql://primary.internal/hookstream", "DATABASE_READ_URL": replica})
    assert (s.database_url, s.database_read_url) == ("postgresql://primary.internal/hookstream", replica)


def test_malformed_database_read_url_is_refused_naming_it_not_database_url() -> None:
    for raw in ("mysql://reader:hunter2@replica/hs", "not a url", "postgresql://"):
        with pytest.raises(SettingsError) as info:
            Settings.from_env({"DATABASE_URL": "postgresql://primary/hs", "DATABASE_READ_URL": raw})
        message = str(info.value)
        assert message.startswith("DATABASE_READ_URL: expected postgresql://"), message
        assert "hunter2" not in message


def test_first_bad_variable_is_reported_even_among_good_ones() -> None:
    with pytest.raises(SettingsError, match="HOOKSTREAM_LOG_LEVEL"):
        Settings.from_env({"HOOKSTREAM_ALLOW_HTTP": "true", "HOOKSTREAM_LOG_LEVEL": "chatty"})


def test_secret_key_is_parsed_and_never_echoed() -> None:
    import base64

    key = bytes(range(32))
    assert Settings.from_env({"HOOKSTREAM_SECRET_KEY": base64.b64encode(key).decode()}).secret_key == key
    bad = "c2VjcmV0LXZhbHVlLXRoYXQtaXMtdG9vLXNob3J0"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"HOOKSTREAM_SECRET_KEY": bad})
    assert bad not in str(caught.value)
    assert "secret" not in repr(Settings.from_env({"HOOKSTREAM_SECRET_KEY": base64.b64encode(key).decode()}))
