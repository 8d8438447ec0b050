//! The PostgreSQL schema, as migrations recorded in `schema_migrations`.
//!
//! Migration `i` (0-based) takes the schema from version `i` to `i + 1`; a released migration is
//! never edited. Version 1 holds the final shape of the SQLite tables the charge path uses
//! (`meta`, `schedule_files`, `subscriptions`, `charges`, `attempts`, `attention`, `enrolments`,
//! `ledger`, `outbox`) in PostgreSQL's own types, plus what several instances need: `instances`,
//! the `fence_tokens` sequence, the leader `leases`, and the lease columns of `attempts`.
//!
//! Types: instants are `timestamptz` (microseconds, like SQLite's RFC 3339 text), dates `date`,
//! money `bigint` minor units with `CHECK (> 0)`, states `text` with the same `CHECK` lists as
//! SQLite, flags `boolean`, the ledger's detail `json` (kept as written, like SQLite's text).
//! `subscriptions.next_plan_at` is `timestamptz NOT NULL`: `-infinity` is "now" (SQLite's `''`),
//! `infinity` is "never" (SQLite's `9999-12-31T23:59:59.999999Z`); both sort where SQLite's do.
//! Every name is unqualified: the objects go to the connection's `search_path` schema.

/// The migrations, oldest first.
pub(super) const MIGRATIONS: &[&str] = &[MIGRATION_1];

const MIGRATION_1: &str = r#"
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE schedule_files (
    file          text PRIMARY KEY,
    digest        text,
    accepted_at   timestamptz,
    last_error    text,
    missing_since timestamptz
);

CREATE TABLE subscriptions (
    id           text PRIMARY KEY,
    file         text NOT NULL,
    line         bigint NOT NULL CHECK (line >= 1),
    customer     text,
    bill_number  text NOT NULL,
    currency     text NOT NULL CHECK (length(currency) = 3),
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    cadence      text NOT NULL,
    start_date   date NOT NULL,
    state        text NOT NULL CHECK (state IN ('active', 'paused', 'cancelled')),
    catch_up     text CHECK (catch_up IN ('latest', 'none')),
    min_cents    bigint CHECK (min_cents > 0),
    max_cents    bigint CHECK (max_cents > 0),
    period_days  bigint CHECK (period_days BETWEEN 1 AND 999),
    max_date     date,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    removed_at   timestamptz,
    -- '-infinity' = plan now, 'infinity' = never (until the terms or the history change).
    next_plan_at timestamptz NOT NULL DEFAULT '-infinity'
);

CREATE INDEX subscriptions_by_file ON subscriptions (file) WHERE removed_at IS NULL;
CREATE INDEX subscriptions_by_bill ON subscriptions (bill_number);
CREATE INDEX subscriptions_to_plan ON subscriptions (next_plan_at) WHERE removed_at IS NULL;

CREATE TABLE charges (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id text NOT NULL REFERENCES subscriptions (id),
    period          bigint CHECK (period >= 0),
    reference       text CHECK (length(reference) BETWEEN 1 AND 64),
    due_date        date NOT NULL,
    amount_cents    bigint NOT NULL CHECK (amount_cents > 0),
    currency        text NOT NULL CHECK (length(currency) = 3),
    bill_number     text NOT NULL DEFAULT '',
    state           text NOT NULL CHECK (state IN
                        ('open', 'paid', 'failed', 'blocked', 'skipped', 'quarantined')),
    reason          text,
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz,
    CHECK ((period IS NULL) <> (reference IS NULL)),
    UNIQUE (subscription_id, period),
    UNIQUE (subscription_id, reference)
);

CREATE INDEX charges_retry ON charges (next_attempt_at) WHERE state = 'open';

-- owner/owner_epoch/fence/lease_until: the claim an instance holds on the attempt. fence is a
-- value of fence_tokens, new whenever the attempt changes hands; lease_until is on the
-- database's clock. Cleared (owner, lease) once the attempt is settled.
CREATE TABLE attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    charge_id     bigint NOT NULL REFERENCES charges (id),
    attempt       bigint NOT NULL CHECK (attempt >= 1),
    order_number  text NOT NULL UNIQUE CHECK (length(order_number) BETWEEN 1 AND 128),
    state         text NOT NULL CHECK (state IN ('pending', 'not_sent', 'unknown', 'parked',
                      'approved', 'declined', 'not_received', 'rejected', 'quarantined')),
    created_at    timestamptz NOT NULL,
    wall_at       timestamptz NOT NULL,
    sent          boolean NOT NULL DEFAULT false,
    sent_at       timestamptz,
    next_check_at timestamptz,
    checks        bigint NOT NULL DEFAULT 0,
    not_found     bigint NOT NULL DEFAULT 0,
    test_mode     boolean,
    response_code text,
    checkvalue    text CHECK (checkvalue IN ('verified', 'mismatch', 'absent')),
    detail        text,
    updated_at    timestamptz NOT NULL,
    seen_at       timestamptz,
    owner         text,
    owner_epoch   bigint,
    fence         bigint NOT NULL DEFAULT 0,
    lease_until   timestamptz,
    UNIQUE (charge_id, attempt)
);

