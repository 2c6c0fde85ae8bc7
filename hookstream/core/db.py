"""PostgreSQL access: the asyncpg pool and the versioned migrations in ``hookstream/schemas/sql``."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator
from importlib.resources.abc import Traversable

import asyncpg
import orjson

from hookstream import resources

_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same in every hookstream process.
_MIGRATION_LOCK_ID = 0x686F6F6B
# No JIT: hookstream's statements are short, and over the day partitions the planner's estimates of a
# join (a day not analyzed yet, the sum over partitions) can exceed jit_above_cost by far, so that a
# statement finding nothing spent ~40 ms compiling (the retry pump's claim, every pass; BENCHMARKS.md).
SESSION_SETTINGS = {"jit": "off"}
# For a statement whose every call has the same shape (the router's store, ``router.store_batch``):
# its one generic plan is made once and kept. Left to choose, PostgreSQL plans a one-event batch anew
# on every call (its custom plan, knowing the array holds one row, looks cheaper than the generic
# one), which costs more CPU than running it: 1.2-1.6 ms against 0.35 ms (BENCHMARKS.md).
GENERIC_PLAN_SETTINGS = {**SESSION_SETTINGS, "plan_cache_mode": "force_generic_plan"}


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=lambda v: orjson.dumps(v).decode(),
                              decoder=orjson.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's default reset query (UNLISTEN, RESET ALL, advisory unlock;
    one more round trip per use): hookstream never changes session state on pooled connections. An
    open transaction is still rolled back by asyncpg before this runs."""


@contextlib.asynccontextmanager
async def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 10,
                    settings: dict[str, str] = SESSION_SETTINGS) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool that is closed on exit; its sessions run with ``settings``."""
    pool = await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size, init=_init_connection,
                                     reset=_keep_session, server_settings=settings)
    try:
        yield pool
    finally:
        await pool.close()


def list_migrations() -> list[tuple[int, str, Traversable]]:
    found = []
    for path in sorted((p for p in resources.MIGRATIONS.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        match = _MIGRATION_RE.match(path.name)
        if not match:
            raise RuntimeError(f"migration file name {path.name!r} does not match NNNN_name.sql")
        found.append((int(match.group(1)), match.group(2), path))
    return found


async def migrate(database_url: str) -> list[str]:
    """Apply every migration not yet recorded, each in its own transaction; returns those applied.

    Idempotent, and safe when several processes start at once (an advisory lock serialises them).
    """
    conn = await asyncpg.connect(database_url)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, path in list_migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text(encoding="utf-8"))
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(f"{version:04d}_{name}")
        # The day partitions the services would make at start: a migrated database takes rows at once.
        # Running services hold the tables so busily that the locks cannot be had: they make them.
        from hookstream.core.partitions import Busy, ensure_partitions

        with contextlib.suppress(Busy):
            await ensure_partitions(conn, dt.datetime.now(dt.UTC))
    finally:
        with contextlib.suppress(Exception):
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
        await conn.close()
    return applied
