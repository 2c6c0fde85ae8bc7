"""``/v1/webhooks``: create, list, read, change and remove webhooks; rotate secrets; send test events.

Every query names the caller's organization, so another organization's webhook is simply not
found (404, never 403). Routers and senders see changes within a second through the
``webhooks_notify`` trigger; nothing here has to tell them.

The secret is returned once, by POST (and by rotate-secret for the new one); GET never returns it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from hookstream.api.errors import ApiError, field_error, json_response, not_found
from hookstream.api.keys import POOL, SECRET_BOX, SETTINGS
from hookstream.api.middleware import org_of
from hookstream.api.params import decode_cursor, encode_cursor, page, parse_limit, read_json_object
from hookstream.api.validate import parse_webhook_changes
from hookstream.core.filters import (
    SAMPLE_PAYLOADS,
    FilterError,
    check_against_samples,
    compile_filter,
    evaluate,
)
from hookstream.core.model import format_rfc3339
from hookstream.core.netguard import UnsafeEndpointError, check_endpoint
from hookstream.core.orgs import new_id
from hookstream.core.settings import Settings
from hookstream.core.signing import generate_secret
from hookstream.core.states import DeliveryStatus

log = logging.getLogger(__name__)

CURSOR_KIND = "w"
URL_CHECK_TIMEOUT_S = 5.0
ROTATION_GRACE = dt.timedelta(hours=24)
TEST_EVENT_TYPE = "webhook.test"
TEST_EVENT_MESSAGE = "hookstream test event"

# failures_24h is served by the deliveries_log_status index (webhook_id, status, created_at DESC, id DESC).
WEBHOOK_COLUMNS = """
    w.id, w.url, w.description, w.event_types, w.store_ids, w.enabled, w.ordering, w.created_at, w.updated_at,
    w.filter,
    (SELECT count(*) FROM deliveries d
      WHERE d.webhook_id = w.id AND d.status = 'failed'
        AND d.created_at > now() - interval '24 hours') AS failures_24h,
    (SELECT coalesce(sum(f.errors), 0)::bigint FROM filter_errors f
      WHERE f.webhook_id = w.id AND f.hour >= date_trunc('hour', now() - interval '24 hours')) AS filter_errors_24h,
    (SELECT jsonb_build_object('error', f.last_error, 'event_id', f.last_event_id, 'at', f.last_at)
       FROM filter_errors f WHERE f.webhook_id = w.id AND f.hour >= date_trunc('hour', now() - interval '24 hours')
      ORDER BY f.hour DESC LIMIT 1) AS last_filter_error
"""


def webhook_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "url": row["url"],
        "description": row["description"],
        "event_types": list(row["event_types"]),
        "store_ids": list(row["store_ids"]),
        "enabled": row["enabled"],
        "ordering": row["ordering"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "failures_24h": row["failures_24h"],
        "filter": row["filter"],
        "filter_errors_24h": row["filter_errors_24h"],
        "last_filter_error": row["last_filter_error"],
    }


async def check_url(settings: Settings, url: str) -> None:
    """The SSRF guard at creation time: 422 on ``url`` with netguard's reason."""
    try:
        async with asyncio.timeout(URL_CHECK_TIMEOUT_S):
            await check_endpoint(url, allow_http=settings.allow_http,
                                 allow_private_networks=settings.allow_private_networks)
    except UnsafeEndpointError as exc:
        raise field_error("url", str(exc)) from None
    except TimeoutError:
        raise field_error("url", "the host could not be resolved in time") from None


async def check_stores(conn: asyncpg.Connection, org_id: str, requested: list[str]) -> None:
    """422 on ``store_ids[i]`` for the first id that is not a store of this organization."""
    rows = await conn.fetch("SELECT id FROM stores WHERE organization_id = $1 AND id = ANY($2::text[])",
                            org_id, list(set(requested)))
    known = {row["id"] for row in rows}
    for index, store_id in enumerate(requested):
        if store_id not in known:
            raise field_error(f"store_ids[{index}]", f"unknown store {store_id!r}; create it with POST /v1/stores")


