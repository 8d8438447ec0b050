//! Schedule sync: the schedule files are the operator's desired state; the store holds what was
//! last accepted from each file.
//!
//! Each file is applied in its own write transaction (SQLite: `BEGIN IMMEDIATE`), together with
//! the ledger events that explain the change:
//!
//! - a file with errors keeps its last accepted version in force; `last_error` records why;
//! - a valid file replaces its subscriptions: new ids are added, changed ones updated, ids no
//!   longer in it removed (the row stays, `removed_at` set, and the id is reserved for ever);
//! - a file that is gone *holds* its subscriptions (`schedule_files.missing_since`): they are
//!   neither charged nor removed until the file returns (then they resume, under the usual rules
//!   for a changed file) or an operator confirms the removal ([`Store::remove_missing_file`],
//!   `recurrentd remove-file`). An editor's rename, a deploy that empties the folder or a wrong
//!   `schedules.dir` therefore never ends a subscription; an empty folder removes nothing;
//! - the whole file is refused (last accepted version kept) if it defines a removed id, changes
//!   the agreed terms (bill number, currency, limits) of a subscription that has charges or an
//!   enrolment (then compared with the enrolment's record, even before a first charge), takes a
//!   bill number whose charges belong to another subscription, or takes an id that a file with
//!   errors still defines in its last accepted version.
//!
//! An id may move between files: a valid file takes over an id whose old file no longer defines
//! it (or is gone). An id dropped by one file and defined by another valid file is handed over,
//! not removed; if that other file is refused, the id stays in force where it was and its old
//! file is looked at again at the next sync.
//!
//! Files are keyed by their name inside the schedules folder, so moving the folder or naming it
//! differently in the config changes nothing. Unchanged files are skipped by digest: the digest is
//! over the validated content (not the bytes), and only a file whose current content is the
//! version in force is skipped, so a refused file is re-examined at every sync.
//!
//! The rules live here and hold no SQL: they run on any backend through the traits of
//! `store::sync_boundary` ([`SyncStore`]: the files the store knows, a file's transaction;
//! [`SyncTransaction`]: the primitive reads and writes of one file's sync), which the SQLite
//! store implements in `store::sync_sqlite`. [`Store::sync_schedules`], [`Store::sync_dir`] and
//! [`Store::remove_missing_file`] are the SQLite store's entry points to the generic
//! [`sync_schedules`], [`sync_dir`] and [`remove_missing_file`]; another backend calls those with
//! its own store and inherits every rule.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use serde_json::{Map, Value, json};

use super::sync_boundary::{
    ADD_CHUNK, Def, Enrolled, FileRecord, NewSubscription, SyncStore, SyncTransaction,
};
use super::{Store, StoreError, date_text, kind, timestamp};
use crate::billing::{self, Calendar, Revisit};
use crate::money::Money;
use crate::schedule::{self, Diagnostic, DirReport, FileReport, Severity, Subscription};

/// The fields of a subscription that are the customer's agreement: fixed once it has charges,
/// and from its enrolment on (as the enrolment recorded them).
const AGREED: &[&str] = &[
    "bill_number",
    "currency",
    "limits.min_amount",
    "limits.max_amount",
    "limits.period_days",
    "limits.max_date",
];

/// What one sync did, file by file (files of the folder in name order, then gone files).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncSummary {
    pub files: Vec<FileSync>,
    /// Warnings of the files read ([`Store::sync_dir`] only: `sync_schedules` callers have them
    /// in their report).
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSync {
    /// The file's name inside the schedules folder.
    pub file: String,
    pub outcome: FileOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Same content as the version in force: nothing was done.
    Unchanged,
    /// The file is now the version in force (the changes may be empty).
    Applied(Changes),
    /// The file's current content is refused; its last accepted version stays in force. Every
    /// error is a `path:line:column: field: message` diagnostic.
    Refused { diagnostics: Vec<Diagnostic> },
    /// The file is no longer in the folder and none of its subscriptions is in force (they all
    /// moved to other files): it is forgotten.
    Gone(Changes),
    /// The file is no longer in the folder: its subscriptions `held` are kept (neither charged
    /// nor removed) until it returns or an operator runs `remove-file`. `since`: when it was
    /// first found missing; `new`: first found missing by this sync.
    Missing {
        held: Vec<String>,
        since: String,
        new: bool,
    },
}

/// What [`Store::remove_missing_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemovedFile {
    /// The file's subscriptions (these ids) are removed and the file is forgotten.
    Removed(Vec<String>),
    /// The store does not know a file of that name.
    Unknown,
    /// The file was present at the last sync: it is not missing.
    NotMissing,
}

/// Subscription ids touched by a file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
}

impl SyncSummary {
    /// The outcome for one file name.
    pub fn outcome(&self, file: &str) -> Option<&FileOutcome> {
        self.files
            .iter()
            .find(|f| f.file == file)
            .map(|f| &f.outcome)
    }

    /// Every error of every refused file.
    pub fn diagnostics(&self) -> impl Iterator<Item = &Diagnostic> {
        self.files.iter().flat_map(|f| match &f.outcome {
            FileOutcome::Refused { diagnostics } => diagnostics.as_slice(),
            _ => &[],
        })
    }
}

impl Def {
    fn from_subscription(sub: &Subscription) -> Def {
        let terms = &sub.terms;
        Def {
            id: sub.id.clone(),
            customer: sub.customer.clone(),
            bill_number: sub.bill_number.clone(),
            currency: sub.currency.as_str().to_string(),
            amount_cents: terms.amount.cents(),
            cadence: terms.every.to_string(),
            start_date: date_text(terms.start),
            state: terms.state.to_string(),
            catch_up: terms.catch_up.map(|c| c.to_string()),
            min_cents: terms.limits.min_amount.map(Money::cents),
            max_cents: terms.limits.max_amount.map(Money::cents),
            period_days: terms.limits.period_days.map(i64::from),
            max_date: terms.limits.max_date.map(date_text),
        }
    }

