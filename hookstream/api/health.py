"""Unauthenticated operational routes: /healthz, /readyz, /metrics and /openapi.json.

``/readyz`` is 200 only when PostgreSQL answers ``SELECT 1`` and a Kafka broker answers a metadata
request, each within CHECK_TIMEOUT_S. The result is cached for CACHE_S and computed by one request
at a time, so a load balancer probing hard costs at most one Kafka connection every two seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient

from hookstream import resources
from hookstream.api.errors import json_response
from hookstream.api.keys import POOL
from hookstream.core import liveness
from hookstream.core.metrics import handle_metrics

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0
CACHE_S = 2.0
OPENAPI_PATH = resources.OPENAPI
MAX_REASON_CHARS = 200


async def check_postgres(pool: asyncpg.Pool) -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await pool.fetchval("SELECT 1")
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:g}s"
    except Exception as exc:  # any failure means "not ready"; the reason is shown
        return f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]
    return None


async def check_kafka(bootstrap_servers: str) -> str | None:
    """None when a broker answers a metadata request (a short-lived admin client), else why not."""
    timeout_ms = int(CHECK_TIMEOUT_S * 1000)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="hookstream-api-readyz",
                                request_timeout_ms=timeout_ms, connections_max_idle_ms=timeout_ms * 5)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await admin.start()
            await admin.list_topics()
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:g}s"
    except Exception as exc:  # aiokafka raises a variety of errors; every one means "not ready"
        return f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return None


@dataclass
class ReadinessProbe:
    pool: asyncpg.Pool
    kafka_bootstrap_servers: str
    _checked_at: float = -1e9
    _result: dict[str, str] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def check(self) -> dict[str, str]:
        """``{"postgres": "ok" | reason, "kafka": "ok" | reason}``, at most CACHE_S old."""
        async with self._lock:
            if time.monotonic() - self._checked_at >= CACHE_S:
                postgres, kafka = await asyncio.gather(check_postgres(self.pool),
                                                       check_kafka(self.kafka_bootstrap_servers))
                self._result = {"postgres": postgres or "ok", "kafka": kafka or "ok"}
                self._checked_at = time.monotonic()
                if postgres or kafka:
                    log.warning("not ready: %s", self._result)
            return dict(self._result)


PROBE = web.AppKey("readiness_probe", ReadinessProbe)


async def healthz(_request: web.Request) -> web.Response:
    """Liveness: 503 when a long-running loop of this process (router, sender, flusher, retry pump,
    webhook directory, in ``all``) has not beaten for longer than its bound."""
    status, body = liveness.health()
    return json_response(body, status=status)


async def readyz(request: web.Request) -> web.Response:
    checks = await request.app[PROBE].check()
    down = [name for name, state in checks.items() if state != "ok"]
    if not down:
        return json_response({"status": "ok", "checks": checks})
    return json_response({"status": "unavailable", "checks": checks,
                          "error": {"code": "not_ready", "message": f"not reachable: {', '.join(down)}"}},
                         status=503)


async def openapi(_request: web.Request) -> web.Response:
    if not OPENAPI_PATH.is_file():
        return json_response({"error": {"code": "not_found", "message": "openapi.json is not installed"}},
                             status=404)
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/json")


def add_routes(app: web.Application, bootstrap_servers: str) -> None:
    app[PROBE] = ReadinessProbe(app[POOL], bootstrap_servers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/openapi.json", openapi)
