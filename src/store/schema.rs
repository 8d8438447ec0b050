//! The schema, as migrations applied in order by `PRAGMA user_version`.
//!
//! Migration `i` (0-based) takes the database from version `i` to `i + 1`. A released migration is
//! never edited: a change is a new migration at the end. Every table is `STRICT`, so a value of
//! the wrong type (a binary float where cents belong) is refused by SQLite itself.
//!
//! Instants are RFC 3339 UTC text with microseconds (`2026-12-01T07:00:00.000000Z`, which sorts
//! as it reads), dates are `YYYY-MM-DD`, money is INTEGER minor units (kopecks).

/// The migrations, oldest first. Not released yet: migration 1 may still change.
pub(super) const MIGRATIONS: &[&str] = &[
    MIGRATION_1,
    MIGRATION_2,
    ADHOC_CHARGES,
    DUE_SWEEP_INDEX,
    SECOND_PASS,
    ENROLMENT_TERMS,
    ENROLMENT_ATTEMPTS,
    OUTBOX,
    BOOKS,
    REFUNDS,
];

const MIGRATION_1: &str = r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

-- One row per schedule file (by name inside the schedules folder) the store has seen.
-- digest/accepted_at describe the version in force; last_error is NULL when the file as it is
-- now is that version, else why its current content was refused.
CREATE TABLE schedule_files (
    file        TEXT PRIMARY KEY NOT NULL,
    digest      TEXT,
    accepted_at TEXT,
    last_error  TEXT
) STRICT;

-- Subscriptions as last accepted from the schedule files. Rows are never deleted: a removed
-- subscription keeps its row (removed_at set) and its id stays reserved.
CREATE TABLE subscriptions (
    id           TEXT PRIMARY KEY NOT NULL,
    file         TEXT NOT NULL,
    line         INTEGER NOT NULL CHECK (line >= 1),
    customer     TEXT,
    bill_number  TEXT NOT NULL,
    currency     TEXT NOT NULL CHECK (length(currency) = 3),
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    cadence      TEXT NOT NULL,
    start_date   TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('active', 'paused', 'cancelled')),
    catch_up     TEXT CHECK (catch_up IN ('latest', 'none')),
    min_cents    INTEGER CHECK (min_cents > 0),
    max_cents    INTEGER CHECK (max_cents > 0),
    period_days  INTEGER CHECK (period_days BETWEEN 1 AND 999),
    max_date     TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    removed_at   TEXT
) STRICT;

CREATE INDEX subscriptions_by_file ON subscriptions (file) WHERE removed_at IS NULL;
CREATE INDEX subscriptions_by_bill ON subscriptions (bill_number);

-- One row per (subscription, billing period): a second charge for a period cannot exist.
-- state: open (being charged: an attempt is live, or a retry is scheduled at next_attempt_at),
-- paid, failed (declined for good, or its retry window closed), blocked / skipped (settled
-- without a charge, reason says why), quarantined (an answer failed verification).
-- bill_number, amount and currency are copied from the subscription when the row is made:
-- every request for the period is rebuilt from this row, never from the live schedule file.
CREATE TABLE charges (
    id              INTEGER PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id),
    period          INTEGER NOT NULL CHECK (period >= 0),
    due_date        TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL CHECK (amount_cents > 0),
    currency        TEXT NOT NULL CHECK (length(currency) = 3),
    bill_number     TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL CHECK (state IN
                        ('open', 'paid', 'failed', 'blocked', 'skipped', 'quarantined')),
    reason          TEXT,
    next_attempt_at TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT,
    UNIQUE (subscription_id, period)
) STRICT;

CREATE INDEX charges_retry ON charges (next_attempt_at) WHERE state = 'open';

