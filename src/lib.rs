//! recurrentd: merchant-initiated recurring card charges (MIT COF) through IPS Assist.

pub mod config;
pub mod money;
