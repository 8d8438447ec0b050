//! The schema, as migrations applied in order by `PRAGMA user_version`.
//!
//! Migration `i` (0-based) takes the database from version `i` to `i + 1`. A released migration is
//! never edited: a change is a new migration at the end. Every table is `STRICT`, so a value of
//! the wrong type (a binary float where cents belong) is refused by SQLite itself.
//!
//! Instants are RFC 3339 UTC text with microseconds (`2026-12-01T07:00:00.000000Z`, which sorts
//! as it reads), dates are `YYYY-MM-DD`, money is INTEGER minor units (kopecks).

/// The migrations, oldest first. Not released yet: migration 1 may still change.
pub(super) const MIGRATIONS: &[&str] = &[MIGRATION_1];

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
CREATE TABLE charges (
    id              INTEGER PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id),
    period          INTEGER NOT NULL CHECK (period >= 0),
    due_date        TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL CHECK (amount_cents > 0),
    currency        TEXT NOT NULL CHECK (length(currency) = 3),
    state           TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    UNIQUE (subscription_id, period)
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
