"""The delivery log of one webhook: its events, each event's attempts, and redelivery.

The log is read newest first by ``(created_at DESC, id DESC)`` with keyset pagination: the cursor
holds the last row's ``(created_at, id)`` and the next page is the rows strictly after it, so rows
inserted between two pages never cause a duplicate or a gap, and page N costs the same as page 1.
The ``deliveries_log*`` indexes (``0006_partitions.sql``, one per day partition) serve each filter, and a
``since``/``until`` range or a cursor also bounds the day-prefixed ids, so only the days in range are read
(``hookstream.core.partitions.id_range_sql``; the ``log`` bench scenario measures it).

Redelivery (a decision, documented in the OpenAPI description too):

* a delivery that is waiting for an automatic retry has that retry pulled forward to now; it
  stays automatic, so if it fails the remaining retries still follow;
* any other delivery (succeeded, failed, or pending with an attempt in flight) gets one new
  manual attempt, whose outcome is final for itself (no automatic retries after it). It is recorded
  like any attempt, with the next attempt number. While an attempt is in flight the manual one
  waits for it to finish (one attempt of a delivery at a time): the redelivery is never lost and
  never cancels the automatic retries that attempt may schedule;
* a disabled webhook answers 409: the sender would not send anyway.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from aiohttp import web

from hookstream.api.errors import ApiError, field_error, json_response, not_found
from hookstream.api.keys import POOL, READ_POOL, SETTINGS
from hookstream.api.middleware import org_of
from hookstream.api.params import (
    decode_cursor,
    encode_cursor,
    page,
    parse_limit,
    parse_time_query,
    read_json_object,
)
from hookstream.api.webhooks import TEST_EVENT_TYPE, require_webhook
from hookstream.core.ordering import PER_RESOURCE
from hookstream.core.orgs import new_id
from hookstream.core.partitions import id_range_sql
from hookstream.core.states import DeliveryStatus
from hookstream.core.validation import EVENT_TYPES

CURSOR_KIND = "d"
STATUSES = tuple(DeliveryStatus)
LOG_EVENT_TYPES = frozenset((*EVENT_TYPES, TEST_EVENT_TYPE))
MAX_FILTER_CHARS = 256

LOG_COLUMNS = ("d.id, d.event_id, d.event_type, d.store_id, d.status, d.attempts, d.last_http_status,"
               " d.last_error, d.created_at, d.last_attempt_at,"
               " LEAST(d.next_attempt_at, d.manual_due_at) AS next_attempt_at,"
               " d.next_attempt_at AS automatic_at, d.next_retry_index,"
               # an ordered delivery stored behind its resource's head: the event it waits for
               " CASE WHEN d.ordered_waiting AND d.status = 'pending' THEN (SELECT hd.event_id FROM resource_heads h"
               " JOIN deliveries hd ON hd.id = h.head_delivery_id"
               " WHERE h.webhook_id = d.webhook_id AND h.resource_key = d.resource_key) END AS waiting_behind")


def delivery_json(row: asyncpg.Record, retry_delays_s: tuple[float, ...]) -> dict[str, Any]:
    return {
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "store_id": row["store_id"],
        "status": row["status"],
        "attempts": row["attempts"],
        "last_http_status": row["last_http_status"],
        "last_error": row["last_error"],
        "created_at": row["created_at"],
        "last_attempt_at": row["last_attempt_at"],
        "next_attempt_at": row["next_attempt_at"],
        "waiting_behind": row["waiting_behind"],
        "retry_schedule": retry_schedule(row["status"], row["automatic_at"], row["next_retry_index"],
                                         retry_delays_s),
    }


def retry_schedule(status: str, automatic_at: dt.datetime | None, next_retry_index: int | None,
                   retry_delays_s: tuple[float, ...]) -> list[dict[str, Any]]:
    """The automatic retries still to come of a pending delivery: the one waiting (``at`` exact) and
    the later ones as estimates (``at`` = the nominal delay after the one before, were every attempt
    to fail at once; the ±20 % jitter, the attempts' own durations and a ``Retry-After`` move them).
    Empty when no automatic retry waits. Pure.

    ``next_retry_index`` is the retry waiting (1..3), or 0 when the first attempt itself was put
    back (deferred) and waits."""
    if status != DeliveryStatus.PENDING or automatic_at is None or next_retry_index is None:
        return []
    schedule: list[dict[str, Any]] = []
    if next_retry_index >= 1:
        schedule.append({"retry": next_retry_index, "at": automatic_at, "estimate": False})
    at = automatic_at
    for retry in range(next_retry_index + 1, len(retry_delays_s) + 1):
        at = at + dt.timedelta(seconds=retry_delays_s[retry - 1])
        schedule.append({"retry": retry, "at": at, "estimate": True})
    return schedule


def attempt_json(row: asyncpg.Record, *, with_body: bool = False) -> dict[str, Any]:
    """One attempt; ``request`` is null for an attempt that sent nothing (or was recorded before
    attempts kept their request), ``response`` null when no HTTP response came."""
    request: dict[str, Any] | None = None
    if row["request_url"] is not None:
        request = {"url": row["request_url"], "headers": row["request_headers"] or {}}
        if with_body:
            request["body"] = row["body"]
    response: dict[str, Any] | None = None
    if row["http_status"] is not None:
        headers: dict[str, str] = {}
        for name, value in row["response_headers"] or ():
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        response = {"status": row["http_status"], "headers": headers, "excerpt": row["response_excerpt"]}
    return {
        "attempt": row["attempt"],
        "started_at": row["started_at"],
        "duration_ms": round(row["duration_ms"], 3),
        "http_status": row["http_status"],
        "error": row["error"],
        "response_excerpt": row["response_excerpt"],
        "status": row["outcome"],
        "request": request,
        "response": response,
    }


@contextlib.asynccontextmanager
async def log_connection(request: web.Request, org_id: str,
                         webhook_id: str | None = None) -> AsyncIterator[asyncpg.Connection]:
    """A connection for the read-only delivery-log views, from the read pool (``DATABASE_READ_URL``,
    a replica; else the main pool), after the webhook (if named) is checked to be the organization's
    (404 otherwise) on the main database: a webhook just created or deleted is seen as such whatever
    the replica's lag. Without a read pool one connection does both, as before there was one."""
    pool, read_pool = request.app[POOL], request.app[READ_POOL]
    if read_pool is pool:
        async with pool.acquire() as conn:
            if webhook_id is not None:
                await require_webhook(conn, org_id, webhook_id)
            yield conn
        return
    if webhook_id is not None:
        await require_webhook(pool, org_id, webhook_id)
    async with read_pool.acquire() as conn:
        yield conn


class Conditions:
    """SQL conditions ANDed together, with the values of their placeholders: ``add`` fills each ``{}``
    of a condition with the next ``$n``."""

    def __init__(self, conditions: list[str], args: list[Any]) -> None:
        self.conditions = conditions
        self.args = args

    def add(self, condition: str, *values: Any) -> None:
        placeholders = [f"${len(self.args) + i}" for i in range(1, len(values) + 1)]
        self.conditions.append(condition.format(*placeholders))
        self.args.extend(values)

    @property
    def sql(self) -> str:
        return " AND ".join(self.conditions)


def parse_status(query: Any) -> str | None:
    """The ``status`` query parameter (a delivery status), or None; a 422 naming it otherwise."""
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise field_error("status", f"must be one of {', '.join(STATUSES)}")
    return status


def add_type_store_and_time(query: Any, add: Callable[..., None], table: str, time_column: str,
                            id_column: str) -> None:
    """The ``event_type``, ``store_id`` and ``since``/``until`` (on ``time_column``) filters of the
    delivery log and the events explorer, validated (422 naming the parameter) and added with ``add``.
    A time range also bounds ``id_column`` (ids carry their row's day), so that PostgreSQL reads only
    the day partitions the range covers."""
    if (event_type := query.get("event_type")) is not None:
        if event_type not in LOG_EVENT_TYPES:
            raise field_error("event_type", f"unknown event type {event_type[:MAX_FILTER_CHARS]!r}")
        add(f"{table}.event_type = {{}}", event_type)
    if (store_id := query.get("store_id")) is not None:
        if not store_id or len(store_id) > MAX_FILTER_CHARS:
            raise field_error("store_id", f"must be 1-{MAX_FILTER_CHARS} characters")
        add(f"{table}.store_id = {{}}", store_id)
    since = until = None
    if (raw := query.get("since")) is not None:
        since = parse_time_query("since", raw)
        add(f"{table}.{time_column} >= {{}}", since)
    if (raw := query.get("until")) is not None:
        until = parse_time_query("until", raw)
        add(f"{table}.{time_column} < {{}}", until)
    if since is not None and until is not None and until <= since:
        raise field_error("until", "must be after since")
    if since is not None or until is not None:
        add(id_range_sql(f"{table}.{id_column}", "{}" if since else None, "{}" if until else None),
            *(t for t in (since, until) if t is not None))


def build_log_query(webhook_id: str, org_id: str, query: Any, limit: int) -> tuple[str, list[Any]]:
    """The SQL and arguments of one log page; raises 422/400 naming a bad query parameter. Pure."""
    # The organization check rides along in the same statement (a one-time InitPlan), so the
    # query alone never returns another organization's rows.
    where = Conditions(["d.webhook_id = $1",
                        "EXISTS (SELECT 1 FROM webhooks w WHERE w.id = $1 AND w.organization_id = $2)"],
                       [webhook_id, org_id])
    if (status := parse_status(query)) is not None:
        where.add("d.status = {}", status)
    add_type_store_and_time(query, where.add, "d", "created_at", "id")
    if (raw := query.get("cursor")) is not None:
        created_at, last_id = decode_cursor(CURSOR_KIND, raw, (dt.datetime, int))
        where.add("(d.created_at, d.id) < ({}, {})", created_at, last_id)
        where.add(id_range_sql("d.id", None, "{}"), created_at)
    sql = (f"SELECT {LOG_COLUMNS} FROM deliveries d WHERE {where.sql}"
           f" ORDER BY d.created_at DESC, d.id DESC LIMIT ${len(where.args) + 1}")
    return sql, [*where.args, limit + 1]


async def list_deliveries(request: web.Request) -> web.Response:
    org_id, webhook_id = org_of(request), request.match_info["webhook_id"]
    limit = parse_limit(request.query)
    sql, args = build_log_query(webhook_id, org_id, request.query, limit)
    async with log_connection(request, org_id, webhook_id) as conn:
        rows = await conn.fetch(sql, *args)
    items, next_cursor = page(list(rows), limit,
                              lambda row: encode_cursor(CURSOR_KIND, row["created_at"], row["id"]))
    delays = request.app[SETTINGS].retry_delays_s
    return json_response({"data": [delivery_json(r, delays) for r in items], "next_cursor": next_cursor})


_ATTEMPT_COLUMNS = ("a.attempt, a.started_at, a.duration_ms, a.http_status, a.error, a.response_excerpt, a.outcome,"
                    " a.request_url, a.request_headers, a.response_headers")


async def _delivery_of(conn: asyncpg.Connection, org_id: str, webhook_id: str, event_id: str) -> int:
    """The delivery's id, or 404 ``event``; the webhook itself is checked by :func:`log_connection`."""
    delivery_id = await conn.fetchval(
        "SELECT d.id FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id"
        " WHERE w.organization_id = $1 AND d.webhook_id = $2 AND d.event_id = $3"
        # (webhook_id, event_id) is not a unique constraint on the day partitions: should a race have
        # made two deliveries of one event to one webhook, the newest is the one shown and redelivered
        " ORDER BY d.id DESC LIMIT 1",
        org_id, webhook_id, event_id)
    if delivery_id is None:
        raise not_found("event")
    return delivery_id


async def list_attempts(request: web.Request) -> web.Response:
    org_id, webhook_id = org_of(request), request.match_info["webhook_id"]
    async with log_connection(request, org_id, webhook_id) as conn:
        delivery_id = await _delivery_of(conn, org_id, webhook_id, request.match_info["event_id"])
        rows = await conn.fetch(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts a WHERE a.delivery_id = $1 ORDER BY a.started_at, a.id",
            delivery_id)
    return json_response({"data": [attempt_json(r) for r in rows], "next_cursor": None})


async def get_attempt(request: web.Request) -> web.Response:
    """One attempt with its request body: the event's stored body, the exact bytes every attempt sends."""
    org_id, webhook_id = org_of(request), request.match_info["webhook_id"]
    raw = request.match_info["attempt"]
    if len(raw) > 6 or not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise field_error("attempt", "must be a whole number from 1")
    async with log_connection(request, org_id, webhook_id) as conn:
        delivery_id = await _delivery_of(conn, org_id, webhook_id, request.match_info["event_id"])
        row = await conn.fetchrow(
            f"SELECT {_ATTEMPT_COLUMNS}, e.body FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
            " JOIN events e ON e.seq = d.event_seq WHERE a.delivery_id = $1 AND a.attempt = $2",
            delivery_id, int(raw))
    if row is None:
        raise not_found("attempt")
    return json_response(attempt_json(row, with_body=True))


_REDELIVER_SQL = """
UPDATE deliveries AS d SET
    status = 'pending',
    finished_at = NULL,
    -- an automatic retry that is waiting is pulled forward and stays automatic; anything else is
    -- one manual attempt, requested apart from the automatic schedule (it waits for an attempt in
    -- flight to finish, and neither overwrites the other's schedule)
    next_attempt_at = CASE WHEN d.next_attempt_at IS NOT NULL THEN now() END,
    manual_due_at = CASE WHEN d.next_attempt_at IS NOT NULL THEN d.manual_due_at ELSE now() END
FROM webhooks w
WHERE w.id = d.webhook_id AND w.organization_id = $1 AND d.webhook_id = $2 AND d.event_id = $3
  AND d.id = (SELECT max(x.id) FROM deliveries x WHERE x.webhook_id = $2 AND x.event_id = $3)  -- see _delivery_of
RETURNING d.event_id, d.status, LEAST(d.next_attempt_at, d.manual_due_at) AS next_attempt_at,
          d.next_attempt_at IS NULL AS manual
"""


async def redeliver(request: web.Request) -> web.Response:
    org_id, webhook_id = org_of(request), request.match_info["webhook_id"]
    event_id = request.match_info["event_id"]
    async with request.app[POOL].acquire() as conn, conn.transaction():
        hook = await require_webhook(conn, org_id, webhook_id, lock=True)
        if not hook["enabled"]:
            raise ApiError(409, "conflict", "webhook is disabled; enable it to redeliver")
        row = await conn.fetchrow(_REDELIVER_SQL, org_id, webhook_id, event_id)
        if row is None:
            raise not_found("event")
    return json_response({"event_id": row["event_id"], "status": row["status"],
                          "next_attempt_at": row["next_attempt_at"], "manual": row["manual"]}, status=202)


# Bulk recovery (Svix's "recover"): every failed delivery of the webhook created in [since, until)
# gets one manual attempt, through the durable path a single redelivery takes (manual_due_at, sent by
# the retry pump), spread out at HOOKSTREAM_RECOVER_RATE per second so a recovery of thousands never
# arrives at the endpoint at once. One recovery runs per webhook at a time.
#
# The deliveries of an ordered (per_resource) webhook rejoin their resource's queue instead, in event
# order: each waits (ordered_waiting) for the delivery before it, and the release trigger of 0004
# sends them one after the other as automatic attempts (with the retry schedule, so one more failure
# does not break the chain). The resources' head rows are locked first, in (webhook, resource) order,
# as routers and outcome flushes take them, then the deliveries: no lock cycle with either.
MAX_RECOVER = 100_000
RECOVER_FIELDS = ("since", "until")
_RECOVERY_CURSOR_KIND = "r"
_RECOVERABLE = """webhook_id = $1 AND status = 'failed' AND created_at >= $2
        AND ($3::timestamptz IS NULL OR created_at < $3)"""

_RECOVER_SQL = f"""
UPDATE deliveries AS d SET
    status = 'pending',
    finished_at = NULL,
    manual_due_at = now() + p.n / $5::float8 * interval '1 second',
    recovery_id = $4
FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) - 1 AS n FROM deliveries
      WHERE {_RECOVERABLE} AND resource_key IS NULL) AS p
WHERE d.id = p.id AND d.status = 'failed'  -- re-checked under the row lock: a concurrent redelivery wins
"""
# Ordered: (1) every affected resource has a head row, locked, in resource order (a no-op update
# locks the existing ones in that order too); (2) the failed deliveries wait in their queue;
# (3) each resource with no unfinished head releases its oldest waiting delivery (0004's
# release_resource); (4) those first ones are spread out at the recovery rate like manual ones.
_LOCK_RECOVERED_HEADS_SQL = f"""
INSERT INTO resource_heads AS h (webhook_id, resource_key, head_delivery_id)
SELECT $1, k.resource_key, NULL FROM (SELECT DISTINCT resource_key FROM deliveries
                                     WHERE {_RECOVERABLE} AND resource_key IS NOT NULL) AS k
ORDER BY k.resource_key
ON CONFLICT (webhook_id, resource_key) DO UPDATE SET head_delivery_id = h.head_delivery_id
RETURNING h.resource_key, h.head_delivery_id
"""
_QUEUE_RECOVERED_SQL = f"""
UPDATE deliveries SET status = 'pending', finished_at = NULL, ordered_waiting = true, manual_due_at = NULL,
    next_attempt_at = NULL, next_retry_index = NULL, in_flight = false, recovery_id = $4
WHERE {_RECOVERABLE} AND resource_key IS NOT NULL
"""
_RELEASE_IDLE_SQL = """
SELECT release_resource($1, k) FROM unnest($2::text[]) AS k
WHERE NOT EXISTS (SELECT 1 FROM resource_heads h JOIN deliveries d ON d.id = h.head_delivery_id
                  WHERE h.webhook_id = $1 AND h.resource_key = k AND d.status = 'pending' AND NOT d.ordered_waiting)
ORDER BY k
"""
_SPREAD_RELEASED_SQL = """
UPDATE deliveries AS d SET next_attempt_at = now() + p.n / $2::float8 * interval '1 second'
FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM deliveries
      WHERE recovery_id = $1 AND NOT ordered_waiting AND next_attempt_at IS NOT NULL) AS p
WHERE d.id = p.id
"""
_PROGRESS_SQL = """
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM deliveries WHERE recovery_id = $1
"""
_RECOVERY_COLUMNS = "id, webhook_id, since, until, total, created_at, finished_at, succeeded, failed"


def recovery_json(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    finished = row["finished_at"] is not None
    succeeded, failed = row["succeeded"] or 0, row["failed"] or 0
    return {
        "id": row["id"],
        "webhook_id": row["webhook_id"],
        "since": row["since"],
        "until": row["until"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "total": row["total"],
        "done": row["total"] if finished else row["done"],
        "succeeded": succeeded,
        "failed": failed,
        "status": "finished" if finished else "running",
    }


async def _with_progress(conn: asyncpg.Connection, row: asyncpg.Record) -> dict[str, Any]:
    """The recovery with its progress counted now; one whose deliveries all have an outcome is
    marked finished, with its figures kept (later redeliveries of them do not rewrite it)."""
    recovery = dict(row)
    if recovery["finished_at"] is not None:
        return recovery
    progress = await conn.fetchrow(_PROGRESS_SQL, recovery["id"])
    recovery.update(succeeded=progress["succeeded"], failed=progress["failed"],
                    done=max(recovery["total"] - progress["pending"], 0))
    if progress["pending"] == 0:
        finished_at = await conn.fetchval(
            "UPDATE recoveries SET finished_at = now(), succeeded = $2, failed = $3"
            " WHERE id = $1 AND finished_at IS NULL RETURNING finished_at",
            recovery["id"], progress["succeeded"], progress["failed"])
        recovery["finished_at"] = finished_at or dt.datetime.now(dt.UTC)
    return recovery


def parse_recover_body(body: dict[str, Any]) -> tuple[dt.datetime, dt.datetime | None]:
    """``since`` (required) and ``until`` (optional, after ``since``) of a recover request. Pure."""
    unknown = sorted(set(body) - set(RECOVER_FIELDS))
    if unknown:
        raise field_error(unknown[0], f"unknown field; allowed: {', '.join(RECOVER_FIELDS)}")
    times: dict[str, dt.datetime | None] = {}
    for name in RECOVER_FIELDS:
        value = body.get(name)
        if value is None:
            if name == "since":
                raise field_error("since", "is required (RFC 3339, e.g. 2026-12-01T00:00:00Z)")
            times[name] = None
            continue
        if not isinstance(value, str):
            raise field_error(name, "must be an RFC 3339 date-time string")
        times[name] = parse_time_query(name, value)
    since, until = times["since"], times["until"]
    assert since is not None
    if until is not None and until <= since:
        raise field_error("until", "must be after since")
    return since, until


async def recover(request: web.Request) -> web.Response:
    org_id, webhook_id = org_of(request), request.match_info["webhook_id"]
    since, until = parse_recover_body(await read_json_object(request))
    rate = request.app[SETTINGS].recover_rate
    async with request.app[POOL].acquire() as conn, conn.transaction():
        # FOR UPDATE: two recover requests for one webhook run one after the other
        hook = await conn.fetchrow("SELECT enabled, ordering FROM webhooks WHERE organization_id = $1 AND id = $2"
                                   " FOR NO KEY UPDATE", org_id, webhook_id)
        if hook is None:
            raise not_found("webhook")
        if not hook["enabled"]:
            raise ApiError(409, "conflict", "webhook is disabled; enable it to recover its deliveries")
        latest = await conn.fetchrow(f"SELECT {_RECOVERY_COLUMNS} FROM recoveries WHERE webhook_id = $1"
                                     " ORDER BY created_at DESC, id DESC LIMIT 1", webhook_id)
        if latest is not None and (await _with_progress(conn, latest))["finished_at"] is None:
            raise ApiError(409, "conflict", f"recovery {latest['id']} of this webhook is still running;"
                           f" see GET /v1/webhooks/{webhook_id}/recoveries/{latest['id']}")
        count = await conn.fetchval(  # counted no further than the limit
            f"SELECT count(*) FROM (SELECT 1 FROM deliveries WHERE {_RECOVERABLE} LIMIT {MAX_RECOVER + 1}) AS m",
            webhook_id, since, until)
        if count > MAX_RECOVER:
            raise field_error("since", f"more than {MAX_RECOVER} failed deliveries match; recover at most"
                              f" {MAX_RECOVER} at a time (narrow the range with since/until)")
        recovery_id = new_id("rcv")
        status = await conn.execute(_RECOVER_SQL, webhook_id, since, until, recovery_id, float(rate))
        total = int(status.split()[-1])
        if hook["ordering"] == PER_RESOURCE:
            total += await _recover_ordered(conn, webhook_id, since, until, recovery_id, rate)
        row = await conn.fetchrow(
            f"INSERT INTO recoveries (id, webhook_id, since, until, total, finished_at, succeeded, failed)"
            f" VALUES ($1, $2, $3, $4, $5, CASE WHEN $5 = 0 THEN now() END, CASE WHEN $5 = 0 THEN 0 END,"
            f" CASE WHEN $5 = 0 THEN 0 END) RETURNING {_RECOVERY_COLUMNS}",
            recovery_id, webhook_id, since, until, total)
    return json_response(recovery_json({**dict(row), "done": 0}), status=202)


async def _recover_ordered(conn: asyncpg.Connection, webhook_id: str, since: dt.datetime, until: dt.datetime | None,
                           recovery_id: str, rate: int) -> int:
    """Put an ordered webhook's failed deliveries back in their resources' queues; returns how many."""
    heads = await conn.fetch(_LOCK_RECOVERED_HEADS_SQL, webhook_id, since, until)
    if not heads:
        return 0
    status = await conn.execute(_QUEUE_RECOVERED_SQL, webhook_id, since, until, recovery_id)
    await conn.execute(_RELEASE_IDLE_SQL, webhook_id, [h["resource_key"] for h in heads])
    await conn.execute(_SPREAD_RELEASED_SQL, recovery_id, float(rate))
    return int(status.split()[-1])


# The recoveries GETs stay on the main pool (not log_connection): counting a recovery's progress
# (_with_progress) marks a finished one finished, a write a replica would refuse.
async def list_recoveries(request: web.Request) -> web.Response:
    org_id, webhook_id = org_of(request), request.match_info["webhook_id"]
    limit = parse_limit(request.query)
    conditions, args = ["webhook_id = $1"], [webhook_id]
    if (raw := request.query.get("cursor")) is not None:
        created_at, last_id = decode_cursor(_RECOVERY_CURSOR_KIND, raw, (dt.datetime, str))
        conditions.append("(created_at, id) < ($2, $3)")
        args += [created_at, last_id]
    async with request.app[POOL].acquire() as conn:
        await require_webhook(conn, org_id, webhook_id)
        rows = await conn.fetch(f"SELECT {_RECOVERY_COLUMNS} FROM recoveries WHERE {' AND '.join(conditions)}"
                                f" ORDER BY created_at DESC, id DESC LIMIT ${len(args) + 1}", *args, limit + 1)
        items, next_cursor = page(list(rows), limit,
                                  lambda row: encode_cursor(_RECOVERY_CURSOR_KIND, row["created_at"], row["id"]))
        recoveries = [await _with_progress(conn, r) for r in items]
    return json_response({"data": [recovery_json(r) for r in recoveries], "next_cursor": next_cursor})


async def get_recovery(request: web.Request) -> web.Response:
    org_id, webhook_id = org_of(request), request.match_info["webhook_id"]
    async with request.app[POOL].acquire() as conn:
        await require_webhook(conn, org_id, webhook_id)
        row = await conn.fetchrow(f"SELECT {_RECOVERY_COLUMNS} FROM recoveries WHERE webhook_id = $1 AND id = $2",
                                  webhook_id, request.match_info["recovery_id"])
        if row is None:
            raise not_found("recovery")
        recovery = await _with_progress(conn, row)
    return json_response(recovery_json(recovery))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/webhooks/{webhook_id}/events", list_deliveries)
    app.router.add_get("/v1/webhooks/{webhook_id}/events/{event_id}/attempts", list_attempts)
    app.router.add_get("/v1/webhooks/{webhook_id}/events/{event_id}/attempts/{attempt}", get_attempt)
    app.router.add_post("/v1/webhooks/{webhook_id}/events/{event_id}/redeliver", redeliver)
    app.router.add_post("/v1/webhooks/{webhook_id}/recover", recover)
    app.router.add_get("/v1/webhooks/{webhook_id}/recoveries", list_recoveries)
    app.router.add_get("/v1/webhooks/{webhook_id}/recoveries/{recovery_id}", get_recovery)
