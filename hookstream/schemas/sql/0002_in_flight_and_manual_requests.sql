-- hookstream schema, version 2: one attempt of a delivery in flight at a time, and manual
-- redeliveries kept apart from the automatic retry schedule (issue: hardening, case 8).
--
-- in_flight: a delivery task for this delivery is on the delivery topic or being attempted. Set
-- when the router or the retry pump issues a task, cleared when its outcome (or a deferral) is
-- recorded. The retry pump never issues a second task while one is in flight, so an automatic
-- attempt and a manual redelivery can never run at once, share an attempt number, or overwrite
-- each other's schedule.
--
-- manual_due_at: a redelivery or test send asked for through the API, waiting for the in-flight
-- attempt (if any) to finish. Its outcome is final for itself and never touches next_attempt_at.
--
-- issued_attempt: the attempt number of the task last issued. An outcome or deferral of an older
-- attempt (a replayed or duplicated task) is stale: it is logged as an attempt but never changes
-- the delivery's state, so it cannot end an attempt still in flight or reschedule it.
ALTER TABLE deliveries
    ADD COLUMN in_flight boolean NOT NULL DEFAULT false,
    ADD COLUMN manual_due_at timestamptz,
    ADD COLUMN issued_attempt integer;

-- Deliveries pending without anything scheduled are in flight (issued by the router or the pump).
UPDATE deliveries SET in_flight = true, issued_attempt = attempts + 1
WHERE status = 'pending' AND next_attempt_at IS NULL;
-- Manual requests that were waiting in the shared schedule move to their own column.
UPDATE deliveries SET manual_due_at = next_attempt_at, next_attempt_at = NULL, next_manual = false
WHERE next_manual AND next_attempt_at IS NOT NULL;

CREATE INDEX deliveries_manual_due ON deliveries (manual_due_at) WHERE manual_due_at IS NOT NULL;

-- One row per attempt number: a task re-sent by a retry pump whose claim could not be committed (the
-- database went away after Kafka took the task) is attempted twice at worst, but recorded once.
DELETE FROM attempts a USING attempts b
WHERE a.delivery_id = b.delivery_id AND a.attempt = b.attempt AND a.id > b.id;
DROP INDEX attempts_delivery;
CREATE UNIQUE INDEX attempts_delivery ON attempts (delivery_id, attempt);
