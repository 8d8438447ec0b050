//! Helpers shared by the store's unit tests.

use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};

use super::{EnrolmentRecord, Store};
use crate::billing::Limits;
use crate::money::{Currency, Money};
use crate::schedule::{DirReport, parse_text};

/// 07:00 UTC on a day of 2027.
pub fn at(month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, month, day, 7, 0, 0).unwrap()
}

/// An enrolment's initial payment in RUB, recorded without limits (as before schema version 6).
pub fn enrolment(
    subscription: &str,
    order_number: &str,
    bill_number: &str,
    amount: &str,
    at: DateTime<Utc>,
) -> EnrolmentRecord {
    EnrolmentRecord {
        subscription_id: subscription.to_string(),
        order_number: order_number.to_string(),
        bill_number: bill_number.to_string(),
        amount: Money::parse(amount).unwrap(),
        currency: Currency::parse("RUB").unwrap(),
        limits: Limits::default(),
        at,
    }
}

/// A daemon store with one monthly subscription per id (499.00 RUB from 2027-01-01), synced on
/// 2027-01-01 from `schedules/a.toml`.
pub fn store_with(ids: &[&str]) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_or_create(&dir.path().join("recurrentd.db")).unwrap();
    let mut text = String::new();
    for (i, id) in ids.iter().enumerate() {
        text += &format!(
            "[[subscription]]\nid = \"{id}\"\nbill_number = \"58991102100{i:05}\"\n\
             currency = \"RUB\"\namount = \"499.00\"\nevery = \"1 month\"\nstart = 2027-01-01\n\n"
        );
    }
    let report = DirReport {
        files: vec![parse_text(Path::new("schedules/a.toml"), &text)],
    };
    store.sync_schedules(&report, at(1, 1)).unwrap();
    (dir, store)
}

/// Overwrites one page in the middle of the database file at `path` with garbage (the file
/// must hold everything: no WAL left to checkpoint).
pub fn scramble_middle_page(path: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(path).unwrap().len();
    let page_size = 4096;
    let pages = len / page_size;
    assert!(pages >= 3, "{} has only {pages} page(s)", path.display());
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(pages / 2 * page_size)).unwrap();
    let garbage: Vec<u8> = (0..page_size)
        .map(|i| (i * 151 % 251) as u8 ^ 0xA5)
        .collect();
    file.write_all(&garbage).unwrap();
    file.sync_all().unwrap();
}
