//! The built-in Assist sandbox (in progress): the magic bill-number table, the book and the
//! reply writers.

pub mod behaviour;
pub mod book;
pub mod wire;