-- One row per attempt to charge a period, each with its own OrderNumber, committed before any
-- request leaves. state: pending (intent committed, no answer yet), not_sent (provably never
-- left; sent again under the same OrderNumber), unknown (may or may not have charged: resolved
-- only by status queries), parked (unknown for too long: an operator must look), approved,
-- declined, not_received (the gateway never filed it: proven by repeated not-found answers after
-- the settle window), rejected (a request-level error: not processed), quarantined (an answer
-- failed verification).
-- created_at is the engine's clock (limits are reckoned from it), sent_at the engine's clock at
-- the latest send (the settle window runs from it); wall_at is the real time of the intent or the
-- latest send, from which the gateway's order search window is built.
CREATE TABLE attempts (
    id            INTEGER PRIMARY KEY,
    charge_id     INTEGER NOT NULL REFERENCES charges (id),
    attempt       INTEGER NOT NULL CHECK (attempt >= 1),
    order_number  TEXT NOT NULL UNIQUE CHECK (length(order_number) BETWEEN 1 AND 128),
    state         TEXT NOT NULL CHECK (state IN ('pending', 'not_sent', 'unknown', 'parked',
                      'approved', 'declined', 'not_received', 'rejected', 'quarantined')),
    created_at    TEXT NOT NULL,
    wall_at       TEXT NOT NULL,
    sent          INTEGER NOT NULL DEFAULT 0 CHECK (sent IN (0, 1)),
    sent_at       TEXT,
    next_check_at TEXT,
    checks        INTEGER NOT NULL DEFAULT 0,
    not_found     INTEGER NOT NULL DEFAULT 0,
    test_mode     INTEGER CHECK (test_mode IN (0, 1)),
    response_code TEXT,
    checkvalue    TEXT CHECK (checkvalue IN ('verified', 'mismatch', 'absent')),
    detail        TEXT,
    updated_at    TEXT NOT NULL,
    UNIQUE (charge_id, attempt)
) STRICT;

-- At most one attempt per period that has charged or may have: a new attempt can only start
-- once the previous one is known not to have charged.
CREATE UNIQUE INDEX attempts_one_live ON attempts (charge_id)
    WHERE state IN ('pending', 'not_sent', 'unknown', 'parked', 'approved', 'quarantined');
CREATE INDEX attempts_unresolved ON attempts (next_check_at)
    WHERE state IN ('pending', 'not_sent', 'unknown', 'parked');

-- Why a subscription needs an operator before it is charged again (a hard decline), if it does.
CREATE TABLE attention (
    subscription_id TEXT PRIMARY KEY NOT NULL REFERENCES subscriptions (id),
    reason          TEXT NOT NULL,
    since           TEXT NOT NULL
) STRICT;

-- Append-only history: every change of state is explained by an event inserted in the same
-- transaction. The triggers make UPDATE and DELETE fail, whoever runs them.
CREATE TABLE ledger (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    at              TEXT NOT NULL,
    subscription_id TEXT REFERENCES subscriptions (id),
    charge_id       INTEGER REFERENCES charges (id),
    kind            TEXT NOT NULL,
    detail          TEXT NOT NULL CHECK (json_valid(detail))
) STRICT;

CREATE INDEX ledger_by_subscription ON ledger (subscription_id, seq);

CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only: UPDATE refused');
END;

CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only: DELETE refused');
END;
"#;

/// Enrolments: the initial payment of a subscription made by `recurrentd enroll` (Token Pay). Its
/// instant counts as a charge for the agreement's period limit. Keyed by subscription id without
/// a foreign key: the subscription row appears when its schedule file is next synced.
const MIGRATION_2: &str = r#"
CREATE TABLE enrolments (
    subscription_id TEXT PRIMARY KEY NOT NULL,
    order_number    TEXT NOT NULL UNIQUE,
    bill_number     TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL CHECK (amount_cents > 0),
    currency        TEXT NOT NULL CHECK (length(currency) = 3),
    at              TEXT NOT NULL
) STRICT;
"#;

