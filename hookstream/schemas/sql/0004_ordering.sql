-- hookstream schema, version 4: delivery in order per resource (issue 14), opt-in per webhook.
--
-- A webhook with ordering 'per_resource' receives the events of one product or order in their
-- source order: an event's first attempt starts only once the delivery of the resource's previous
-- event has finished (succeeded, or failed after its retries). The state lives here, not in any
-- process, and is kept by two triggers, so every path that creates or finishes a delivery (the
-- router, the sender's outcomes, a task Kafka refused, an outcome that could not be stored) keeps
-- the order without knowing about it:
--
-- resource_heads: per (webhook, resource), the one delivery allowed to be attempted (NULL: none
-- unfinished). deliveries.resource_key is set only for ordered deliveries (data.product.id or
-- data.order.id), so the unordered path pays one NULL check per row and nothing else.
-- deliveries.ordered_waiting: stored behind the head; no task issued, nothing scheduled.
--
-- Admission (BEFORE INSERT): the first unfinished delivery of a resource becomes its head and is
-- issued as usual; any later one is stored waiting (not in flight, so the router issues no task).
-- Release (AFTER UPDATE when the head leaves 'pending'): the resource's oldest waiting delivery
-- becomes the head and is made due now, so the retry pump issues it through the durable path.
-- Both take the resource_heads row lock, which serialises routers and senders per resource only
-- (routers insert, and senders finish, in (webhook, resource) order, so they do not deadlock).
-- A release that finds nothing waiting deletes the row: the table holds the resources with an
-- unfinished delivery, not every resource ever seen.
--
-- deliveries.sending_attempt / sending_until: the claim a sender takes just before it POSTs an
-- ordered delivery's automatic attempt. Kafka is at least once, so two copies of one attempt can
-- be in two senders at once; only the one holding the claim is sent, so no copy of an earlier
-- event goes out once the next event of its resource has been released.

ALTER TABLE webhooks
    ADD COLUMN ordering text NOT NULL DEFAULT 'none' CHECK (ordering IN ('none', 'per_resource'));

ALTER TABLE deliveries
    ADD COLUMN resource_key text,
    ADD COLUMN ordered_waiting boolean NOT NULL DEFAULT false,
    ADD COLUMN sending_attempt integer,
    ADD COLUMN sending_until timestamptz;

CREATE TABLE resource_heads (
    webhook_id        text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    resource_key      text NOT NULL,
    head_delivery_id  bigint,
    PRIMARY KEY (webhook_id, resource_key)
);

-- The waiting deliveries of one resource, oldest first (ids follow source order: the router
-- inserts a batch's deliveries in the order of its records).
CREATE INDEX deliveries_ordered_waiting ON deliveries (webhook_id, resource_key, id) WHERE ordered_waiting;

CREATE FUNCTION deliveries_admit_ordered() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head bigint;
BEGIN
    -- A replay of a stored delivery: this INSERT becomes its ON CONFLICT update; nothing to admit.
    IF EXISTS (SELECT 1 FROM deliveries WHERE webhook_id = NEW.webhook_id AND event_id = NEW.event_id) THEN
        RETURN NEW;
    END IF;
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

-- Make the resource's oldest waiting delivery its head, due now (the retry pump issues it); with
-- nothing waiting, forget the resource. The caller holds the resource_heads row lock.
CREATE FUNCTION release_resource(p_webhook_id text, p_resource_key text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    next_id bigint;
BEGIN
    SELECT id INTO next_id FROM deliveries
    WHERE webhook_id = p_webhook_id AND resource_key = p_resource_key AND ordered_waiting
    ORDER BY id
    LIMIT 1;
    IF next_id IS NULL THEN
        DELETE FROM resource_heads WHERE webhook_id = p_webhook_id AND resource_key = p_resource_key;
    ELSE
        UPDATE resource_heads SET head_delivery_id = next_id
        WHERE webhook_id = p_webhook_id AND resource_key = p_resource_key;
        UPDATE deliveries SET ordered_waiting = false, next_attempt_at = now(), next_retry_index = NULL
        WHERE id = next_id;
    END IF;
    RETURN next_id;
END;
$$;

CREATE FUNCTION deliveries_release_ordered() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head bigint;
BEGIN
    IF NEW.ordered_waiting THEN
        -- A waiting delivery ended out of turn (a manual redelivery succeeded): it stops waiting,
        -- and the order of the others is unchanged.
        UPDATE deliveries SET ordered_waiting = false WHERE id = NEW.id;
        RETURN NULL;
    END IF;
    SELECT head_delivery_id INTO head FROM resource_heads
    WHERE webhook_id = NEW.webhook_id AND resource_key = NEW.resource_key
    FOR UPDATE;
    IF head IS DISTINCT FROM NEW.id THEN
        RETURN NULL;  -- not the head: nothing of the order changes
    END IF;
    -- A new statement, so a new snapshot: deliveries admitted by a router that held the lock above
    -- until it committed are seen here.
    PERFORM release_resource(NEW.webhook_id, NEW.resource_key);
    RETURN NULL;
END;
$$;
CREATE TRIGGER deliveries_release_ordered AFTER UPDATE OF status ON deliveries
    FOR EACH ROW WHEN (OLD.status = 'pending' AND NEW.status <> 'pending' AND NEW.resource_key IS NOT NULL)
    EXECUTE FUNCTION deliveries_release_ordered();
