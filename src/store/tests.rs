use super::*;
use crate::money::Currency;
use crate::schedule::{DirReport, FileReport, parse_text};
use crate::store::test_support::enrolment;
use chrono::TimeZone;

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("recurrentd.db")
}

fn daemon(dir: &tempfile::TempDir) -> Store {
    Store::open_or_create(&db(dir)).unwrap()
}

fn at(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap()
}

/// One subscription in schedule-file syntax; `extra` lines go in its table.
fn sub(id: &str, bill: &str, amount: &str, extra: &str) -> String {
    format!(
        "[[subscription]]\nid = \"{id}\"\nbill_number = \"589911021{bill}\"\ncurrency = \"RUB\"\n\
         amount = \"{amount}\"\nevery = \"1 month\"\nstart = 2026-12-01\n{extra}\n\
         [subscription.limits]\nmin_amount = \"100.00\"\nmax_amount = \"1000.00\"\n\
         period_days = 28\nmax_date = 2027-12-01\n\n"
    )
}

fn file(name: &str, text: &str) -> FileReport {
    parse_text(&Path::new("schedules").join(name), text)
}

fn report(files: Vec<FileReport>) -> DirReport {
    DirReport { files }
}

fn active(store: &Store) -> Vec<(String, String)> {
    store
        .subscriptions()
        .unwrap()
        .into_iter()
        .filter(|s| s.is_active())
        .map(|s| (s.id, s.file))
        .collect()
}

fn applied(summary: &SyncSummary, name: &str) -> Changes {
    match summary.outcome(name) {
        Some(FileOutcome::Applied(changes)) => changes.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

fn refused(summary: &SyncSummary, name: &str) -> Vec<String> {
    match summary.outcome(name) {
        Some(FileOutcome::Refused { diagnostics }) => {
            diagnostics.iter().map(|d| d.to_string()).collect()
        }
        other => panic!("{name}: {other:?}"),
    }
}

fn add_charge(store: &Store, id: &str, period: i64) -> rusqlite::Result<usize> {
    store.conn.execute(
        "INSERT INTO charges (subscription_id, period, due_date, amount_cents, currency, state, \
         created_at) VALUES (?1, ?2, '2026-12-01', 49900, 'RUB', 'paid', ?3)",
        params![id, period, timestamp(at(1))],
    )
}

fn pragma(store: &Store, name: &str) -> String {
    store
        .conn
        .query_row(&format!("PRAGMA {name}"), [], |row| {
            let value: rusqlite::types::Value = row.get(0)?;
            Ok(format!("{value:?}"))
        })
        .unwrap()
}

// ---- open, pragmas, lock, migrations ----

#[test]
fn store_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Store>();
}

#[test]
fn commits_counts_write_transactions_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let opened = store.commits();
    assert!(opened >= 1, "migrations and meta are commits");
    store.subscriptions().unwrap();
    assert_eq!(store.commits(), opened, "a read is not a commit");
    let text = sub("a", "0001", "499.00", "");
    store
        .sync_schedules(&report(vec![file("a.toml", &text)]), at(1))
        .unwrap();
    assert_eq!(store.commits(), opened + 1, "one file, one transaction");
}

#[test]
fn pragmas_read_back_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let first = daemon(&dir);
    let write = Store::open(&db(&dir), Access::Write).unwrap();
    let read = Store::open(&db(&dir), Access::ReadOnly).unwrap();
    for store in [&first, &write, &read] {
        assert_eq!(pragma(store, "journal_mode"), "Text(\"wal\")");
        assert_eq!(pragma(store, "synchronous"), "Integer(2)");
        assert_eq!(pragma(store, "foreign_keys"), "Integer(1)");
        assert_eq!(pragma(store, "busy_timeout"), "Integer(5000)");
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    }
}

#[test]
fn a_read_only_open_takes_a_rollback_journal_copy_without_writing() {
    // What `backup` writes (VACUUM INTO): a database in rollback-journal mode. A read-only open
    // reads it as it is, and makes no file beside it; a writer switches it to WAL.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    {
        let store = Store::open_or_create(&db(&dir)).unwrap();
        store.backup_to(&copy).unwrap();
    }
    let store = Store::open(&copy, Access::ReadOnly).unwrap();
    assert_eq!(pragma(&store, "journal_mode"), "Text(\"delete\")");
    assert!(store.subscriptions().unwrap().is_empty());
    drop(store);
    for suffix in ["-wal", "-shm", ".lock"] {
        let mut beside = copy.as_os_str().to_owned();
        beside.push(suffix);
        assert!(!std::path::Path::new(&beside).exists(), "{suffix}");
    }
    let store = Store::open(&copy, Access::Write).unwrap();
    assert_eq!(pragma(&store, "journal_mode"), "Text(\"wal\")");
}

#[test]
fn a_second_daemon_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let first = daemon(&dir);
    let error = Store::open(&db(&dir), Access::Daemon).unwrap_err();
    assert!(matches!(error, StoreError::Locked { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("recurrentd.db.lock") && message.contains("another recurrentd"),
        "{message}"
    );
    // Operator commands still work beside the daemon.
    Store::open(&db(&dir), Access::Write).unwrap();
    Store::open(&db(&dir), Access::ReadOnly).unwrap();
    drop(first);
    // The OS released the lock with the file; the lock file left behind means nothing.
    assert!(dir.path().join("recurrentd.db.lock").exists());
    let second = daemon(&dir);
    drop(second);
}

/// Another process (util-linux `flock`, the same flock(2) lock) holds the lock and is then killed
/// with SIGKILL (`--no-fork`: the killed process is the one holding it): the OS releases the lock
/// and the next daemon starts.
#[test]
fn a_killed_holder_leaves_no_stale_lock() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("recurrentd.db.lock");
    let child = std::process::Command::new("flock")
        .args(["--exclusive", "--no-fork"])
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: the flock command is not installed");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open_or_create(&db(&dir)) {
            Err(StoreError::Locked { .. }) => break,
            Ok(store) => drop(store),
            Err(e) => panic!("{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "flock never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    daemon(&dir);
}

#[test]
fn a_left_over_lock_file_is_not_a_lock() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("recurrentd.db.lock"), "").unwrap();
    daemon(&dir);
}

#[test]
fn the_order_prefix_is_made_once() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = daemon(&dir).order_prefix().unwrap();
    assert_eq!(prefix.len(), ORDER_PREFIX_LEN);
    assert!(prefix.bytes().all(|b| CROCKFORD.contains(&b)), "{prefix}");
    let store = daemon(&dir);
    assert_eq!(store.order_prefix().unwrap(), prefix);
    store.created_at().unwrap();
    let other = tempfile::tempdir().unwrap();
    // 40 random bits: two databases practically never share a prefix.
    assert_ne!(daemon(&other).order_prefix().unwrap(), prefix);
}

#[test]
fn crockford_encoding() {
    assert_eq!(crockford(0, 8), "00000000");
    assert_eq!(crockford((1 << 40) - 1, 8), "ZZZZZZZZ");
    assert_eq!(crockford(0b00001_10010_11111, 3), "1JZ");
}

