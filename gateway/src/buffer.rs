//! The SQLite store-and-forward buffer (being written).
