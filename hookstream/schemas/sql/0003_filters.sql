-- hookstream schema, version 3: webhook filters (CEL expressions over the webhook payload).
ALTER TABLE webhooks ADD COLUMN filter text CHECK (filter IS NULL OR length(filter) BETWEEN 1 AND 2000);

-- Filter evaluation errors per webhook and hour, kept for "filter errors in the last 24 h". The
-- routers add their counts every few seconds (one upsert per webhook and hour, never per event).
CREATE TABLE filter_errors (
    webhook_id     text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    hour           timestamptz NOT NULL,
    errors         bigint NOT NULL,
    last_error     text NOT NULL,
    last_event_id  text NOT NULL,
    last_at        timestamptz NOT NULL,
    PRIMARY KEY (webhook_id, hour)
);