#[test]
fn read_only_and_write_need_an_existing_database() {
    let dir = tempfile::tempdir().unwrap();
    for access in [Access::ReadOnly, Access::Write] {
        let message = Store::open(&db(&dir), access).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "no database at {}; has the daemon ever run?",
                db(&dir).display()
            )
        );
    }
    assert!(!db(&dir).exists(), "opening must not create it");
}

#[test]
fn read_only_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    drop(daemon(&dir));
    let mut store = Store::open(&db(&dir), Access::ReadOnly).unwrap();
    let error = store
        .sync_schedules(&report(vec![]), at(1))
        .unwrap_err()
        .to_string();
    assert!(error.contains("read-only"), "{error}");
    let error = store
        .conn
        .execute("INSERT INTO meta (key, value) VALUES ('x', 'y')", [])
        .unwrap_err()
        .to_string();
    assert!(error.contains("readonly"), "{error}");
}

#[test]
fn the_adhoc_migration_keeps_every_row_and_reference() {
    // A version-2 database with a period, its attempt and their ledger events.
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(db(&dir)).unwrap();
        for sql in &schema::MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 2;
             INSERT INTO subscriptions (id, file, line, bill_number, currency, amount_cents,
                 cadence, start_date, state, created_at, updated_at)
                 VALUES ('s1', 'a.toml', 1, '42', 'RUB', 10000, '1 month', '2027-01-01',
                 'active', '2027-01-01T07:00:00.000000Z', '2027-01-01T07:00:00.000000Z');
             INSERT INTO charges (id, subscription_id, period, due_date, amount_cents, currency,
                 bill_number, state, created_at) VALUES (7, 's1', 0, '2027-01-01', 10000, 'RUB',
                 '42', 'paid', '2027-01-01T07:00:00.000000Z');
             INSERT INTO attempts (charge_id, attempt, order_number, state, created_at, wall_at,
                 updated_at) VALUES (7, 1, 'p-s1-0-1', 'approved', '2027-01-01T07:00:00.000000Z', '2027-01-01T07:00:00.000000Z', '2027-01-01T07:00:00.000000Z');
             INSERT INTO ledger (at, subscription_id, charge_id, kind, detail)
                 VALUES ('2027-01-01T07:00:00.000000Z', 's1', 7, 'charge_approved', '{}');",
        )
        .unwrap();
    }
    let store = daemon(&dir);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(
        pragma(&store, "foreign_keys"),
        "Integer(1)",
        "foreign keys back on"
    );
    let jobs = store.attempts().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].charge_id, 7,
        "row ids kept: attempts still point at their period"
    );
    assert_eq!(jobs[0].purpose, Purpose::Period(0));
    let dangling: i64 = store
        .conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(dangling, 0);
    // The new shape: a period or a reference, never both or neither, each unique.
    let insert = |period: &str, reference: &str| {
        store.conn.execute(
            &format!(
                "INSERT INTO charges (subscription_id, period, reference, due_date, \
                 amount_cents, currency, state, created_at) \
                 VALUES ('s1', {period}, {reference}, '2027-01-02', 100, 'RUB', 'open', '2027-01-01T07:00:00.000000Z')"
            ),
            [],
        )
    };
    assert!(insert("NULL", "'T-1'").is_ok());
    assert!(insert("NULL", "'T-1'").is_err(), "a reference is unique");
    assert!(insert("NULL", "NULL").is_err(), "neither");
    assert!(insert("1", "'T-2'").is_err(), "both");
    assert!(insert("0", "NULL").is_err(), "a period is unique");
    assert!(insert("1", "NULL").is_ok());
}

#[test]
fn migrates_from_version_zero() {
    let dir = tempfile::tempdir().unwrap();
    // An empty SQLite file: version 0.
    Connection::open(db(&dir))
        .unwrap()
        .execute_batch("PRAGMA user_version = 0;")
        .unwrap();
    let store = daemon(&dir);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let tables: Vec<String> = store
        .conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for table in [
        "charges",
        "ledger",
        "meta",
        "schedule_files",
        "subscriptions",
    ] {
        assert!(tables.iter().any(|t| t == table), "{table}: {tables:?}");
    }
    // Opening again applies nothing twice.
    drop(store);
    assert_eq!(daemon(&dir).schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn a_newer_database_is_refused_and_an_older_one_needs_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    drop(daemon(&dir));
    Connection::open(db(&dir))
        .unwrap()
        .execute_batch("PRAGMA user_version = 99;")
        .unwrap();
    for access in [Access::Daemon, Access::Write, Access::ReadOnly] {
        let message = Store::open(&db(&dir), access).unwrap_err().to_string();
        assert!(
            message.contains("schema version 99") && message.contains("newer"),
            "{message}"
        );
    }

    let fresh = tempfile::tempdir().unwrap();
    Connection::open(db(&fresh))
        .unwrap()
        .execute_batch("PRAGMA journal_mode = WAL;")
        .unwrap();
    let message = Store::open(&db(&fresh), Access::Write)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("schema version 0") && message.contains("start the daemon"),
        "{message}"
    );
}

// ---- schema guarantees ----

#[test]
fn the_ledger_is_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    store
        .sync_schedules(
            &report(vec![file("a.toml", &sub("s1", "1001", "499.00", ""))]),
            at(1),
        )
        .unwrap();
    let before = store.ledger(None).unwrap();
    assert!(!before.is_empty());
    for sql in [
        "UPDATE ledger SET kind = 'forged'",
        "DELETE FROM ledger",
        "DELETE FROM ledger WHERE seq = 1",
    ] {
        let error = store.conn.execute(sql, []).unwrap_err().to_string();
        assert!(error.contains("append-only"), "{sql}: {error}");
    }
    assert_eq!(store.ledger(None).unwrap(), before);
}

#[test]
fn one_charge_per_subscription_and_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    store
        .sync_schedules(
            &report(vec![file("a.toml", &sub("s1", "1001", "499.00", ""))]),
            at(1),
        )
        .unwrap();
    add_charge(&store, "s1", 0).unwrap();
    add_charge(&store, "s1", 1).unwrap();
    let error = add_charge(&store, "s1", 0).unwrap_err().to_string();
    assert!(error.contains("UNIQUE"), "{error}");
    // Foreign keys are on: no charge for an unknown subscription.
    let error = add_charge(&store, "nobody", 0).unwrap_err().to_string();
    assert!(error.contains("FOREIGN KEY"), "{error}");
}

#[test]
fn money_columns_refuse_floats() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    store
        .sync_schedules(
            &report(vec![file("a.toml", &sub("s1", "1001", "499.00", ""))]),
            at(1),
        )
        .unwrap();
    let error = store
        .conn
        .execute(
            "INSERT INTO charges (subscription_id, period, due_date, amount_cents, currency, \
             state, created_at) VALUES ('s1', 5, '2026-12-01', 499.5, 'RUB', 'open', 'now')",
            [],
        )
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot store REAL"), "{error}");
}