    /// Every field by its schedule-file name, as an operator would write it.
    fn fields(&self) -> [(&'static str, Option<String>); 12] {
        let money = |cents: i64| {
            Money::from_cents(cents).map_or_else(|| format!("{cents} kopecks"), |m| m.to_string())
        };
        [
            ("customer", self.customer.clone()),
            ("bill_number", Some(self.bill_number.clone())),
            ("currency", Some(self.currency.clone())),
            ("amount", Some(money(self.amount_cents))),
            ("every", Some(self.cadence.clone())),
            ("start", Some(self.start_date.clone())),
            ("state", Some(self.state.clone())),
            ("catch_up", self.catch_up.clone()),
            ("limits.min_amount", self.min_cents.map(money)),
            ("limits.max_amount", self.max_cents.map(money)),
            (
                "limits.period_days",
                self.period_days.map(|d| d.to_string()),
            ),
            ("limits.max_date", self.max_date.clone()),
        ]
    }

    /// The fields that differ: (field, before, after).
    fn diff(&self, new: &Def) -> Vec<(&'static str, Option<String>, Option<String>)> {
        self.fields()
            .into_iter()
            .zip(new.fields())
            .filter(|((_, old), (_, new))| old != new)
            .map(|((field, old), (_, new))| (field, old, new))
            .collect()
    }

    /// The detail of the `subscription_added` event, written as text directly: the same text as
    /// `json!({ "file": file, "line": line, "subscription": self.json() }).to_string()`
    /// (serde_json's maps write their keys sorted; strings are escaped by serde_json itself),
    /// without building a `Value` tree (a cold sync writes one per subscription).
    fn added_detail(&self, file: &str, line: usize) -> String {
        use std::io::Write as _;
        let mut out = Vec::with_capacity(320);
        out.extend_from_slice(b"{\"file\":");
        json_string(&mut out, file);
        // Writing to a Vec cannot fail.
        let _ = write!(out, ",\"line\":{line},\"subscription\":{{");
        let money = |out: &mut Vec<u8>, cents: i64| {
            let _ = match Money::from_cents(cents) {
                Some(m) => write!(out, "\"{m}\""),
                None => write!(out, "\"{cents} kopecks\""),
            };
        };
        // Keys in sorted order, as serde_json's map writes them.
        out.extend_from_slice(b"\"amount\":");
        money(&mut out, self.amount_cents);
        out.extend_from_slice(b",\"bill_number\":");
        json_string(&mut out, &self.bill_number);
        if let Some(catch_up) = &self.catch_up {
            out.extend_from_slice(b",\"catch_up\":");
            json_string(&mut out, catch_up);
        }
        out.extend_from_slice(b",\"currency\":");
        json_string(&mut out, &self.currency);
        if let Some(customer) = &self.customer {
            out.extend_from_slice(b",\"customer\":");
            json_string(&mut out, customer);
        }
        out.extend_from_slice(b",\"every\":");
        json_string(&mut out, &self.cadence);
        if let Some(cents) = self.max_cents {
            out.extend_from_slice(b",\"limits.max_amount\":");
            money(&mut out, cents);
        }
        if let Some(date) = &self.max_date {
            out.extend_from_slice(b",\"limits.max_date\":");
            json_string(&mut out, date);
        }
        if let Some(cents) = self.min_cents {
            out.extend_from_slice(b",\"limits.min_amount\":");
            money(&mut out, cents);
        }
        if let Some(days) = self.period_days {
            let _ = write!(out, ",\"limits.period_days\":\"{days}\"");
        }
        out.extend_from_slice(b",\"start\":");
        json_string(&mut out, &self.start_date);
        out.extend_from_slice(b",\"state\":");
        json_string(&mut out, &self.state);
        out.extend_from_slice(b"}}");
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// The definition as a JSON object, field by field: what `added_detail` writes as text.
    #[cfg(test)]
    fn json(&self) -> Value {
        let mut map = Map::new();
        for (field, value) in self.fields() {
            if let Some(value) = value {
                map.insert(field.to_string(), Value::String(value));
            }
        }
        Value::Object(map)
    }
}

/// One change a valid file asks for.
enum Step<'r> {
    /// With its first `next_plan_at`.
    Add(&'r Subscription, Def, Revisit),
    Update {
        sub: &'r Subscription,
        new: Def,
        changes: Vec<(&'static str, Option<String>, Option<String>)>,
        moved_from: Option<String>,
    },
    /// Only the line moved: no event, the definition is the same.
    Line(&'r Subscription),
    Remove(String),
}

/// What each file of the report wants: its ids if it is valid, `None` if it has errors.
type Wanted<'r> = HashMap<&'r str, Option<HashSet<&'r str>>>;

/// What another file of this sync says about an id whose row names that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// The file is no longer in the folder.
    Gone,
    /// The file has errors: its last accepted version stays in force.
    Refused,
    /// The file (valid) defines the id.
    Defines,
    /// The file (valid) no longer defines the id.
    Drops,
}

/// What the files of one sync want, as far as applying one file needs to know about others.
trait Claims {
    /// What `file` (which the id's row names) says about `id`.
    fn claim(&mut self, file: &str, id: &str) -> Claim;
    /// Whether a valid file of this sync other than `file` defines `id`.
    fn claimed_elsewhere(&mut self, file: &str, id: &str) -> bool;
}

impl Claims for Wanted<'_> {
    fn claim(&mut self, file: &str, id: &str) -> Claim {
        match self.get(file) {
            None => Claim::Gone,
            Some(None) => Claim::Refused,
            Some(Some(ids)) if ids.contains(id) => Claim::Defines,
            Some(Some(_)) => Claim::Drops,
        }
    }

    fn claimed_elsewhere(&mut self, file: &str, id: &str) -> bool {
        self.iter()
            .any(|(other, ids)| *other != file && ids.as_ref().is_some_and(|ids| ids.contains(id)))
    }
}

impl Store {
    /// Brings the subscriptions in line with the schedule folder as `report` read it; `now` is
    /// the time written in the rows and ledger events. A storage error stops the sync (files
    /// already applied stay applied: each file is its own transaction).
    pub fn sync_schedules(
        &mut self,
        report: &DirReport,
        now: DateTime<Utc>,
    ) -> Result<SyncSummary, StoreError> {
        self.require_write("schedule sync")?;
        sync_schedules(self, report, now)
    }

    /// An operator confirms that a missing schedule file is gone for good: its held
    /// subscriptions are removed (ids reserved for ever), with who and why in the ledger, and the
    /// file is forgotten. Only a file found missing by the daemon's last sync qualifies; the
    /// caller also checks that it is not in the folder now.
    pub fn remove_missing_file(
        &mut self,
        name: &str,
        by: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<RemovedFile, StoreError> {
        self.require_write("removing a missing schedule file")?;
        remove_missing_file(self, name, by, why, now)
    }
}

/// [`Store::sync_schedules`] on any backend.
pub(super) fn sync_schedules<S: SyncStore>(
    store: &mut S,
    report: &DirReport,
    now: DateTime<Utc>,
) -> Result<SyncSummary, StoreError> {
    let mut wanted: Wanted<'_> = HashMap::new();
    let mut files: Vec<(Option<&str>, &FileReport)> = Vec::new();
    for file in &report.files {
        match file.path.file_name().and_then(|n| n.to_str()) {
            Some(name) if !wanted.contains_key(name) => {
                let ids = (!file.has_errors())
                    .then(|| file.subscriptions.iter().map(|s| s.id.as_str()).collect());
                wanted.insert(name, ids);
                files.push((Some(name), file));
            }
            _ => files.push((None, file)),
        }
    }

    let mut summary = SyncSummary::default();
    for (name, file) in files {
        let (name, outcome) = match name {
            None => (
                file.path.display().to_string(),
                FileOutcome::Refused {
                    diagnostics: vec![error_at(
                        &file.path,
                        1,
                        "file",
                        "the file name is not UTF-8 or is listed twice; refused".to_string(),
                    )],
                },
            ),
            Some(name) if file.has_errors() => {
                let errors = refuse_file(store, name, file, now)?;
                (
                    name.to_string(),
                    FileOutcome::Refused {
                        diagnostics: errors,
                    },
                )
            }
            Some(name) => {
                let digest = digest(file);
                let (outcome, _) = sync_file(store, name, file, digest, &mut wanted, false, now)?;
                (name.to_string(), outcome)
            }
        };
        summary.files.push(FileSync {
            file: name,
            outcome,
        });
    }

    let listed: Vec<&str> = wanted.keys().copied().collect();
    returned_files(store, &listed, now)?;
    for name in store.known_files()? {
        if !wanted.contains_key(name.as_str()) {
            let outcome = sync_gone(store, &name, &mut wanted, now)?;
            summary.files.push(FileSync {
                file: name,
                outcome,
            });
        }
    }
    Ok(summary)
}

/// Refuses a file whose report has errors, in a transaction of its own (see [`refuse`]);
/// returns the errors.
fn refuse_file<S: SyncStore>(
    store: &mut S,
    name: &str,
    report: &FileReport,
    now: DateTime<Utc>,
) -> Result<Vec<Diagnostic>, StoreError> {
    let errors: Vec<Diagnostic> = report
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .cloned()
        .collect();
    let mut tx = store.begin_sync(now, "recording a refused schedule file")?;
    refuse(&mut tx, name, &errors)?;
    tx.commit()?;
    Ok(errors)
}

/// Applies one valid file, or refuses it whole. `digest` identifies its content (see
/// `schedule_files.digest`); `check_bills` adds the check that no subscription of another
/// file in force holds one of its bill numbers (the folder sync's stand-in for the
/// across-files check of `schedule::load_dir`). Also returns the ids it no longer defines
/// but leaves in force for a hand-over.
fn sync_file<S: SyncStore>(
    store: &mut S,
    name: &str,
    file: &FileReport,
    digest: String,
    claims: &mut dyn Claims,
    check_bills: bool,
    now: DateTime<Utc>,
) -> Result<(FileOutcome, HashSet<String>), StoreError> {
    let calendar = store.planning_calendar();
    let mut tx = store.begin_sync(now, &format!("syncing schedule file {name}"))?;
    let stored = tx.file_record(name)?;
    if let Some(FileRecord {
        digest: Some(stored_digest),
        last_error: None,
        ..
    }) = &stored
        && *stored_digest == digest
    {
        return Ok((FileOutcome::Unchanged, HashSet::new()));
    }

    let mut errors = Vec::new();
    let mut steps = Vec::new();
    // One probe, so that a folder without enrolments costs no lookup per subscription.
    let any_enrolments = tx.any_enrolments()?;
    for sub in &file.subscriptions {
        let new = Def::from_subscription(sub);
        let old = tx.subscription_row(&sub.id)?;
        let enrolled = if any_enrolments {
            tx.enrolled_terms(&sub.id)?
        } else {
            None
        };
        // An enrolled subscription is held to the terms of its initial payment from the
        // start, charged or not (for an enrolment recorded without its limits, to the
        // stored terms).
        if let Some(enrolled) = &enrolled {
            let agreed = enrolled.agreed(old.as_ref().map(|o| &o.def), &new);
            let broken = agreed.diff(&new);
            let broken: Vec<_> = broken
                .iter()
                .filter(|(field, _, _)| AGREED.contains(field))
                .collect();
            if !broken.is_empty() {
                for (field, before, after) in broken {
                    errors.push(error_at(
                        &sub.origin.path,
                        sub.origin.line,
                        field,
                        format!(
                            "subscription {} was enrolled with the terms the customer \
                             agreed to (initial payment, order {}), so they cannot change \
                             ({field} was {}, the file now says {}); a new agreement needs \
                             a new subscription id",
                            sub.id,
                            enrolled.order_number,
                            shown(before),
                            shown(after)
                        ),
                    ));
                }
                continue;
            }
        }
        let Some(old) = old else {
            bill_checks(&mut tx, name, sub, claims, true, check_bills, &mut errors)?;
            steps.push(Step::Add(sub, new, first_plan(sub, calendar.as_ref(), now)));
            continue;
        };
        if let Some(removed_at) = &old.removed_at {
            errors.push(error_at(
                &sub.origin.path,
                sub.origin.line,
                "id",
                format!(
                    "{:?} belonged to a subscription removed at {removed_at}; ids are never \
                     reused, give this subscription a new id",
                    sub.id
                ),
            ));
            continue;
        }
        let moved_from = if old.file == name {
            None
        } else {
            match claims.claim(&old.file, &sub.id) {
                // Its old file is gone, or valid and no longer defines it: a move.
                Claim::Gone | Claim::Drops => Some(old.file.clone()),
                Claim::Refused => {
                    errors.push(error_at(
                        &sub.origin.path,
                        sub.origin.line,
                        "id",
                        format!(
                            "{:?} is still defined by the version in force of {}, which \
                             has errors now; fix that file first",
                            sub.id, old.file
                        ),
                    ));
                    continue;
                }
                Claim::Defines => {
                    errors.push(error_at(
                        &sub.origin.path,
                        sub.origin.line,
                        "id",
                        format!("{:?} is also defined in {}", sub.id, old.file),
                    ));
                    continue;
                }
            }
        };
        let changes = old.def.diff(&new);
        let agreed: Vec<_> = changes
            .iter()
            .filter(|(field, _, _)| AGREED.contains(field))
            .collect();
        // (An enrolled subscription was held to its enrolment's terms above.)
        if enrolled.is_none() && !agreed.is_empty() && tx.has_charges(&sub.id)? {
            for (field, before, after) in agreed {
                errors.push(error_at(
                    &sub.origin.path,
                    sub.origin.line,
                    field,
                    format!(
                        "subscription {} has charges, so the terms the customer agreed to \
                         cannot change ({field} was {}, the file now says {}); a new \
                         agreement needs a new subscription id",
                        sub.id,
                        shown(before),
                        shown(after)
                    ),
                ));
            }
            continue;
        }
        let bill_changed = old.def.bill_number != new.bill_number;
        bill_checks(
            &mut tx,
            name,
            sub,
            claims,
            bill_changed,
            check_bills && (bill_changed || moved_from.is_some()),
            &mut errors,
        )?;
        let line_moved = usize::try_from(old.line).ok() != Some(sub.origin.line);
        if !changes.is_empty() || moved_from.is_some() {
            steps.push(Step::Update {
                sub,
                new,
                changes,
                moved_from,
            });
        } else if line_moved {
            steps.push(Step::Line(sub));
        }
    }

    // Ids of this file that it no longer defines: removed, unless another valid file of this
    // sync takes them over.
    let mine: HashSet<&str> = file.subscriptions.iter().map(|s| s.id.as_str()).collect();
    let mut pending = HashSet::new();
    for id in tx.active_ids(name)? {
        if mine.contains(id.as_str()) {
            continue;
        }
        if claims.claimed_elsewhere(name, &id) {
            pending.insert(id);
        } else {
            steps.push(Step::Remove(id));
        }
    }

    if !errors.is_empty() {
        refuse(&mut tx, name, &errors)?;
        tx.commit()?;
        return Ok((
            FileOutcome::Refused {
                diagnostics: errors,
            },
            HashSet::new(),
        ));
    }

    let mut changes = Changes::default();
    // Consecutive additions are inserted a batch at a time (same rows, same ledger order).
    let mut adds = Vec::new();
    for step in steps {
        match step {
            Step::Add(sub, def, first_plan) => adds.push((sub, def, first_plan)),
            step => {
                add_all(&mut tx, name, std::mem::take(&mut adds), &mut changes)?;
                apply(&mut tx, name, step, &mut changes)?;
            }
        }
    }
    add_all(&mut tx, name, adds, &mut changes)?;
    let digest_changed = stored.as_ref().and_then(|r| r.digest.as_deref()) != Some(&digest);
    // A pending hand-over leaves an id here that this file no longer defines: look again next
    // time (a NULL digest never matches).
    let new_digest = pending.is_empty().then_some(digest);
    tx.record_applied(name, new_digest.as_deref(), digest_changed)?;
    tx.commit()?;
    Ok((FileOutcome::Applied(changes), pending))
}

/// A file the store knows that is no longer in the folder: its subscriptions are held
/// (except those a valid file of this sync defines, which it takes over or, if refused,
/// leaves here until the next sync); once none is left, the file is forgotten.
fn sync_gone<S: SyncStore>(
    store: &mut S,
    name: &str,
    claims: &mut dyn Claims,
    now: DateTime<Utc>,
) -> Result<FileOutcome, StoreError> {
    let mut tx = store.begin_sync(
        now,
        &format!("holding the subscriptions of the missing schedule file {name}"),
    )?;
    let mut held = Vec::new();
    let mut pending = false;
    for id in tx.active_ids(name)? {
        if claims.claimed_elsewhere(name, &id) {
            pending = true;
            continue;
        }
        held.push(id);
    }
    if held.is_empty() {
        if pending {
            tx.record_awaiting_handover(name, "the file is no longer in the schedules folder")?;
        } else {
            tx.forget_file(name)?;
        }
        tx.commit()?;
        return Ok(FileOutcome::Gone(Changes::default()));
    }
    // (A file with subscriptions in force always has its record.)
    let since = tx
        .file_record(name)?
        .and_then(|record| record.missing_since);
    let new = since.is_none();
    if new {
        tx.record_missing(name)?;
        let detail = json!({
            "file": name,
            "held": held,
            "message": "the schedule file is missing: its subscriptions are held (not \
                        charged, not removed) until it returns or `recurrentd \
                        remove-file` confirms the removal",
        });
        tx.append_event(None, kind::SCHEDULE_FILE_MISSING, &detail.to_string())?;
    }
    tx.commit()?;
    Ok(FileOutcome::Missing {
        held,
        since: since.unwrap_or_else(|| timestamp(now)),
        new,
    })
}

/// Files found missing by an earlier sync that are in the folder again: no longer missing
/// (their content was applied or refused by this sync like any file's), with a ledger
/// event, and their subscriptions looked at by the next sweep.
fn returned_files<S: SyncStore>(
    store: &mut S,
    listed: &[&str],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let missing = store.missing_files()?;
    let listed: HashSet<&str> = listed.iter().copied().collect();
    for name in missing.iter().filter(|n| listed.contains(n.as_str())) {
        let mut tx = store.begin_sync(now, "marking returned schedule files")?;
        let since = tx
            .file_record(name)?
            .and_then(|record| record.missing_since);
        tx.record_returned(name)?;
        let resumed = tx.active_ids(name)?;
        let detail = json!({ "file": name, "missing_since": since, "resumed": resumed });
        tx.append_event(None, kind::SCHEDULE_FILE_RETURNED, &detail.to_string())?;
        tx.commit()?;
        tracing::info!(file = %name, subscriptions = resumed.len(), "schedule file is back: its subscriptions resume");
    }
    Ok(())
}

/// [`Store::remove_missing_file`] on any backend.
pub(super) fn remove_missing_file<S: SyncStore>(
    store: &mut S,
    name: &str,
    by: &str,
    why: &str,
    now: DateTime<Utc>,
) -> Result<RemovedFile, StoreError> {
    let mut tx = store.begin_sync(now, "removing a missing schedule file")?;
    match tx.file_record(name)? {
        None => return Ok(RemovedFile::Unknown),
        Some(FileRecord {
            missing_since: None,
            ..
        }) => return Ok(RemovedFile::NotMissing),
        Some(_) => {}
    }
    let ids = tx.active_ids(name)?;
    let reason = format!("its schedule file is gone: removal confirmed by {by}: {why}");
    for id in &ids {
        remove(&mut tx, name, id, &reason, Some((by, why)))?;
    }
    tx.forget_file(name)?;
    tx.commit()?;
    Ok(RemovedFile::Removed(ids))
}

/// Records a refusal: `last_error`, and a ledger event when the reason is new (a file that stays
/// broken does not add an event at every sync).
fn refuse<T: SyncTransaction>(
    tx: &mut T,
    name: &str,
    errors: &[Diagnostic],
) -> Result<(), StoreError> {
    let text = errors
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let previous = tx.file_record(name)?.and_then(|record| record.last_error);
    if previous.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    tx.record_refusal(name, &text)?;
    let errors: Vec<String> = errors.iter().map(|d| d.to_string()).collect();
    let detail = json!({ "file": name, "errors": errors });
    tx.append_event(None, kind::SCHEDULE_REFUSED, &detail.to_string())
}

fn apply<T: SyncTransaction>(
    tx: &mut T,
    file: &str,
    step: Step<'_>,
    changes: &mut Changes,
) -> Result<(), StoreError> {
    match step {
        Step::Add(sub, def, first_plan) => {
            add_all(tx, file, vec![(sub, def, first_plan)], changes)?;
        }
        Step::Update {
            sub,
            new,
            changes: fields,
            moved_from,
        } => {
            tx.update_subscription(file, line(sub), &new)?;
            let mut diff = Map::new();
            for (field, before, after) in fields {
                diff.insert(field.to_string(), json!({ "from": before, "to": after }));
            }
            let mut detail = json!({ "file": file, "line": sub.origin.line, "changes": diff });
            if let (Some(from), Some(map)) = (moved_from, detail.as_object_mut()) {
                map.insert("moved_from".to_string(), Value::String(from));
            }
            tx.append_event(
                Some(&new.id),
                kind::SUBSCRIPTION_UPDATED,
                &detail.to_string(),
            )?;
            changes.updated.push(new.id);
        }
        Step::Line(sub) => tx.move_line(&sub.id, line(sub))?,
        Step::Remove(id) => {
            remove(tx, file, &id, "no longer in its schedule file", None)?;
            changes.removed.push(id);
        }
    }
    Ok(())
}

/// Adds new subscriptions in order, each with its `subscription_added` event: what [`apply`]
/// does for a [`Step::Add`], [`ADD_CHUNK`] at a time (the backend writes each chunk in as few
/// statements as it can; only one chunk's event details are in memory at once).
fn add_all<T: SyncTransaction>(
    tx: &mut T,
    file: &str,
    adds: Vec<(&Subscription, Def, Revisit)>,
    changes: &mut Changes,
) -> Result<(), StoreError> {
    for chunk in adds.chunks(ADD_CHUNK) {
        let new: Vec<NewSubscription<'_>> = chunk
            .iter()
            .map(|(sub, def, first_plan)| NewSubscription {
                def,
                line: line(sub),
                first_plan: *first_plan,
                added_detail: def.added_detail(file, sub.origin.line),
            })
            .collect();
        tx.insert_subscriptions(file, &new)?;
    }
    changes
        .added
        .extend(adds.into_iter().map(|(_, def, _)| def.id));
    Ok(())
}

/// Marks a subscription removed, with its ledger event (and, for an operator's `remove-file`,
/// who and why).
fn remove<T: SyncTransaction>(
    tx: &mut T,
    file: &str,
    id: &str,
    reason: &str,
    operator: Option<(&str, &str)>,
) -> Result<(), StoreError> {
    tx.remove_subscription(id)?;
    let mut detail = json!({ "file": file, "reason": reason });
    // An operator's `remove-file`: who and why, for the audit trail.
    if let (Some((by, why)), Some(map)) = (operator, detail.as_object_mut()) {
        map.insert("by".into(), Value::String(by.into()));
        map.insert("why".into(), Value::String(why.into()));
    }
    tx.append_event(Some(id), kind::SUBSCRIPTION_REMOVED, &detail.to_string())
}

/// Writes `text` as a JSON string, escaped by serde_json (as `Value::to_string` escapes it).
fn json_string(out: &mut Vec<u8>, text: &str) {
    use serde::Serializer as _;
    // Writing to a Vec cannot fail.
    let _ = (&mut serde_json::Serializer::new(&mut *out)).serialize_str(text);
}

impl Enrolled {
    /// The agreed terms as a definition to compare `new` with: the enrolment's bill number,
    /// currency and limits; a limit the enrolment did not record comes from the stored
    /// subscription (`stored`), or, for a subscription not stored yet, from `new` itself (so it
    /// cannot be checked). Fields that are not agreed terms are `new`'s.
    fn agreed(&self, stored: Option<&Def>, new: &Def) -> Def {
        let fallback = stored.unwrap_or(new);
        Def {
            bill_number: self.bill_number.clone(),
            currency: self.currency.clone(),
            min_cents: self.min_cents.or(fallback.min_cents),
            max_cents: self.max_cents.or(fallback.max_cents),
            period_days: self.period_days.or(fallback.period_days),
            max_date: self.max_date.clone().or_else(|| fallback.max_date.clone()),
            ..new.clone()
        }
    }
}

/// The checks of the bill number `sub` takes, from one lookup of the other subscriptions that
/// hold it:
///
/// - `charged`: a bill number whose charges belong to another subscription cannot be taken
///   (the limits are checked against one subscription's charge history, which a new id would
///   not see);
/// - `elsewhere`: a bill number held by a subscription (another id) of another file that this
///   sync keeps in force: the version in force wins, and the file that also takes it is refused.
fn bill_checks<T: SyncTransaction>(
    tx: &mut T,
    file: &str,
    sub: &Subscription,
    claims: &mut dyn Claims,
    charged: bool,
    elsewhere: bool,
    errors: &mut Vec<Diagnostic>,
) -> Result<(), StoreError> {
    if !charged && !elsewhere {
        return Ok(());
    }
    let holders = tx.bill_holders(&sub.bill_number, &sub.id)?;
    if charged && let Some(other) = holders.iter().find(|holder| holder.has_charges) {
        errors.push(error_at(
            &sub.origin.path,
            sub.origin.line,
            "bill_number",
            format!(
                "{} is the agreement of subscription {}, which has charges; one initial \
                 payment is one subscription, and its charge history stays with that id",
                sub.bill_number, other.id
            ),
        ));
    }
    if !elsewhere {
        return Ok(());
    }
    for other in &holders {
        if other.file != file
            && other.in_force
            && claims.claim(&other.file, &other.id) == Claim::Defines
        {
            errors.push(error_at(
                &sub.origin.path,
                sub.origin.line,
                "bill_number",
                format!(
                    "{} is already the agreement of subscription {} at {}:{}; one initial \
                     payment is one subscription",
                    sub.bill_number, other.id, other.file, other.line
                ),
            ));
            break;
        }
    }
    Ok(())
}

/// A new subscription's first `next_plan_at`: what `billing::decide` says for it with no
/// history (it has no charges: its id is new; an enrolment only restricts a charge, and before
/// the first due instant `decide` answers `Wait` whatever the history), through
/// `billing::revisit` — its first due instant, or never. Without the engine's calendar: now.
fn first_plan(sub: &Subscription, calendar: Option<&Calendar>, now: DateTime<Utc>) -> Revisit {
    match calendar {
        Some(calendar) => {
            let plan = billing::decide(&sub.terms, calendar, 0, &[], now);
            if plan.settled.is_empty() {
                billing::revisit(&plan.next, calendar)
            } else {
                Revisit::Now
            }
        }
        None => Revisit::Now,
    }
}

fn line(sub: &Subscription) -> i64 {
    i64::try_from(sub.origin.line).unwrap_or(i64::MAX)
}

fn shown(value: &Option<String>) -> String {
    value
        .as_deref()
        .map_or_else(|| "not set".to_string(), |v| format!("{v:?}"))
}

fn error_at(path: &Path, line: usize, field: &str, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        path: path.to_path_buf(),
        line,
        column: 1,
        field: field.to_string(),
        message,
    }
}

/// Digest of a valid file's content as the store would hold it (subscriptions, their fields and
/// lines). Change detection only, not a security property: equal digests mean "skip".
fn digest(file: &FileReport) -> String {
    let mut hasher = Md5::new();
    for sub in &file.subscriptions {
        let def = Def::from_subscription(sub);
        hasher.update(def.id.as_bytes());
        hasher.update(b"\x1f");
        hasher.update(sub.origin.line.to_string().as_bytes());
        for (_, value) in def.fields() {
            match value {
                Some(value) => {
                    hasher.update(b"\x1f+");
                    hasher.update(value.as_bytes());
                }
                None => hasher.update(b"\x1f-"),
            }
        }
        hasher.update(b"\x1e");
    }
    format!("{:x}", hasher.finalize())
}

// ---- The folder sync: one file at a time ------------------------------------------------------

/// What the store remembers of a file's version in force, in `schedule_files.digest` for the
/// folder sync: `b:<md5 of the bytes>` and, when the file had not been modified for a while when
/// it was read, `;<size>:<mtime>:<ctime>:<inode>:<device>` (nanoseconds). A file whose metadata
/// still reads the same is not even read again; one whose bytes hash the same is not parsed.
/// (`ctime` cannot be set by a user and changes with every write; a file modified within
/// [`RACY`] of its reading gets no metadata part, so a second write in the same clock tick
/// cannot go unseen.)
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileDigest {
    md5: String,
    stat: Option<String>,
}

/// How long after its last change a file's metadata is trusted to identify its content.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

impl FileDigest {
    fn parse(text: &str) -> Option<FileDigest> {
        let rest = text.strip_prefix("b:")?;
        let (md5, stat) = match rest.split_once(';') {
            Some((md5, stat)) => (md5, Some(stat.to_string())),
            None => (rest, None),
        };
        Some(FileDigest {
            md5: md5.to_string(),
            stat,
        })
    }

    fn text(&self) -> String {
        match &self.stat {
            Some(stat) => format!("b:{};{stat}", self.md5),
            None => format!("b:{}", self.md5),
        }
    }
}

/// The metadata part of a file's digest, if it is trustworthy (see [`FileDigest`]).
fn stat_key(meta: &std::fs::Metadata, read_at: std::time::SystemTime) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if !meta.file_type().is_file() {
        return None;
    }
    let changed = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(meta.ctime().max(meta.mtime())).ok()?,
            u32::try_from(meta.ctime_nsec().max(meta.mtime_nsec())).ok()?,
        );
    if read_at.duration_since(changed).is_ok_and(|age| age >= RACY) {
        Some(format!(
            "{}:{}.{}:{}.{}:{}:{}",
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.ino(),
            meta.dev()
        ))
    } else {
        None
    }
}

