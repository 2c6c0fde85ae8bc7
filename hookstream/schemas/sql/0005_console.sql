-- The console's debugging views (issue 16): attempt detail, per-webhook health, the events
-- explorer and bulk recovery.

-- Per-webhook health: attempts per webhook and hour, added to by the sender's outcome flush in the
-- statement that records the attempts (so a figure is never out of step with the attempt rows,
-- and a redelivery adds to it, never resets it). Deferrals are not attempts and are not counted.
-- Each sender process adds to its own rows (``shard``, chosen at random when it starts), so
-- senders never wait for each other's flushes on a busy webhook's row; readers sum the shards.
CREATE TABLE webhook_stats_hourly (
    webhook_id  text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    hour        timestamptz NOT NULL,     -- date_trunc('hour', started_at) in UTC
    shard       integer NOT NULL,
    attempts    integer NOT NULL CHECK (attempts >= 0),
    succeeded   integer NOT NULL CHECK (succeeded >= 0 AND succeeded <= attempts),
    PRIMARY KEY (webhook_id, hour, shard)
);
-- The last 8 days from the attempts recorded so far. First, so the table lock the ALTER below takes
-- is held for a moment, not for this scan (outcome flushes wait for that lock).
INSERT INTO webhook_stats_hourly (webhook_id, hour, shard, attempts, succeeded)
SELECT d.webhook_id, date_trunc('hour', a.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', -1,
       count(*), count(*) FILTER (WHERE a.outcome = 'succeeded')
FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
WHERE a.started_at >= now() - interval '8 days'
GROUP BY 1, 2;

-- Attempt detail: the request as sent (the URL can change after an edit; the signature headers
-- differ per attempt) and the response's headers. Attempts recorded before this migration have
-- NULLs here, and the API says so.
ALTER TABLE attempts
    ADD COLUMN request_url      text,
    ADD COLUMN request_headers  jsonb,   -- {"name": "value", ...} as sent: never a secret
    ADD COLUMN response_headers jsonb;   -- [["name", "value"], ...] as received, capped (sender/http.py)

-- The events explorer: an organization's events newest first (keyset on (received_at, seq)).
CREATE INDEX events_explorer ON events (organization_id, received_at DESC, seq DESC);

-- Bulk recovery: "redeliver every failed delivery of this webhook since T". Each recovered
-- delivery carries its recovery's id, so the recovery's progress is a count over its deliveries.
CREATE TABLE recoveries (
    id          text PRIMARY KEY,
    webhook_id  text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    since       timestamptz NOT NULL,
    until       timestamptz,
    total       integer NOT NULL CHECK (total >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- set when the last of its deliveries has an outcome, with the figures at that moment (a later
    -- recovery or redelivery of the same deliveries does not rewrite a finished recovery's result)
    finished_at timestamptz,
    succeeded   integer,
    failed      integer
);
CREATE INDEX recoveries_webhook ON recoveries (webhook_id, created_at DESC, id DESC);
ALTER TABLE deliveries ADD COLUMN recovery_id text;
CREATE INDEX deliveries_recovery ON deliveries (recovery_id) WHERE recovery_id IS NOT NULL;