// ---- schedule sync ----

#[test]
fn sync_adds_updates_and_removes_with_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let text = sub("s1", "1001", "499.00", "") + &sub("s2", "1002", "199.00", "");
    let summary = store
        .sync_schedules(&report(vec![file("a.toml", &text)]), at(1))
        .unwrap();
    assert_eq!(applied(&summary, "a.toml").added, ["s1", "s2"]);
    let s1 = store.subscription("s1").unwrap().unwrap();
    assert_eq!(s1.file, "a.toml");
    assert_eq!(s1.line, 1);
    assert_eq!(s1.terms.amount.to_string(), "499.00");
    assert_eq!(s1.terms.limits.max_amount.map(Money::cents), Some(100_000));
    assert_eq!(s1.created_at, at(1));

    // s1's amount and state change, s2 goes, s3 comes.
    let text = sub("s1", "1001", "599.00", "state = \"paused\"") + &sub("s3", "1003", "300", "");
    let summary = store
        .sync_schedules(&report(vec![file("a.toml", &text)]), at(2))
        .unwrap();
    let changes = applied(&summary, "a.toml");
    assert_eq!(changes.added, ["s3"]);
    assert_eq!(changes.updated, ["s1"]);
    assert_eq!(changes.removed, ["s2"]);
    let s1 = store.subscription("s1").unwrap().unwrap();
    assert_eq!(s1.terms.amount.to_string(), "599.00");
    assert_eq!(s1.terms.state, SubscriptionState::Paused);
    assert_eq!((s1.created_at, s1.updated_at), (at(1), at(2)));
    let s2 = store.subscription("s2").unwrap().unwrap();
    assert_eq!(s2.removed_at, Some(at(2)), "history kept, not deleted");
    assert_eq!(
        active(&store),
        [
            ("s1".into(), "a.toml".into()),
            ("s3".into(), "a.toml".into())
        ]
    );

    // The ledger explains it.
    let kinds: Vec<_> = store
        .ledger(Some("s1"))
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [kind::SUBSCRIPTION_ADDED, kind::SUBSCRIPTION_UPDATED]
    );
    let update = &store.ledger(Some("s1")).unwrap()[1];
    assert_eq!(update.detail["changes"]["amount"]["from"], "499.00");
    assert_eq!(update.detail["changes"]["amount"]["to"], "599.00");
    assert_eq!(update.detail["changes"]["state"]["to"], "paused");
    let removal = store.ledger(Some("s2")).unwrap();
    assert_eq!(removal[1].kind, kind::SUBSCRIPTION_REMOVED);
    assert_eq!(removal[1].at, at(2));
}

#[test]
fn an_unchanged_file_is_skipped_and_a_moved_line_is_not_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let text = sub("s1", "1001", "499.00", "");
    store
        .sync_schedules(&report(vec![file("a.toml", &text)]), at(1))
        .unwrap();
    let events = store.ledger(None).unwrap().len();
    let summary = store
        .sync_schedules(&report(vec![file("a.toml", &text)]), at(2))
        .unwrap();
    assert_eq!(summary.outcome("a.toml"), Some(&FileOutcome::Unchanged));
    // Comments change the bytes, not the content: still unchanged.
    let summary = store
        .sync_schedules(
            &report(vec![file("a.toml", &format!("{text}# a comment\n"))]),
            at(3),
        )
        .unwrap();
    assert_eq!(summary.outcome("a.toml"), Some(&FileOutcome::Unchanged));
    // A blank line above moves the subscription: the line is updated, no event.
    let summary = store
        .sync_schedules(&report(vec![file("a.toml", &format!("\n\n{text}"))]), at(4))
        .unwrap();
    assert_eq!(applied(&summary, "a.toml"), Changes::default());
    assert_eq!(store.subscription("s1").unwrap().unwrap().line, 3);
    assert_eq!(store.ledger(None).unwrap().len(), events);
    let files = store.schedule_files().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].accepted_at, Some(at(4)));
}

#[test]
fn a_broken_file_keeps_its_last_good_version_while_others_apply() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let a = sub("s1", "1001", "499.00", "");
    let b = sub("s2", "1002", "199.00", "");
    store
        .sync_schedules(&report(vec![file("a.toml", &a), file("b.toml", &b)]), at(1))
        .unwrap();

    // a.toml gets a bad amount (and would drop nothing); b.toml changes validly.
    let broken = a.replace("499.00", "4.999") + &sub("s9", "1009", "150.00", "");
    let b2 = b.replace("199.00", "299.00");
    let summary = store
        .sync_schedules(
            &report(vec![file("a.toml", &broken), file("b.toml", &b2)]),
            at(2),
        )
        .unwrap();
    let errors = refused(&summary, "a.toml");
    assert!(
        errors[0].starts_with("schedules/a.toml:5:10: amount:"),
        "{errors:?}"
    );
    assert_eq!(applied(&summary, "b.toml").updated, ["s2"]);
    assert_eq!(summary.diagnostics().count(), errors.len());
    // a.toml's last accepted version is still in force, untouched.
    let s1 = store.subscription("s1").unwrap().unwrap();
    assert_eq!(
        (s1.terms.amount.to_string(), s1.updated_at),
        ("499.00".into(), at(1))
    );
    assert!(store.subscription("s9").unwrap().is_none());
    let files = store.schedule_files().unwrap();
    assert!(files[0].last_error.as_deref().unwrap().contains("amount"));
    assert!(files[0].digest.is_some() && files[0].accepted_at == Some(at(1)));

    // Staying broken adds no second event; getting fixed clears the error.
    let refusals = |store: &Store| {
        store
            .ledger(None)
            .unwrap()
            .iter()
            .filter(|e| e.kind == kind::SCHEDULE_REFUSED)
            .count()
    };
    assert_eq!(refusals(&store), 1);
    store
        .sync_schedules(
            &report(vec![file("a.toml", &broken), file("b.toml", &b2)]),
            at(3),
        )
        .unwrap();
    assert_eq!(refusals(&store), 1);
    let summary = store
        .sync_schedules(
            &report(vec![file("a.toml", &a), file("b.toml", &b2)]),
            at(4),
        )
        .unwrap();
    assert_eq!(applied(&summary, "a.toml"), Changes::default());
    assert_eq!(store.schedule_files().unwrap()[0].last_error, None);
}

#[test]
fn a_broken_file_that_never_applied_contributes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let summary = store
        .sync_schedules(
            &report(vec![file("a.toml", "[[subscription]]\nid = 1\n")]),
            at(1),
        )
        .unwrap();
    assert!(!refused(&summary, "a.toml").is_empty());
    assert!(store.subscriptions().unwrap().is_empty());
    let files = store.schedule_files().unwrap();
    assert_eq!(
        (files[0].digest.as_deref(), files[0].accepted_at),
        (None, None)
    );
}

