-- Intake for people (email, phone): incidents they opened, with the number people read back
-- (INC-<number>), the Message-ID -> incident map that threads replies, the senders allowed per
-- mailbox, the responders per phone line, and the webhook steps already answered (provider retries).

CREATE TABLE IF NOT EXISTS intake_people_incidents (
    incident_id text PRIMARY KEY,
    number      bigint GENERATED ALWAYS AS IDENTITY (START WITH 1001) UNIQUE,
    source      text NOT NULL,
    reporter    text NOT NULL,
    severity    text NOT NULL,
    region      text NOT NULL,
    summary     text NOT NULL,
    details     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- every Message-ID the system received ('in', once Kafka acknowledged its event) or sent ('out',
-- e.g. the notifier's mails) for an incident: In-Reply-To/References resolve through it
CREATE TABLE IF NOT EXISTS intake_email_messages (
    message_id  text PRIMARY KEY,
    incident_id text NOT NULL,
    direction   text NOT NULL CHECK (direction IN ('in', 'out')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS intake_email_messages_incident ON intake_email_messages (incident_id);

-- per mailbox (its address without +tags), senders by address or '@domain': rows without
-- `can_change` are its allowlist (a mailbox with one refuses every other sender), rows with it are
-- its responders, who may always write and whose replies may acknowledge/restore (first-line commands)
CREATE TABLE IF NOT EXISTS intake_email_senders (
    mailbox    text NOT NULL,
    sender     text NOT NULL,
    can_change boolean NOT NULL DEFAULT false,
    PRIMARY KEY (mailbox, sender)
);

-- callers (E.164 numbers) allowed to acknowledge/restore on a line
CREATE TABLE IF NOT EXISTS intake_phone_responders (
    line  text NOT NULL,
    phone text NOT NULL,
    name  text NOT NULL DEFAULT '',
    PRIMARY KEY (line, phone)
);

-- a webhook step answered after Kafka acknowledged its events: a retry gets the same answer and
-- publishes nothing
CREATE TABLE IF NOT EXISTS intake_phone_steps (
    sid         text NOT NULL,
    step        text NOT NULL,
    answer      text NOT NULL,
    answered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sid, step)
);
