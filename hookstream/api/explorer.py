"""Views across deliveries: the events explorer (every event of the organization and where it went)
and a webhook's health figures.

The explorer reads ``events`` newest first by ``(received_at DESC, seq DESC)`` with keyset
pagination (index ``events_explorer``); ``since``/``until`` filter on when hookstream received the
event. Every valid event the router stored is listed, test events too; an event no webhook wanted
shows no deliveries (the router stores every event once, for idempotency). Each event shows its
first ``MAX_DELIVERIES_SHOWN`` deliveries (in the order they were made) and how many it has in all.

Health figures come from ``webhook_stats_hourly``, which the sender's outcome flush adds to in the
statement that records the attempts: real attempt counts, which a redelivery adds to and never resets.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from hookstream.api.deliveries import Conditions, add_type_store_and_time, log_connection, parse_status
from hookstream.api.errors import ApiError, field_error, json_response
from hookstream.api.middleware import org_of
from hookstream.api.params import decode_cursor, encode_cursor, page, parse_limit
from hookstream.core.partitions import id_range_sql, on_or_after_day_of

CURSOR_KIND = "e"
# The status, event_type and store_id filters walk the organization's events newest first until a
# page is full: a rare match in a long history is a long walk. Past this the query is cancelled and
# the answer says how to narrow it.
QUERY_TIMEOUT_S = 10.0
MAX_DELIVERIES_SHOWN = 20
MAX_EVENT_ID_CHARS = 256

_DELIVERIES_SQL = f"""
SELECT u.seq, x.*, (SELECT count(*) FROM deliveries c
                    WHERE c.event_seq = u.seq AND {on_or_after_day_of("c.id", "u.seq")}) AS total
