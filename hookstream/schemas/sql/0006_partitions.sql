-- hookstream schema, version 6: the delivery log partitioned by day, for retention without deletes
-- (issue 17). See docs/SCALING.md for the design and hookstream/core/partitions.py for the upkeep.
--
-- events, deliveries and attempts are partitioned by RANGE of their ids, and the ids carry their
-- UTC day: id = day << 36 | (sequence value & (2^36 - 1)), day = whole days since 1970-01-01. So:
-- - every statement that finds a row by id (the sender's outcomes, the retry pump, the ordering
--   triggers, attempts by delivery) is pruned to one partition, with no extra column or parameter;
-- - a delivery's attempts are partitioned by its id, so they live (and are dropped) with it;
-- - foreign keys only to small tables (deliveries -> webhooks): one to a partitioned table is checked
--   with a generic plan over all of its partitions, per row;
-- - a day's partitions are dropped whole once the day is older than HOOKSTREAM_RETENTION.
-- The ids stay below 2^53 (JavaScript's exact integers) until the year 2328; the low 36 bits wrap after
-- 68.7 billion ids (ids stay unique unless one day allocates that many).
--
-- Rows stored before this migration keep their ids (< 2^36: "day 0") in a legacy partition of each
-- table, dropped by the same retention once its newest row is old enough.
--
-- Unique constraints on a partitioned table must include the partition key, so:
-- - idempotency moves to event_keys (one row per organization and event id, partitioned by week:
--   "span"); the router checks the older spans itself and the current one by its primary key;
-- - (webhook_id, event_id) of deliveries is no longer unique: the router inserts a replayed event's
--   deliveries only where none exists (router.py).

-- The epoch of the interval since 1970, not extract(epoch FROM at): that one is only STABLE (it is
-- extract's timestamptz form, time-zone dependent for other fields), so PostgreSQL would not inline this
-- function into the id defaults and CHECK constraints, and every row would pay a function call (~1 µs).
CREATE FUNCTION hookstream_day(at timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT floor(extract(epoch FROM (at - timestamptz '1970-01-01 00:00:00+00')) / 86400)::bigint $$;

-- The idempotency keys' spans: seven days each.
CREATE FUNCTION hookstream_span(at timestamptz) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (hookstream_day(at) / 7)::integer $$;

CREATE FUNCTION hookstream_id(seq regclass, at timestamptz) RETURNS bigint
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    AS $$ SELECT (hookstream_day(at) << 36) | (nextval(seq) & 68719476735) $$;

-- The old tables become the legacy partitions' contents; their indexes are built after the copy.
ALTER TABLE attempts RENAME TO attempts_v5;
ALTER TABLE deliveries RENAME TO deliveries_v5;
ALTER TABLE events RENAME TO events_v5;

CREATE TABLE events (LIKE events_v5 INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (seq);
CREATE TABLE deliveries (LIKE deliveries_v5 INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (id);
CREATE TABLE attempts (LIKE attempts_v5 INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (delivery_id);

CREATE TABLE events_legacy PARTITION OF events FOR VALUES FROM (MINVALUE) TO (68719476736);
CREATE TABLE deliveries_legacy PARTITION OF deliveries FOR VALUES FROM (MINVALUE) TO (68719476736);
CREATE TABLE attempts_legacy PARTITION OF attempts FOR VALUES FROM (MINVALUE) TO (68719476736);

INSERT INTO events SELECT * FROM events_v5;
INSERT INTO deliveries SELECT * FROM deliveries_v5;
INSERT INTO attempts SELECT * FROM attempts_v5;

ALTER SEQUENCE events_seq_seq OWNED BY events.seq;
ALTER SEQUENCE deliveries_id_seq OWNED BY deliveries.id;
ALTER SEQUENCE attempts_id_seq OWNED BY attempts.id;
DROP TABLE attempts_v5, deliveries_v5, events_v5;

ALTER TABLE events ALTER COLUMN seq SET DEFAULT hookstream_id('events_seq_seq', now());
ALTER TABLE deliveries ALTER COLUMN id SET DEFAULT hookstream_id('deliveries_id_seq', now());

-- The id's day is the row's own day (what the API's time filters prune by).
ALTER TABLE events ADD CONSTRAINT events_seq_day
    CHECK (seq < 68719476736 OR seq >> 36 = hookstream_day(received_at));
ALTER TABLE deliveries ADD CONSTRAINT deliveries_id_day
    CHECK (id < 68719476736 OR id >> 36 = hookstream_day(created_at));

ALTER TABLE events ADD PRIMARY KEY (seq);
CREATE INDEX events_event_id ON events (organization_id, event_id);
CREATE INDEX events_explorer ON events (organization_id, received_at DESC, seq DESC);

ALTER TABLE deliveries ADD PRIMARY KEY (id);
ALTER TABLE deliveries ADD FOREIGN KEY (webhook_id) REFERENCES webhooks (id) ON DELETE CASCADE;
CREATE INDEX deliveries_webhook_event ON deliveries (webhook_id, event_id);
CREATE INDEX deliveries_log ON deliveries (webhook_id, created_at DESC, id DESC);
CREATE INDEX deliveries_log_status ON deliveries (webhook_id, status, created_at DESC, id DESC);
CREATE INDEX deliveries_log_type ON deliveries (webhook_id, event_type, created_at DESC, id DESC);
CREATE INDEX deliveries_log_store ON deliveries (webhook_id, store_id, created_at DESC, id DESC);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX deliveries_manual_due ON deliveries (manual_due_at) WHERE manual_due_at IS NOT NULL;
CREATE INDEX deliveries_event ON deliveries (event_seq);
CREATE INDEX deliveries_ordered_waiting ON deliveries (webhook_id, resource_key, id) WHERE ordered_waiting;
CREATE INDEX deliveries_recovery ON deliveries (recovery_id) WHERE recovery_id IS NOT NULL;
-- Unfinished deliveries, for retention (a partition holding one is never dropped whole).
CREATE INDEX deliveries_unfinished ON deliveries (id) WHERE status = 'pending';

-- No foreign key to deliveries: PostgreSQL checks one that references a partitioned table with a
-- generic plan over every partition (~46 µs an attempt, against ~2 before). The sender records an
-- attempt only for a delivery that exists (sender/outcomes.py), deleting a webhook deletes its attempts
-- (api/webhooks.py), and a delivery's attempts share its day, so they are dropped together.
ALTER TABLE attempts ADD PRIMARY KEY (delivery_id, attempt);

-- The router no longer upserts deliveries, so admission has no replay to recognise.
CREATE OR REPLACE FUNCTION deliveries_admit_ordered() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head bigint;
BEGIN
    -- The row is locked either way; it is rewritten only when this delivery becomes the head.
    INSERT INTO resource_heads AS h (webhook_id, resource_key, head_delivery_id)
    VALUES (NEW.webhook_id, NEW.resource_key, NEW.id)
    ON CONFLICT (webhook_id, resource_key)
        DO UPDATE SET head_delivery_id = EXCLUDED.head_delivery_id WHERE h.head_delivery_id IS NULL
    RETURNING h.head_delivery_id INTO head;
    IF head IS DISTINCT FROM NEW.id THEN
        NEW.in_flight := false;
        NEW.issued_attempt := NULL;
        NEW.ordered_waiting := true;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER deliveries_admit_ordered BEFORE INSERT ON deliveries
    FOR EACH ROW WHEN (NEW.resource_key IS NOT NULL) EXECUTE FUNCTION deliveries_admit_ordered();
CREATE TRIGGER deliveries_release_ordered AFTER UPDATE OF status ON deliveries
    FOR EACH ROW WHEN (OLD.status = 'pending' AND NEW.status <> 'pending' AND NEW.resource_key IS NOT NULL)
    EXECUTE FUNCTION deliveries_release_ordered();

-- Idempotency: the first record of each (organization, event id), kept for the retention period (and up
-- to one span more). The router finds a key of the current span by the primary key (ON CONFLICT) and
-- one of an older span by looking it up; a second publish of the id is left out either way.
CREATE TABLE event_keys (
    organization_id   text NOT NULL,
    event_id          text NOT NULL,
    span              integer NOT NULL,        -- hookstream_span(received_at)
    event_seq         bigint NOT NULL,
    source_topic      text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    PRIMARY KEY (organization_id, event_id, span)
) PARTITION BY RANGE (span);
-- The keys of the events stored so far, filed in this span, whose partition (this one) retention drops
-- only once the span's end is older than the retention: every stored event stays deduplicated for at
-- least the retention from now. The keys of the rest of this span are added to the same partition.
CREATE TABLE event_keys_legacy PARTITION OF event_keys FOR VALUES FROM (MINVALUE) TO (hookstream_span(now()) + 1);
INSERT INTO event_keys (organization_id, event_id, span, event_seq, source_topic, source_partition, source_offset)
SELECT organization_id, event_id, hookstream_span(now()), seq, source_topic, source_partition, source_offset
FROM events;
