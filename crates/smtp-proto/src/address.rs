//! TODO module address