async def validate_changes(request: web.Request, org_id: str, body: dict[str, Any], *,
                           creating: bool) -> dict[str, Any]:
    """Shape first (cheap), then stores (one query), then the URL (DNS)."""
    changes = parse_webhook_changes(body, creating=creating)
    if "filter" in changes or "event_types" in changes:
        # The filter as it will be, checked against the event types as they will be: a PATCH of
        # either one is refused when the pair would fail on a subscribed type's sample event.
        filter_source, event_types = changes.get("filter"), changes.get("event_types")
        if not creating and ("filter" not in changes or event_types is None):
            row = await request.app[POOL].fetchrow(
                "SELECT filter, event_types FROM webhooks WHERE organization_id = $1 AND id = $2",
                org_id, request.match_info["webhook_id"])
            if row is not None:
                filter_source = changes["filter"] if "filter" in changes else row["filter"]
                event_types = event_types if event_types is not None else list(row["event_types"])
        if filter_source is not None and event_types:
            problem = check_against_samples(compile_filter(filter_source), event_types)
            if problem is not None:
                raise field_error("filter" if "filter" in changes else "event_types", problem)
    if "store_ids" in changes:
        async with request.app[POOL].acquire() as conn:
            await check_stores(conn, org_id, body["store_ids"])
    if "url" in changes:
        await check_url(request.app[SETTINGS], changes["url"])
    return changes


async def fetch_webhook(conn: asyncpg.Connection | asyncpg.Pool, org_id: str, webhook_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks w WHERE w.organization_id = $1 AND w.id = $2",
                              org_id, webhook_id)
    if row is None:
        raise not_found("webhook")
    return row


async def require_webhook(conn: asyncpg.Connection | asyncpg.Pool, org_id: str, webhook_id: str,
                          *, lock: bool = False) -> asyncpg.Record:
    """The webhook's id, first store and enabled flag, or 404; ``lock`` holds it until the transaction ends."""
    row = await conn.fetchrow(
        "SELECT id, store_ids, enabled FROM webhooks WHERE organization_id = $1 AND id = $2"
        + (" FOR SHARE" if lock else ""), org_id, webhook_id)
    if row is None:
        raise not_found("webhook")
    return row


async def list_webhooks(request: web.Request) -> web.Response:
    org_id = org_of(request)
    limit = parse_limit(request.query)
    conditions, args = ["w.organization_id = $1"], [org_id]
    if (raw := request.query.get("cursor")) is not None:
        created_at, last_id = decode_cursor(CURSOR_KIND, raw, (dt.datetime, str))
        conditions.append("(w.created_at, w.id) < ($2, $3)")
        args += [created_at, last_id]
    rows = await request.app[POOL].fetch(
        f"SELECT {WEBHOOK_COLUMNS} FROM webhooks w WHERE {' AND '.join(conditions)}"
        f" ORDER BY w.created_at DESC, w.id DESC LIMIT ${len(args) + 1}", *args, limit + 1)
    items, next_cursor = page(list(rows), limit,
                              lambda row: encode_cursor(CURSOR_KIND, row["created_at"], row["id"]))
    return json_response({"data": [webhook_json(r) for r in items], "next_cursor": next_cursor})


async def create_webhook(request: web.Request) -> web.Response:
    org_id = org_of(request)
    changes = await validate_changes(request, org_id, await read_json_object(request), creating=True)
    secret, webhook_id = generate_secret(), new_id("wh")
    row = await request.app[POOL].fetchrow(
        "INSERT INTO webhooks AS w (id, organization_id, url, description, event_types, store_ids, enabled, secret,"
        f" filter, ordering) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {WEBHOOK_COLUMNS}",
        webhook_id, org_id, changes["url"], changes["description"], changes["event_types"],
        changes["store_ids"], changes["enabled"], request.app[SECRET_BOX].seal(secret, webhook_id),
        changes.get("filter"), changes["ordering"])
    return json_response({**webhook_json(row), "secret": secret}, status=201)


async def get_webhook(request: web.Request) -> web.Response:
    row = await fetch_webhook(request.app[POOL], org_of(request), request.match_info["webhook_id"])
    return json_response(webhook_json(row))


