//! Assist's MD5 check value (assist-api.md §5).
//!
//! `checkvalue = UPPER(MD5_hex(UPPER(MD5_hex(SALT) ++ MD5_hex(X))))`, where SALT is the
//! merchant's secret word and X depends on the message:
//!
//! - a result (`orderstate`, `orderresult`; §5.2): `merchant_id ++ ordernumber ++ orderamount ++
//!   ordercurrency ++ orderstate`, no separators, each string exactly as Assist returned it;
//! - a request (§5.1): `Merchant_ID;OrderNumber;OrderAmount;OrderCurrency`.
//!
//! Strings are hashed as their UTF-8 bytes. Received values are compared in constant time, so a
//! forger cannot learn a correct value byte by byte from how long the comparison took.

use md5::{Digest, Md5};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::money::{Currency, Money};

/// Length of a check value: an MD5 digest in hex.
const CHECKVALUE_LEN: usize = 32;

/// The fields of an `orderstate`/`orderresult` reply that its check value covers, as the exact
/// strings Assist returned (`4.00`, `RUB`, `In Process` with its space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultFields<'a> {
    /// The merchant's own Merchant_ID; orderstate replies do not echo it, so it comes from config.
    pub merchant_id: &'a str,
    /// `ordernumber` as returned.
    pub order_number: &'a str,
    /// `orderamount` as returned.
    pub order_amount: &'a str,
    /// `ordercurrency` as returned.
    pub order_currency: &'a str,
    /// `orderstate` as returned.
    pub order_state: &'a str,
}

impl ResultFields<'_> {
    /// X for a result: the five fields concatenated with no separators.
    fn x(&self) -> String {
        [
            self.merchant_id,
            self.order_number,
            self.order_amount,
            self.order_currency,
            self.order_state,
        ]
        .concat()
    }
}

/// The check value Assist should have put on a result with these fields: 32 upper-case hex
/// characters.
pub fn result_checkvalue(salt: &SecretString, fields: &ResultFields<'_>) -> String {
    checkvalue_of(salt.expose_secret(), &fields.x())
}

/// The request check value over `Merchant_ID;OrderNumber;OrderAmount;OrderCurrency`: 32
/// upper-case hex characters. The amount is written in its wire form (`100.00`).
pub fn request_checkvalue(
    salt: &SecretString,
    merchant_id: &str,
    order_number: &str,
    amount: Money,
    currency: Currency,
) -> String {
    let x = super::request_string(merchant_id, order_number, amount, currency);
    checkvalue_of(salt.expose_secret(), &x)
}

/// Whether `received` is the right check value for a result with these fields.
///
/// Surrounding ASCII whitespace is ignored and case does not matter (Assist's own plugins compare
/// case-insensitively). Anything that is not 32 hex characters is simply wrong. The comparison
/// itself takes the same time wherever the first difference is.
pub fn verify_result(salt: &SecretString, fields: &ResultFields<'_>, received: &str) -> bool {
    matches(&result_checkvalue(salt, fields), received)
}

/// Constant-time comparison of a computed check value with a received one.
fn matches(expected: &str, received: &str) -> bool {
    let received = received.trim_ascii();
    // The length and the hex alphabet are public knowledge, so checking them first leaks nothing.
    if received.len() != CHECKVALUE_LEN || !received.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let received = received.to_ascii_uppercase();
    bool::from(expected.as_bytes().ct_eq(received.as_bytes()))
}

/// The check value of X under SALT, upper-case hex.
pub(crate) fn checkvalue_of(salt: &str, x: &str) -> String {
    let inner = inner_string(salt, x);
    md5_hex(inner.as_bytes()).to_ascii_uppercase()
}

/// `UPPER(MD5_hex(SALT) ++ MD5_hex(X))`.
///
/// Upper-casing is the step implementations get wrong (assist-api.md §5.4, V6). MD5(SALT) is as
/// good as the salt for forging check values, so it and the concatenation are wiped when dropped;
/// the buffer is sized up front so that no reallocation leaves an unwiped copy behind.
fn inner_string(salt: &str, x: &str) -> Zeroizing<String> {
    let mut inner = Zeroizing::new(String::with_capacity(2 * CHECKVALUE_LEN));
    let salt_hex = Zeroizing::new(md5_hex(salt.as_bytes()));
    inner.push_str(&salt_hex);
    inner.push_str(&md5_hex(x.as_bytes()));
    inner.make_ascii_uppercase();
    inner
}

