"""The latency floor (issue 12): what the design cannot avoid, with nothing of hookstream's own logic.

Two processes, like the router and the sender, built from the same client factories
(``hookstream.core.kafka.make_consumer`` / ``open_producer``, so the same fetch, linger and acks
settings): ``hop1`` consumes the source topic, stores each batch in PostgreSQL with one committed
statement and produces one task per event to the hop topic; ``hop2`` consumes the hop topic and
POSTs each event, signed, to the sink. Offsets are committed every 0.2 s as hookstream does, off
the hot path. No validation, matching, gates, outcome records or status topic: the bench's
``floor_p50_ms`` is this pipeline's publish -> sink latency, and hookstream's own latency is
judged against it.

    python -m tests.bench.floor hop1 --bootstrap B --source T --hop H --group G --database URL
    python -m tests.bench.floor hop2 --bootstrap B --hop H --group G --sink URL --secret S
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

import aiohttp
import asyncpg
import orjson
import uvloop

from hookstream.core.kafka import make_consumer, open_producer
from hookstream.core.signing import decode_secret, signature_header

COMMIT_INTERVAL_S = 0.2
STORE_SQL = "INSERT INTO floor_events (id, body) SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT DO NOTHING"


async def commit_every(consumer, done: dict, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(COMMIT_INTERVAL_S)
        if done:
            offsets = dict(done)
            done.clear()
            with contextlib.suppress(Exception):  # replayed after a failed commit: a bench duplicate, harmless
                await consumer.commit(offsets)


async def hop1(args: argparse.Namespace, stop: asyncio.Event) -> None:
    pool = await asyncpg.create_pool(args.database, min_size=1, max_size=2)
    await pool.execute("CREATE TABLE IF NOT EXISTS floor_events (id text PRIMARY KEY, body bytea NOT NULL)")
    consumer = make_consumer(args.bootstrap, args.group)
    consumer.subscribe([args.source])
    await consumer.start()
    done: dict = {}
    async with open_producer(args.bootstrap) as producer:
        committer = asyncio.create_task(commit_every(consumer, done, stop))
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=2000)
                if not batches:
                    continue
                records = [m for messages in batches.values() for m in messages]
                ids = [orjson.loads(m.value)["id"] for m in records]
                await pool.execute(STORE_SQL, ids, [m.value for m in records])
                futures = [await producer.send(args.hop, value=m.value, key=m.key) for m in records]
                await asyncio.gather(*futures)
                done.update({tp: messages[-1].offset + 1 for tp, messages in batches.items()})
        finally:
            committer.cancel()
            await consumer.stop()
            await pool.close()


async def hop2(args: argparse.Namespace, stop: asyncio.Event) -> None:
    key = decode_secret(args.secret)
    consumer = make_consumer(args.bootstrap, args.group)
    consumer.subscribe([args.hop])
    await consumer.start()
    done: dict = {}
    committer = asyncio.create_task(commit_every(consumer, done, stop))

    async def post(session: aiohttp.ClientSession, body: bytes) -> None:
        event_id = orjson.loads(body)["id"]
        ts = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": event_id, "webhook-timestamp": str(ts),
                   "webhook-signature": signature_header([key], event_id, ts, body)}
        async with session.post(args.sink, data=body, headers=headers, allow_redirects=False) as resp:
            await resp.read()

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=1000)
                if not batches:
                    continue
                await asyncio.gather(*(post(session, m.value) for messages in batches.values() for m in messages))
                done.update({tp: messages[-1].offset + 1 for tp, messages in batches.items()})
    finally:
        committer.cancel()
        await consumer.stop()


async def amain(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await (hop1 if args.role == "hop1" else hop2)(args, stop)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.floor")
    p.add_argument("role", choices=("hop1", "hop2"))
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--source")
    p.add_argument("--hop", required=True)
    p.add_argument("--database")
    p.add_argument("--sink")
    p.add_argument("--secret")
    uvloop.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