async def update_webhook(request: web.Request) -> web.Response:
    org_id, webhook_id = org_of(request), request.match_info["webhook_id"]
    body = await read_json_object(request)
    pool = request.app[POOL]
    # Validation answers 422 before 404 would be odd: check the webhook exists first.
    before = await require_webhook(pool, org_id, webhook_id)
    changes = await validate_changes(request, org_id, body, creating=False)
    if not changes:
        return json_response(webhook_json(await fetch_webhook(pool, org_id, webhook_id)))
    assignments = [f"{column} = ${index}" for index, column in enumerate(changes, start=3)]
    row = await pool.fetchrow(
        f"UPDATE webhooks AS w SET {', '.join(assignments)}, updated_at = now()"
        f" WHERE w.organization_id = $1 AND w.id = $2 RETURNING {WEBHOOK_COLUMNS}",
        org_id, webhook_id, *changes.values())
    if row is None:  # deleted meanwhile
        raise not_found("webhook")
    log_enabled_change(before["enabled"], row["enabled"], webhook_id, org_id)
    return json_response(webhook_json(row))


def log_enabled_change(was: bool, now: bool, webhook_id: str, org_id: str) -> None:
    """The operator's line when a webhook is disabled (or enabled again): hookstream never disables
    one by itself, so this is the only way it happens."""
    if was != now:
        log.info("webhook disabled through the API" if not now else "webhook enabled through the API",
                 extra={"webhook_id": webhook_id, "organization_id": org_id})


# The webhook goes with its delivery log: its deliveries by their foreign key (ON DELETE CASCADE), their
# attempts here (attempts have no foreign key to the day-partitioned deliveries: checking one per
# attempt cost ~46 µs, 0006_partitions.sql). An attempt an outcome flush records in the same instant
# is left to retention (no API path leads to it).
_DELETE_WEBHOOK_SQL = """
WITH hook AS (
    SELECT id FROM webhooks WHERE organization_id = $1 AND id = $2 FOR UPDATE
), gone_attempts AS (
    DELETE FROM attempts a USING deliveries d, hook
    WHERE d.webhook_id = hook.id AND a.delivery_id = d.id
)
DELETE FROM webhooks w USING hook WHERE w.id = hook.id RETURNING w.id
"""


async def delete_webhook(request: web.Request) -> web.Response:
    deleted = await request.app[POOL].fetchval(_DELETE_WEBHOOK_SQL, org_of(request), request.match_info["webhook_id"])
    if deleted is None:
        raise not_found("webhook")
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    """The old secret keeps signing (as a second signature) for 24 h. Rotating again within that time
    replaces it: only the secret current at the moment of rotation gets the grace period."""
    secret, webhook_id = generate_secret(), request.match_info["webhook_id"]
    row = await request.app[POOL].fetchrow(
        "UPDATE webhooks SET previous_secret = secret, previous_secret_expires_at = now() + $3::interval,"
        " secret = $4, updated_at = now() WHERE organization_id = $1 AND id = $2"
        " RETURNING previous_secret_expires_at",
        org_of(request), webhook_id, ROTATION_GRACE, request.app[SECRET_BOX].seal(secret, webhook_id))
    if row is None:
        raise not_found("webhook")
    return json_response({"secret": secret, "previous_secret_expires_at": row["previous_secret_expires_at"]})


def build_test_event_body(event_id: str, created_at: str, organization_id: str, store_id: str,
                          event_type: str = TEST_EVENT_TYPE) -> str:
    """The webhook body of a test event: the shape of every webhook (CONTRACT §3). Type ``webhook.test``
    carries a message; any of the 12 event types carries that type's schema example as ``data``."""
    data = {"message": TEST_EVENT_MESSAGE} if event_type == TEST_EVENT_TYPE else SAMPLE_PAYLOADS[event_type]["data"]
    return orjson.dumps({
        "id": event_id,
        "type": event_type,
        "created_at": created_at,
        "organization_id": organization_id,
        "store_id": store_id,
        "data": data,
    }).decode()


