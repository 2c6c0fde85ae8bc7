"""The benchmark's HTTP sink: a fast aiohttp server in its own process (so it does not share the
measuring process's CPU) that verifies every request's Standard Webhooks signature and records
(path, webhook-id, arrival time, publish time carried in the event's data, signature valid, HTTP
status answered, arrival number). The arrival number counts every request since the sink started,
in the order their bodies were read; a request is recorded before it is answered, so a request
sent only after another was answered always has the larger number.

Run as ``python -m tests.bench.sink``; it prints its port on the first line of stdout. Control
endpoints (JSON): ``POST /_control/secrets`` {path: secret}, ``POST /_control/hang`` [path, ...],
``POST /_control/fail_first`` [event id, ...] (the first request for each of those webhook-ids is
answered 500, later ones 200; replaces the previous list), ``GET /_control/count``,
``GET /_control/dump`` (and clears the records).
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
from aiohttp import web

from hookstream.core import signing

HANG_S = 3600
# (path, event id, arrival time, publish time or None, signature valid, status answered, arrival number)
Record = tuple[str, str, float, float | None, bool, int, int]


class Sink:
    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.hang: set[str] = set()
        self.fail_first: set[str] = set()  # event ids whose next request is answered 500
        self.records: list[Record] = []
        self.arrivals = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        path = request.path
        headers = request.headers
        event_id = headers.get("webhook-id", "")
        secret = self.secrets.get(path)
        valid = False
        if secret is not None:
            try:
                valid = signing.verify(secret, event_id, int(headers.get("webhook-timestamp", "0")), body,
                                       headers.get("webhook-signature", ""))
            except ValueError:
                valid = False
        sent_at = None
        try:
            data = orjson.loads(body).get("data") or {}
            sent_at = data.get("bench_sent_at")
        except (orjson.JSONDecodeError, AttributeError):
            pass
        status = 200
        if event_id in self.fail_first:
            self.fail_first.discard(event_id)
            status = 500
        self.arrivals += 1
        self.records.append((path, event_id, arrived, sent_at, valid, status, self.arrivals))
        if path in self.hang:
            await asyncio.sleep(HANG_S)
        return web.Response(status=status, text="ok" if status == 200 else "bench: first attempt refused")

    async def set_secrets(self, request: web.Request) -> web.Response:
        self.secrets.update(orjson.loads(await request.read()))
        return web.json_response({"ok": True})

    async def set_hang(self, request: web.Request) -> web.Response:
        self.hang = set(orjson.loads(await request.read()))
        return web.json_response({"ok": True})

    async def set_fail_first(self, request: web.Request) -> web.Response:
        self.fail_first = set(orjson.loads(await request.read()))
        return web.json_response({"ok": True})

    async def count(self, _request: web.Request) -> web.Response:
        return web.json_response({"count": len(self.records)})

    async def dump(self, _request: web.Request) -> web.Response:
        records, self.records = self.records, []
        return web.Response(body=orjson.dumps(records), content_type="application/json")


async def serve() -> None:
    sink = Sink()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/_control/secrets", sink.set_secrets)
    app.router.add_post("/_control/hang", sink.set_hang)
    app.router.add_post("/_control/fail_first", sink.set_fail_first)
    app.router.add_get("/_control/count", sink.count)
    app.router.add_get("/_control/dump", sink.dump)
    app.router.add_post("/{tail:.*}", sink.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
