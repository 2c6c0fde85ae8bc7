"""The in-memory view of webhooks that routers match against and senders sign with.

Loaded from PostgreSQL at start, then kept fresh by ``LISTEN hookstream_webhooks`` (a trigger
announces every insert, update and delete) with a periodic full reload as a safety net, so a change
made through the API reaches every router and sender replica within a second, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from hookstream.core import liveness
from hookstream.core.filters import CompiledFilter, FilterError, compile_filter
from hookstream.core.ordering import PER_RESOURCE
from hookstream.core.secretbox import SecretBox, SecretBoxError
from hookstream.core.signing import decode_secret
from hookstream.core.tasks import cancel_and_wait

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "hookstream_webhooks"
FULL_RELOAD_INTERVAL_S = 30.0
_RECONNECT_DELAY_S = 1.0
HEARTBEAT = "webhook-directory"

_SELECT = (
    "SELECT id, organization_id, url, event_types, store_ids, enabled, secret,"
    " previous_secret, previous_secret_expires_at, filter, ordering FROM webhooks"
)


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    organization_id: str
    url: str
    event_types: frozenset[str]
    store_ids: frozenset[str]
    enabled: bool
    key: bytes  # the decoded HMAC key of the current secret
    previous_key: bytes | None
    previous_key_expires_at: dt.datetime | None
    key_error: str | None = None  # set when the stored secret could not be opened: nothing can be signed
    filter: CompiledFilter | None = None  # compiled once, when the webhook is loaded
    filter_error: str | None = None  # a stored filter this version cannot compile: nothing is routed to it
    ordered: bool = False  # ordering 'per_resource': its deliveries of one resource go out one at a time

    @property
    def filtered(self) -> bool:
        return self.filter is not None or self.filter_error is not None

    def signing_keys(self, now: dt.datetime) -> list[bytes]:
        """The current key, then the previous one while its rotation grace period lasts."""
        keys = [self.key]
        if self.previous_key and self.previous_key_expires_at and self.previous_key_expires_at > now:
            keys.append(self.previous_key)
        return keys

    @classmethod
    def from_row(cls, row: asyncpg.Record, box: SecretBox) -> Webhook:
        key, previous, error = b"", None, None
        try:
            key = decode_secret(box.open(row["secret"], row["id"]))
            if row["previous_secret"]:
                previous = decode_secret(box.open(row["previous_secret"], row["id"]))
        except (SecretBoxError, ValueError) as exc:
            error = str(exc) if isinstance(exc, SecretBoxError) else "the stored secret is malformed"
            log.error("webhook secret unusable: %s", error, extra={"webhook_id": row["id"]})
        compiled, filter_error = None, None
        source = row.get("filter")
        if source is not None:
            try:
                compiled = compile_filter(source)
            except FilterError as exc:
                filter_error = f"the stored filter does not compile: {exc}"
                log.error("webhook filter unusable: %s", exc, extra={"webhook_id": row["id"]})
        return cls(
            id=row["id"],
            organization_id=row["organization_id"],
            url=row["url"],
            event_types=frozenset(row["event_types"]),
            store_ids=frozenset(row["store_ids"]),
            enabled=row["enabled"],
            key=key,
            previous_key=previous,
            previous_key_expires_at=row["previous_secret_expires_at"],
            key_error=error,
            filter=compiled,
            filter_error=filter_error,
            ordered=row.get("ordering") == PER_RESOURCE,
        )


def match_subscriptions(
    index: dict[tuple[str, str], list[Webhook]], organization_id: str, event_type: str, store_id: str
) -> list[Webhook]:
    """Enabled webhooks of the organization subscribed to this event type and store."""
    return [hook for hook in index.get((organization_id, event_type), ()) if store_id in hook.store_ids]


def build_index(webhooks: Iterable[Webhook]) -> dict[tuple[str, str], list[Webhook]]:
    """Enabled webhooks by (organization, event type); the store is checked against each webhook's set.

    Linear in webhooks × event types (at most 12), not × stores: a tenant whose webhooks list
    thousands of stores cannot make the rebuild after every change (which runs on the event loop of
    every router and sender) expensive for everyone.
    """
    index: dict[tuple[str, str], list[Webhook]] = defaultdict(list)
    for hook in webhooks:
        if not hook.enabled:
            continue
        for event_type in hook.event_types:
            index[(hook.organization_id, event_type)].append(hook)
    return dict(index)


class WebhookDirectory:
    """Use as ``async with WebhookDirectory(database_url) as directory``; ``match`` and ``get`` never do I/O."""

    def __init__(self, database_url: str, box: SecretBox | None = None) -> None:
        self._database_url = database_url
        self._box = box or SecretBox(None)
        self._by_id: dict[str, Webhook] = {}
        self._index: dict[tuple[str, str], list[Webhook]] = {}
        self._changed: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def __aenter__(self) -> WebhookDirectory:
        self._task = asyncio.create_task(self._run(), name="webhook-directory")
        ready = asyncio.create_task(self.ready.wait())
        done, _ = await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()  # surfaces the start-up error
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await cancel_and_wait(self._task)
        liveness.forget(HEARTBEAT)

    def get(self, webhook_id: str) -> Webhook | None:
        return self._by_id.get(webhook_id)

    async def fetch(self, pool: asyncpg.Pool, webhook_id: str) -> Webhook | None:
        """``get``, falling back to PostgreSQL for a webhook this view has not caught up with yet.

        None means the webhook does not exist (deleted). Database errors propagate.
        """
        hook = self._by_id.get(webhook_id)
        if hook is not None:
            return hook
        row = await pool.fetchrow(_SELECT + " WHERE id = $1", webhook_id)
        return Webhook.from_row(row, self._box) if row else None

    def match(self, organization_id: str, event_type: str, store_id: str) -> list[Webhook]:
        return match_subscriptions(self._index, organization_id, event_type, store_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._changed.add(payload)
        self._wake.set()

    async def _run(self) -> None:
        first = True
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._database_url)
                # A lost connection wakes the loop at once (not after the reload interval), so the
                # reconnect and full reload follow a PostgreSQL restart within about a second.
                conn.add_termination_listener(lambda _conn: self._wake.set())
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                # Listen first, then load: nothing that changes in between is missed.
                await self._reload_all(conn)
                self.ready.set()
                while not conn.is_closed():
                    liveness.beat(HEARTBEAT)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), FULL_RELOAD_INTERVAL_S)
                    if self._wake.is_set():
                        self._wake.clear()
                        changed, self._changed = self._changed, set()
                        await self._reload_some(conn, changed)
                    else:
                        await self._reload_all(conn)
            except Exception as exc:  # a cache: whatever failed, reconnect and reload everything
                if first and not self.ready.is_set():
                    raise
                log.warning("webhook directory lost PostgreSQL (%s: %s); reconnecting", type(exc).__name__, exc)
                liveness.beat(HEARTBEAT)
            finally:
                first = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(_RECONNECT_DELAY_S)

    async def _reload_all(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(_SELECT)
        self._by_id = {row["id"]: Webhook.from_row(row, self._box) for row in rows}
        self._index = build_index(self._by_id.values())

    async def _reload_some(self, conn: asyncpg.Connection, ids: set[str]) -> None:
        rows = await conn.fetch(_SELECT + " WHERE id = ANY($1::text[])", list(ids))
        by_id = dict(self._by_id)
        for webhook_id in ids:
            by_id.pop(webhook_id, None)
        for row in rows:
            by_id[row["id"]] = Webhook.from_row(row, self._box)
        self._by_id = by_id
        self._index = build_index(by_id.values())