FROM unnest($1::bigint[]) AS u(seq)
CROSS JOIN LATERAL (
    SELECT d.id AS delivery_id, d.webhook_id, w.url AS webhook_url, w.description AS webhook_description, d.status, d.attempts,
           d.last_http_status, LEAST(d.next_attempt_at, d.manual_due_at) AS next_attempt_at, d.finished_at
    FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
    -- an event's deliveries are made on its day or later (a replay), and ids carry the day
    WHERE d.event_seq = u.seq AND {on_or_after_day_of("d.id", "u.seq")} AND w.organization_id = $2
    ORDER BY d.id
    LIMIT {MAX_DELIVERIES_SHOWN}
) AS x
ORDER BY u.seq, x.delivery_id
"""


def build_events_query(org_id: str, query: Any, limit: int) -> tuple[str, list[Any]]:
    """The SQL and arguments of one explorer page; raises 422/400 naming a bad query parameter. Pure."""
    where = Conditions(["e.organization_id = $1"], [org_id])
    if (event_id := query.get("event_id")) is not None:
        if not event_id or len(event_id) > MAX_EVENT_ID_CHARS:
            raise field_error("event_id", f"must be 1-{MAX_EVENT_ID_CHARS} characters")
        where.add("e.event_id = {}", event_id)
    if (status := parse_status(query)) is not None:
        where.add("EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq"
                  f" AND {on_or_after_day_of('d.id', 'e.seq')} AND d.status = {{}})", status)
    add_type_store_and_time(query, where.add, "e", "received_at", "seq")
    if (raw := query.get("cursor")) is not None:
        received_at, seq = decode_cursor(CURSOR_KIND, raw, (dt.datetime, int))
        where.add("(e.received_at, e.seq) < ({}, {})", received_at, seq)
        where.add(id_range_sql("e.seq", None, "{}"), received_at)
    sql = ("SELECT e.seq, e.event_id, e.event_type, e.store_id, e.occurred_at, e.received_at FROM events e"
           f" WHERE {where.sql} ORDER BY e.received_at DESC, e.seq DESC LIMIT ${len(where.args) + 1}")
    return sql, [*where.args, limit + 1]


async def list_events(request: web.Request) -> web.Response:
    org_id = org_of(request)
    limit = parse_limit(request.query)
    sql, args = build_events_query(org_id, request.query, limit)
    async with log_connection(request, org_id) as conn:
        try:
            rows = await conn.fetch(sql, *args, timeout=QUERY_TIMEOUT_S)
        except TimeoutError:
            raise ApiError(503, "unavailable", f"the search took longer than {QUERY_TIMEOUT_S:g} s; narrow it with"
                           " since/until or search by event_id", headers={"Retry-After": "1"}) from None
        items, next_cursor = page(list(rows), limit,
                                  lambda row: encode_cursor(CURSOR_KIND, row["received_at"], row["seq"]))
        deliveries: dict[int, list[dict[str, Any]]] = {row["seq"]: [] for row in items}
        totals: dict[int, int] = {}
        if items:
            for d in await conn.fetch(_DELIVERIES_SQL, [row["seq"] for row in items], org_id):
                totals[d["seq"]] = d["total"]
                deliveries[d["seq"]].append({
                    "webhook_id": d["webhook_id"], "webhook_url": d["webhook_url"],
                    "webhook_description": d["webhook_description"], "status": d["status"],
                    "attempts": d["attempts"], "last_http_status": d["last_http_status"],
                    "next_attempt_at": d["next_attempt_at"], "finished_at": d["finished_at"],
                })
    return json_response({"data": [{
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "store_id": row["store_id"],
        "occurred_at": row["occurred_at"],
        "received_at": row["received_at"],
        "deliveries": deliveries[row["seq"]],
        "deliveries_total": totals.get(row["seq"], 0),
    } for row in items], "next_cursor": next_cursor})


# window -> (bucket width, number of buckets)
WINDOWS = {"24h": (dt.timedelta(hours=1), 24), "7d": (dt.timedelta(hours=6), 28)}


def stats_buckets(rows: list[tuple[dt.datetime, int, int]], window: str,
                  now: dt.datetime) -> dict[str, Any]:
    """Hourly figures ``(hour, attempts, succeeded)`` summed into the window's buckets, which end
    with the one holding ``now`` (bucket edges on whole hours, UTC). Pure."""
    width, count = WINDOWS[window]
    end = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    start = end - width * count
    tried, ok = [0] * count, [0] * count
    for hour, attempts, succeeded in rows:
        index = int((hour - start) / width)
        if 0 <= index < count:
            tried[index] += attempts
            ok[index] += succeeded
    buckets = [{"start": start + width * i, "attempts": tried[i], "succeeded": ok[i], "failed": tried[i] - ok[i]}
               for i in range(count)]
    attempts, succeeded = sum(tried), sum(ok)
    return {
        "window": window,
        "bucket_seconds": int(width.total_seconds()),
        "buckets": buckets,
        "attempts": attempts,
        "succeeded": succeeded,
        "failed": attempts - succeeded,
        "success_rate": round(succeeded / attempts, 4) if attempts else None,
    }


async def webhook_stats(request: web.Request) -> web.Response:
    """``GET /v1/webhooks/{id}/stats?window=24h|7d``: attempts and success rate per bucket."""
    org_id, webhook_id = org_of(request), request.match_info["webhook_id"]
    window = request.query.get("window", "24h")
    if window not in WINDOWS:
        raise field_error("window", f"must be one of {', '.join(WINDOWS)}")
    width, count = WINDOWS[window]
    now = dt.datetime.now(dt.UTC)
    async with log_connection(request, org_id, webhook_id) as conn:
        rows = await conn.fetch(
            "SELECT hour, attempts, succeeded FROM webhook_stats_hourly WHERE webhook_id = $1 AND hour >= $2",
            webhook_id, now - width * count - dt.timedelta(hours=1))
    return json_response(stats_buckets([(r["hour"], r["attempts"], r["succeeded"]) for r in rows], window, now))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/events", list_events)
    app.router.add_get("/v1/webhooks/{webhook_id}/stats", webhook_stats)
