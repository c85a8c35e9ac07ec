//! TODO module body