/// `schedule_files` as the folder sync began: name → record.
type StoredFiles = HashMap<String, FileRecord>;

/// A listed file as the folder sync found it.
enum Examined {
    /// Its content is the version in force (last_error NULL): nothing to do. `refresh` is a
    /// digest to record (the same content, newly trustworthy metadata).
    Unchanged { refresh: Option<String> },
    /// Read and parsed (it may have errors); `digest` to record if it is applied.
    Parsed { report: FileReport, digest: String },
}

/// A listed file whose metadata does not show it unchanged: what [`Listing::read`] needs.
struct Looked<'a> {
    path: &'a std::path::PathBuf,
    stored: Option<FileDigest>,
    stat: Option<String>,
}

/// What a file processed earlier in this folder sync wants (for the files after it).
enum Processed {
    Unchanged,
    /// Applied; the ids it no longer defines but left in force for a hand-over.
    Applied(HashSet<String>),
    /// Refused; its ids if it was valid as parsed (refused by the store's checks only).
    Refused(Option<HashSet<String>>),
}

/// What a folder sync knows of the folder and of `schedule_files` as it began: fixed for the
/// sync, so files can be read (and parsed) ahead on another thread.
struct Listing {
    canonical_dir: std::path::PathBuf,
    /// Names in the folder → path.
    listed: HashMap<String, std::path::PathBuf>,
    /// `schedule_files` as the sync began.
    stored: StoredFiles,
}

