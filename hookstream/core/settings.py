"""The one settings object, parsed from the environment once (in ``cli.py``) and passed down.

Nothing else in hookstream reads ``os.environ``. Every field name carries its unit. Every variable is
one entry of :data:`VARIABLES`: its name, the field it sets, how its value is read, its default, its
bounds and a line of help. That one table makes :meth:`Settings.from_env`, the configuration part of
``hookstream --help`` (:func:`render_cli_help`) and the configuration tables of README.md and
docs/CONTRACT.md (:func:`render_markdown_table`; regenerate them with
``python -m hookstream.core.settings --write README.md docs/CONTRACT.md``).

A bad value raises :class:`SettingsError` whose message names the variable and says what was
expected (never echoing a secret), and ``cli.py`` turns that into a non-zero exit before anything
starts.
"""

from __future__ import annotations

import argparse
import base64
import re
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from _typeshed import SupportsDunderLT

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB)?\s*$")
_UNIT_BYTES = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024 * 1024}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
RETRY_DELAY_COUNT = 3
SECRET_KEY_BYTES = 32
# The delivery topic's max.message.bytes, hookstream.core.topics.DELIVERY_MAX_MESSAGE_BYTES (kept here
# so that settings import nothing): an event's delivery task (its body re-serialised and escaped into
# JSON) can be ~4x the event, hence the cap on HOOKSTREAM_MAX_EVENT_BYTES.
DELIVERY_TOPIC_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_EVENT_BYTES_LIMIT = DELIVERY_TOPIC_MAX_MESSAGE_BYTES // 4

# Where README.md and docs/CONTRACT.md hold the generated table (render_markdown_table).
TABLE_BEGIN = "<!-- settings-table:begin -->"
TABLE_END = "<!-- settings-table:end -->"


class SettingsError(ValueError):
    """A configuration variable has a value hookstream cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql://127.0.0.1:5432/hookstream"
    database_read_url: str | None = None
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
    recover_rate: int = 50
    retention_s: float = 30 * 86400.0
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
        """Build settings from an environment mapping, one :data:`VARIABLES` entry at a time, in the
        table's order; a variable that is absent keeps the field's default. Raises
        :class:`SettingsError` naming the first bad variable."""
        kwargs: dict[str, object] = {}
        for variable in VARIABLES:
            raw = env.get(variable.env)
            if raw is None or (variable.empty_is_unset and not raw.strip()):
                continue
            kwargs[variable.field] = variable.read(raw)
        return cls(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- the table's parts

V = TypeVar("V", bound="SupportsDunderLT[Any]")  # bounds compare with <


@dataclass(frozen=True)
class Kind(Generic[V]):
    """One type of value: how it is read from a variable and written in messages and docs."""

    accepts: str  # what an operator may write, in Markdown (backticks for literal text)
    parse: Callable[[str, str], V]  # (variable, raw) -> value; raises SettingsError naming the variable
    format: Callable[[V], str] = str  # a value as an operator would write it (bounds, in messages and docs)


@dataclass(frozen=True)
class Variable(Generic[V]):
    """One environment variable and the :class:`Settings` field it sets.

    ``default`` is written as an operator would write it and parses to the field's default (a unit
    test checks this); ``None`` means unset, the field's default then being ``None`` too.
    ``minimum`` and ``maximum`` are inclusive. ``store`` turns the parsed value into what the field
    holds (seconds into milliseconds). A ``secret`` variable's value never appears in a message.
    """

    env: str
    field: str
    kind: Kind[V]
    default: str | None
    help: str  # one line, Markdown (backticks for literal text)
    minimum: V | None = None
    maximum: V | None = None
    bounds_note: str = ""  # why the bounds are what they are, added to the message
    store: Callable[[V], object] | None = None
    empty_is_unset: bool = False
    secret: bool = False

    def read(self, raw: str) -> object:
        """The field's value for ``raw``; raises :class:`SettingsError` naming the variable."""
        value = self.kind.parse(self.env, raw)
        if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and self.maximum < value):
            shown = self.env if self.secret else f"{self.env}={raw!r}"
            note = f" ({self.bounds_note})" if self.bounds_note else ""
            raise SettingsError(f"{shown}: must be {self.describe_bounds()}{note}")
        return value if self.store is None else self.store(value)

    def describe_bounds(self) -> str:
        """``between 50ms and 5m``, ``at most 1MiB``, ``at least 1``; "" for an unbounded variable."""
        write = self.kind.format
        if self.minimum is not None and self.maximum is not None:
            return f"between {write(self.minimum)} and {write(self.maximum)}"
        if self.maximum is not None:
            return f"at most {write(self.maximum)}"
        if self.minimum is not None:
            return f"at least {write(self.minimum)}"
        return ""

    def describe_accepts(self) -> str:
        """What the variable accepts, bounds included, in Markdown."""
        bounds = self.describe_bounds()
        return f"{self.kind.accepts}, {bounds}" if bounds else self.kind.accepts


