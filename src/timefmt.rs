//! The one time format of every JSON output (and of instants shown to operators): RFC 3339 in
//! UTC with `Z`, whole seconds (`2027-01-05T07:00:00Z`). Sub-second digits are cut, not rounded,
//! so an instant is never shown later than it happened.

use chrono::{DateTime, SecondsFormat, Utc};

/// `2027-01-05T07:00:00Z`.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An RFC 3339 text (as stored, with microseconds or an offset) in [`rfc3339`]'s form; a text
/// that is not RFC 3339 is returned unchanged.
pub fn normalise(text: &str) -> String {
    DateTime::parse_from_rfc3339(text)
        .map(|t| rfc3339(t.with_timezone(&Utc)))
        .unwrap_or_else(|_| text.to_string())
}

/// `#[serde(serialize_with = "crate::timefmt::serialize")]` for a `DateTime<Utc>` field.
pub fn serialize<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*at))
}

/// `#[serde(serialize_with = "crate::timefmt::serialize_option")]` for an
/// `Option<DateTime<Utc>>` field (`null` when absent).
pub fn serialize_option<S: serde::Serializer>(
    at: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_str(&rfc3339(*at)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn whole_seconds_utc_with_z() {
        let at = Utc.with_ymd_and_hms(2027, 1, 5, 7, 0, 9).unwrap()
            + chrono::Duration::microseconds(999_999);
        assert_eq!(rfc3339(at), "2027-01-05T07:00:09Z");
        assert_eq!(
            normalise("2027-01-05T07:00:09.999999Z"),
            "2027-01-05T07:00:09Z"
        );
        assert_eq!(
            normalise("2027-01-05T10:00:09+03:00"),
            "2027-01-05T07:00:09Z"
        );
        assert_eq!(normalise("initial"), "initial");
        let json = serde_json::to_string(&Wrapper { at, none: None }).unwrap();
        assert_eq!(json, r#"{"at":"2027-01-05T07:00:09Z","none":null}"#);
    }

    #[derive(serde::Serialize)]
    struct Wrapper {
        #[serde(serialize_with = "serialize")]
        at: DateTime<Utc>,
        #[serde(serialize_with = "serialize_option")]
        none: Option<DateTime<Utc>>,
    }
}