/// [`Claims`] for the folder sync: files after the current one are read only when an id or
/// bill number of the current file involves them.
struct Folder<'l> {
    listing: &'l Listing,
    processed: HashMap<String, Processed>,
    /// Files after the current one, examined ahead (each parse is kept only as its ids).
    ahead: HashMap<String, Option<HashSet<String>>>,
    /// Unchanged files found while looking ahead.
    ahead_unchanged: HashSet<String>,
    /// Ids of every valid file not processed yet, built the first time a dropped id is asked
    /// about.
    index: Option<HashMap<String, Vec<String>>>,
}

impl Listing {
    /// Reads `name` as the sync will: unchanged by metadata or content, else parsed.
    fn examine(&self, name: &str) -> Examined {
        match self.look(name) {
            Ok(unchanged) => unchanged,
            Err(looked) => self.read(looked),
        }
    }

    /// The first step of [`Listing::examine`], which reads no file: unchanged by metadata (or
    /// not listed), else what reading it needs.
    fn look<'a>(&'a self, name: &str) -> Result<Examined, Looked<'a>> {
        let Some(path) = self.listed.get(name) else {
            return Ok(Examined::Unchanged { refresh: None });
        };
        let stored = self
            .stored
            .get(name)
            .filter(|record| record.last_error.is_none())
            .and_then(|record| record.digest.as_deref())
            .and_then(FileDigest::parse);
        let read_at = std::time::SystemTime::now();
        let meta = std::fs::symlink_metadata(path).ok();
        let stat = meta.as_ref().and_then(|m| stat_key(m, read_at));
        if let (Some(stored), Some(stat)) = (&stored, &stat)
            && stored.stat.as_ref() == Some(stat)
        {
            return Ok(Examined::Unchanged { refresh: None });
        }
        Err(Looked { path, stored, stat })
    }

    /// The rest of [`Listing::examine`]: reads the file, unchanged by content, else parsed.
    fn read(&self, looked: Looked<'_>) -> Examined {
        let Looked { path, stored, stat } = looked;
        let text = match schedule::read_text(path, &self.canonical_dir) {
            Ok(text) => text,
            Err(diagnostic) => {
                return Examined::Parsed {
                    report: FileReport {
                        path: path.clone(),
                        subscriptions: Vec::new(),
                        diagnostics: vec![diagnostic],
                    },
                    digest: String::new(),
                };
            }
        };
        let digest = FileDigest {
            md5: format!("{:x}", Md5::digest(text.as_bytes())),
            stat,
        };
        if let Some(stored) = &stored
            && stored.md5 == digest.md5
        {
            let refresh =
                (stored.stat != digest.stat && digest.stat.is_some()).then(|| digest.text());
            return Examined::Unchanged { refresh };
        }
        Examined::Parsed {
            report: schedule::parse_text(path, &text),
            digest: digest.text(),
        }
    }
}

