"""The delivery log of one webhook: its events, each event's attempts, and redelivery.

The log is read newest first by ``(created_at DESC, id DESC)`` with keyset pagination: the cursor
holds the last row's ``(created_at, id)`` and the next page is the rows strictly after it, so rows
inserted between two pages never cause a duplicate or a gap, and page N costs the same as page 1.
The ``deliveries_log*`` indexes of ``0001_init.sql`` serve each filter (see tests/bench/delivery_log_query.py).

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

import datetime as dt
from typing import Any

import asyncpg
from aiohttp import web

from hookstream.api.errors import ApiError, field_error, json_response, not_found
from hookstream.api.keys import POOL
from hookstream.api.middleware import org_of
from hookstream.api.params import decode_cursor, encode_cursor, page, parse_limit, parse_time_query
from hookstream.api.webhooks import TEST_EVENT_TYPE, require_webhook
from hookstream.core.states import DeliveryStatus
from hookstream.core.validation import EVENT_TYPES

CURSOR_KIND = "d"
STATUSES = tuple(DeliveryStatus)
LOG_EVENT_TYPES = frozenset((*EVENT_TYPES, TEST_EVENT_TYPE))
MAX_FILTER_CHARS = 256

LOG_COLUMNS = ("d.id, d.event_id, d.event_type, d.store_id, d.status, d.attempts, d.last_http_status,"
               " d.last_error, d.created_at, d.last_attempt_at,"
               " LEAST(d.next_attempt_at, d.manual_due_at) AS next_attempt_at,"
               # an ordered delivery stored behind its resource's head: the event it waits for
               " CASE WHEN d.ordered_waiting AND d.status = 'pending' THEN (SELECT hd.event_id FROM resource_heads h"
               " JOIN deliveries hd ON hd.id = h.head_delivery_id"
               " WHERE h.webhook_id = d.webhook_id AND h.resource_key = d.resource_key) END AS waiting_behind")


def delivery_json(row: asyncpg.Record) -> dict[str, Any]:
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
    }


def attempt_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "attempt": row["attempt"],
        "started_at": row["started_at"],
        "duration_ms": round(row["duration_ms"], 3),
        "http_status": row["http_status"],
        "error": row["error"],
        "response_excerpt": row["response_excerpt"],
        "status": row["outcome"],
    }


def build_log_query(webhook_id: str, org_id: str, query: Any, limit: int) -> tuple[str, list[Any]]:
    """The SQL and arguments of one log page; raises 422/400 naming a bad query parameter. Pure."""
    # The organization check rides along in the same statement (a one-time InitPlan), so the
    # query alone never returns another organization's rows.
    conditions = ["d.webhook_id = $1",
                  "EXISTS (SELECT 1 FROM webhooks w WHERE w.id = $1 AND w.organization_id = $2)"]
    args: list[Any] = [webhook_id, org_id]

    def add(condition: str, *values: Any) -> None:
        placeholders = [f"${len(args) + i}" for i in range(1, len(values) + 1)]
        conditions.append(condition.format(*placeholders))
        args.extend(values)

    if (status := query.get("status")) is not None:
        if status not in STATUSES:
            raise field_error("status", f"must be one of {', '.join(STATUSES)}")
        add("d.status = {}", status)
    if (event_type := query.get("event_type")) is not None:
        if event_type not in LOG_EVENT_TYPES:
            raise field_error("event_type", f"unknown event type {event_type[:MAX_FILTER_CHARS]!r}")
        add("d.event_type = {}", event_type)
    if (store_id := query.get("store_id")) is not None:
        if not store_id or len(store_id) > MAX_FILTER_CHARS:
            raise field_error("store_id", f"must be 1-{MAX_FILTER_CHARS} characters")
        add("d.store_id = {}", store_id)
    since = until = None
    if (raw := query.get("since")) is not None:
        since = parse_time_query("since", raw)
        add("d.created_at >= {}", since)
    if (raw := query.get("until")) is not None:
        until = parse_time_query("until", raw)
        add("d.created_at < {}", until)
    if since is not None and until is not None and until <= since:
        raise field_error("until", "must be after since")
    if (raw := query.get("cursor")) is not None:
        created_at, last_id = decode_cursor(CURSOR_KIND, raw, (dt.datetime, int))
        add("(d.created_at, d.id) < ({}, {})", created_at, last_id)
    sql = (f"SELECT {LOG_COLUMNS} FROM deliveries d WHERE {' AND '.join(conditions)}"
           f" ORDER BY d.created_at DESC, d.id DESC LIMIT ${len(args) + 1}")
    return sql, [*args, limit + 1]


async def list_deliveries(request: web.Request) -> web.Response:
    org_id, webhook_id = org_of(request), request.match_info["webhook_id"]
    limit = parse_limit(request.query)
    sql, args = build_log_query(webhook_id, org_id, request.query, limit)
    async with request.app[POOL].acquire() as conn:
        await require_webhook(conn, org_id, webhook_id)
        rows = await conn.fetch(sql, *args)
    items, next_cursor = page(list(rows), limit,
                              lambda row: encode_cursor(CURSOR_KIND, row["created_at"], row["id"]))
    return json_response({"data": [delivery_json(r) for r in items], "next_cursor": next_cursor})


async def list_attempts(request: web.Request) -> web.Response:
    org_id, webhook_id = org_of(request), request.match_info["webhook_id"]
    event_id = request.match_info["event_id"]
    async with request.app[POOL].acquire() as conn:
        await require_webhook(conn, org_id, webhook_id)
        delivery_id = await conn.fetchval(
            "SELECT d.id FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id"
            " WHERE w.organization_id = $1 AND d.webhook_id = $2 AND d.event_id = $3",
            org_id, webhook_id, event_id)
        if delivery_id is None:
            raise not_found("event")
        rows = await conn.fetch(
            "SELECT attempt, started_at, duration_ms, http_status, error, response_excerpt, outcome"
            " FROM attempts WHERE delivery_id = $1 ORDER BY started_at, id", delivery_id)
    return json_response({"data": [attempt_json(r) for r in rows], "next_cursor": None})


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


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/webhooks/{webhook_id}/events", list_deliveries)
    app.router.add_get("/v1/webhooks/{webhook_id}/events/{event_id}/attempts", list_attempts)
    app.router.add_post("/v1/webhooks/{webhook_id}/events/{event_id}/redeliver", redeliver)