/// MD5 of `bytes` as 32 lower-case hex characters, as PHP's `md5()` gives it.
fn md5_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Md5::digest(bytes);
    let mut hex = String::with_capacity(CHECKVALUE_LEN);
    for byte in digest {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn salt(text: &str) -> SecretString {
        SecretString::from(text.to_string())
    }

    fn fields<'a>(
        order_number: &'a str,
        order_amount: &'a str,
        order_state: &'a str,
    ) -> ResultFields<'a> {
        ResultFields {
            merchant_id: "123456",
            order_number,
            order_amount,
            order_currency: "RUB",
            order_state,
        }
    }

    /// V2 of assist-api.md §5.4: an approved orderstate reply.
    fn v2() -> ResultFields<'static> {
        fields("A1_R1", "100.00", "Approved")
    }

    /// The V6 mistake: the inner concatenation hashed without upper-casing it.
    fn pitfall(salt: &str, x: &str) -> String {
        let lower_inner = format!("{}{}", md5_hex(salt.as_bytes()), md5_hex(x.as_bytes()));
        md5_hex(lower_inner.as_bytes()).to_ascii_uppercase()
    }

    fn money(text: &str) -> Money {
        Money::parse(text).unwrap()
    }

    fn rub() -> Currency {
        Currency::parse("RUB").unwrap()
    }

    #[test]
    fn v1_request_vector_and_its_intermediates() {
        let x = "123456;A1_R1;100.00;RUB";
        assert_eq!(md5_hex(b"secret"), "5ebe2294ecd0e0f08eab7690d2a6ee69");
        assert_eq!(md5_hex(x.as_bytes()), "7b84e34c696742ddcc24c847d4ede18b");
        assert_eq!(
            inner_string("secret", x).as_str(),
            "5EBE2294ECD0E0F08EAB7690D2A6EE697B84E34C696742DDCC24C847D4EDE18B"
        );
        assert_eq!(
            checkvalue_of("secret", x),
            "D0A228C5E2B494A0DD44FCF833EBF4A8"
        );
        assert_eq!(
            request_checkvalue(&salt("secret"), "123456", "A1_R1", money("100.00"), rub()),
            "D0A228C5E2B494A0DD44FCF833EBF4A8"
        );
        // Money writes its wire form, so an amount parsed as "100" is still hashed as "100.00".
        assert_eq!(
            request_checkvalue(&salt("secret"), "123456", "A1_R1", money("100"), rub()),
            "D0A228C5E2B494A0DD44FCF833EBF4A8"
        );
    }

    #[test]
    fn v2_approved_result() {
        assert_eq!(
            md5_hex(b"123456A1_R1100.00RUBApproved"),
            "fc1a4d73479d2eed74129da1b3dd6da9"
        );
        let expected = "71B6B0CF622FC0272366E81326CB32CD";
        assert_eq!(result_checkvalue(&salt("secret"), &v2()), expected);
        assert!(verify_result(&salt("secret"), &v2(), expected));
    }

    #[test]
    fn v3_declined_result() {
        let declined = fields("A1_R1", "100.00", "Declined");
        let expected = "78F82578B8FBA636DF073B7C305FD3CC";
        assert_eq!(result_checkvalue(&salt("secret"), &declined), expected);
        assert!(verify_result(&salt("secret"), &declined, expected));
    }

    #[test]
    fn v4_legacy_request_without_separators() {
        assert_eq!(
            checkvalue_of("secret", "123456A1_R1100.00RUB"),
            "BB7D98841A0D4E6BB63E774F7D1302B6"
        );
    }

    #[test]
    fn v5_public_fixture_verifies_and_v5_neg_is_rejected() {
        let fixture = ResultFields {
            merchant_id: "111111",
            order_number: "ok",
            order_amount: "4.00",
            order_currency: "RUB",
            order_state: "Canceled",
        };
        assert_eq!(
            result_checkvalue(&salt("secret"), &fixture),
            "74DEB154081757F1E8097DDFAC35FC5C"
        );
        assert!(verify_result(
            &salt("secret"),
            &fixture,
            "74DEB154081757F1E8097DDFAC35FC5C"
        ));
        assert!(!verify_result(
            &salt("secret"),
            &fixture,
            "586798F678EF8A0A5B9F7BF403B473C7"
        ));
    }

    #[test]
    fn v6_pitfall_is_neither_produced_nor_accepted() {
        let x = "123456;A1_R1;100.00;RUB";
        let wrong = "7C8B4FF85D51163AEEECA4CA6BD2B6C1";
        // The test's model of the mistake reproduces the documented wrong value...
        assert_eq!(pitfall("secret", x), wrong);
        // ...and ours is not it, nor does the comparison take it for the right value.
        let ours = checkvalue_of("secret", x);
        assert_ne!(ours, wrong);
        assert!(!matches(&ours, wrong));
        assert!(matches(&ours, "D0A228C5E2B494A0DD44FCF833EBF4A8"));
        // The same mistake made over a result is rejected by verify_result.
        let wrong_result = pitfall("secret", "123456A1_R1100.00RUBApproved");
        assert_ne!(wrong_result, "71B6B0CF622FC0272366E81326CB32CD");
        assert!(!verify_result(&salt("secret"), &v2(), &wrong_result));
    }

    #[test]
    fn v7_utf8_salt_and_order_number() {
        let x = "123456;Заказ-1;10.50;RUB";
        assert_eq!(
            checkvalue_of("Секрет", x),
            "B1F141133B4B44B0C580D3E1BE99FF41"
        );
        assert_eq!(
            request_checkvalue(&salt("Секрет"), "123456", "Заказ-1", money("10.50"), rub()),
            "B1F141133B4B44B0C580D3E1BE99FF41"
        );
    }

    #[test]
    fn lower_case_and_surrounding_whitespace_are_accepted() {
        let s = salt("secret");
        assert!(verify_result(&s, &v2(), "71b6b0cf622fc0272366e81326cb32cd"));
        assert!(verify_result(&s, &v2(), "71b6B0CF622fc0272366E81326CB32cd"));
        assert!(verify_result(
            &s,
            &v2(),
            " \t71B6B0CF622FC0272366E81326CB32CD\r\n"
        ));
    }

    #[test]
    fn one_changed_field_is_rejected() {
        let s = salt("secret");
        let good = "71B6B0CF622FC0272366E81326CB32CD";
        let changed = [
            ResultFields {
                order_amount: "100.01",
                ..v2()
            },
            ResultFields {
                order_amount: "100",
                ..v2()
            },
            ResultFields {
                order_number: "A1_R2",
                ..v2()
            },
            ResultFields {
                merchant_id: "123457",
                ..v2()
            },
            ResultFields {
                order_currency: "USD",
                ..v2()
            },
            ResultFields {
                order_state: "Declined",
                ..v2()
            },
        ];
        for fields in changed {
            assert!(!verify_result(&s, &fields, good), "{fields:?}");
        }
        // Another salt is rejected too.
        assert!(!verify_result(&salt("Secret"), &v2(), good));
    }

    #[test]
    fn malformed_received_values_are_rejected() {
        let s = salt("secret");
        let good = "71B6B0CF622FC0272366E81326CB32CD";
        for received in [
            "",
            " ",
            "garbage",
            "71B6B0CF622FC0272366E81326CB32C",
            "71B6B0CF622FC0272366E81326CB32CD0",
            "71B6B0CF622FC0272366E81326CB32CDD",
            "071B6B0CF622FC0272366E81326CB32CD",
            "71B6B0CF622FC0272366E81326CB32CG",
            "71B6B0CF622FC027 366E81326CB32CD",
            "71B6B0CF622FC0272366E81326CB32C\u{0}",
            "71B6B0CF622FC0272366E81326CB32CÐ",
            "71B6B0CF622FC0272366E81326CB32CD\u{a0}",
        ] {
            assert!(!verify_result(&s, &v2(), received), "{received:?}");
        }
        assert!(verify_result(&s, &v2(), good));
    }

    #[test]
    fn output_is_32_upper_case_hex() {
        let value = result_checkvalue(&salt("secret"), &v2());
        assert_eq!(value.len(), 32);
        assert!(
            value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_received_values_never_panic(
            salt_text in ".*",
            received in ".*",
            state in ".*",
        ) {
            let s = salt(&salt_text);
            let fields = fields("A1_R1", "100.00", &state);
            // Only a 32-hex-character value can pass, whatever else it is.
            if verify_result(&s, &fields, &received) {
                prop_assert_eq!(received.trim_ascii().len(), 32);
            }
        }

        #[test]
        fn a_computed_value_always_verifies(
            salt_text in ".*",
            merchant_id in ".*",
            order_number in ".*",
            order_amount in ".*",
            order_currency in ".*",
            order_state in ".*",
        ) {
            let s = salt(&salt_text);
            let fields = ResultFields {
                merchant_id: &merchant_id,
                order_number: &order_number,
                order_amount: &order_amount,
                order_currency: &order_currency,
                order_state: &order_state,
            };
            let value = result_checkvalue(&s, &fields);
            prop_assert!(verify_result(&s, &fields, &value));
            prop_assert!(verify_result(&s, &fields, &value.to_ascii_lowercase()));
        }
    }
}