impl Folder<'_> {
    /// The ids a file not processed yet wants: `Some` if valid, `None` if it has errors, and
    /// `Err(())` if it is unchanged (its rows are its content).
    fn ahead(&mut self, name: &str) -> Result<Option<&HashSet<String>>, ()> {
        if self.ahead_unchanged.contains(name) {
            return Err(());
        }
        if !self.ahead.contains_key(name) {
            match self.listing.examine(name) {
                Examined::Unchanged { .. } => {
                    self.ahead_unchanged.insert(name.to_string());
                    return Err(());
                }
                Examined::Parsed { report, .. } => {
                    let ids = (!report.has_errors())
                        .then(|| report.subscriptions.iter().map(|s| s.id.clone()).collect());
                    self.ahead.insert(name.to_string(), ids);
                }
            }
        }
        Ok(self.ahead.get(name).and_then(Option::as_ref))
    }
}

impl Claims for Folder<'_> {
    fn claim(&mut self, file: &str, id: &str) -> Claim {
        if !self.listing.listed.contains_key(file) {
            return Claim::Gone;
        }
        match self.processed.get(file) {
            // Its rows are its content.
            Some(Processed::Unchanged) => Claim::Defines,
            Some(Processed::Applied(pending)) if pending.contains(id) => Claim::Drops,
            Some(Processed::Applied(_)) => Claim::Defines,
            Some(Processed::Refused(None)) => Claim::Refused,
            Some(Processed::Refused(Some(ids))) if ids.contains(id) => Claim::Defines,
            Some(Processed::Refused(Some(_))) => Claim::Drops,
            None => match self.ahead(file) {
                Err(()) => Claim::Defines,
                Ok(None) => Claim::Refused,
                Ok(Some(ids)) if ids.contains(id) => Claim::Defines,
                Ok(Some(_)) => Claim::Drops,
            },
        }
    }

    fn claimed_elsewhere(&mut self, file: &str, id: &str) -> bool {
        // A valid file processed before would have taken the id over already (or been refused
        // for it), unless the store refused it for another reason: those keep their ids.
        let refused_valid = self.processed.iter().any(|(name, p)| {
            name != file && matches!(p, Processed::Refused(Some(ids)) if ids.contains(id))
        });
        if refused_valid {
            return true;
        }
        // Unchanged files define only ids whose rows name them. Files not processed yet: all of
        // them are looked at, once.
        if self.index.is_none() {
            let names: Vec<String> = self
                .listing
                .listed
                .keys()
                .filter(|name| !self.processed.contains_key(*name))
                .cloned()
                .collect();
            let mut index: HashMap<String, Vec<String>> = HashMap::new();
            for name in names {
                if let Ok(Some(ids)) = self.ahead(&name) {
                    for id in ids.clone() {
                        index.entry(id).or_default().push(name.clone());
                    }
                }
            }
            self.index = Some(index);
        }
        self.index
            .as_ref()
            .and_then(|index| index.get(id))
            .is_some_and(|names| {
                names
                    .iter()
                    .any(|name| name != file && !self.processed.contains_key(name))
            })
    }
}