#[test]
fn a_removed_id_cannot_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let both = sub("s1", "1001", "499.00", "") + &sub("s2", "1002", "199.00", "");
    store
        .sync_schedules(&report(vec![file("a.toml", &both)]), at(1))
        .unwrap();
    let only_s1 = sub("s1", "1001", "499.00", "");
    store
        .sync_schedules(&report(vec![file("a.toml", &only_s1)]), at(2))
        .unwrap();
    // Back in the same file, and in another file: both refused.
    for files in [
        vec![file("a.toml", &both)],
        vec![
            file("a.toml", &only_s1),
            file("b.toml", &sub("s2", "1002", "199.00", "")),
        ],
    ] {
        let name = files
            .last()
            .unwrap()
            .path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let summary = store.sync_schedules(&report(files), at(3)).unwrap();
        let errors = refused(&summary, &name);
        assert!(
            errors[0].contains(": id: \"s2\" belonged to a subscription removed")
                && errors[0].contains("never reused"),
            "{errors:?}"
        );
        assert!(
            store
                .subscription("s2")
                .unwrap()
                .unwrap()
                .removed_at
                .is_some()
        );
    }
    assert_eq!(active(&store), [("s1".into(), "a.toml".into())]);
}

#[test]
fn agreed_terms_are_fixed_only_once_there_are_charges() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let original = sub("s1", "1001", "499.00", "");
    store
        .sync_schedules(&report(vec![file("a.toml", &original)]), at(1))
        .unwrap();

    // No charges yet: the limits may still change.
    let wider = original.replace("max_amount = \"1000.00\"", "max_amount = \"2000.00\"");
    let summary = store
        .sync_schedules(&report(vec![file("a.toml", &wider)]), at(2))
        .unwrap();
    assert_eq!(applied(&summary, "a.toml").updated, ["s1"]);

    add_charge(&store, "s1", 0).unwrap();
    // With charges: amount, cadence and state may change...
    let allowed = wider
        .replace("\"499.00\"", "\"599.00\"")
        .replace("\"1 month\"", "\"2 months\"")
        .replace(
            "start = 2026-12-01\n",
            "start = 2026-12-01\nstate = \"paused\"\n",
        );
    let summary = store
        .sync_schedules(
            &report(vec![file(
                "a.toml",
                &(allowed.clone() + &sub("s2", "1002", "150.00", "")),
            )]),
            at(3),
        )
        .unwrap();
    assert_eq!(applied(&summary, "a.toml").added, ["s2"]);
    assert_eq!(applied(&summary, "a.toml").updated, ["s1"]);

    // ...the agreement may not, and the whole file keeps its last good version.
    for (from, to, field) in [
        ("1001\"", "1099\"", "bill_number"),
        ("\"RUB\"", "\"USD\"", "currency"),
        ("\"100.00\"", "\"150.00\"", "limits.min_amount"),
        ("\"2000.00\"", "\"3000.00\"", "limits.max_amount"),
        ("period_days = 28", "period_days = 27", "limits.period_days"),
        (
            "max_date = 2027-12-01",
            "max_date = 2028-12-01",
            "limits.max_date",
        ),
    ] {
        let edited = allowed.replace(from, to) + &sub("s3", "1003", "150.00", "");
        assert_ne!(edited, allowed);
        let summary = store
            .sync_schedules(&report(vec![file("a.toml", &edited)]), at(4))
            .unwrap();
        let errors = refused(&summary, "a.toml");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!(
                "schedules/a.toml:1:1: {field}: subscription s1 has charges"
            )) && errors[0].contains("new agreement needs a new subscription id"),
            "{errors:?}"
        );
        // s2 (dropped by the edit) and s1 are untouched, s3 not added.
        assert_eq!(
            active(&store),
            [
                ("s1".into(), "a.toml".into()),
                ("s2".into(), "a.toml".into())
            ]
        );
        let s1 = store.subscription("s1").unwrap().unwrap();
        assert_eq!(s1.bill_number, "5899110211001");
        assert_eq!(s1.terms.limits.max_amount.map(Money::cents), Some(200_000));
    }
}

/// The limits `sub` writes, as an enrolment records them.
fn agreed_limits() -> Limits {
    Limits {
        min_amount: Some(Money::parse("100.00").unwrap()),
        max_amount: Some(Money::parse("1000.00").unwrap()),
        period_days: Some(28),
        max_date: Some(NaiveDate::from_ymd_opt(2027, 12, 1).unwrap()),
    }
}

/// Each agreed field of `sub("s1", "1001", ..)` changed: (from, to, field).
const AGREED_EDITS: [(&str, &str, &str); 6] = [
    ("1001\"", "1099\"", "bill_number"),
    ("\"RUB\"", "\"USD\"", "currency"),
    ("\"100.00\"", "\"150.00\"", "limits.min_amount"),
    ("\"1000.00\"", "\"2000.00\"", "limits.max_amount"),
    ("period_days = 28", "period_days = 27", "limits.period_days"),
    (
        "max_date = 2027-12-01",
        "max_date = 2028-12-01",
        "limits.max_date",
    ),
];

/// Issue 12, item 9: an enrolled subscription is held to the terms of its initial payment from
/// the enrolment on, before any charge: the enrolment's bill number, currency and limits, also
/// for the file's first version (written after the payment, edited before the daemon read it).
#[test]
fn an_enrolled_subscription_keeps_its_agreed_terms_before_its_first_charge() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let original = sub("s1", "1001", "499.00", "");
    let mut record = enrolment("s1", "enrol-s1", "5899110211001", "499.00", at(1));
    record.limits = agreed_limits();
    store.record_enrolment(&record).unwrap();

    // A first version that is not what the customer agreed to is refused, field by field.
    for (from, to, field) in AGREED_EDITS {
        let edited = original.replace(from, to);
        assert_ne!(edited, original);
        let summary = store
            .sync_schedules(&report(vec![file("a.toml", &edited)]), at(2))
            .unwrap();
        let errors = refused(&summary, "a.toml");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!(
                "schedules/a.toml:1:1: {field}: subscription s1 was enrolled with the terms"
            )) && errors[0].contains("order enrol-s1")
                && errors[0].contains("a new agreement needs a new subscription id"),
            "{errors:?}"
        );
        assert!(store.subscription("s1").unwrap().is_none());
    }
    let summary = store
        .sync_schedules(&report(vec![file("a.toml", &original)]), at(2))
        .unwrap();
    assert_eq!(applied(&summary, "a.toml").added, ["s1"]);

    // No charge yet: the amount and the cadence may change, the agreement may not.
    assert!(!store.has_charges("s1").unwrap());
    let allowed = original
        .replace("\"499.00\"", "\"599.00\"")
        .replace("\"1 month\"", "\"2 months\"");
    let summary = store
        .sync_schedules(&report(vec![file("a.toml", &allowed)]), at(3))
        .unwrap();
    assert_eq!(applied(&summary, "a.toml").updated, ["s1"]);
    for (from, to, field) in AGREED_EDITS {
        let edited = allowed.replace(from, to);
        let summary = store
            .sync_schedules(&report(vec![file("a.toml", &edited)]), at(4))
            .unwrap();
        let errors = refused(&summary, "a.toml");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!(
                "schedules/a.toml:1:1: {field}: subscription s1 was enrolled with the terms"
            )),
            "{errors:?}"
        );
        let s1 = store.subscription("s1").unwrap().unwrap();
        assert_eq!(s1.terms.limits, agreed_limits());
        assert_eq!(s1.bill_number, "5899110211001");
        assert_eq!(s1.currency.as_str(), "RUB");
    }
    // A subscription without an enrolment or charges may still change its limits.
    let other = sub("s2", "1002", "499.00", "");
    store
        .sync_schedules(
            &report(vec![file("a.toml", &(allowed.clone() + &other))]),
            at(5),
        )
        .unwrap();
    let wider = allowed.clone() + &other.replace("\"1000.00\"", "\"2000.00\"");
    let summary = store
        .sync_schedules(&report(vec![file("a.toml", &wider)]), at(6))
        .unwrap();
    assert_eq!(applied(&summary, "a.toml").updated, ["s2"]);
}