/// Ad-hoc charges (`recurrentd charge`): a `charges` row with the operator's `reference` instead of
/// a period number — exactly one of the two is set, and each is unique per subscription, so
/// running the same `charge` command twice finds the first row instead of making a second. SQLite
/// cannot change a column's constraints in place, so the table is rebuilt (the documented
/// twelve-step way: the migration runs with foreign keys off and checks them before it commits;
/// ids are kept, so `attempts` and `ledger` still point at the same rows).
const ADHOC_CHARGES: &str = r#"
CREATE TABLE charges_new (
    id              INTEGER PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id),
    period          INTEGER CHECK (period >= 0),
    reference       TEXT CHECK (length(reference) BETWEEN 1 AND 64),
    due_date        TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL CHECK (amount_cents > 0),
    currency        TEXT NOT NULL CHECK (length(currency) = 3),
    bill_number     TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL CHECK (state IN
                        ('open', 'paid', 'failed', 'blocked', 'skipped', 'quarantined')),
    reason          TEXT,
    next_attempt_at TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT,
    CHECK ((period IS NULL) <> (reference IS NULL)),
    UNIQUE (subscription_id, period),
    UNIQUE (subscription_id, reference)
) STRICT;

INSERT INTO charges_new (id, subscription_id, period, reference, due_date, amount_cents, currency,
                         bill_number, state, reason, next_attempt_at, created_at, updated_at)
    SELECT id, subscription_id, period, NULL, due_date, amount_cents, currency, bill_number, state,
           reason, next_attempt_at, created_at, updated_at
    FROM charges;

DROP TABLE charges;
ALTER TABLE charges_new RENAME TO charges;
CREATE INDEX charges_retry ON charges (next_attempt_at) WHERE state = 'open';
"#;

/// The due sweep's index: when the planner must next look at a subscription. `''` (what every
/// existing row and every new one gets) means "now"; else an instant as stored, or
/// `9999-12-31T23:59:59.999999Z` for never (its terms must change first). It is only ever an
/// early bound: planning reads the history and decides again, so a row looked at too early is
/// harmless, and anything that could make a subscription chargeable sooner sets it back to `''`.
/// The sweep reads `WHERE removed_at IS NULL AND next_plan_at <= now` through the index, so a
/// tick where nothing is due costs one index probe, not a pass over every subscription.
const DUE_SWEEP_INDEX: &str = r#"
ALTER TABLE subscriptions ADD COLUMN next_plan_at TEXT NOT NULL DEFAULT '';
CREATE INDEX subscriptions_to_plan ON subscriptions (next_plan_at) WHERE removed_at IS NULL;
"#;

/// `attempts.seen_at`: when the gateway first showed that it holds this order (a status answer
/// found it, or the charge reply said it was approved, declined or in process). An order once
/// seen is never taken as "not received" by later not-found answers, so its period is never
/// charged again under a new OrderNumber; it is parked for an operator instead.
///
/// Quarantined attempts are looked up again like unknown ones: the work index covers them, and
/// those quarantined before this version are seen (an answer named them) and due at once.
///
/// `schedule_files.missing_since`: when a file the store had accepted was first found missing
/// from the folder. Its subscriptions are held (neither charged nor removed) until it returns or
/// an operator confirms the removal (`recurrentd remove-file`).
///
/// `attention.kind`: why a subscription waits for an operator — `hard_decline`, or a possible
/// double charge (`double_approval`: the gateway shows two approved orders under one
/// OrderNumber; `late_approval`: a verified approval arrived for an attempt already settled
/// otherwise, e.g. by `resolve --not-charged`).
const SECOND_PASS: &str = r#"
ALTER TABLE attention ADD COLUMN kind TEXT NOT NULL DEFAULT 'hard_decline'
    CHECK (kind IN ('hard_decline', 'double_approval', 'late_approval'));
ALTER TABLE schedule_files ADD COLUMN missing_since TEXT;
ALTER TABLE attempts ADD COLUMN seen_at TEXT;
UPDATE attempts SET seen_at = updated_at, next_check_at = NULL WHERE state = 'quarantined';
DROP INDEX attempts_unresolved;
CREATE INDEX attempts_unresolved ON attempts (next_check_at)
    WHERE state IN ('pending', 'not_sent', 'unknown', 'parked', 'quarantined');
"#;