impl Store {
    /// Brings the subscriptions in line with the schedules folder `dir`, one file at a time:
    /// what the daemon does at start and on reload. Like [`Store::sync_schedules`] (each file
    /// applied or refused whole, in its own transaction), but only one file's subscriptions are
    /// in memory at once, and a file whose content is the version in force is neither parsed
    /// nor touched (nor read, while its metadata is unchanged; see [`FileDigest`]).
    ///
    /// Across files, the version in force wins: a file that takes an id or a bill number that
    /// another file in force still defines is refused (`schedule::load_dir`, which sees only
    /// the folder, refuses the later file by name instead). Among files changed in the same
    /// sync, the earlier by name wins.
    pub fn sync_dir(
        &mut self,
        dir: &std::path::Path,
        now: DateTime<Utc>,
    ) -> Result<SyncSummary, SyncDirError> {
        self.require_write("schedule sync")?;
        sync_dir(self, dir, now)
    }
}

/// [`Store::sync_dir`] on any backend.
pub(super) fn sync_dir<S: SyncStore>(
    store: &mut S,
    dir: &std::path::Path,
    now: DateTime<Utc>,
) -> Result<SyncSummary, SyncDirError> {
    let (canonical_dir, paths) =
        schedule::list_dir(dir).map_err(|e| SyncDirError::Dir(e.to_string()))?;
    let mut listing = Listing {
        canonical_dir,
        listed: HashMap::new(),
        stored: store.file_records()?,
    };
    let mut order: Vec<(Option<String>, std::path::PathBuf)> = Vec::new();
    for path in paths {
        match path.file_name().and_then(|n| n.to_str()) {
            Some(name) if !listing.listed.contains_key(name) => {
                listing.listed.insert(name.to_string(), path.clone());
                order.push((Some(name.to_string()), path));
            }
            _ => order.push((None, path)),
        }
    }
    let listing = &listing;
    let mut folder = Folder {
        listing,
        processed: HashMap::new(),
        ahead: HashMap::new(),
        ahead_unchanged: HashSet::new(),
        index: None,
    };
    let reads: Vec<String> = order.iter().filter_map(|(name, _)| name.clone()).collect();

    // Files are read and parsed one ahead on a thread of their own, in the order they are
    // applied, while this thread applies the previous one (the channel holds one file: at
    // most two files' subscriptions are in memory besides the one being applied).
    std::thread::scope(|scope| {
        let (sender, prefetched) = std::sync::mpsc::sync_channel::<(usize, Examined)>(1);
        // Without the thread (it could not be started), each file is read here.
        let _ = std::thread::Builder::new()
            .name("schedule-read".to_string())
            .spawn_scoped(scope, move || {
                for (index, name) in reads.iter().enumerate() {
                    // Files unchanged by their metadata are left to the sync (no hand-over).
                    if let Err(looked) = listing.look(name)
                        && sender.send((index, listing.read(looked))).is_err()
                    {
                        break;
                    }
                }
            });
        let mut prefetched = Prefetched {
            receiver: prefetched,
            next: None,
        };
        sync_listed(store, order, &mut folder, &mut prefetched, now)
    })
}