/// Issue 12, item 9, on a database made before the enrolments held their limits (schema version
/// 5): the migration keeps the enrolment, its limits are NULL, and the guard falls back to the
/// subscription's stored terms for them (its bill number and currency are the enrolment's).
#[test]
fn an_enrolment_recorded_before_its_limits_were_kept_holds_the_stored_terms() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(db(&dir)).unwrap();
        for sql in &schema::MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 5;
             INSERT INTO subscriptions (id, file, line, bill_number, currency, amount_cents,
                 cadence, start_date, state, min_cents, max_cents, period_days, max_date,
                 created_at, updated_at)
                 VALUES ('s1', 'a.toml', 1, '5899110211001', 'RUB', 49900, '1 month',
                 '2026-12-01', 'active', 10000, 100000, 28, '2027-12-01',
                 '2026-11-01T12:00:00.000000Z', '2026-11-01T12:00:00.000000Z');
             INSERT INTO enrolments (subscription_id, order_number, bill_number, amount_cents,
                 currency, at) VALUES ('s1', 'enrol-s1', '5899110211001', 49900, 'RUB',
                 '2026-11-01T12:00:00.000000Z');",
        )
        .unwrap();
    }
    let mut store = daemon(&dir);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let limits: (Option<i64>, Option<i64>, Option<i64>, Option<String>) = store
        .conn
        .query_row(
            "SELECT min_cents, max_cents, period_days, max_date FROM enrolments",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap();
    assert_eq!(limits, (None, None, None, None));
    let original = sub("s1", "1001", "499.00", "");
    let summary = store
        .sync_schedules(&report(vec![file("a.toml", &original)]), at(2))
        .unwrap();
    assert!(
        matches!(summary.outcome("a.toml"), Some(FileOutcome::Applied(_))),
        "{summary:?}"
    );
    for (from, to, field) in AGREED_EDITS {
        let edited = original.replace(from, to);
        let summary = store
            .sync_schedules(&report(vec![file("a.toml", &edited)]), at(3))
            .unwrap();
        let errors = refused(&summary, "a.toml");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!(
                "schedules/a.toml:1:1: {field}: subscription s1 was enrolled with the terms"
            )),
            "{errors:?}"
        );
    }
    let s1 = store.subscription("s1").unwrap().unwrap();
    assert_eq!(s1.terms.limits, agreed_limits());
}

#[test]
fn a_bill_number_with_charges_stays_with_its_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    store
        .sync_schedules(
            &report(vec![file("a.toml", &sub("s1", "1001", "499.00", ""))]),
            at(1),
        )
        .unwrap();
    add_charge(&store, "s1", 0).unwrap();
    // Renaming the id keeps the agreement but would lose its charge history: refused.
    let summary = store
        .sync_schedules(
            &report(vec![file("a.toml", &sub("s1-new", "1001", "499.00", ""))]),
            at(2),
        )
        .unwrap();
    let errors = refused(&summary, "a.toml");
    assert!(
        errors[0].contains("bill_number: 5899110211001 is the agreement of subscription s1"),
        "{errors:?}"
    );
    assert_eq!(active(&store), [("s1".into(), "a.toml".into())]);
}

#[test]
fn an_id_may_move_between_files_in_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let s1 = sub("s1", "1001", "499.00", "");
    let s2 = sub("s2", "1002", "199.00", "");
    store
        .sync_schedules(
            &report(vec![
                file("a.toml", &(s1.clone() + &s2)),
                file("z.toml", ""),
            ]),
            at(1),
        )
        .unwrap();
    add_charge(&store, "s2", 0).unwrap();
    // s2 moves to the later file z.toml (a.toml is processed first and must not remove it).
    let summary = store
        .sync_schedules(
            &report(vec![
                file("a.toml", &s1),
                file("z.toml", &s2.replace("199.00", "249.00")),
            ]),
            at(2),
        )
        .unwrap();
    assert_eq!(applied(&summary, "a.toml"), Changes::default());
    assert_eq!(applied(&summary, "z.toml").updated, ["s2"]);
    assert_eq!(
        active(&store),
        [
            ("s1".into(), "a.toml".into()),
            ("s2".into(), "z.toml".into())
        ]
    );
    let event = store.ledger(Some("s2")).unwrap().pop().unwrap();
    assert_eq!(event.detail["moved_from"], "a.toml");
    assert_eq!(event.detail["changes"]["amount"]["to"], "249.00");

    // And back to the earlier file, which is processed first this time.
    let summary = store
        .sync_schedules(
            &report(vec![
                file("a.toml", &(s1.clone() + &s2)),
                file("z.toml", ""),
            ]),
            at(3),
        )
        .unwrap();
    assert_eq!(applied(&summary, "a.toml").updated, ["s2"]);
    assert_eq!(applied(&summary, "z.toml"), Changes::default());
    assert_eq!(
        active(&store),
        [
            ("s1".into(), "a.toml".into()),
            ("s2".into(), "a.toml".into())
        ]
    );
    assert!(
        store
            .ledger(None)
            .unwrap()
            .iter()
            .all(|e| e.kind != kind::SUBSCRIPTION_REMOVED)
    );
}

#[test]
fn an_id_held_by_a_broken_file_cannot_be_taken() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let s1 = sub("s1", "1001", "499.00", "");
    store
        .sync_schedules(&report(vec![file("a.toml", &s1)]), at(1))
        .unwrap();
    let summary = store
        .sync_schedules(
            &report(vec![file("a.toml", "not toml ["), file("b.toml", &s1)]),
            at(2),
        )
        .unwrap();
    refused(&summary, "a.toml");
    let errors = refused(&summary, "b.toml");
    assert!(
        errors[0].contains("still defined by the version in force of a.toml"),
        "{errors:?}"
    );
    assert_eq!(active(&store), [("s1".into(), "a.toml".into())]);
}

