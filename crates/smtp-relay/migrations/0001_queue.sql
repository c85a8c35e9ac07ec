-- ferry relay queue, schema version 1.
--
-- One row per message (the envelope), one per recipient (its own state,
-- its lease and its fencing counter), and message bodies in their own
-- table addressed by their SHA-256, so that a body is stored once however
-- many recipients and destinations it has.

CREATE TABLE ferry_bodies (
    hash bytea PRIMARY KEY,
    data bytea NOT NULL
);

CREATE TABLE ferry_messages (
    id bigserial PRIMARY KEY,
    -- NULL is the null reverse-path <>.
    sender text,
    -- RET: NULL, 1 FULL, 2 HDRS.
    ret smallint,
    envid text,
    smtputf8 boolean NOT NULL,
    -- BODY: NULL, 1 7BIT, 2 8BITMIME, 3 BINARYMIME.
    body_type smallint,
    requiretls boolean NOT NULL,
    received_at timestamptz NOT NULL,
    -- 0 a submitted message, 1 a delivery status notification.
    kind smallint NOT NULL,
    body_hash bytea NOT NULL REFERENCES ferry_bodies (hash),
    body_size bigint NOT NULL
);

CREATE INDEX ferry_messages_received ON ferry_messages (received_at);
CREATE INDEX ferry_messages_body ON ferry_messages (body_hash);

CREATE TABLE ferry_recipients (
    message_id bigint NOT NULL REFERENCES ferry_messages (id) ON DELETE CASCADE,
    idx integer NOT NULL,
    address text NOT NULL,
    -- The lower-cased domain of the address, for routing views and filters.
    domain text NOT NULL,
    -- NOTIFY: NULL the default, 0 NEVER, else 8 | 1 SUCCESS | 2 FAILURE | 4 DELAY.
    notify smallint,
    orcpt_type text,
    orcpt text,
    -- 0 queued, 1 deferred, 2 delivered, 3 failed.
    state smallint NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    -- When the recipient is due; NULL once it is final.
    due_at timestamptz,
    warned boolean NOT NULL DEFAULT false,
    held boolean NOT NULL DEFAULT false,
    last_remote text,
    last_diagnostic text,
    last_at timestamptz,
    -- The node whose attempt is in flight, and until when its lease runs.
    lease_owner text,
    lease_until timestamptz,
    -- Incremented at every claim; an outcome is recorded only by the
    -- holder of the current value.
    fence bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, idx)
);

CREATE INDEX ferry_recipients_due ON ferry_recipients (due_at)
    WHERE due_at IS NOT NULL AND NOT held;
CREATE INDEX ferry_recipients_lease ON ferry_recipients (lease_until)
    WHERE lease_until IS NOT NULL;
CREATE INDEX ferry_recipients_domain ON ferry_recipients (domain)
    WHERE due_at IS NOT NULL;

-- Per-destination delivery slots shared by every node: a node holds one
-- row per delivery in flight, under a lease like the recipients'.
CREATE TABLE ferry_slots (
    destination text NOT NULL,
    slot integer NOT NULL,
    owner text NOT NULL,
    token bigint NOT NULL,
    lease_until timestamptz NOT NULL,
    PRIMARY KEY (destination, slot)
);