/// [`sync_dir`] once the folder is listed: each file in `order` (its reading taken
/// from `prefetched` if it was read ahead), then the files that are gone.
fn sync_listed<S: SyncStore>(
    store: &mut S,
    order: Vec<(Option<String>, std::path::PathBuf)>,
    folder: &mut Folder<'_>,
    prefetched: &mut Prefetched,
    now: DateTime<Utc>,
) -> Result<SyncSummary, SyncDirError> {
    let mut summary = SyncSummary::default();
    let mut refreshed = Vec::new();
    // The index of the named file in `order` (as the reading thread counts).
    let mut named = 0;
    for (name, path) in order {
        let Some(name) = name else {
            summary.files.push(FileSync {
                file: path.display().to_string(),
                outcome: FileOutcome::Refused {
                    diagnostics: vec![error_at(
                        &path,
                        1,
                        "file",
                        "the file name is not UTF-8 or is listed twice; refused".to_string(),
                    )],
                },
            });
            continue;
        };
        let index = named;
        named += 1;
        let examined = if folder.ahead_unchanged.contains(&name) {
            Examined::Unchanged { refresh: None }
        } else {
            folder.ahead.remove(&name);
            match folder.listing.look(&name) {
                Ok(unchanged) => unchanged,
                Err(looked) => prefetched
                    .take(index)
                    .unwrap_or_else(|| folder.listing.read(looked)),
            }
        };
        let (outcome, processed) = match examined {
            Examined::Unchanged { refresh } => {
                refreshed.extend(refresh.map(|digest| (name.clone(), digest)));
                (FileOutcome::Unchanged, Processed::Unchanged)
            }
            Examined::Parsed { report, .. } if report.has_errors() => {
                let errors = refuse_file(store, &name, &report, now)?;
                (
                    FileOutcome::Refused {
                        diagnostics: errors,
                    },
                    Processed::Refused(None),
                )
            }
            Examined::Parsed { report, digest } => {
                summary.warnings.extend(
                    report
                        .diagnostics
                        .iter()
                        .filter(|d| d.severity == Severity::Warning)
                        .cloned(),
                );
                let (outcome, pending) =
                    sync_file(store, &name, &report, digest, folder, true, now)?;
                let processed = match &outcome {
                    FileOutcome::Refused { .. } => Processed::Refused(Some(
                        report.subscriptions.iter().map(|s| s.id.clone()).collect(),
                    )),
                    _ => Processed::Applied(pending),
                };
                (outcome, processed)
            }
        };
        folder.processed.insert(name.clone(), processed);
        summary.files.push(FileSync {
            file: name,
            outcome,
        });
    }
    if !refreshed.is_empty() {
        refresh_digests(store, &refreshed, now)?;
    }

    let listed: Vec<&str> = folder.listing.listed.keys().map(String::as_str).collect();
    returned_files(store, &listed, now)?;
    for name in store.known_files()? {
        if !folder.listing.listed.contains_key(&name) {
            let outcome = sync_gone(store, &name, folder, now)?;
            summary.files.push(FileSync {
                file: name,
                outcome,
            });
        }
    }
    Ok(summary)
}