# ------------------------------------------------------------------------------------ value parsers


def parse_duration_s(name: str, raw: str) -> float:
    """Parse ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"30d"`` into seconds; a bare number is refused."""
    match = _DURATION_RE.match(raw)
    if not match:
        raise SettingsError(f"{name}={raw!r}: expected a duration such as 250ms, 30s, 5m, 1h or 30d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """Seconds in the largest unit that writes them whole, to the millisecond: 0.05 -> ``50ms``,
    300 -> ``5m``."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    for unit, unit_ms in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % unit_ms == 0:
            return f"{ms // unit_ms}{unit}"
    return f"{ms}ms"


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def format_bool(value: bool) -> str:
    return "true" if value else "false"


def parse_listen(name: str, raw: str) -> tuple[str, int]:
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name}={raw!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def parse_int(name: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a whole number") from None


def parse_topic(name: str, raw: str) -> str:
    value = raw.strip()
    if not _TOPIC_RE.match(value):
        raise SettingsError(f"{name}={raw!r}: not a valid Kafka topic name")
    return value


def parse_topics(name: str, raw: str) -> tuple[str, ...]:
    topics = tuple(parse_topic(name, t) for t in raw.split(",") if t.strip())
    if not topics:
        raise SettingsError(f"{name}: at least one topic is required")
    return topics


def parse_size_bytes(name: str, raw: str) -> int:
    match = _SIZE_RE.match(raw)
    if not match:
        raise SettingsError(f"{name}={raw!r}: expected a size such as 4096, 4KiB or 1MiB")
    return int(match.group(1)) * _UNIT_BYTES[match.group(2)]


def format_size(size: int) -> str:
    """Bytes in the largest unit that writes them whole: 1048576 -> ``1MiB``, 1000 -> ``1000``."""
    for unit in ("MiB", "KiB"):
        if size > 0 and size % _UNIT_BYTES[unit] == 0:
            return f"{size // _UNIT_BYTES[unit]}{unit}"
    return str(size)


def parse_retry_delays(name: str, raw: str) -> tuple[float, ...]:
    delays = tuple(parse_duration_s(name, d) for d in raw.split(","))
    if len(delays) != RETRY_DELAY_COUNT:
        raise SettingsError(f"{name}={raw!r}: expected exactly {RETRY_DELAY_COUNT} delays, e.g. 30s,5m,30m")
    return delays


def parse_group(name: str, raw: str) -> str:
    if not raw.strip():
        raise SettingsError(f"{name}: must not be empty")
    return raw.strip()


def parse_bootstrap_servers(name: str, raw: str) -> str:
    servers = [s.strip() for s in raw.split(",") if s.strip()]
    if not servers or any(":" not in s for s in servers):
        raise SettingsError(f"{name}={raw!r}: expected HOST:PORT[,HOST:PORT...]")
    return ",".join(servers)


def parse_database_url(name: str, raw: str) -> str:
    # The value is never echoed: it may hold a password.
    expected = f"{name}: expected postgresql://user@host:port/dbname"
    try:
        parts = urlsplit(raw)
        located = bool(parts.hostname or parts.path)
    except ValueError:  # e.g. an unclosed [IPv6 literal
        raise SettingsError(expected) from None
    if parts.scheme not in ("postgresql", "postgres") or not located:
        raise SettingsError(expected)
    return raw


def parse_secret_key(name: str, raw: str) -> bytes:
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != SECRET_KEY_BYTES:
        # The value itself is never echoed: it is a secret.
        raise SettingsError(f"{name}: expected base64 of exactly {SECRET_KEY_BYTES} bytes"
                            " (make one with: python3 -c 'import os,base64;"
                            " print(base64.b64encode(os.urandom(32)).decode())')")
    return key


def make_choice(options: Sequence[str], normalise: Callable[[str], str]) -> Kind[str]:
    """A kind accepting one of ``options`` after ``normalise`` (e.g. ``str.lower``) and stripping."""
    expected = options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"

    def parse_choice(name: str, raw: str) -> str:
        value = normalise(raw.strip())
        if value not in options:
            raise SettingsError(f"{name}={raw!r}: expected {expected}")
        return value

    literal = [f"`{option}`" for option in options]
    return Kind(f"{', '.join(literal[:-1])} or {literal[-1]}" if len(literal) > 1 else literal[0], parse_choice)


def seconds_to_ms(seconds: float) -> int:
    return round(seconds * 1000)


BOOTSTRAP_SERVERS = Kind("`HOST:PORT[,HOST:PORT...]`", parse_bootstrap_servers)
DATABASE_URL = Kind("`postgresql://user:password@host:port/dbname`", parse_database_url)
TOPIC = Kind("a Kafka topic name", parse_topic)
TOPICS = Kind("Kafka topic names, comma-separated", parse_topics)
RETRY_DELAYS = Kind(f"{RETRY_DELAY_COUNT} durations, comma-separated", parse_retry_delays)
DURATION = Kind("a duration (`250ms`, `30s`, `5m`, `1h`, `30d`)", parse_duration_s, format_duration)
BOOL = Kind("`true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`)", parse_bool, format_bool)
LISTEN = Kind("`HOST:PORT`", parse_listen)
SIZE = Kind("a size in bytes (`4096`, `4KiB`, `1MiB`)", parse_size_bytes, format_size)
GROUP = Kind("a Kafka consumer group name", parse_group)
INT = Kind("a whole number", parse_int)
SECRET_KEY = Kind(f"base64 of {SECRET_KEY_BYTES} bytes", parse_secret_key)

# ---------------------------------------------------------------------------------------- the table

# Every variable hookstream reads, in the order from_env reads them and the docs list them. Fields of
# Settings with no variable here (retry_jitter_ratio, router_metrics_listen, sender_metrics_listen)
# are fixed.
VARIABLES: tuple[Variable[Any], ...] = (
    Variable("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers", BOOTSTRAP_SERVERS, "127.0.0.1:9092",
             "Kafka brokers"),
    Variable("DATABASE_URL", "database_url", DATABASE_URL, "postgresql://127.0.0.1:5432/hookstream",
             "PostgreSQL", secret=True),
    Variable("DATABASE_READ_URL", "database_read_url", DATABASE_URL, None,
             "a read-only copy of `DATABASE_URL` (a streaming replica) for the admin API's delivery-log"
             " reads (delivery log, attempts, events explorer, health stats); everything else, the router,"
             " the sender and `migrate` use `DATABASE_URL`; unset or empty: the API reads `DATABASE_URL` too",
             empty_is_unset=True, secret=True),
    Variable("HOOKSTREAM_SOURCE_TOPICS", "source_topics", TOPICS, "aiq.products,aiq.orders",
             "domain-event topics the router reads (products first, orders second)"),
    Variable("HOOKSTREAM_STATUS_TOPIC", "status_topic", TOPIC, "hookstream.delivery-status",
             "one record per attempt outcome"),
    Variable("HOOKSTREAM_DEAD_LETTER_TOPIC", "dead_letter_topic", TOPIC, "hookstream.dead-letter",
             "rejected input records"),
    Variable("HOOKSTREAM_DELIVERY_TOPIC", "delivery_topic", TOPIC, "hookstream.deliveries",
             "internal: router → sender (its partitions and configs: `hookstream/core/topics.py`)"),
    Variable("HOOKSTREAM_RETRY_DELAYS", "retry_delays_s", RETRY_DELAYS, "30s,5m,30m",
             "delays before retry 1, 2, 3 (±20 % jitter)"),
    Variable("HOOKSTREAM_REQUEST_TIMEOUT", "request_timeout_s", DURATION, "10s",
             "whole-attempt timeout", minimum=0.05, maximum=300.0),
    Variable("HOOKSTREAM_ALLOW_HTTP", "allow_http", BOOL, "false",
             "allow `http://` endpoints (dev and tests only)"),
    Variable("HOOKSTREAM_ALLOW_PRIVATE_NETWORKS", "allow_private_networks", BOOL, "false",
             "allow endpoints that resolve to loopback/private/link-local addresses (dev and tests only)"),
    Variable("HOOKSTREAM_API_LISTEN", "api_listen", LISTEN, "127.0.0.1:8080",
             "admin API, console, and `/metrics` of `api` and `all`"),
    Variable("HOOKSTREAM_METRICS_LISTEN", "metrics_listen_override", LISTEN, None,
             "`/metrics` and `/healthz` of `router` / `sender`; unset: router on `127.0.0.1:9101`,"
             " sender on `127.0.0.1:9102`"),
    Variable("HOOKSTREAM_MAX_EVENT_BYTES", "max_event_bytes", SIZE, "256KiB",
             "larger domain-event records are dead-lettered (`too_large`); capped at"
             f" {format_size(MAX_EVENT_BYTES_LIMIT)} because an event's delivery task can be ~4× the event"
             " (numbers re-serialised, the body escaped) and must fit the delivery topic's"
             f" {format_size(DELIVERY_TOPIC_MAX_MESSAGE_BYTES)} `max.message.bytes`",
             minimum=1024, maximum=MAX_EVENT_BYTES_LIMIT,
             bounds_note="an event's delivery task can be about 4x its size and must fit the delivery topic's"
                         f" {format_size(DELIVERY_TOPIC_MAX_MESSAGE_BYTES)} max.message.bytes"),
    Variable("HOOKSTREAM_MAX_RESPONSE_EXCERPT", "max_response_excerpt_bytes", SIZE, "4KiB",
             "how much of an endpoint's response body is kept", maximum=1024 * 1024),
    Variable("HOOKSTREAM_ROUTER_GROUP", "router_group", GROUP, "hookstream-router",
             "the router's consumer group"),
    Variable("HOOKSTREAM_SENDER_GROUP", "sender_group", GROUP, "hookstream-sender",
             "the senders' consumer group"),
    Variable("HOOKSTREAM_SENDER_MAX_IN_FLIGHT", "sender_max_in_flight", INT, "1000",
             "attempts one sender has in flight (back-pressure beyond)", minimum=1, maximum=100_000),
    Variable("HOOKSTREAM_ENDPOINT_MAX_CONCURRENCY", "endpoint_max_concurrency", INT, "32",
             "concurrent attempts per webhook per sender (never more than a quarter of"
             " `HOOKSTREAM_SENDER_MAX_IN_FLIGHT`)", minimum=1, maximum=10_000),
    Variable("HOOKSTREAM_ENDPOINT_MAX_QUEUED", "endpoint_max_queued", INT, "256",
             "attempts a failing webhook may have waiting (bounded by the same quarter) before more are"
             " deferred; none while one of its attempts hangs", minimum=0, maximum=100_000),
    Variable("HOOKSTREAM_BREAKER_FAILURE_THRESHOLD", "breaker_failure_threshold", INT, "5",
             "consecutive failures that open a webhook's circuit breaker", minimum=1, maximum=10_000),
    Variable("HOOKSTREAM_BREAKER_OPEN", "breaker_open_s", DURATION, "30s",
             "how long the breaker stays open before one probe", minimum=0.1, maximum=3600.0),
    Variable("HOOKSTREAM_OUTCOME_FLUSH_INTERVAL", "outcome_flush_interval_ms", DURATION, "50ms",
             "longest an attempt's outcome waits for its batch to be written (PostgreSQL and the status"
             " topic)", minimum=0.001, maximum=10.0, store=seconds_to_ms),
    Variable("HOOKSTREAM_OUTCOME_FLUSH_MAX", "outcome_flush_max", INT, "1000",
             "outcomes written in one batch at most", minimum=1, maximum=100_000),
    Variable("HOOKSTREAM_RECOVER_RATE", "recover_rate", INT, "50",
             "deliveries per second a bulk recovery (`POST /v1/webhooks/{id}/recover`) schedules at most",
             minimum=1, maximum=10_000),
    Variable("HOOKSTREAM_RETENTION", "retention_s", DURATION, "30d",
             "how long the delivery log (events, deliveries, attempts) is kept: each day's partitions are"
             " dropped whole once the day is older; an unfinished delivery is kept until it finishes",
             minimum=86400.0, maximum=3650 * 86400.0),
    Variable("HOOKSTREAM_SECRET_KEY", "secret_key", SECRET_KEY, None,
             "encrypts webhook signing secrets at rest (AES-256-GCM); the same on every replica; unset or"
             " empty: stored unencrypted, with a warning at start-up (development only); `make up` generates"
             " one into `.local/env`", empty_is_unset=True, secret=True),
    Variable("HOOKSTREAM_LOG_FORMAT", "log_format", make_choice(("json", "text"), str.lower), "text",
             "`json` for one JSON object per line"),
    Variable("HOOKSTREAM_LOG_LEVEL", "log_level", make_choice(("DEBUG", "INFO", "WARNING", "ERROR"), str.upper),
             "INFO", "the least severe log level written"),
)

# ------------------------------------------------------------------------------ docs from the table


def _plain(markdown: str) -> str:
    return markdown.replace("`", "")


def _default_text(variable: Variable[Any]) -> str:
    return "unset" if variable.default is None else variable.default


def render_markdown_table() -> str:
    """The configuration table of README.md and docs/CONTRACT.md, one row per variable, ending in a
    newline."""
    rows = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
    for variable in VARIABLES:
        default = "unset" if variable.default is None else f"`{variable.default}`"
        rows.append(f"| `{variable.env}` | {default} | {variable.describe_accepts()} | {variable.help} |")
    return "\n".join(rows) + "\n"


def render_cli_help(width: int = 79) -> str:
    """The epilog of ``hookstream --help``: every variable with its default, what it accepts and its
    help, wrapped to ``width`` columns (print it with ``argparse.RawDescriptionHelpFormatter``)."""
    body = textwrap.TextWrapper(width, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                break_long_words=False, break_on_hyphens=False)
    lines = textwrap.wrap("Configuration comes from these environment variables, read once at start-up; a bad"
                          " value stops start-up with exit code 2 and a message naming the variable.", width)
    lines.append("")
    for variable in VARIABLES:
        lines.append(f"  {variable.env} (default: {_default_text(variable)})")
        lines += body.wrap(_plain(variable.help))
        lines += body.wrap(f"accepts {_plain(variable.describe_accepts())}")
    return "\n".join(lines)


def replace_marked_table(text: str, table: str, begin: str = TABLE_BEGIN, end: str = TABLE_END) -> str:
    """``text`` with what lies between its one ``begin`` and ``end`` lines (by default the settings
    table's markers) replaced by ``table``; raises ValueError when the markers are missing, repeated
    or out of order. hookstream.core.topics writes its tables with markers of its own."""
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"expected exactly one {begin} and one {end}")
    head, rest = text.split(begin)
    if end not in rest:
        raise ValueError(f"{end} comes before {begin}")
    _, tail = rest.split(end)
    return f"{head}{begin}\n{table}{end}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hookstream.core.settings",
                                     description="Print or update the configuration table made from VARIABLES.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print the Markdown table")
    action.add_argument("--write", nargs="+", type=Path, metavar="FILE",
                        help=f"replace the table between {TABLE_BEGIN} and {TABLE_END} in each FILE")
    args = parser.parse_args(argv)
    table = render_markdown_table()
    if args.markdown:
        sys.stdout.write(table)
        return 0
    rewrite_files(args.write, lambda text: replace_marked_table(text, table), parser)
    return 0


def rewrite_files(paths: Sequence[Path], update: Callable[[str], str], parser: argparse.ArgumentParser) -> None:
    """Rewrite each file with ``update`` (the generated blocks between their markers), reporting
    which changed; a file without the markers (``update`` raises ValueError) is a usage error."""
    for path in paths:
        text = path.read_text(encoding="utf-8")
        try:
            updated = update(text)
        except ValueError as exc:
            parser.error(f"{path}: {exc}")
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            sys.stdout.write(f"updated {path}\n")


if __name__ == "__main__":
    sys.exit(main())
