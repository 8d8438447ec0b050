//! Money, currency codes and Assist's date format.
//!
//! `Money` is the only amount type in the product. It wraps a `Decimal` that always has scale 2
//! and is always positive, and it is built only by [`Money::parse`] (or [`Money::from_cents`]),
//! which accepts exactly what Assist accepts for `Amount`: ASCII digits, an optional `.` followed
//! by one or two digits, at most 15 digits in the wire form (so at most 13 before the `.`). Anything else is refused with a reason; nothing
//! is rounded or truncated. Formatting always gives two decimals (`499.00`), the wire form.

use std::fmt;
use std::str::FromStr;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most digits Assist accepts in an amount, counted in the wire form with its two decimals.
pub const MAX_DIGITS: usize = 15;

/// A positive amount of money with exactly two decimals.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(Decimal);

/// Why a string is not an amount Assist would accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount is empty")]
    Empty,
    #[error("amount has a character other than the digits 0-9 and '.': {0:?}")]
    BadCharacter(char),
    #[error("amount has more than one '.'")]
    TwoPoints,
    #[error("amount needs digits before the '.'")]
    NoIntegerPart,
    #[error("amount needs one or two digits after the '.'")]
    NoFraction,
    #[error("amount has more than two decimals; it is never rounded, write it with at most two")]
    TooManyDecimals,
    #[error("amount has a leading zero")]
    LeadingZero,
    #[error(
        "amount has more than {MAX_DIGITS} digits once written with its two decimals \
         (at most {} before the '.')",
        MAX_DIGITS - 2
    )]
    TooManyDigits,
    #[error("amount must be greater than zero")]
    Zero,
}

impl Money {
    /// Parses an amount as Assist accepts it. Signs, exponents, spaces, `,` separators and
    /// non-ASCII digits are refused, as are more than two decimals.
    pub fn parse(text: &str) -> Result<Money, MoneyError> {
        if text.is_empty() {
            return Err(MoneyError::Empty);
        }
        if let Some(bad) = text.chars().find(|c| !(c.is_ascii_digit() || *c == '.')) {
            return Err(MoneyError::BadCharacter(bad));
        }
        let (int_part, frac_part) = match text.split_once('.') {
            None => (text, ""),
            Some((_, frac)) if frac.contains('.') => return Err(MoneyError::TwoPoints),
            Some((_, "")) => return Err(MoneyError::NoFraction),
            Some(parts) => parts,
        };
        if int_part.is_empty() {
            return Err(MoneyError::NoIntegerPart);
        }
        if frac_part.len() > 2 {
            return Err(MoneyError::TooManyDecimals);
        }
        if int_part.len() > 1 && int_part.starts_with('0') {
            return Err(MoneyError::LeadingZero);
        }
        // The wire form always carries two decimals, so the 15 digits leave 13 for the units.
        if int_part.len() + 2 > MAX_DIGITS {
            return Err(MoneyError::TooManyDigits);
        }
        // Only ASCII digits remain and there are at most 15 of them, so the value fits in i64
        // exactly: whole units times 100 plus the cents.
        let cents_text = format!("{int_part}{frac_part:0<2}");
        let cents = i64::from_str(&cents_text).map_err(|_| MoneyError::TooManyDigits)?;
        // from_cents only fails here for zero: the digit count already bounds the value.
        Money::from_cents(cents).ok_or(MoneyError::Zero)
    }

    /// An amount from a whole number of minor units (kopecks); `None` unless it is positive and
    /// within Assist's 15 digits.
    pub fn from_cents(cents: i64) -> Option<Money> {
        const MAX_CENTS: i64 = 999_999_999_999_999;
        if cents <= 0 || cents > MAX_CENTS {
            return None;
        }
        Some(Money(Decimal::new(cents, 2)))
    }

    /// The amount in minor units (kopecks). Exact: the scale is always 2.
    pub fn cents(self) -> i64 {
        // The mantissa of a scale-2 Decimal built from at most 15 digits always fits in i64.
        i64::try_from(self.0.mantissa()).unwrap_or(i64::MAX)
    }

