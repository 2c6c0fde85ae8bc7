"""The one settings object, parsed from the environment once (in ``cli.py``) and passed down.

Nothing else in hookstream reads ``os.environ``. Every field name carries its unit. A bad value
raises :class:`SettingsError` whose message names the variable, and ``cli.py`` turns that into a
non-zero exit before anything starts.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# hookstream.core.kafka.DELIVERY_MAX_MESSAGE_BYTES (kept here so settings import nothing): an event's
# delivery task (its body re-serialised and escaped into JSON) can be ~4x the event.
DELIVERY_TOPIC_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_EVENT_BYTES_LIMIT = DELIVERY_TOPIC_MAX_MESSAGE_BYTES // 4


class SettingsError(ValueError):
    """A configuration variable has a value hookstream cannot use; the message names it."""


def parse_duration_s(name: str, raw: str) -> float:
    """Parse ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"`` into seconds; a bare number is refused."""
    match = _DURATION_RE.match(raw)
    if not match:
        raise SettingsError(f"{name}={raw!r}: expected a duration such as 250ms, 30s, 5m or 1h")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def parse_listen(name: str, raw: str) -> tuple[str, int]:
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name}={raw!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def parse_int(name: str, raw: str, *, minimum: int, maximum: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a whole number") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name}={raw!r}: must be between {minimum} and {maximum}")
    return value


def parse_topic(name: str, raw: str) -> str:
    value = raw.strip()
    if not _TOPIC_RE.match(value):
        raise SettingsError(f"{name}={raw!r}: not a valid Kafka topic name")
    return value


def parse_size_bytes(name: str, raw: str) -> int:
    match = re.match(r"^\s*(\d+)\s*(B|KiB|MiB)?\s*$", raw)
    if not match:
        raise SettingsError(f"{name}={raw!r}: expected a size such as 4096, 4KiB or 1MiB")
    return int(match.group(1)) * {None: 1, "B": 1, "KiB": 1024, "MiB": 1024 * 1024}[match.group(2)]


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql://127.0.0.1:5432/hookstream"
    source_topics: tuple[str, ...] = ("aiq.products", "aiq.orders")
    status_topic: str = "hookstream.delivery-status"
    dead_letter_topic: str = "hookstream.dead-letter"
    delivery_topic: str = "hookstream.deliveries"
    retry_delays_s: tuple[float, ...] = (30.0, 300.0, 1800.0)
    retry_jitter_ratio: float = 0.2
    request_timeout_s: float = 10.0
    allow_http: bool = False
    allow_private_networks: bool = False
    api_listen: tuple[str, int] = ("127.0.0.1", 8080)
    router_metrics_listen: tuple[str, int] = ("127.0.0.1", 9101)
    sender_metrics_listen: tuple[str, int] = ("127.0.0.1", 9102)
    metrics_listen_override: tuple[str, int] | None = None
    max_event_bytes: int = 256 * 1024
    max_response_excerpt_bytes: int = 4096
    router_group: str = "hookstream-router"
    sender_group: str = "hookstream-sender"
    sender_max_in_flight: int = 1000
    endpoint_max_concurrency: int = 32
    endpoint_max_queued: int = 256
    breaker_failure_threshold: int = 5
    breaker_open_s: float = 30.0
    outcome_flush_interval_ms: int = 50
    outcome_flush_max: int = 1000
    secret_key: bytes | None = None
    log_format: str = "text"
    log_level: str = "INFO"

    def __repr__(self) -> str:  # never print the secret key or database password
        return f"Settings(kafka={self.kafka_bootstrap_servers!r}, api={self.api_listen!r})"

    @property
    def drain_timeout_s(self) -> float:
        """How long a sender waits for attempts in flight when it stops or loses partitions."""
        return self.request_timeout_s + 10

    @property
    def liveness_stale_s(self) -> float:
        """A loop not heard from for longer than this is wedged (``/healthz`` fails): longer than the
        longest wait of a healthy turn (a drain, a producer's 30 s acknowledgement wait)."""
        return max(90.0, self.drain_timeout_s + 60)

    def metrics_listen_for(self, service: str) -> tuple[str, int]:
        """Where ``router`` or ``sender`` serves /metrics when run as its own process."""
        if self.metrics_listen_override is not None:
            return self.metrics_listen_override
        return self.router_metrics_listen if service == "router" else self.sender_metrics_listen

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping; raises :class:`SettingsError` naming the variable."""
        get = env.get
        kwargs: dict[str, object] = {}

        if (raw := get("KAFKA_BOOTSTRAP_SERVERS")) is not None:
            servers = [s.strip() for s in raw.split(",") if s.strip()]
            if not servers or any(":" not in s for s in servers):
                raise SettingsError(f"KAFKA_BOOTSTRAP_SERVERS={raw!r}: expected HOST:PORT[,HOST:PORT...]")
            kwargs["kafka_bootstrap_servers"] = ",".join(servers)
        if (raw := get("DATABASE_URL")) is not None:
            parts = urlsplit(raw)
            if parts.scheme not in ("postgresql", "postgres") or (not parts.hostname and not parts.path):
                raise SettingsError("DATABASE_URL: expected postgresql://user@host:port/dbname")
            kwargs["database_url"] = raw
        if (raw := get("HOOKSTREAM_SOURCE_TOPICS")) is not None:
            topics = tuple(parse_topic("HOOKSTREAM_SOURCE_TOPICS", t) for t in raw.split(",") if t.strip())
            if not topics:
                raise SettingsError("HOOKSTREAM_SOURCE_TOPICS: at least one topic is required")
            kwargs["source_topics"] = topics
        for var, key in (
            ("HOOKSTREAM_STATUS_TOPIC", "status_topic"),
            ("HOOKSTREAM_DEAD_LETTER_TOPIC", "dead_letter_topic"),
            ("HOOKSTREAM_DELIVERY_TOPIC", "delivery_topic"),
        ):
            if (raw := get(var)) is not None:
                kwargs[key] = parse_topic(var, raw)
        if (raw := get("HOOKSTREAM_RETRY_DELAYS")) is not None:
            delays = tuple(parse_duration_s("HOOKSTREAM_RETRY_DELAYS", d) for d in raw.split(","))
            if len(delays) != 3:
                raise SettingsError(f"HOOKSTREAM_RETRY_DELAYS={raw!r}: expected exactly 3 delays, e.g. 30s,5m,30m")
            kwargs["retry_delays_s"] = delays
        if (raw := get("HOOKSTREAM_REQUEST_TIMEOUT")) is not None:
            timeout = parse_duration_s("HOOKSTREAM_REQUEST_TIMEOUT", raw)
            if not 0.05 <= timeout <= 300:
                raise SettingsError(f"HOOKSTREAM_REQUEST_TIMEOUT={raw!r}: must be between 50ms and 5m")
            kwargs["request_timeout_s"] = timeout
        if (raw := get("HOOKSTREAM_ALLOW_HTTP")) is not None:
            kwargs["allow_http"] = parse_bool("HOOKSTREAM_ALLOW_HTTP", raw)
        if (raw := get("HOOKSTREAM_ALLOW_PRIVATE_NETWORKS")) is not None:
            kwargs["allow_private_networks"] = parse_bool("HOOKSTREAM_ALLOW_PRIVATE_NETWORKS", raw)
        if (raw := get("HOOKSTREAM_API_LISTEN")) is not None:
            kwargs["api_listen"] = parse_listen("HOOKSTREAM_API_LISTEN", raw)
        if (raw := get("HOOKSTREAM_METRICS_LISTEN")) is not None:
            kwargs["metrics_listen_override"] = parse_listen("HOOKSTREAM_METRICS_LISTEN", raw)
        if (raw := get("HOOKSTREAM_MAX_EVENT_BYTES")) is not None:
            size = parse_size_bytes("HOOKSTREAM_MAX_EVENT_BYTES", raw)
            if not 1024 <= size <= MAX_EVENT_BYTES_LIMIT:
                raise SettingsError(
                    f"HOOKSTREAM_MAX_EVENT_BYTES={raw!r}: must be between 1KiB and {MAX_EVENT_BYTES_LIMIT // 1024}KiB"
                    " (an event's delivery task can be about 4x its size and must fit the delivery topic's"
                    f" {DELIVERY_TOPIC_MAX_MESSAGE_BYTES // (1024 * 1024)} MiB max.message.bytes)")
            kwargs["max_event_bytes"] = size
        if (raw := get("HOOKSTREAM_MAX_RESPONSE_EXCERPT")) is not None:
            size = parse_size_bytes("HOOKSTREAM_MAX_RESPONSE_EXCERPT", raw)
            if not 0 <= size <= 1024 * 1024:
                raise SettingsError(f"HOOKSTREAM_MAX_RESPONSE_EXCERPT={raw!r}: must be at most 1MiB")
            kwargs["max_response_excerpt_bytes"] = size
        for var, key in (("HOOKSTREAM_ROUTER_GROUP", "router_group"), ("HOOKSTREAM_SENDER_GROUP", "sender_group")):
            if (raw := get(var)) is not None:
                if not raw.strip():
                    raise SettingsError(f"{var}: must not be empty")
                kwargs[key] = raw.strip()
        for var, key, lo, hi in (
            ("HOOKSTREAM_SENDER_MAX_IN_FLIGHT", "sender_max_in_flight", 1, 100_000),
            ("HOOKSTREAM_ENDPOINT_MAX_CONCURRENCY", "endpoint_max_concurrency", 1, 10_000),
            ("HOOKSTREAM_ENDPOINT_MAX_QUEUED", "endpoint_max_queued", 0, 100_000),
            ("HOOKSTREAM_BREAKER_FAILURE_THRESHOLD", "breaker_failure_threshold", 1, 10_000),
            ("HOOKSTREAM_OUTCOME_FLUSH_MAX", "outcome_flush_max", 1, 100_000),
        ):
            if (raw := get(var)) is not None:
                kwargs[key] = parse_int(var, raw, minimum=lo, maximum=hi)
        if (raw := get("HOOKSTREAM_BREAKER_OPEN")) is not None:
            open_s = parse_duration_s("HOOKSTREAM_BREAKER_OPEN", raw)
            if not 0.1 <= open_s <= 3600:
                raise SettingsError(f"HOOKSTREAM_BREAKER_OPEN={raw!r}: must be between 100ms and 1h")
            kwargs["breaker_open_s"] = open_s
        if (raw := get("HOOKSTREAM_OUTCOME_FLUSH_INTERVAL")) is not None:
            interval_s = parse_duration_s("HOOKSTREAM_OUTCOME_FLUSH_INTERVAL", raw)
            if not 0.001 <= interval_s <= 10:
                raise SettingsError(f"HOOKSTREAM_OUTCOME_FLUSH_INTERVAL={raw!r}: must be between 1ms and 10s")
            kwargs["outcome_flush_interval_ms"] = round(interval_s * 1000)
        if (raw := get("HOOKSTREAM_SECRET_KEY")) is not None and raw.strip():
            try:
                key = base64.b64decode(raw.strip(), validate=True)
            except ValueError:
                key = b""
            if len(key) != 32:
                # The value itself is never echoed: it is a secret.
                raise SettingsError("HOOKSTREAM_SECRET_KEY: expected base64 of exactly 32 bytes"
                                    " (make one with: python3 -c 'import os,base64;"
                                    " print(base64.b64encode(os.urandom(32)).decode())')")
            kwargs["secret_key"] = key
        if (raw := get("HOOKSTREAM_LOG_FORMAT")) is not None:
            if raw.strip().lower() not in ("json", "text"):
                raise SettingsError(f"HOOKSTREAM_LOG_FORMAT={raw!r}: expected json or text")
            kwargs["log_format"] = raw.strip().lower()
        if (raw := get("HOOKSTREAM_LOG_LEVEL")) is not None:
            if raw.strip().upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise SettingsError(f"HOOKSTREAM_LOG_LEVEL={raw!r}: expected DEBUG, INFO, WARNING or ERROR")
            kwargs["log_level"] = raw.strip().upper()
        return cls(**kwargs)  # type: ignore[arg-type]