/// The limits the customer agreed to at the enrolment's initial payment (RecurringMinAmount,
/// RecurringMaxAmount, RecurringPeriod, RecurringMaxDate), beside its currency and bill number:
/// schedule sync refuses a file that changes any of them for an enrolled subscription, even
/// before its first charge. Enrolments recorded before this version have NULL limits; for those
/// the guard falls back to the subscription's stored terms.
const ENROLMENT_TERMS: &str = r#"
ALTER TABLE enrolments ADD COLUMN min_cents INTEGER CHECK (min_cents > 0);
ALTER TABLE enrolments ADD COLUMN max_cents INTEGER CHECK (max_cents > 0);
ALTER TABLE enrolments ADD COLUMN period_days INTEGER CHECK (period_days BETWEEN 1 AND 999);
ALTER TABLE enrolments ADD COLUMN max_date TEXT;
"#;

/// Enrolment attempts (`recurrentd enroll`): one row per Token Pay OrderNumber, recorded as
/// `pending` before its request is sent, with everything needed to book it later — the
/// subscription, the customer, the amount, the cadence and first charge date, and the limits sent.
/// A pending attempt is settled only by what the gateway verifiably says: `approved` (booked in
/// `enrolments` in the same transaction), `declined`, `not_found` (not filed by the gateway, looked
/// up after the settle window, never seen), `not_sent` (provably never left) or `rejected` (our
/// configuration was refused). At most one pending attempt per subscription. `created_at` is the
/// real time just before sending (the status search window starts before it); `seen_at` when the
/// gateway first showed the order (in process, declined, approved, or an answer failing
/// verification): a later "not found" then proves nothing.
const ENROLMENT_ATTEMPTS: &str = r#"
CREATE TABLE enrolment_attempts (
    order_number    TEXT PRIMARY KEY NOT NULL CHECK (length(order_number) BETWEEN 1 AND 128),
    subscription_id TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN
                        ('pending', 'approved', 'declined', 'not_found', 'not_sent', 'rejected')),
    customer        TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL CHECK (amount_cents > 0),
    currency        TEXT NOT NULL CHECK (length(currency) = 3),
    cadence         TEXT NOT NULL,
    start_date      TEXT NOT NULL,
    min_cents       INTEGER NOT NULL CHECK (min_cents > 0),
    max_cents       INTEGER NOT NULL CHECK (max_cents > 0),
    period_days     INTEGER NOT NULL CHECK (period_days BETWEEN 1 AND 999),
    max_date        TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    seen_at         TEXT,
    bill_number     TEXT,
    reason          TEXT,
    updated_at      TEXT NOT NULL
) STRICT;

CREATE UNIQUE INDEX enrolment_attempts_one_pending ON enrolment_attempts (subscription_id)
    WHERE state = 'pending';
CREATE INDEX enrolment_attempts_by_subscription ON enrolment_attempts (subscription_id);
"#;

/// The outbox: ledger events a merchant's systems are told about (`recurrentd events`, the
/// webhook), one row per event, made by a trigger on `ledger` in the transaction that inserts
/// the event — whatever code path inserts it, and for kinds added later under the prefixes
/// `refund_` and `books_`. The event itself is the ledger row (`ledger_seq`), read as recorded;
/// `id` is the consumers' cursor. `stream` orders delivery: an event waits while an earlier one
/// of the same stream (its subscription, from the row or the detail's `subscription`; '' for
/// none) is still `pending`. Webhook delivery: `pending` until a 2xx answer (`delivered`) or
/// until it has failed for `webhook.dead_letter_after_days` since its first attempt (`dead`);
/// `next_attempt_at` ('' = now) is its backoff, `last_error` why the last attempt failed.
const OUTBOX: &str = r#"
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    ledger_seq       INTEGER NOT NULL UNIQUE REFERENCES ledger (seq),
    stream           TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  TEXT NOT NULL DEFAULT '',
    first_attempt_at TEXT,
    delivered_at     TEXT,
    dead_at          TEXT,
    last_error       TEXT
) STRICT;

CREATE INDEX outbox_pending_by_stream ON outbox (stream, id) WHERE state = 'pending';
CREATE INDEX outbox_pending_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_dead ON outbox (id) WHERE state = 'dead';
-- The webhook's due query walks the pending events by id (not the backoff index, which would
-- sort every pending event to return a few: seconds per call after a 1 M first sync).
CREATE INDEX outbox_pending_by_id ON outbox (id) WHERE state = 'pending';

