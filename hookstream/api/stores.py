"""``/v1/stores``: the organization's stores, which webhooks subscribe to.

Listed by id (ascending, keyset-paginated), so a store picker shows a stable order.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from hookstream.api.errors import ApiError, json_response, not_found
from hookstream.api.keys import POOL
from hookstream.api.middleware import org_of
from hookstream.api.params import decode_cursor, encode_cursor, page, parse_limit, read_json_object
from hookstream.api.validate import parse_store
from hookstream.core.orgs import new_id

CURSOR_KIND = "s"
_COLUMNS = "id, name, created_at"


def store_json(row: asyncpg.Record) -> dict:
    return {"id": row["id"], "name": row["name"], "created_at": row["created_at"]}


async def list_stores(request: web.Request) -> web.Response:
    org_id = org_of(request)
    limit = parse_limit(request.query)
    after = ""
    if (raw := request.query.get("cursor")) is not None:
        (after,) = decode_cursor(CURSOR_KIND, raw, (str,))
    rows = await request.app[POOL].fetch(
        f"SELECT {_COLUMNS} FROM stores WHERE organization_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        org_id, after, limit + 1)
    items, next_cursor = page(list(rows), limit, lambda row: encode_cursor(CURSOR_KIND, row["id"]))
    return json_response({"data": [store_json(r) for r in items], "next_cursor": next_cursor})


async def create_store(request: web.Request) -> web.Response:
    org_id = org_of(request)
    store = parse_store(await read_json_object(request))
    store_id = store.id or new_id("store", 8)
    row = await request.app[POOL].fetchrow(
        f"INSERT INTO stores (organization_id, id, name) VALUES ($1, $2, $3)"
        f" ON CONFLICT (organization_id, id) DO NOTHING RETURNING {_COLUMNS}",
        org_id, store_id, store.name)
    if row is None:
        raise ApiError(409, "conflict", f"store {store_id!r} already exists", field="id")
    return json_response(store_json(row), status=201)


async def get_store(request: web.Request) -> web.Response:
    row = await request.app[POOL].fetchrow(
        f"SELECT {_COLUMNS} FROM stores WHERE organization_id = $1 AND id = $2",
        org_of(request), request.match_info["store_id"])
    if row is None:
        raise not_found("store")
    return json_response(store_json(row))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/stores", list_stores)
    app.router.add_post("/v1/stores", create_store)
    app.router.add_get("/v1/stores/{store_id}", get_store)
