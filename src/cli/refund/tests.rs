use chrono::{Duration, TimeZone, Utc};

use super::*;
use crate::gateway::outcome::{Decline, DeclineKind};
use crate::gateway::reply::Verified;

fn answer(state: &str, refunded_cents: i64, listed: bool, in_process: usize) -> StatusAnswer {
    StatusAnswer {
        verified: Verified {
            outcome: Outcome::Unknown("partial".into()),
            test_mode: Some(true),
            response_code: None,
            bill_number: None,
            approved_orders: 0,
            pending_orders: 0,
            checkvalue_verified: true,
            reversals: Some(Reversals {
                order_state: state.into(),
                listed,
                refunded_cents,
                refunds: usize::from(refunded_cents > 0),
                in_process,
                declined: 0,
                unreadable: 0,
                payment_bill_number: Some("5800.2".into()),
            }),
        },
        raw: None,
    }
}

#[test]
fn the_order_result_is_read_against_the_ledger() {
    // A 100.00 charge, nothing refunded before, refunding 40.00.
    assert_eq!(
        look(&answer("Approved", 0, true, 0), 0, 4000, 10000),
        Look::NotApplied
    );
    assert_eq!(
        look(&answer("PartialCanceled", 4000, true, 0), 0, 4000, 10000),
        Look::Applied
    );
    // Refunding the rest (60.00) after 40.00.
    assert_eq!(
        look(&answer("Canceled", 10000, true, 0), 4000, 6000, 10000),
        Look::Applied
    );
    assert_eq!(
        look(&answer("PartialCanceled", 4000, true, 0), 4000, 6000, 10000),
        Look::NotApplied
    );
    // Amounts that do not fit the verified state are not believed.
    assert!(matches!(
        look(&answer("Approved", 4000, true, 0), 0, 4000, 10000),
        Look::Mismatch(_)
    ));
    assert!(matches!(
        look(&answer("Canceled", 4000, true, 0), 0, 4000, 10000),
        Look::Mismatch(_)
    ));
    // Refunded outside recurrentd: more than the ledger knows.
    assert!(matches!(
        look(&answer("PartialCanceled", 7000, true, 0), 0, 4000, 10000),
        Look::Mismatch(_)
    ));
    assert_eq!(
        look(&answer("PartialCanceled", 0, true, 1), 0, 4000, 10000),
        Look::InProcess
    );
    // No operations listed: only the conclusive states.
    assert_eq!(
        look(&answer("Canceled", 0, false, 0), 0, 10000, 10000),
        Look::Applied
    );
    assert!(matches!(
        look(&answer("PartialCanceled", 0, false, 0), 0, 4000, 10000),
        Look::Mismatch(_)
    ));
    let mut unverified = answer("Canceled", 10000, true, 0);
    unverified.verified.checkvalue_verified = false;
    unverified.verified.outcome = Outcome::IntegrityFailure("checkvalue mismatch".into());
    assert!(matches!(
        look(&unverified, 0, 10000, 10000),
        Look::NoAnswer(_)
    ));
}

#[test]
fn only_a_verified_answer_settles_a_refund() {
    let sent = Utc.with_ymd_and_hms(2027, 1, 5, 7, 0, 0).unwrap();
    let soon = sent + Duration::minutes(1);
    let later = sent + Duration::minutes(31);
    let window = Duration::minutes(30);
    assert!(matches!(
        judge(&Look::Applied, None, sent, soon, window),
        Verdict::Completed(_)
    ));
    // Not shown yet: pending right after an unknown reply, failed once the window passed.
    let unknown = Outcome::Unknown("HTTP 500".into());
    assert!(matches!(
        judge(&Look::NotApplied, Some(&unknown), sent, soon, window),
        Verdict::Pending(_)
    ));
    assert!(matches!(
        judge(&Look::NotApplied, None, sent, soon, window),
        Verdict::Pending(_)
    ));
    assert!(matches!(
        judge(&Look::NotApplied, None, sent, later, window),
        Verdict::Failed(_)
    ));
    // A claim of success is not enough.
    assert!(matches!(
        judge(
            &Look::NotApplied,
            Some(&Outcome::Approved),
            sent,
            soon,
            window
        ),
        Verdict::Pending(_)
    ));
    // A refusal the order's result confirms fails it at once.
    let declined = Outcome::Declined(Decline {
        kind: DeclineKind::Soft,
        code: "AS102".into(),
        reason: "insufficient funds",
    });
    assert!(matches!(
        judge(&Look::NotApplied, Some(&declined), sent, soon, window),
        Verdict::Failed(_)
    ));
    // ... but a refusal the order contradicts is not believed.
    assert!(matches!(
        judge(&Look::Applied, Some(&declined), sent, soon, window),
        Verdict::Completed(_)
    ));
    assert!(matches!(
        judge(
            &Look::NoAnswer("timeout".into()),
            Some(&declined),
            sent,
            later,
            window
        ),
        Verdict::Pending(_)
    ));
    assert!(matches!(
        judge(&Look::Mismatch("x".into()), None, sent, later, window),
        Verdict::Attention(_)
    ));
    assert!(matches!(
        judge(&Look::InProcess, None, sent, later, window),
        Verdict::Pending(_)
    ));
}

#[test]
fn a_store_failure_is_the_stores_exit_code_not_the_gateways() {
    let corrupt = || StoreError::Corrupt {
        path: "recurrentd.db".into(),
        what: "refunds.state".into(),
        value: "bogus".into(),
    };
    // 69 says "the gateway is unavailable"; a damaged database is 74, as everywhere else.
    assert_eq!(store_failed(corrupt()), exit::IO_ERROR);
    assert_eq!(settle_failed("ORD-1-R1", corrupt()), exit::IO_ERROR);
}