CREATE TRIGGER ledger_to_outbox AFTER INSERT ON ledger
WHEN NEW.kind IN (
        'charge_approved', 'charge_declined', 'period_failed', 'period_blocked',
        'period_skipped', 'charge_parked', 'charge_quarantined', 'charge_held',
        'charge_not_received', 'charge_rejected',
        'double_approval', 'late_approval', 'charge_attested_paid',
        'charge_attested_not_charged', 'hard_decline', 'attention_cleared',
        'subscription_added', 'subscription_updated', 'subscription_removed',
        'adhoc_requested', 'adhoc_cancelled', 'adhoc_expired', 'enrolled')
    OR substr(NEW.kind, 1, 7) = 'refund_'
    OR substr(NEW.kind, 1, 6) = 'books_'
BEGIN
    INSERT INTO outbox (ledger_seq, stream)
    VALUES (NEW.seq, coalesce(NEW.subscription_id,
                              json_extract(NEW.detail, '$.subscription'), ''));
END;
"#;

/// The daily comparison of the gateway's books with the ledger (`recurrentd books`, the daemon's
/// books sweep). `book_runs`: one row per local date compared (the window in UTC, how many of
/// our orders the gateway listed, how often it ran); a date with a row is not run again by the
/// daemon. `book_findings`: one row per mismatch (kind, the order it is about), unique per date,
/// kind and order, so a re-run records nothing twice; shown by `status` until acknowledged.
/// `attempts_approved_by_wall`: the approved attempts of a day by real send time.
const BOOKS: &str = r#"
CREATE TABLE book_runs (
    date         TEXT PRIMARY KEY NOT NULL,
    window_start TEXT NOT NULL,
    window_end   TEXT NOT NULL,
    first_run_at TEXT NOT NULL,
    last_run_at  TEXT NOT NULL,
    runs         INTEGER NOT NULL CHECK (runs >= 1),
    records      INTEGER NOT NULL CHECK (records >= 0)
) STRICT;

CREATE TABLE book_findings (
    id              INTEGER PRIMARY KEY,
    date            TEXT NOT NULL,
    kind            TEXT NOT NULL,
    order_number    TEXT NOT NULL,
    subscription_id TEXT,
    detail          TEXT NOT NULL CHECK (json_valid(detail)),
    found_at        TEXT NOT NULL,
    acknowledged_at TEXT,
    acknowledged_by TEXT,
    UNIQUE (date, kind, order_number)
) STRICT;

CREATE INDEX book_findings_open ON book_findings (found_at) WHERE acknowledged_at IS NULL;

-- The ledger's approvals of a day, for the comparison.
CREATE INDEX attempts_approved_by_wall ON attempts (wall_at) WHERE state = 'approved';
"#;

/// Refunds (`recurrentd refund`, wscancel.cfm): one row per refund request of an approved
/// attempt, recorded `pending` (with its `refund_requested` ledger event) before the request is
/// sent, and settled only by the order's verified status: `completed` (the gateway shows it
/// refunded) or `failed` (verifiably not refunded: refused, never sent, or not applied). At most
/// one pending refund per attempt; completed and pending refunds together never exceed the
/// attempt's amount (checked in the recording transaction). `created_at` is the real time just
/// before sending; `bill_number` the order's billnumber at Assist the cancel named. The attempt
/// stays `approved` and its charge `paid`: a refund changes neither, nor any limit.
const REFUNDS: &str = r#"
CREATE TABLE refunds (
    reference    TEXT PRIMARY KEY NOT NULL CHECK (length(reference) BETWEEN 1 AND 140),
    attempt_id   INTEGER NOT NULL REFERENCES attempts (id),
    state        TEXT NOT NULL CHECK (state IN ('pending', 'completed', 'failed')),
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    currency     TEXT NOT NULL CHECK (length(currency) = 3),
    reason       TEXT NOT NULL,
    operator     TEXT,
    bill_number  TEXT,
    created_at   TEXT NOT NULL,
    detail       TEXT,
    updated_at   TEXT NOT NULL
) STRICT;

CREATE UNIQUE INDEX refunds_one_pending ON refunds (attempt_id) WHERE state = 'pending';
CREATE INDEX refunds_by_attempt ON refunds (attempt_id);
"#;
