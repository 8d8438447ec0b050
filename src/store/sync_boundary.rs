//! The store boundary of schedule sync: what the sync's rules (`store::sync`) need from a
//! database, as two traits every backend implements; the rules themselves hold no SQL.
//!
//! - [`SyncTransaction`]: one file's sync (or a returned file, a file's removal, a refresh of
//!   digests) in one write transaction: the primitive reads (the file's record, a subscription's
//!   row, a file's active ids, an id's enrolled terms and charges, the holders of a bill number)
//!   and writes (new subscriptions a batch at a time, an update, a moved line, a removal, the
//!   file's record, a ledger event). Everything it writes carries the instant it was begun at,
//!   and nothing is visible to others before [`SyncTransaction::commit`]; dropping it
//!   uncommitted rolls it all back.
//! - [`SyncStore`]: what a sync reads outside a file's transaction (the files the store knows,
//!   those found missing, their stored digests) and how it begins a file's transaction.
//!
//! The checks of a file (refused ids, agreed terms against charges and enrolments, bill-number
//! ownership) read rows that other files' subscriptions own, so a file's transaction must
//! exclude every other sync's writes from its first read to its commit (SQLite: `BEGIN
//! IMMEDIATE`, the database's one writer; a backend with several writers must take a lock
//! every sync takes, e.g. a transaction-level advisory lock, not only row locks).
//!
//! The data crossing the boundary is plain: a subscription's definition in comparable form
//! ([`Def`], the texts an operator writes), its row ([`SubRow`]), a file's record
//! ([`FileRecord`]). Instants stored as text here are in the store's one format
//! (`store::timestamp`: RFC 3339, UTC, microseconds), whatever the backend keeps; they appear in
//! ledger details and messages as they are.
//!
//! A backend shows that it gives the sync the same behaviour by passing
//! `store::sync_conformance::run_all` (the sync's rules on its primitives).
//!
//! Everything here is synchronous and called from blocking threads.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::{StoreError, StoredSubscription, decode_terms, parse_timestamp};
use crate::billing::{Calendar, Revisit};
use crate::money::Currency;

/// A subscription's definition as stored, in comparable form (file and line excluded): the texts
/// and minor units of its terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Def {
    pub id: String,
    pub customer: Option<String>,
    pub bill_number: String,
    pub currency: String,
    pub amount_cents: i64,
    pub cadence: String,
    /// `YYYY-MM-DD`.
    pub start_date: String,
    pub state: String,
    pub catch_up: Option<String>,
    pub min_cents: Option<i64>,
    pub max_cents: Option<i64>,
    pub period_days: Option<i64>,
    /// `YYYY-MM-DD`.
    pub max_date: Option<String>,
}

/// A `subscriptions` row: its definition, where it is defined, and its instants (as
/// `store::timestamp` writes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRow {
    pub def: Def,
    pub file: String,
    pub line: i64,
    pub created_at: String,
    pub updated_at: String,
    pub removed_at: Option<String>,
}

impl SubRow {
    /// The row as the lifecycle's type; `path` names the database in errors.
    pub(super) fn decode(self, path: &Path) -> Result<StoredSubscription, StoreError> {
        let def = &self.def;
        let id = def.id.as_str();
        let corrupt = |what: &str, value: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            what: format!("subscription {id} {what}"),
            value,
        };
        let terms = decode_terms(
            path,
            id,
            def.amount_cents,
            &def.cadence,
            &def.start_date,
            &def.state,
            def.catch_up.as_deref(),
            def.min_cents,
            def.max_cents,
            def.period_days,
            def.max_date.as_deref(),
        )?;
        Ok(StoredSubscription {
            id: def.id.clone(),
            file: self.file.clone(),
            line: usize::try_from(self.line).map_err(|_| corrupt("line", self.line.to_string()))?,
            customer: def.customer.clone(),
            bill_number: def.bill_number.clone(),
            currency: Currency::parse(&def.currency)
                .map_err(|_| corrupt("currency", def.currency.clone()))?,
            terms,
            created_at: parse_timestamp(path, "subscriptions.created_at", &self.created_at)?,
            updated_at: parse_timestamp(path, "subscriptions.updated_at", &self.updated_at)?,
            removed_at: self
                .removed_at
                .as_deref()
                .map(|t| parse_timestamp(path, "subscriptions.removed_at", t))
                .transpose()?,
        })
    }
}

/// The terms an enrolment recorded for a subscription (`enrolments`): its bill number and
/// currency always, its limits since schema version 6 (`None` before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub order_number: String,
    pub bill_number: String,
    pub currency: String,
    pub min_cents: Option<i64>,
    pub max_cents: Option<i64>,
    pub period_days: Option<i64>,
    pub max_date: Option<String>,
}

/// Another subscription that holds a bill number (see [`SyncTransaction::bill_holders`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillHolder {
    pub id: String,
    pub file: String,
    pub line: i64,
    /// Not removed.
    pub in_force: bool,
    /// It has at least one charge row.
    pub has_charges: bool,
}

/// What the store holds of one schedule file (`schedule_files`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileRecord {
    /// Digest of the version in force; `None` if none was ever accepted or the file must be
    /// looked at again.
    pub digest: Option<String>,
    /// Why the file's current content is refused; `None` when it is the version in force.
    pub last_error: Option<String>,
    /// When the file was first found missing (as `store::timestamp` writes it); `None` while
    /// it is in the folder.
    pub missing_since: Option<String>,
}

/// A new subscription for [`SyncTransaction::insert_subscriptions`].
#[derive(Debug, Clone)]
pub struct NewSubscription<'a> {
    pub def: &'a Def,
    pub line: i64,
    /// Its first `next_plan_at` (when the due sweep must first look at it).
    pub first_plan: Revisit,
    /// The detail (JSON text) of its `subscription_added` ledger event.
    pub added_detail: String,
}

