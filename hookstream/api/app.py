"""The admin API and console (CONTRACT §5): one aiohttp application on ``HOOKSTREAM_API_LISTEN``.

    request -> observe_and_shape_errors -> require_api_key (/v1 only) -> handler
               (log line, metric,          (Bearer key -> organization)   (stores.py, webhooks.py,
                errors as JSON)                                             deliveries.py, health.py,
                                                                            console.py)

The process-wide Prometheus registry is served at ``/metrics`` on the same listener.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from aiohttp import web

from hookstream.api import console, deliveries, explorer, health, stores, webhooks
from hookstream.api.errors import json_response
from hookstream.api.keys import POOL, READ_POOL, SECRET_BOX, SETTINGS
from hookstream.api.middleware import make_auth_middleware, observe_and_shape_errors
from hookstream.core.secretbox import SecretBox
from hookstream.core.settings import Settings
from hookstream.core.validation import EVENT_TYPES

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
SHUTDOWN_TIMEOUT_S = 5.0


def build_app(settings: Settings, pool: asyncpg.Pool, read_pool: asyncpg.Pool | None = None) -> web.Application:
    """The application; the pools are the caller's (they outlive the app and are closed by the caller).

    ``read_pool`` (``DATABASE_READ_URL``'s, a replica) serves the read-only delivery-log views only
    (deliveries.py, explorer.py); without it they read ``pool`` like everything else. API keys,
    webhooks, stores and every write always use ``pool``."""
    app = web.Application(client_max_size=MAX_BODY_BYTES,
                          middlewares=[observe_and_shape_errors, make_auth_middleware(pool)])
    app[SETTINGS] = settings
    app[POOL] = pool
    app[READ_POOL] = pool if read_pool is None else read_pool
    app[SECRET_BOX] = SecretBox(settings.secret_key)
    health.add_routes(app, settings.kafka_bootstrap_servers)
    stores.add_routes(app)
    webhooks.add_routes(app)
    deliveries.add_routes(app)
    explorer.add_routes(app)
    console.add_routes(app)
    app.router.add_get("/v1/event-types", list_event_types)
    return app


async def list_event_types(_request: web.Request) -> web.Response:
    """The 12 supported event types, grouped by resource (``order``, ``product``)."""
    return json_response({"data": [{"type": t, "group": t.split(".", 1)[0]} for t in EVENT_TYPES],
                          "next_cursor": None})


async def run_api(settings: Settings, stop: asyncio.Event, *, pool: asyncpg.Pool,
                  read_pool: asyncpg.Pool | None = None) -> None:
    """Serve on ``settings.api_listen`` until ``stop`` is set, then close listeners and finish requests."""
    runner = web.AppRunner(build_app(settings, pool, read_pool), access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        host, port = settings.api_listen
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("api listening on http://%s:%d", host, port)
        await stop.wait()
    finally:
        await runner.cleanup()
    log.info("api stopped")
