//! The built-in Assist sandbox (in progress): the magic bill-number table and the book.

pub mod behaviour;
pub mod book;