/// Records newly trustworthy metadata of unchanged files (same content, nothing else).
fn refresh_digests<S: SyncStore>(
    store: &mut S,
    digests: &[(String, String)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut tx = store.begin_sync(now, "recording schedule file digests")?;
    for (name, digest) in digests {
        tx.refresh_digest(name, digest)?;
    }
    tx.commit()
}

/// Files read ahead by the folder sync's reading thread: (index among the named files of the
/// listing, what reading it found), in order.
struct Prefetched {
    receiver: std::sync::mpsc::Receiver<(usize, Examined)>,
    /// Received, for a file after the one asked for last.
    next: Option<(usize, Examined)>,
}

impl Prefetched {
    /// File `index` as read ahead, if it was (the thread reads only the files whose metadata
    /// does not show them unchanged, as it saw them).
    fn take(&mut self, index: usize) -> Option<Examined> {
        loop {
            if self.next.is_none() {
                self.next = Some(self.receiver.recv().ok()?);
            }
            match &self.next {
                Some((read, _)) if *read < index => self.next = None,
                Some((read, _)) if *read == index => return self.next.take().map(|(_, e)| e),
                _ => return None,
            }
        }
    }
}

/// Why a folder sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncDirError {
    /// The folder itself could not be read; nothing was changed.
    #[error("{0}")]
    Dir(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(customer: Option<&str>, bill: &str, full: bool) -> Def {
        Def {
            id: "sub-1_x".to_string(),
            customer: customer.map(str::to_string),
            bill_number: bill.to_string(),
            currency: "RUB".to_string(),
            amount_cents: 49_900,
            cadence: "1 month".to_string(),
            start_date: "2026-12-01".to_string(),
            state: "active".to_string(),
            catch_up: full.then(|| "latest".to_string()),
            min_cents: full.then_some(100),
            max_cents: full.then_some(0),
            period_days: full.then_some(28),
            max_date: full.then(|| "2027-12-01".to_string()),
        }
    }

    fn sub(n: usize, amount: &str) -> String {
        format!(
            "[[subscription]]\nid = \"s{n:03}\"\nbill_number = \"5899110210{n:06}\"\n\
             customer = \"c\\\"{n}\"\ncurrency = \"RUB\"\namount = \"{amount}\"\n\
             every = \"1 month\"\nstart = 2026-12-01\n\n"
        )
    }

    /// Additions are inserted in batches (64, 8, then one by one) between the other steps: every
    /// row and every event is what one-by-one inserts wrote, events in the order of the file.
    #[test]
    fn batched_additions_write_what_single_ones_did() {
        use chrono::TimeZone;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_or_create(&dir.path().join("recurrentd.db")).unwrap();
        let path = Path::new("schedules").join("a.toml");
        let report = |text: &str| DirReport {
            files: vec![schedule::parse_text(&path, text)],
        };
        let first: String = (0..10).map(|n| sub(n, "100.00")).collect();
        let t1 = Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap();
        store.sync_schedules(&report(&first), t1).unwrap();
        // s000 and s005 change, s003 is dropped (its removal comes after the additions); 73 new
        // ones: 64 + 8 + 1.
        let second: String = (0..83)
            .filter(|&n| n != 3)
            .map(|n| sub(n, if n == 0 || n == 5 { "200.00" } else { "100.00" }))
            .collect();
        let second = report(&second);
        let t2 = Utc.with_ymd_and_hms(2026, 11, 2, 12, 0, 0).unwrap();
        let summary = store.sync_schedules(&second, t2).unwrap();
        let Some(FileOutcome::Applied(changes)) = summary.outcome("a.toml") else {
            panic!("{summary:?}");
        };
        let new: Vec<String> = (10..83).map(|n| format!("s{n:03}")).collect();
        assert_eq!(changes.added, new);
        assert_eq!(changes.updated, ["s000", "s005"]);
        assert_eq!(changes.removed, ["s003"]);
        let events: Vec<_> = store
            .ledger(None)
            .unwrap()
            .into_iter()
            .filter(|e| e.at == t2)
            .collect();
        let expected: Vec<(Option<String>, &str)> = ["s000", "s005"]
            .into_iter()
            .map(|id| (Some(id.to_string()), kind::SUBSCRIPTION_UPDATED))
            .chain(
                new.iter()
                    .map(|id| (Some(id.clone()), kind::SUBSCRIPTION_ADDED)),
            )
            .chain([(Some("s003".to_string()), kind::SUBSCRIPTION_REMOVED)])
            .collect();
        let got: Vec<(Option<String>, &str)> = events
            .iter()
            .map(|e| (e.subscription_id.clone(), e.kind.as_str()))
            .collect();
        assert_eq!(got, expected);
        for (event, parsed) in events[2..].iter().zip(&second.files[0].subscriptions[9..]) {
            let def = Def::from_subscription(parsed);
            let value =
                json!({ "file": "a.toml", "line": parsed.origin.line, "subscription": def.json() });
            assert_eq!(event.detail, value);
            let stored = store.subscription(&parsed.id).unwrap().unwrap();
            assert_eq!(
                (
                    stored.line,
                    &stored.file,
                    &stored.terms,
                    &stored.customer,
                    stored.created_at
                ),
                (
                    parsed.origin.line,
                    &"a.toml".to_string(),
                    &parsed.terms,
                    &parsed.customer,
                    t2
                )
            );
        }
    }

    /// The hand-written `subscription_added` detail is the text serde_json writes for the same
    /// value (so it also parses to the same value), odd characters included.
    #[test]
    fn added_detail_is_what_serde_json_writes() {
        let odd = "q\"uo\\te/\u{1}\u{8}\u{9}\u{a}\u{c}\u{d}\u{1f}\u{7f}é€😀\u{2028}";
        let files = ["f.toml", "odd \"name\"\\\n.toml", odd];
        let defs = [
            def(None, "5899110210668265", false),
            def(Some("cust-42"), "5899110210668265.1", true),
            def(Some(odd), odd, true),
        ];
        for file in files {
            for def in &defs {
                for line in [1, 12_345_678] {
                    let text = def.added_detail(file, line);
                    let value = json!({ "file": file, "line": line, "subscription": def.json() });
                    assert_eq!(text, value.to_string());
                    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
                }
            }
        }
    }
}
