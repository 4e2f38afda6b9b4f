-- `resends`: how many times an operator sent a dead delivery again (`incidents notify resend`); it is
-- part of the dead letter's id, so a consumer deduplicating on ids sees a second failure.
ALTER TABLE notifier_deliveries ADD COLUMN IF NOT EXISTS resends integer NOT NULL DEFAULT 0;
-- Ordered destinations (PagerDuty) claim a row only when no earlier row of the same incident is
-- pending; this index answers that question. `status` also takes 'superseded' (a trigger whose page
-- a later resolve had already closed: skipped, not sent, not dead-lettered).
CREATE INDEX IF NOT EXISTS notifier_deliveries_incident ON notifier_deliveries (destination, incident_id, event_time)
    WHERE status = 'pending';