#[test]
fn a_hand_over_to_a_refused_file_keeps_the_id_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let s1 = sub("s1", "1001", "499.00", "");
    let old = sub("old", "1009", "150.00", "");
    store
        .sync_schedules(
            &report(vec![file("a.toml", &s1), file("b.toml", &old)]),
            at(1),
        )
        .unwrap();
    store
        .sync_schedules(
            &report(vec![file("a.toml", &s1), file("b.toml", "")]),
            at(2),
        )
        .unwrap();
    // s1 moves from a.toml to b.toml, but b.toml also brings back the removed id "old".
    let summary = store
        .sync_schedules(
            &report(vec![
                file("a.toml", ""),
                file("b.toml", &(s1.clone() + &old)),
            ]),
            at(3),
        )
        .unwrap();
    assert_eq!(applied(&summary, "a.toml"), Changes::default());
    refused(&summary, "b.toml");
    assert_eq!(active(&store), [("s1".into(), "a.toml".into())]);
    // The operator then deletes s1 from b.toml too: a.toml is looked at again and removes it.
    let summary = store
        .sync_schedules(&report(vec![file("a.toml", ""), file("b.toml", "")]), at(4))
        .unwrap();
    assert_eq!(applied(&summary, "a.toml").removed, ["s1"]);
    assert!(active(&store).is_empty());
}

/// A file missing at one sync (an editor's rename, a deploy that empties the folder) holds its
/// subscriptions: not removed, not planned, until it returns (identical: they resume) or an
/// operator confirms the removal. It used to remove them for good, and the identical file was
/// then refused for ever ("ids are never reused").
#[test]
fn a_file_that_disappears_holds_its_subscriptions_until_it_returns_or_removal_is_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let a = file("a.toml", &sub("s1", "1001", "499.00", ""));
    let b = file("b.toml", &sub("s2", "1002", "199.00", ""));
    store
        .sync_schedules(&report(vec![a.clone(), b.clone()]), at(1))
        .unwrap();
    let summary = store
        .sync_schedules(&report(vec![a.clone()]), at(2))
        .unwrap();
    assert_eq!(summary.outcome("a.toml"), Some(&FileOutcome::Unchanged));
    match summary.outcome("b.toml") {
        Some(FileOutcome::Missing { held, new, .. }) => {
            assert_eq!(held, &["s2"]);
            assert!(new);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(active(&store).len(), 2, "nothing removed");
    assert!(
        !store.plannable(at(3)).unwrap().contains(&"s2".to_string()),
        "held: not planned"
    );
    // Still missing at the next sync: no second event.
    let summary = store
        .sync_schedules(&report(vec![a.clone()]), at(3))
        .unwrap();
    assert!(matches!(
        summary.outcome("b.toml"),
        Some(FileOutcome::Missing { new: false, .. })
    ));
    let missing_events = store
        .ledger(None)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind::SCHEDULE_FILE_MISSING)
        .count();
    assert_eq!(missing_events, 1);

    // An empty folder removes nothing either.
    store.sync_schedules(&report(vec![]), at(4)).unwrap();
    assert_eq!(active(&store).len(), 2);

    // The identical file returns: accepted, its subscription resumes.
    store
        .sync_schedules(&report(vec![a.clone(), b.clone()]), at(5))
        .unwrap();
    assert_eq!(active(&store).len(), 2);
    let plannable = store.plannable(at(6)).unwrap();
    assert!(plannable.contains(&"s1".to_string()) && plannable.contains(&"s2".to_string()));
    assert!(
        store
            .ledger(None)
            .unwrap()
            .iter()
            .any(|e| e.kind == kind::SCHEDULE_FILE_RETURNED && e.detail["file"] == "b.toml")
    );

    // Missing again, and the operator confirms: removed for good, with who and why.
    store
        .sync_schedules(&report(vec![a.clone()]), at(7))
        .unwrap();
    assert_eq!(
        store
            .remove_missing_file("a.toml", "ops", "present", at(8))
            .unwrap(),
        RemovedFile::NotMissing
    );
    assert_eq!(
        store
            .remove_missing_file("nope.toml", "ops", "typo", at(8))
            .unwrap(),
        RemovedFile::Unknown
    );
    assert_eq!(
        store
            .remove_missing_file("b.toml", "ops", "customer left, ticket 12", at(8))
            .unwrap(),
        RemovedFile::Removed(vec!["s2".to_string()])
    );
    assert_eq!(active(&store), [("s1".into(), "a.toml".into())]);
    let event = store.ledger(Some("s2")).unwrap().pop().unwrap();
    assert!(
        event.detail["reason"]
            .as_str()
            .unwrap()
            .contains("removal confirmed by ops: customer left"),
        "{event:?}"
    );
    let files: Vec<_> = store
        .schedule_files()
        .unwrap()
        .into_iter()
        .map(|f| f.file)
        .collect();
    assert_eq!(files, ["a.toml"]);
    // A file moved to a new name keeps its ids: a move, not a hold or a removal.
    let summary = store
        .sync_schedules(
            &report(vec![file("renamed.toml", &sub("s1", "1001", "499.00", ""))]),
            at(9),
        )
        .unwrap();
    assert_eq!(applied(&summary, "renamed.toml").updated, ["s1"]);
    assert_eq!(
        summary.outcome("a.toml"),
        Some(&FileOutcome::Gone(Changes::default()))
    );
    assert_eq!(active(&store), [("s1".into(), "renamed.toml".into())]);
}

#[test]
fn sync_reads_back_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let text = sub(
        "s1",
        "1001",
        "499.00",
        "customer = \"c-1\"\ncatch_up = \"none\"",
    );
    let report = report(vec![file("a.toml", &text)]);
    store.sync_schedules(&report, at(1)).unwrap();
    let parsed = &report.files[0].subscriptions[0];
    let stored = store.subscription("s1").unwrap().unwrap();
    assert_eq!(stored.terms, parsed.terms);
    assert_eq!(stored.customer, parsed.customer);
    assert_eq!(stored.currency, parsed.currency);
    assert_eq!(stored.bill_number, parsed.bill_number);
    // The read-only view sees it too.
    drop(store);
    let read = Store::open(&db(&dir), Access::ReadOnly).unwrap();
    assert_eq!(read.subscription("s1").unwrap().unwrap(), stored);
}

/// An enrolment's initial payment counts as a charge for the period limit of its subscription
/// (and of no other), and its id is known to the database from then on.
#[test]
fn an_enrolment_counts_as_a_charge_for_its_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    store
        .record_enrolment(&enrolment(
            "new-1",
            "enrol-new-1",
            "5800000000000001",
            "499.00",
            at(3),
        ))
        .unwrap();
    assert_eq!(store.charged_instants("new-1", None).unwrap(), vec![at(3)]);
    assert!(store.charged_instants("other", None).unwrap().is_empty());
    assert!(store.enrolment_exists("new-1").unwrap());
    assert!(!store.enrolment_exists("other").unwrap());
    // The same id cannot be enrolled twice.
    assert!(
        store
            .record_enrolment(&enrolment(
                "new-1",
                "enrol-new-1-b",
                "5800000000000002",
                "499.00",
                at(4),
            ))
            .is_err()
    );
    let ledger = store.ledger(None).unwrap();
    assert!(
        ledger
            .iter()
            .any(|e| e.kind == "enrolled" && e.detail["subscription"] == "new-1")
    );
}