    /// The amount as a `Decimal` with scale 2, for arithmetic such as totals.
    pub fn as_decimal(self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Money {
    /// Always two decimals, `.` separator, no grouping: the form Assist expects.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The scale is always exactly 2 by construction, so Decimal's own Display prints both
        // decimals without rounding; `{:.2}` is deliberately not used (it truncates).
        debug_assert_eq!(self.0.scale(), 2);
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({self})")
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Money, MoneyError> {
        Money::parse(s)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    /// Only from a string: a number in a file or a message would have gone through a float.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        let text = String::deserialize(deserializer)?;
        Money::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An ISO 4217 alphabetic currency code such as `RUB`: three ASCII capital letters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency([u8; 3]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("currency must be an ISO 4217 code of three capital letters such as RUB, got {0:?}")]
pub struct CurrencyError(pub String);

impl Currency {
    pub fn parse(text: &str) -> Result<Currency, CurrencyError> {
        match text.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|b| b.is_ascii_uppercase()) => {
                Ok(Currency([*a, *b, *c]))
            }
            _ => Err(CurrencyError(text.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        // Three ASCII capitals by construction.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;
    fn from_str(s: &str) -> Result<Currency, CurrencyError> {
        Currency::parse(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Currency, D::Error> {
        let text = String::deserialize(deserializer)?;
        Currency::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A date in Assist's wire format, `DD.MM.YYYY` (used by RecurringMaxDate).
pub fn assist_date(date: NaiveDate) -> String {
    date.format("%d.%m.%Y").to_string()
}

/// Parses Assist's `DD.MM.YYYY` strictly: two-digit day and month, four-digit year, a real
/// calendar date. (chrono alone would read `05.03.24` as the year 24.)
pub fn parse_assist_date(text: &str) -> Option<NaiveDate> {
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() == 10
        && bytes[2] == b'.'
        && bytes[5] == b'.'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 2 || i == 5 || b.is_ascii_digit());
    if !shape_ok {
        return None;
    }
    NaiveDate::parse_from_str(text, "%d.%m.%Y").ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_what_assist_accepts() {
        for (text, shown) in [
            ("499.00", "499.00"),
            ("499", "499.00"),
            ("499.5", "499.50"),
            ("0.01", "0.01"),
            ("10.05", "10.05"),
            ("9999999999999.99", "9999999999999.99"),
        ] {
            assert_eq!(Money::parse(text).unwrap().to_string(), shown, "{text}");
        }
    }

    #[test]
    fn refuses_what_assist_refuses_and_says_why() {
        for (text, why) in [
            ("1e3", MoneyError::BadCharacter('e')),
            ("-5.00", MoneyError::BadCharacter('-')),
            ("+5.00", MoneyError::BadCharacter('+')),
            ("10,00", MoneyError::BadCharacter(',')),
            ("10.345", MoneyError::TooManyDecimals),
            (" 10.00", MoneyError::BadCharacter(' ')),
            ("10.00 ", MoneyError::BadCharacter(' ')),
            ("١٠.٠٠", MoneyError::BadCharacter('١')),
            ("１０", MoneyError::BadCharacter('１')),
            ("", MoneyError::Empty),
            ("0", MoneyError::Zero),
            ("0.00", MoneyError::Zero),
            ("10.", MoneyError::NoFraction),
            (".50", MoneyError::NoIntegerPart),
            ("1.2.3", MoneyError::TwoPoints),
            ("007.00", MoneyError::LeadingZero),
            ("1000000000000000", MoneyError::TooManyDigits),
            ("99999999999999", MoneyError::TooManyDigits),
            ("99999999999999.99", MoneyError::TooManyDigits),
            ("NaN", MoneyError::BadCharacter('N')),
        ] {
            assert_eq!(Money::parse(text), Err(why), "{text:?}");
        }
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(
            Money::parse("10.345").unwrap_err().to_string(),
            "amount has more than two decimals; it is never rounded, write it with at most two"
        );
    }

    #[test]
    fn serde_only_from_strings() {
        let m: Money = serde_json::from_str("\"12.30\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"12.30\"");
        assert!(serde_json::from_str::<Money>("12.3").is_err());
    }

    #[test]
    fn currency_codes() {
        assert_eq!(Currency::parse("RUB").unwrap().to_string(), "RUB");
        for bad in ["rub", "RU", "RUBL", "R1B", "", "РУБ"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn assist_dates() {
        let d = NaiveDate::from_ymd_opt(2027, 3, 5).unwrap();
        assert_eq!(assist_date(d), "05.03.2027");
        assert_eq!(parse_assist_date("05.03.2027"), Some(d));
        for bad in [
            "5.3.2027",
            "05.03.27",
            "31.02.2027",
            " 05.03.2027",
            "2027-03-05",
        ] {
            assert_eq!(parse_assist_date(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn cents_round_trip_through_the_wire_form(cents in 1i64..=999_999_999_999_999) {
            let money = Money::from_cents(cents).unwrap();
            let text = money.to_string();
            prop_assert!(text.len() >= 4 && text.as_bytes()[text.len() - 3] == b'.');
            let again = Money::parse(&text).unwrap();
            prop_assert_eq!(again, money);
            prop_assert_eq!(again.cents(), cents);
        }

        #[test]
        fn every_accepted_string_is_canonical_or_pads(int in "[1-9][0-9]{0,12}", frac in "[0-9]{0,2}") {
            let text = if frac.is_empty() { int.clone() } else { format!("{int}.{frac}") };
            let money = Money::parse(&text).unwrap();
            prop_assert_eq!(money.to_string(), format!("{int}.{frac:0<2}"));
        }

        #[test]
        fn three_or_more_decimals_are_never_rounded(int in "[1-9][0-9]{0,5}", frac in "[0-9]{3,6}") {
            prop_assert_eq!(Money::parse(&format!("{int}.{frac}")), Err(MoneyError::TooManyDecimals));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,24}") {
            let _ = Money::parse(&text);
        }
    }
}