async def _test_event_type(request: web.Request) -> str:
    """The optional ``{"event_type"}`` body of a test send; no body means ``webhook.test``."""
    if not (await request.read()).strip():
        return TEST_EVENT_TYPE
    body = await read_json_object(request)
    unknown = sorted(set(body) - {"event_type"})
    if unknown:
        raise field_error(unknown[0], "unknown field; allowed: event_type")
    event_type = body.get("event_type", TEST_EVENT_TYPE)
    if not isinstance(event_type, str) or (event_type != TEST_EVENT_TYPE and event_type not in SAMPLE_PAYLOADS):
        raise field_error("event_type", f"must be {TEST_EVENT_TYPE} or one of the 12 event types"
                                        " (see GET /v1/event-types)")
    return event_type


async def send_test_event(request: web.Request) -> web.Response:
    """Record a test event and a delivery due now; the sender's retry pump sends it within ~100 ms,
    signed like any webhook, and it shows in the delivery log like any other event. With
    ``{"event_type": "order.created"}`` the body is that type's schema example (the webhook's filter
    and subscriptions are not applied: a test send always goes)."""
    org_id, webhook_id = org_of(request), request.match_info["webhook_id"]
    event_type = await _test_event_type(request)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        hook = await require_webhook(conn, org_id, webhook_id, lock=True)
        if not hook["enabled"]:
            raise ApiError(409, "conflict", "webhook is disabled; enable it to send a test event")
        store_id = hook["store_ids"][0]
        now = dt.datetime.now(dt.UTC)
        # whole milliseconds, so the stored occurred_at equals the body's created_at exactly
        occurred_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
        event_id = new_id("evt_test")
        created_at = format_rfc3339(occurred_at, timespec="milliseconds")
        body = build_test_event_body(event_id, created_at, org_id, store_id, event_type)
        seq = await conn.fetchval(
            "INSERT INTO events (organization_id, event_id, event_type, store_id, occurred_at, body,"
            " source_topic, source_partition, source_offset) VALUES ($1, $2, $3, $4, $5, $6, 'api', -1, -1)"
            " RETURNING seq", org_id, event_id, event_type, store_id, occurred_at, body)
        await conn.execute(
            "INSERT INTO deliveries (webhook_id, event_seq, event_id, event_type, store_id, manual_due_at)"
            " VALUES ($1, $2, $3, $4, $5, now())",
            webhook_id, seq, event_id, event_type, store_id)
    return json_response({"event_id": event_id, "webhook_id": webhook_id, "event_type": event_type,
                          "status": DeliveryStatus.PENDING}, status=202)


async def test_filter(request: web.Request) -> web.Response:
    """``POST /v1/filters/test {"filter", "event_type"}``: evaluate a filter on the sample event of that
    type (the schemas' example, as the endpoint would receive it), or on ``event`` when given."""
    body = await read_json_object(request)
    unknown = set(body) - {"filter", "event_type", "event"}
    if unknown:
        raise field_error(sorted(unknown)[0], "unknown field; allowed: filter, event_type, event")
    try:
        compiled = compile_filter(body.get("filter"))
    except FilterError as exc:
        raise field_error("filter", str(exc)) from None
    event = body.get("event")
    if event is None:
        event_type = body.get("event_type")
        if event_type not in SAMPLE_PAYLOADS:
            raise field_error("event_type", "must be one of the 12 event types (see GET /v1/event-types)")
        event = SAMPLE_PAYLOADS[event_type]
    elif not isinstance(event, dict):
        raise field_error("event", "must be a webhook payload object")
    outcome = evaluate(compiled, event)
    if isinstance(outcome, bool):
        return json_response({"result": outcome, "error": None, "event": event})
    return json_response({"result": None, "error": outcome.error, "event": event})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/filters/test", test_filter)
    app.router.add_get("/v1/webhooks", list_webhooks)
    app.router.add_post("/v1/webhooks", create_webhook)
    app.router.add_get("/v1/webhooks/{webhook_id}", get_webhook)
    app.router.add_patch("/v1/webhooks/{webhook_id}", update_webhook)
    app.router.add_delete("/v1/webhooks/{webhook_id}", delete_webhook)
    app.router.add_post("/v1/webhooks/{webhook_id}/rotate-secret", rotate_secret)
    app.router.add_post("/v1/webhooks/{webhook_id}/test", send_test_event)