// ---- folder sync (one file at a time) and the due sweep's index ----

fn schedules_dir(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("schedules");
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// Waits until files written before are old enough for their metadata to be trusted (see
/// `sync::FileDigest`: a change within two seconds of a read is not).
fn age() {
    std::thread::sleep(std::time::Duration::from_millis(2100));
}

#[test]
fn folder_sync_skips_unchanged_files_and_applies_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let folder = schedules_dir(&dir);
    let mut store = daemon(&dir);
    std::fs::write(folder.join("a.toml"), sub("s1", "1001", "499.00", "")).unwrap();
    std::fs::write(folder.join("b.toml"), sub("s2", "1002", "499.00", "")).unwrap();
    let summary = store.sync_dir(&folder, at(1)).unwrap();
    assert_eq!(applied(&summary, "a.toml").added, vec!["s1"]);
    assert_eq!(applied(&summary, "b.toml").added, vec!["s2"]);
    let events = store.ledger(None).unwrap().len();

    // Nothing changed: both skipped (by content: the files are brand new, so their metadata is
    // not trusted yet), then by metadata once it is old enough.
    let summary = store.sync_dir(&folder, at(2)).unwrap();
    assert_eq!(summary.outcome("a.toml"), Some(&FileOutcome::Unchanged));
    assert_eq!(summary.outcome("b.toml"), Some(&FileOutcome::Unchanged));
    age();
    let summary = store.sync_dir(&folder, at(3)).unwrap();
    assert_eq!(summary.outcome("a.toml"), Some(&FileOutcome::Unchanged));
    let digest = store.schedule_files().unwrap()[0].digest.clone().unwrap();
    assert!(digest.contains(';'), "metadata recorded: {digest}");
    let summary = store.sync_dir(&folder, at(4)).unwrap();
    assert_eq!(summary.outcome("a.toml"), Some(&FileOutcome::Unchanged));
    assert_eq!(store.ledger(None).unwrap().len(), events);

    // Rewritten with the same bytes: read again (new metadata), still unchanged.
    std::fs::write(folder.join("a.toml"), sub("s1", "1001", "499.00", "")).unwrap();
    let summary = store.sync_dir(&folder, at(5)).unwrap();
    assert_eq!(summary.outcome("a.toml"), Some(&FileOutcome::Unchanged));

    // One amount changed: that file is applied, the other skipped.
    std::fs::write(folder.join("a.toml"), sub("s1", "1001", "500.00", "")).unwrap();
    let summary = store.sync_dir(&folder, at(6)).unwrap();
    assert_eq!(applied(&summary, "a.toml").updated, vec!["s1"]);
    assert_eq!(summary.outcome("b.toml"), Some(&FileOutcome::Unchanged));
    let s1 = store.subscription("s1").unwrap().unwrap();
    assert_eq!(s1.terms.amount, Money::parse("500.00").unwrap());
    // A changed subscription is planned at the next sweep.
    assert_eq!(store.next_plan_at("s1").unwrap(), None);

    // Broken: refused, the last good version stays; looked at again at every sync.
    std::fs::write(folder.join("a.toml"), "[[subscription]]\nid = 5\n").unwrap();
    let summary = store.sync_dir(&folder, at(7)).unwrap();
    assert!(!refused(&summary, "a.toml").is_empty());
    assert_eq!(active(&store).len(), 2);
    std::fs::write(folder.join("a.toml"), sub("s1", "1001", "500.00", "")).unwrap();
    let summary = store.sync_dir(&folder, at(8)).unwrap();
    assert_eq!(applied(&summary, "a.toml"), Changes::default());

    // Gone: its subscriptions are held until it returns or removal is confirmed.
    let b = std::fs::read(folder.join("b.toml")).unwrap();
    std::fs::remove_file(folder.join("b.toml")).unwrap();
    let summary = store.sync_dir(&folder, at(9)).unwrap();
    match summary.outcome("b.toml") {
        Some(FileOutcome::Missing { held, .. }) => assert_eq!(held, &["s2"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(active(&store).len(), 2);
    // Back unchanged (same bytes): skipped unread, and no longer missing.
    std::fs::write(folder.join("b.toml"), b).unwrap();
    let summary = store.sync_dir(&folder, at(10)).unwrap();
    assert!(matches!(
        summary.outcome("b.toml"),
        Some(FileOutcome::Unchanged | FileOutcome::Applied(_))
    ));
    assert!(store.plannable(at(11)).unwrap().contains(&"s2".to_string()));
}

#[test]
fn folder_sync_moves_ids_and_keeps_the_version_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let folder = schedules_dir(&dir);
    let mut store = daemon(&dir);
    let s1 = sub("s1", "1001", "499.00", "");
    let s2 = sub("s2", "1002", "499.00", "");
    std::fs::write(folder.join("a.toml"), format!("{s1}{s2}")).unwrap();
    std::fs::write(folder.join("b.toml"), sub("s3", "1003", "499.00", "")).unwrap();
    store.sync_dir(&folder, at(1)).unwrap();

    // s2 moves from a to b in one edit (b is after a: a drops it, b takes it over).
    std::fs::write(folder.join("a.toml"), &s1).unwrap();
    std::fs::write(
        folder.join("b.toml"),
        format!("{}{s2}", sub("s3", "1003", "499.00", "")),
    )
    .unwrap();
    let summary = store.sync_dir(&folder, at(2)).unwrap();
    assert_eq!(applied(&summary, "a.toml"), Changes::default());
    assert_eq!(applied(&summary, "b.toml").updated, vec!["s2"]);
    assert_eq!(
        active(&store),
        vec![
            ("s1".to_string(), "a.toml".to_string()),
            ("s2".to_string(), "b.toml".to_string()),
            ("s3".to_string(), "b.toml".to_string()),
        ]
    );
    let removed = store
        .ledger(Some("s2"))
        .unwrap()
        .iter()
        .any(|e| e.kind == kind::SUBSCRIPTION_REMOVED);
    assert!(!removed, "handed over, not removed");

    // A new file (before b by name) takes b's bill number and b's id: refused, b stays.
    std::fs::write(folder.join("0.toml"), sub("s9", "1003", "499.00", "")).unwrap();
    std::fs::write(folder.join("1.toml"), sub("s3", "1004", "499.00", "")).unwrap();
    let summary = store.sync_dir(&folder, at(3)).unwrap();
    let bill = refused(&summary, "0.toml");
    assert!(
        bill[0].contains("already the agreement of subscription s3"),
        "{bill:?}"
    );
    let id = refused(&summary, "1.toml");
    assert!(id[0].contains("also defined in b.toml"), "{id:?}");
    assert_eq!(summary.outcome("b.toml"), Some(&FileOutcome::Unchanged));
    assert_eq!(store.subscription("s9").unwrap(), None);
}

#[test]
fn the_first_plan_of_a_new_subscription_is_its_first_due_instant() {
    use crate::billing::Calendar;
    use crate::config::BillingConfig;
    let dir = tempfile::tempdir().unwrap();
    let folder = schedules_dir(&dir);
    let mut store = daemon(&dir);
    let calendar = Calendar::from(&BillingConfig {
        timezone: "Europe/Moscow".parse().unwrap(),
        charge_time: chrono::NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
        catch_up: CatchUp::Latest,
        grace_hours: 24,
    });
    store.use_calendar(&calendar).unwrap();
    std::fs::write(folder.join("a.toml"), sub("s1", "1001", "499.00", "")).unwrap();
    store.sync_dir(&folder, at(1)).unwrap();
    // Starts 2026-12-01: 10:00 in Moscow is 07:00 UTC.
    assert_eq!(
        store.next_plan_at("s1").unwrap().as_deref(),
        Some("2026-12-01T07:00:00.000000Z")
    );
    let due = Utc.with_ymd_and_hms(2026, 12, 1, 7, 0, 0).unwrap();
    assert!(
        store
            .plannable(due - chrono::Duration::microseconds(1))
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.plannable(due).unwrap(), vec!["s1"]);
    // Another calendar: every subscription is planned again at the next sweep.
    store
        .use_calendar(&Calendar {
            grace: chrono::Duration::hours(1),
            ..calendar
        })
        .unwrap();
    assert_eq!(store.next_plan_at("s1").unwrap(), None);
    assert_eq!(store.plannable(at(2)).unwrap(), vec!["s1"]);
}

/// Issue 12, item 6: the daemon's open never creates a database (a new one has a new
/// order-number prefix and knows of no past charge); only `open_or_create` does, and says so.
#[test]
fn the_daemon_creates_a_database_only_through_open_or_create() {
    let dir = tempfile::tempdir().unwrap();
    let error = Store::open(&db(&dir), Access::Daemon).unwrap_err();
    assert!(
        matches!(error, StoreError::NoDatabase { empty: false, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("recurrentd.db"), "{error}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a refused open leaves nothing behind (not even the lock file)"
    );
    // An empty file is not a database either.
    std::fs::write(db(&dir), "").unwrap();
    let error = Store::open(&db(&dir), Access::Daemon).unwrap_err();
    assert!(
        matches!(error, StoreError::NoDatabase { empty: true, .. }),
        "{error:?}"
    );
    assert_eq!(
        std::fs::metadata(db(&dir)).unwrap().len(),
        0,
        "left as it was"
    );

    let created = Store::open_or_create(&db(&dir)).unwrap();
    assert!(created.created());
    let prefix = created.order_prefix().unwrap();
    drop(created);
    let again = Store::open(&db(&dir), Access::Daemon).unwrap();
    assert!(!again.created());
    assert_eq!(again.order_prefix().unwrap(), prefix);
    drop(again);
    let again = Store::open_or_create(&db(&dir)).unwrap();
    assert!(
        !again.created(),
        "an existing database is opened, not made again"
    );
}

/// Issue 12, item 13: an enrolment attempt is pending before it is sent, at most one per
/// subscription; booking it (with the limits sent) and closing it are each guarded by the state
/// `pending`, so one attempt is settled once.
#[test]
fn an_enrolment_attempt_is_settled_once_from_pending() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = daemon(&dir);
    let attempt = |order: &str, sub: &str| EnrolmentAttempt {
        order_number: order.to_string(),
        subscription_id: sub.to_string(),
        state: EnrolmentState::Pending,
        customer: "1234".into(),
        amount: Money::parse("499.00").unwrap(),
        currency: Currency::parse("RUB").unwrap(),
        cadence: "1 month".into(),
        start: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
        min_amount: Money::parse("100.00").unwrap(),
        max_amount: Money::parse("1000.00").unwrap(),
        period_days: 28,
        max_date: NaiveDate::from_ymd_opt(2027, 12, 1).unwrap(),
        created_at: at(1),
        seen: false,
        bill_number: None,
        reason: None,
    };
    store
        .record_pending_enrolment(&attempt("enrol-s1", "s1"))
        .unwrap();
    assert_eq!(
        store.pending_enrolment("s1").unwrap(),
        Some(attempt("enrol-s1", "s1"))
    );
    // One pending attempt per subscription; an order number once.
    assert!(
        store
            .record_pending_enrolment(&attempt("enrol-s1-2", "s1"))
            .is_err()
    );
    assert!(
        store
            .record_pending_enrolment(&attempt("enrol-s1", "s2"))
            .is_err()
    );
    store
        .keep_enrolment_pending("enrol-s1", true, "In Process", at(2))
        .unwrap();
    let kept = store.pending_enrolment("s1").unwrap().unwrap();
    assert!(kept.seen);
    assert_eq!(kept.reason.as_deref(), Some("In Process"));

    assert!(
        store
            .book_enrolment("enrol-s1", "5899110211001", at(1), at(3))
            .unwrap()
    );
    assert!(store.enrolment_exists("s1").unwrap());
    assert!(store.pending_enrolment("s1").unwrap().is_none());
    assert_eq!(store.charged_instants("s1", None).unwrap(), vec![at(1)]);
    // Booked with the limits sent: sync holds the subscription to them.
    let limits: (Option<i64>, Option<i64>) = store
        .conn
        .query_row(
            "SELECT min_cents, max_cents FROM enrolments WHERE subscription_id = 's1'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(limits, (Some(10_000), Some(100_000)));
    // Settled once: neither booked again nor closed.
    assert!(
        !store
            .book_enrolment("enrol-s1", "5899110211001", at(1), at(4))
            .unwrap()
    );
    assert!(
        !store
            .close_enrolment("enrol-s1", EnrolmentState::Declined, "x", at(4))
            .unwrap()
    );
    assert_eq!(
        store.enrolment_order_use("enrol-s1").unwrap(),
        Some(OrderUse {
            subscription_id: "s1".into(),
            state: EnrolmentState::Approved
        })
    );

    // Closed as not charged: a new attempt may be recorded for the subscription.
    store
        .record_pending_enrolment(&attempt("enrol-s2", "s2"))
        .unwrap();
    assert!(
        store
            .close_enrolment(
                "enrol-s2",
                EnrolmentState::Declined,
                "declined (AS102)",
                at(5)
            )
            .unwrap()
    );
    assert!(store.pending_enrolment("s2").unwrap().is_none());
    assert_eq!(store.enrolment_attempt_count("s2").unwrap(), 1);
    store
        .record_pending_enrolment(&attempt("enrol-s2-2", "s2"))
        .unwrap();
    let kinds: Vec<String> = store
        .ledger(None)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "enrolment_pending",
            "enrolled",
            "enrolment_pending",
            "enrolment_not_charged",
            "enrolment_pending"
        ]
    );
}