/// One write transaction of schedule sync. Every row and ledger event it writes carries the
/// instant it was begun at ([`SyncStore::begin_sync`]).
pub trait SyncTransaction {
    /// The file's record, `None` if the store does not know the file.
    fn file_record(&mut self, file: &str) -> Result<Option<FileRecord>, StoreError>;

    /// Whether any enrolment was ever recorded (one probe, so a folder without enrolments
    /// costs no lookup per subscription).
    fn any_enrolments(&mut self) -> Result<bool, StoreError>;

    /// The terms the enrolment of `subscription_id` recorded, if it was enrolled.
    fn enrolled_terms(&mut self, subscription_id: &str) -> Result<Option<Enrolled>, StoreError>;

    /// A subscription's row by id (removed ones included), `None` if the id was never used.
    fn subscription_row(&mut self, subscription_id: &str) -> Result<Option<SubRow>, StoreError>;

    /// Whether the subscription has any charge row.
    fn has_charges(&mut self, subscription_id: &str) -> Result<bool, StoreError>;

    /// Every subscription other than `except_id` (removed ones included) whose bill number is
    /// `bill_number`: one lookup for the bill-number ownership checks.
    fn bill_holders(
        &mut self,
        bill_number: &str,
        except_id: &str,
    ) -> Result<Vec<BillHolder>, StoreError>;

    /// Ids of the subscriptions of `file` that are not removed, in id order.
    fn active_ids(&mut self, file: &str) -> Result<Vec<String>, StoreError>;

    /// Adds new subscriptions of `file`, in order, each with its `subscription_added` ledger
    /// event (events in the same order). The sync hands at most [`ADD_CHUNK`] at a time; a
    /// backend writes them in as few statements as it can (SQLite: multi-row `INSERT`s).
    fn insert_subscriptions(
        &mut self,
        file: &str,
        new: &[NewSubscription<'_>],
    ) -> Result<(), StoreError>;

    /// Replaces a subscription's definition, file and line (`updated_at` set), and makes the
    /// due sweep look at it now. No ledger event (the sync appends it).
    fn update_subscription(&mut self, file: &str, line: i64, def: &Def) -> Result<(), StoreError>;

    /// Only the line of a subscription's definition moved: nothing else changes.
    fn move_line(&mut self, subscription_id: &str, line: i64) -> Result<(), StoreError>;

    /// Marks a subscription removed (`removed_at`, `updated_at`); its row and id stay. No
    /// ledger event (the sync appends it).
    fn remove_subscription(&mut self, subscription_id: &str) -> Result<(), StoreError>;

    /// Records why the file's current content is refused (`last_error`), creating its record if
    /// needed; its digest and everything else stay.
    fn record_refusal(&mut self, file: &str, last_error: &str) -> Result<(), StoreError>;

    /// Records the file's content as the version in force: `digest` (`None`: look at it again
    /// next time), `last_error` cleared, `accepted_at` set to now if `content_changed` or never
    /// set, creating its record if needed.
    fn record_applied(
        &mut self,
        file: &str,
        digest: Option<&str>,
        content_changed: bool,
    ) -> Result<(), StoreError>;

    /// Records a new digest of a file whose content is in force (`last_error` unset; else
    /// nothing changes).
    fn refresh_digest(&mut self, file: &str, digest: &str) -> Result<(), StoreError>;

    /// Records the file as found missing now (`missing_since`).
    fn record_missing(&mut self, file: &str) -> Result<(), StoreError>;

    /// The file is in the folder again: `missing_since` cleared, and the due sweep looks at its
    /// subscriptions that are not removed now.
    fn record_returned(&mut self, file: &str) -> Result<(), StoreError>;

    /// A gone file whose ids are being handed over: its digest cleared and `last_error` set, so
    /// it is looked at again by the next sync.
    fn record_awaiting_handover(&mut self, file: &str, last_error: &str) -> Result<(), StoreError>;

    /// Forgets the file's record.
    fn forget_file(&mut self, file: &str) -> Result<(), StoreError>;

    /// Appends a ledger event (`detail`: JSON text).
    fn append_event(
        &mut self,
        subscription_id: Option<&str>,
        kind: &str,
        detail: &str,
    ) -> Result<(), StoreError>;

    /// Makes everything durable, atomically.
    fn commit(self) -> Result<(), StoreError>;
}

/// At most this many new subscriptions per [`SyncTransaction::insert_subscriptions`] call, so
/// the sync keeps only a batch's event details in memory at once.
pub const ADD_CHUNK: usize = 64;

/// The schedule sync's storage: its transactions and what it reads outside them.
pub trait SyncStore {
    /// A sync transaction of this backend.
    type Sync<'a>: SyncTransaction
    where
        Self: 'a;

    /// The calendar the engine plans with, if it was recorded (`Store::use_calendar`): a new
    /// subscription is first planned at its first due instant, else now.
    fn planning_calendar(&self) -> Option<Calendar>;

    /// Begins a write transaction at `now` (the instant of everything it writes); `what` names
    /// it in errors.
    fn begin_sync(&mut self, now: DateTime<Utc>, what: &str) -> Result<Self::Sync<'_>, StoreError>;

    /// Every file the store has a record of, by name.
    fn known_files(&mut self) -> Result<Vec<String>, StoreError>;

    /// The files found missing by an earlier sync (`missing_since` set).
    fn missing_files(&mut self) -> Result<Vec<String>, StoreError>;

    /// Every file's record, by name.
    fn file_records(&mut self) -> Result<HashMap<String, FileRecord>, StoreError>;
}
