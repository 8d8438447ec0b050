use super::*;

fn secret() -> SecretString {
    SecretString::from("whsec_test")
}

#[test]
fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
    // Checked against an independent implementation:
    // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
    let header = sign(&secret(), 1_700_000_000, br#"{"a":1}"#);
    assert_eq!(
        header,
        "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
    );
}

#[test]
fn verify_accepts_its_own_signature_and_refuses_tampering_and_replays() {
    let body = br#"{"id":"evt_X_1"}"#;
    let header = sign(&secret(), 1_700_000_000, body);
    assert_eq!(verify(&secret(), &header, body, 1_700_000_010, 300), Ok(()));
    assert!(
        verify(
            &secret(),
            &header,
            br#"{"id":"evt_X_2"}"#,
            1_700_000_010,
            300
        )
        .is_err()
    );
    assert!(
        verify(
            &SecretString::from("other"),
            &header,
            body,
            1_700_000_010,
            300
        )
        .is_err()
    );
    assert!(
        verify(&secret(), &header, body, 1_700_001_000, 300).is_err(),
        "a replay"
    );
    assert!(verify(&secret(), "v1=00", body, 1_700_000_000, 300).is_err());
    // Several v1 tags (a secret being rotated): one matching is enough.
    let rotated = format!("{header},v1=deadbeef");
    assert_eq!(
        verify(&secret(), &rotated, body, 1_700_000_000, 300),
        Ok(())
    );
}

#[test]
fn backoff_doubles_with_jitter_and_is_capped() {
    for attempt in 1..=30u32 {
        let full = BACKOFF_BASE
            .saturating_mul(1 << attempt.saturating_sub(1).min(20))
            .min(BACKOFF_CAP);
        for random in [0, 1, 12_345, u64::MAX / 3, u64::MAX] {
            let wait = backoff(attempt, random);
            assert!(wait >= full / 2 && wait <= full, "{attempt}: {wait:?}");
        }
    }
    assert_eq!(backoff(1, 0), StdDuration::from_secs(5));
    assert_eq!(backoff(2, 0), StdDuration::from_secs(10));
    assert_eq!(backoff(30, 0), BACKOFF_CAP / 2);
    // The jitter spreads retries.
    let spread: std::collections::HashSet<_> = (0..50).map(|r| backoff(4, r * 997)).collect();
    assert!(spread.len() > 40);
}

#[test]
fn the_webhooks_debug_shows_neither_secret_nor_url() {
    let webhook = Webhook {
        url: "https://hooks.example.com/t0ken".into(),
        secret: secret(),
        timeout: StdDuration::from_secs(10),
        dead_after: Duration::days(3),
    };
    let debug = format!("{webhook:?}");
    assert!(
        !debug.contains("whsec_test") && !debug.contains("t0ken"),
        "{debug}"
    );
}

#[test]
fn verify_refuses_an_extreme_timestamp_without_overflowing() {
    let body = br#"{"id":"evt_X_1"}"#;
    for t in [i64::MIN, i64::MAX] {
        let header = sign(&secret(), t, body);
        assert!(
            verify(&secret(), &header, body, 1_700_000_010, 300).is_err(),
            "{t}"
        );
    }
}
