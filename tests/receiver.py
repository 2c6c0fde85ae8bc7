"""A real HTTP webhook receiver for tests (svix's TestReceiver, in aiohttp).

It records every request and answers per path as told: 2xx, any status, hang, redirect, close the
connection, a Retry-After header, or a script of answers (e.g. fail twice, then succeed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field

from aiohttp import web

from hookstream.core import signing


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival

    def verify(self, secret: str) -> bool:
        return signing.verify(secret, self.headers["webhook-id"], int(self.headers["webhook-timestamp"]),
                              self.body, self.headers["webhook-signature"])


@dataclass
class Behaviour:
    """What to answer: ``status`` (with ``headers``), or ``mode`` hang / close / redirect."""

    status: int = 200
    mode: str = "answer"  # answer | hang | close | redirect | first_fails (500 to each event's first request)
    headers: dict[str, str] = field(default_factory=dict)
    body: str = "ok"
    delay_s: float = 0.0  # answer after this long
    raw: bytes | None = None  # the body as bytes, instead of ``body`` (any bytes: NULs, gzip, ...)
    fail_first_of: frozenset[str] | None = None  # first_fails: only these event ids (None: every event)


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._scripts: dict[str, list[Behaviour]] = defaultdict(list)
        self._defaults: dict[str, Behaviour] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._arrived = asyncio.Event()
        self._released = asyncio.Event()

    async def __aenter__(self) -> Receiver:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._runner:
            await self._runner.cleanup()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def set(self, path: str, behaviour: Behaviour) -> None:
        """Answer every request to ``path`` this way (after any scripted answers are used up)."""
        self._defaults[path] = behaviour

    def script(self, path: str, *behaviours: Behaviour) -> None:
        """Answer the next requests to ``path`` with these, in order."""
        self._scripts[path].extend(behaviours)

    def release_hangs(self) -> None:
        """Let every hanging request (and any later one) answer now, so a test can end quickly."""
        self._released.set()

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Received(request.path, {k.lower(): v for k, v in request.headers.items()}, body,
                                      time.time()))
        script = self._scripts.get(request.path)
        behaviour = script.pop(0) if script else self._defaults.get(request.path, Behaviour())
        if behaviour.mode == "first_fails":
            event_id = request.headers.get("webhook-id", "")
            seen = sum(1 for r in self.requests if r.path == request.path and r.headers.get("webhook-id") == event_id)
            chosen = behaviour.fail_first_of is None or event_id in behaviour.fail_first_of
            return web.Response(status=500 if seen == 1 and chosen else behaviour.status, text=behaviour.body)
        if behaviour.mode == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), 3600)
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.mode == "close":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never reaches the client
        if behaviour.mode == "redirect":
            return web.Response(status=behaviour.status if 300 <= behaviour.status < 400 else 302,
                                headers={"Location": self.url("/redirected"), **behaviour.headers})
        if behaviour.raw is not None:
            return web.Response(status=behaviour.status, body=behaviour.raw, headers=behaviour.headers)
        return web.Response(status=behaviour.status, text=behaviour.body, headers=behaviour.headers)