-- At most one attempt per period that has charged or may have (SQLite's attempts_one_live).
CREATE UNIQUE INDEX attempts_one_live ON attempts (charge_id)
    WHERE state IN ('pending', 'not_sent', 'unknown', 'parked', 'approved', 'quarantined');
CREATE INDEX attempts_unresolved ON attempts (next_check_at)
    WHERE state IN ('pending', 'not_sent', 'unknown', 'parked', 'quarantined');
CREATE INDEX attempts_approved_by_wall ON attempts (wall_at) WHERE state = 'approved';

CREATE TABLE attention (
    subscription_id text PRIMARY KEY REFERENCES subscriptions (id),
    kind            text NOT NULL DEFAULT 'hard_decline'
                        CHECK (kind IN ('hard_decline', 'double_approval', 'late_approval')),
    reason          text NOT NULL,
    since           timestamptz NOT NULL
);

CREATE TABLE enrolments (
    subscription_id text PRIMARY KEY,
    order_number    text NOT NULL UNIQUE,
    bill_number     text NOT NULL,
    amount_cents    bigint NOT NULL CHECK (amount_cents > 0),
    currency        text NOT NULL CHECK (length(currency) = 3),
    at              timestamptz NOT NULL,
    min_cents       bigint CHECK (min_cents > 0),
    max_cents       bigint CHECK (max_cents > 0),
    period_days     bigint CHECK (period_days BETWEEN 1 AND 999),
    max_date        date
);

-- Append-only history, enforced below by triggers refusing UPDATE, DELETE and TRUNCATE.
CREATE TABLE ledger (
    seq             bigserial PRIMARY KEY,
    at              timestamptz NOT NULL,
    subscription_id text REFERENCES subscriptions (id),
    charge_id       bigint REFERENCES charges (id),
    kind            text NOT NULL,
    detail          json NOT NULL
);

CREATE INDEX ledger_by_subscription ON ledger (subscription_id, seq);
CREATE INDEX ledger_by_kind ON ledger (kind, at);

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER ledger_no_update_or_delete BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

-- The outbox (SQLite's OUTBOX migration): next_attempt_at '-infinity' = now.
CREATE TABLE outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ledger_seq       bigint NOT NULL UNIQUE REFERENCES ledger (seq),
    stream           text NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         bigint NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT '-infinity',
    first_attempt_at timestamptz,
    delivered_at     timestamptz,
    dead_at          timestamptz,
    last_error       text
);

CREATE INDEX outbox_pending_by_stream ON outbox (stream, id) WHERE state = 'pending';
CREATE INDEX outbox_pending_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_dead ON outbox (id) WHERE state = 'dead';
CREATE INDEX outbox_pending_by_id ON outbox (id) WHERE state = 'pending';

CREATE FUNCTION ledger_to_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (ledger_seq, stream)
    VALUES (NEW.seq, coalesce(NEW.subscription_id, NEW.detail ->> 'subscription', ''));
    RETURN NULL;
END;
$$;

-- The same kinds and prefixes as SQLite's ledger_to_outbox trigger.
CREATE TRIGGER ledger_to_outbox AFTER INSERT ON ledger FOR EACH ROW
WHEN (NEW.kind IN (
        'charge_approved', 'charge_declined', 'period_failed', 'period_blocked',
        'period_skipped', 'charge_parked', 'charge_quarantined', 'charge_held',
        'charge_not_received', 'charge_rejected',
        'double_approval', 'late_approval', 'charge_attested_paid',
        'charge_attested_not_charged', 'hard_decline', 'attention_cleared',
        'subscription_added', 'subscription_updated', 'subscription_removed',
        'adhoc_requested', 'adhoc_cancelled', 'adhoc_expired', 'enrolled')
    OR substr(NEW.kind, 1, 7) = 'refund_'
    OR substr(NEW.kind, 1, 6) = 'books_')
EXECUTE FUNCTION ledger_to_outbox();

-- Fencing tokens: every claim of an attempt or a lease takes a new one. Starts at 1, so the
-- SQLite store's UNFENCED (0) is never a PostgreSQL claim.
CREATE SEQUENCE fence_tokens START 1;

-- The instances sharing this database: epoch is bumped at each connect (a restarted instance
-- under the same name is a new holder); heartbeat_at/lease_until on the database's clock.
CREATE TABLE instances (
    name         text PRIMARY KEY,
    epoch        bigint NOT NULL CHECK (epoch >= 1),
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    lease_until  timestamptz NOT NULL
);

-- Named leader leases (schedule sync, the breaker...): one holder at a time until `until`.
CREATE TABLE leases (
    name        text PRIMARY KEY,
    owner       text NOT NULL,
    owner_epoch bigint NOT NULL,
    fence       bigint NOT NULL,
    until       timestamptz NOT NULL
);
"#;
