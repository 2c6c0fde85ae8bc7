-- hookstream schema, version 1.
-- Applied by `hookstream migrate` inside one transaction; recorded in schema_migrations.

CREATE TABLE organizations (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys are shown once and stored as SHA-256 of the full key: the key carries 256 random
-- bits, so a fast hash is enough and a database dump does not hand out working keys.
CREATE TABLE api_keys (
    id               text PRIMARY KEY,          -- the public key id embedded in the key
    organization_id  text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    key_hash         bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz
);
CREATE INDEX api_keys_organization ON api_keys (organization_id);

CREATE TABLE stores (
    organization_id  text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    id               text NOT NULL,
    name             text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, id)
);

CREATE TABLE webhooks (
    id                          text PRIMARY KEY,
    organization_id             text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    url                         text NOT NULL,
    description                 text NOT NULL DEFAULT '',
    event_types                 text[] NOT NULL CHECK (cardinality(event_types) >= 1),
    store_ids                   text[] NOT NULL CHECK (cardinality(store_ids) >= 1),
    enabled                     boolean NOT NULL DEFAULT true,
    secret                      text NOT NULL,
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_organization ON webhooks (organization_id, created_at DESC, id DESC);

-- Routers and senders keep webhooks in memory; every change is announced so they refresh
-- within a second, on every replica, without a restart.
CREATE FUNCTION notify_webhook_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hookstream_webhooks', COALESCE(NEW.id, OLD.id));
    RETURN NULL;
END;
$$;
CREATE TRIGGER webhooks_notify AFTER INSERT OR UPDATE OR DELETE ON webhooks
    FOR EACH ROW EXECUTE FUNCTION notify_webhook_change();

-- One row per domain event id and organization: the idempotency record. The source position
-- tells a replay of the same Kafka record (re-route it) from a second publish (drop it).
CREATE TABLE events (
    seq               bigserial PRIMARY KEY,
    organization_id   text NOT NULL,
    event_id          text NOT NULL,
    event_type        text NOT NULL,
    store_id          text NOT NULL,
    occurred_at       timestamptz NOT NULL,
    body              text NOT NULL,            -- the exact webhook body sent to endpoints
    source_topic      text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, event_id)
);

-- One row per (webhook, event): the delivery log users browse.
CREATE TABLE deliveries (
    id                bigserial PRIMARY KEY,
    webhook_id        text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_seq         bigint NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    event_id          text NOT NULL,
    event_type        text NOT NULL,
    store_id          text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    last_attempt_at   timestamptz,
    last_http_status  integer,
    last_error        text,
    finished_at       timestamptz,
    -- The durable retry scheduler: a row with next_attempt_at set is waiting in PostgreSQL,
    -- not in any process's memory; senders move due rows back onto the delivery topic.
    next_attempt_at   timestamptz,
    next_retry_index  integer,                  -- which automatic retry (1..3) is waiting
    next_manual       boolean NOT NULL DEFAULT false,
    UNIQUE (webhook_id, event_id)
);
-- The delivery log: per webhook, newest first, optionally filtered; keyset pagination on (created_at, id).
CREATE INDEX deliveries_log ON deliveries (webhook_id, created_at DESC, id DESC);
CREATE INDEX deliveries_log_status ON deliveries (webhook_id, status, created_at DESC, id DESC);
CREATE INDEX deliveries_log_type ON deliveries (webhook_id, event_type, created_at DESC, id DESC);
CREATE INDEX deliveries_log_store ON deliveries (webhook_id, store_id, created_at DESC, id DESC);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX deliveries_event ON deliveries (event_seq);

CREATE TABLE attempts (
    id                bigserial PRIMARY KEY,
    delivery_id       bigint NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt           integer NOT NULL,
    started_at        timestamptz NOT NULL,
    duration_ms       double precision NOT NULL,
    http_status       integer,
    error             text,
    response_excerpt  text,
    outcome           text NOT NULL CHECK (outcome IN ('succeeded', 'retrying', 'failed'))
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, attempt);
