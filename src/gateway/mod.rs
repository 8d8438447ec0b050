//! Everything about the IPS Assist wire format. No other module knows Assist's field names,
//! codes or formats.
//!
//! - [`outcome`]: what a reply means, as exactly one classified outcome.

pub mod outcome;
